"""What verbose PodSandboxStatus and ContainerStatus add under `info` besides containerd's own
keys (`crictl inspect`/`inspectp`): crictld's view of the object, its generation, the last
error of a pass that keeps failing, and its last events."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from crictl.api.front import needs_daemon
from crictl.containerd.client import ContainerdClient
from crictl.reconciler import inspect
from crictl.reconciler.queue import Failure
from crictl.store.engine import Store
from crictl.store.events import RecordedEvent
from crictl.store.readmodel import ContainerView, SandboxView
from crictl.store.specs import Kind, inspected

LAST_EVENTS = 10


async def runtime_spec_and_events(
    store: Store, containerd: ContainerdClient, kind: Kind, object_id: str
) -> tuple[dict[str, Any] | None, list[RecordedEvent]]:
    """The spec containerd's record of the object holds (None: containerd holds none, or is
    away) and the object's last events. One store read where the row keeps the spec
    (crictl/store/specs.py), which the front loop answers; else containerd is asked for it,
    from the daemon's loop (`needs_daemon`: the handler runs again there)."""
    # on the front loop's thread: no hop to a reader thread (Store.read_on_loop)
    found = await store.read_on_loop(lambda s: inspected(s, kind, object_id, LAST_EVENTS))
    if found.runtime_spec is not None:
        spec: dict[str, Any] = json.loads(found.runtime_spec)
        return spec, found.events
    needs_daemon()
    return await inspect.runtime_spec(containerd, object_id), found.events


def crictld_view(
    row: ContainerView | SandboxView,
    events: Sequence[RecordedEvent],
    failures: Mapping[str, Failure],
) -> dict[str, Any]:
    failure = failures.get(row.id)
    return {
        "desired": row.desired,
        "phase": row.phase,
        "generation": row.generation,
        "observedGeneration": row.observed_generation,
        "lastError": (
            {"error": failure.error, "attempts": failure.attempts, "since": failure.since}
            if failure is not None
            else None
        ),
        "lastEvents": [
            {
                "at": e.at,
                "action": e.action,
                "from": e.from_phase,
                "to": e.to_phase,
                "reason": e.reason,
                "message": e.message,
            }
            for e in events
        ],
    }
