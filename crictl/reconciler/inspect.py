"""containerd's side of a verbose status: the OCI spec the object runs with and how."""

from __future__ import annotations

from typing import Any

from crictl import errors
from crictl.containerd.client import RUNC_RUNTIME, ContainerdClient
from crictl.reconciler.sandboxes import SNAPSHOTTER


async def runtime_spec(containerd: ContainerdClient, object_id: str) -> dict[str, Any] | None:
    """The spec containerd holds for the object (None when it holds none, or is away)."""
    try:
        return dict(await containerd.container_spec(object_id))
    except errors.CrictlError:
        return None


def runtime_keys(containerd: ContainerdClient, object_id: str) -> dict[str, Any]:
    return {
        "snapshotKey": object_id,
        "snapshotter": SNAPSHOTTER,
        "runtimeType": RUNC_RUNTIME,
        "runtimeOptions": {"systemd_cgroup": containerd.systemd_cgroup},
    }
