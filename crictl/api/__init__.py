"""CRI servicers: request -> store write -> wait for the reconciler -> response.

Reads (List*, *Status) are answered from the store alone and never call containerd. Handlers raise
crictl.errors; `crictl.api.interceptor` is the one place that maps them to gRPC status codes.
"""
