"""The phase state machines. A phase changes only through `switch_sandbox_phase()` or
`switch_container_phase()`, which reject illegal moves and write the event log.

Pod sandbox::

      RunPodSandbox             every step done
    ───────────────► PENDING ────────────────────► READY
                        │                            │
                        │ failed for good,           │ pause task exited,
                        │ or StopPodSandbox          │ or StopPodSandbox
                        ▼                            │
                     NOTREADY ◄──────────────────────┘
                        │
      RemovePodSandbox (from any phase)
                        ▼
                     REMOVING ── teardown done ──► row deleted (history stays in `event`)

Container::

      CreateContainer         created in containerd        StartContainer
    ───────────────► PENDING ─────────────────────► CREATED ───────────────► RUNNING
                        │                              │                        │
                        │ failed for good              │ start failed           │ task exited
                        ▼                              ▼ (StartError, 128)      ▼
                      EXITED ◄─────────────────────────┴────────────────────────┘
    UNKNOWN: containerd could not say (it is unreachable); leaves to RUNNING or EXITED.
    RemoveContainer (from any phase) ──► REMOVING ── teardown done ──► row deleted

Nothing ever goes back from NOTREADY or EXITED: the runtime never resurrects what died on its
own; kubelet decides what to restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from crictl.errors import FailedPrecondition
from crictl.store.common import Tx
from crictl.store.events import now_ns, record_event
from crictl.store.models import ContainerPhase, SandboxPhase
from crictl.store.readmodel import ContainerView, SandboxView, V, change

S = SandboxPhase
SANDBOX_TRANSITIONS: Mapping[str, frozenset[str]] = {
    S.PENDING: frozenset({S.READY, S.NOTREADY, S.REMOVING}),
    S.READY: frozenset({S.NOTREADY, S.REMOVING}),
    S.NOTREADY: frozenset({S.REMOVING}),
    S.REMOVING: frozenset(),
}

C = ContainerPhase
CONTAINER_TRANSITIONS: Mapping[str, frozenset[str]] = {
    C.PENDING: frozenset({C.CREATED, C.EXITED, C.UNKNOWN, C.REMOVING}),
    C.CREATED: frozenset({C.RUNNING, C.EXITED, C.UNKNOWN, C.REMOVING}),
    C.RUNNING: frozenset({C.EXITED, C.UNKNOWN, C.REMOVING}),
    C.UNKNOWN: frozenset({C.RUNNING, C.EXITED, C.REMOVING}),
    C.EXITED: frozenset({C.REMOVING}),
    C.REMOVING: frozenset(),
}


def _check(kind: str, obj_id: str, old: str, new: str, table: Mapping[str, frozenset[str]]) -> None:
    if new not in table.get(old, frozenset()):
        raise FailedPrecondition(f"{kind} {obj_id}: illegal phase change {old} -> {new}")


def switch_sandbox_phase(
    tx: Tx,
    sandbox: SandboxView,
    new: SandboxPhase,
    reason: str = "",
    message: str = "",
    **columns: Any,
) -> SandboxView:
    """Moves the sandbox `sandbox` shows to `new`, with `columns` set in the same UPDATE;
    returns its new view."""
    return _switch(tx, "sandbox", sandbox, new, SANDBOX_TRANSITIONS, reason, message, columns)


def switch_container_phase(
    tx: Tx,
    container: ContainerView,
    new: ContainerPhase,
    reason: str = "",
    message: str = "",
    **columns: Any,
) -> ContainerView:
    """Moves the container `container` shows to `new`, with `columns` set in the same UPDATE;
    returns its new view."""
    return _switch(tx, "container", container, new, CONTAINER_TRANSITIONS, reason, message, columns)


def _switch(
    tx: Tx,
    kind: Literal["sandbox", "container"],
    view: V,
    new: str,
    table: Mapping[str, frozenset[str]],
    reason: str,
    message: str,
    columns: dict[str, Any],
) -> V:
    old = view.phase
    _check(kind, view.id, old, new, table)
    record_event(
        tx,
        kind,
        view.id,
        "transition",
        from_phase=old,
        to_phase=new,
        reason=reason,
        message=message,
    )
    return change(
        tx, view, phase=new, reason=reason, message=message, updated_at=now_ns(), **columns
    )
