"""The reconciler: drives containerd and the pod network until they match the store.

It is the only layer that calls the drivers (crictl.containerd, crictl.network); the API asks it
for what it needs (wake-ups, waits, health) and never calls a driver itself.
"""
