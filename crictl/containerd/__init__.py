"""Driver: containerd, through its own v1 gRPC API. Imports neither store, api nor reconciler."""
