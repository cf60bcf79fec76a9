"""Typed queries on containers. The caller owns the transaction (`Tx`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from crictl.errors import AlreadyExists, NotFound
from crictl.store import readmodel
from crictl.store.common import Tx, is_id_text, resolve_id
from crictl.store.events import now_ns, record_event
from crictl.store.models import ContainerDesired, ContainerPhase, container_table
from crictl.store.readmodel import ContainerView, Snapshot, change, container_now
from crictl.store.specs import set_runtime_spec
from crictl.store.transitions import switch_container_phase


@dataclass(frozen=True)
class NewContainer:
    id: str
    sandbox_id: str
    name: str
    attempt: int
    config: str
    config_digest: str
    image: str
    image_ref: str | None
    image_id: str | None
    log_path: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerFilter:
    id_prefix: str | None = None
    sandbox_id: str | None = None
    phases: frozenset[str] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def create_container(tx: Tx, new: NewContainer) -> tuple[ContainerView, bool]:
    """Inserts the container unless the sandbox has one with the same name and attempt: the
    same config is a retry (the earlier row comes back), another is AlreadyExists."""
    now = now_ns()
    view = ContainerView(
        id=new.id,
        sandbox_id=new.sandbox_id,
        name=new.name,
        attempt=new.attempt,
        config=new.config,
        config_digest=new.config_digest,
        image=new.image,
        image_ref=new.image_ref,
        image_id=new.image_id,
        log_path=new.log_path,
        desired=ContainerDesired.CREATED.value,
        phase=ContainerPhase.PENDING.value,
        reason="",
        message="",
        exit_code=None,
        generation=1,
        observed_generation=0,
        task_pid=None,
        uid=None,
        gid=None,
        supplemental_groups="[]",
        created_at=now,
        started_at=None,
        finished_at=None,
        updated_at=now,
        labels=dict(new.labels),
        annotations=dict(new.annotations),
    )
    if readmodel.insert(tx, view, ("sandbox_id", "name", "attempt")):
        record_event(tx, "container", new.id, "created", to_phase=ContainerPhase.PENDING)
        return view, True
    c = container_table.c
    earlier = tx.connection.scalars(
        select(c.id).where(
            c.sandbox_id == new.sandbox_id, c.name == new.name, c.attempt == new.attempt
        )
    ).one()
    row = _must(tx, earlier)
    if row.config_digest != new.config_digest:
        raise AlreadyExists(
            f"container {new.name} (attempt {new.attempt}) already exists in pod sandbox "
            f"{new.sandbox_id} as {row.id} with a different config"
        )
    return row, False


def resolve_container_id(tx: Tx, id_or_prefix: str) -> str:
    snap = readmodel.untouched(tx)
    if snap is not None:
        return snap.container_id(id_or_prefix)
    return resolve_id(tx, container_table.c.id, id_or_prefix, "container")


def _must(tx: Tx, container_id: str) -> ContainerView:
    c = container_now(tx, container_id)
    if c is None:
        raise NotFound(f"container {container_id} not found")
    return c


_ORDER = [
    ContainerDesired.CREATED,
    ContainerDesired.RUNNING,
    ContainerDesired.EXITED,
    ContainerDesired.REMOVED,
]


def desired_reached(row: ContainerView, desired: ContainerDesired) -> bool:
    """`desired` or a later state is recorded: setting it would change nothing."""
    return _ORDER.index(ContainerDesired(row.desired)) >= _ORDER.index(ContainerDesired(desired))


def set_container_desired(tx: Tx, container_id: str, desired: ContainerDesired) -> ContainerView:
    """Records what CRI asked (never backwards: a stopped container is not started again)."""
    c = _must(tx, container_id)
    if not desired_reached(c, desired):
        record_event(
            tx,
            "container",
            container_id,
            "desired",
            reason=str(desired),
            message=f"{c.desired} -> {desired}",
        )
        c = change(tx, c, desired=desired, generation=c.generation + 1, updated_at=now_ns())
    return c


def set_containers_desired(
    tx: Tx, container_ids: list[str], desired: ContainerDesired
) -> list[ContainerView]:
    """`set_container_desired` for each of CONTAINER_IDS that still exists, in one transaction
    (a pod's stop or removal: a crash keeps all of them or none); the views of those found."""
    views = []
    for container_id in container_ids:
        if container_now(tx, container_id) is not None:
            views.append(set_container_desired(tx, container_id, desired))
    return views


def record_container_created(
    tx: Tx,
    container_id: str,
    uid: int,
    gid: int,
    groups: list[int],
    runtime_spec: str | None = None,
) -> None:
    """`runtime_spec`: the spec containerd's record was made with, where this pass made it."""
    c = _must(tx, container_id)
    ids: dict[str, Any] = {"uid": uid, "gid": gid, "supplemental_groups": json.dumps(groups)}
    if c.phase == ContainerPhase.PENDING:
        switch_container_phase(tx, c, ContainerPhase.CREATED, reason="Created", **ids)
    else:
        change(tx, c, **ids)
    set_runtime_spec(tx, "container", container_id, runtime_spec)


def record_container_started(tx: Tx, container_id: str, pid: int) -> None:
    c = _must(tx, container_id)
    switch_container_phase(
        tx,
        c,
        ContainerPhase.RUNNING,
        reason="Started",
        message=f"pid {pid}",
        task_pid=pid,
        started_at=now_ns(),
    )


def record_container_exited(
    tx: Tx,
    container_id: str,
    exit_code: int,
    reason: str,
    message: str = "",
    finished_at: int | None = None,
) -> None:
    c = container_now(tx, container_id)
    if c is None or c.phase in (ContainerPhase.EXITED, ContainerPhase.REMOVING):
        return
    switch_container_phase(
        tx,
        c,
        ContainerPhase.EXITED,
        reason,
        message,
        exit_code=exit_code,
        finished_at=finished_at or now_ns(),
    )


def update_container_config(tx: Tx, container_id: str, config: str, runtime_spec: str) -> None:
    """A new config after UpdateContainerResources, and the spec containerd's record was given
    with it; the config's digest (the container's identity for retried creates) stays that of
    the create request."""
    c = _must(tx, container_id)
    change(tx, c, config=config, updated_at=now_ns())
    set_runtime_spec(tx, "container", container_id, runtime_spec)
    record_event(tx, "container", container_id, "resources-updated")


def mark_container_observed(tx: Tx, container_id: str, generation: int) -> None:
    c = container_now(tx, container_id)
    if c is not None and generation > c.observed_generation:
        change(tx, c, observed_generation=generation)


def delete_container(tx: Tx, container_id: str, reason: str = "Removed") -> None:
    c = container_now(tx, container_id)
    if c is None:
        return
    readmodel.delete(tx, "container", container_id)
    record_event(tx, "container", container_id, "removed", from_phase=c.phase, reason=reason)


def removal_asked(row: ContainerView) -> bool:
    """CRI asked to remove it: it is gone to CRI from then on (RemoveContainer answers once that
    is recorded for a container whose process is dead), while the reconciler tears it down."""
    return row.desired == ContainerDesired.REMOVED


def live_container(snap: Snapshot, id_or_prefix: str) -> ContainerView:
    """The container `id_or_prefix` names, as CRI sees it (NotFound once its removal was
    asked)."""
    row = snap.container(id_or_prefix)
    if removal_asked(row):
        raise NotFound(f"container {row.id} not found: it is being removed")
    return row


def select_containers(snap: Snapshot, flt: ContainerFilter | None = None) -> list[ContainerView]:
    """The containers of the read model `flt` selects, oldest first: what `list_containers`
    answers from SQL."""
    views = snap.containers.values()
    if flt is None:
        return list(views)
    if flt.id_prefix and not is_id_text(flt.id_prefix):
        return []
    if flt.sandbox_id and not is_id_text(flt.sandbox_id):
        return []
    selector = flt.labels.items()
    return [
        c
        for c in views
        if (not flt.id_prefix or c.id.startswith(flt.id_prefix))
        and (not flt.sandbox_id or c.sandbox_id.startswith(flt.sandbox_id))
        and (flt.phases is None or c.phase in flt.phases)
        and selector <= c.labels.items()
    ]
