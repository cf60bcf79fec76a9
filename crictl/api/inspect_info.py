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
) -> tuple[str | None, list[RecordedEvent]]:
    """The spec containerd's record of the object holds, as JSON text (None: containerd holds
    none, or is away), and the object's last events. One store read where the row keeps the
    spec (crictl/store/specs.py), which the front loop answers; else containerd is asked for
    it, from the daemon's loop (`needs_daemon`: the handler runs again there)."""
    # on the front loop's thread: no hop to a reader thread (Store.read_on_loop)
    found = await store.read_on_loop(lambda s: inspected(s, kind, object_id, LAST_EVENTS))
    if found.runtime_spec is not None:
        return found.runtime_spec, found.events
    needs_daemon()
    spec = await inspect.runtime_spec(containerd, object_id)
    return (json.dumps(spec) if spec is not None else None), found.events


def info_json(fields: Mapping[str, Any], verbatim: Mapping[str, str | None]) -> str:
    """A verbose status's `info`: `fields` as json.dumps writes them, then each of `verbatim`,
    JSON text crictld wrote itself and keeps in a row (the config as sent, the OCI spec, the
    CNI result), written as it is (None: null). Parsing those ~2-10 KB to write them again
    was a fifth of the handler's time (docs/performance.md, "Verbose statuses")."""
    parts = [json.dumps(fields)[:-1]]
    for key, text in verbatim.items():
        parts.append(f"{', ' if len(parts) > 1 or fields else ''}{json.dumps(key)}: ")
        parts.append(text if text is not None else "null")
    parts.append("}")
    return "".join(parts)


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
