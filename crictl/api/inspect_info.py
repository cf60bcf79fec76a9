"""What verbose PodSandboxStatus and ContainerStatus add under `info` besides containerd's own
keys (`crictl inspect`/`inspectp`): crictld's view of the object, its generation, the last
error of a pass that keeps failing, and its last events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crictl.reconciler.queue import Failure
from crictl.store.engine import Store
from crictl.store.events import list_events

LAST_EVENTS = 10


async def crictld_view(
    store: Store,
    kind: str,
    object_id: str,
    desired: str,
    phase: str,
    generation: int,
    observed: int,
    failures: Mapping[str, Failure],
) -> dict[str, Any]:
    events = await store.read(lambda s: list_events(s, kind, object_id)[-LAST_EVENTS:])
    failure = failures.get(object_id)
    return {
        "desired": desired,
        "phase": phase,
        "generation": generation,
        "observedGeneration": observed,
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
