"""What a verbose status reads besides the read model: the OCI spec crictld gave containerd's
record of the object, and the object's last events.

The spec is kept in the object's row (`runtime_spec`) when crictld made containerd's record
with it, and replaced when crictld replaced the record's (UpdateContainerResources), in the
same transaction that records the step: it is then what containerd holds, and a verbose status
answers without asking containerd. It is NULL, and containerd's record is read, where crictld
does not know the record's spec for certain: the record was found made by an earlier pass
(a crash between containerd's create and the commit), or the row is from before revision 0006.

An UpdateContainerResources clears the row's spec (a commit), changes containerd's record,
then commits the new config and spec together: a crash or an error in between leaves the
spec NULL (the config one update behind the record, as it is behind the cgroups; kubelet, which
compares the status's resources with the pod's, sends the update again). A power loss can roll
back the last commits (`synchronous=NORMAL`, docs/architecture.md), the clearing with them,
which leaves the row's spec of a container the reboot found dead one update behind the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crictl.store.common import On, Tx, execute
from crictl.store.events import RecordedEvent, last_events

Kind = Literal["sandbox", "container"]

_TABLES: dict[Kind, str] = {"sandbox": "pod_sandbox", "container": "container"}


@dataclass(frozen=True)
class Inspected:
    runtime_spec: str | None  # JSON; None: ask containerd
    events: list[RecordedEvent]  # the newest, oldest first


def set_runtime_spec(tx: Tx, kind: Kind, object_id: str, spec: str | None) -> None:
    """Records the spec containerd's record now holds (None: not known, ask containerd)."""
    execute(tx, f"UPDATE {_TABLES[kind]} SET runtime_spec = ? WHERE id = ?", (spec, object_id))


def stored_spec(on: On, kind: Kind, object_id: str) -> str | None:
    """The spec containerd's record holds, where the row knows it (None: ask containerd)."""
    row = execute(
        on, f"SELECT runtime_spec FROM {_TABLES[kind]} WHERE id = ?", (object_id,)
    ).fetchone()
    return row[0] if row else None


def inspected(on: On, kind: Kind, object_id: str, events: int) -> Inspected:
    """The object's stored spec and its newest `events` events, in one read transaction."""
    return Inspected(stored_spec(on, kind, object_id), last_events(on, kind, object_id, events))
