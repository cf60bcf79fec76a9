"""What verbose PodSandboxStatus and ContainerStatus add under `info` besides containerd's own
keys (`crictl inspect`/`inspectp`): crictld's view of the object, its generation, the last
error of a pass that keeps failing, and its last events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crictl.reconciler.queue import Failure
from crictl.store.engine import Store
from crictl.store.events import last_events
from crictl.store.readmodel import ContainerView, SandboxView

LAST_EVENTS = 10


async def crictld_view(
    store: Store, kind: str, row: ContainerView | SandboxView, failures: Mapping[str, Failure]
) -> dict[str, Any]:
    events = await store.read(lambda s: last_events(s, kind, row.id, LAST_EVENTS))
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
