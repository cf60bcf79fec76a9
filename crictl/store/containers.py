"""Typed queries on containers. The caller owns the session and so the transaction."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, select
from sqlalchemy import delete as sa_delete
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm import Session, selectinload

from crictl.errors import AlreadyExists, NotFound
from crictl.store import readmodel
from crictl.store.common import id_prefix, is_id_text, resolve_id, with_labels
from crictl.store.events import now_ns, record_event
from crictl.store.models import (
    Container,
    ContainerDesired,
    ContainerLabel,
    ContainerPhase,
    LabelKind,
)
from crictl.store.readmodel import ContainerView, Snapshot, gone
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


def create_container(session: Session, new: NewContainer) -> tuple[Container, bool]:
    """Inserts the container unless the sandbox has one with the same name and attempt: the
    same config is a retry (the earlier row comes back), another is AlreadyExists."""
    now = now_ns()
    result = session.execute(
        insert(Container)
        .values(
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
            desired=ContainerDesired.CREATED,
            phase=ContainerPhase.PENDING,
            reason="",
            message="",
            generation=1,
            observed_generation=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["sandbox_id", "name", "attempt"])
    )
    created = cast("CursorResult[Any]", result).rowcount == 1
    if created:
        session.add_all(
            ContainerLabel(container_id=new.id, kind=kind, key=k, value=v)
            for kind, items in (
                (LabelKind.LABEL, new.labels),
                (LabelKind.ANNOTATION, new.annotations),
            )
            for k, v in items.items()
        )
        record_event(session, "container", new.id, "created", to_phase=ContainerPhase.PENDING)
    row = session.scalars(
        select(Container).where(
            Container.sandbox_id == new.sandbox_id,
            Container.name == new.name,
            Container.attempt == new.attempt,
        )
    ).one()
    if created:
        readmodel.created(session, "container", row, new.labels, new.annotations)
    if not created and row.config_digest != new.config_digest:
        raise AlreadyExists(
            f"container {new.name} (attempt {new.attempt}) already exists in pod sandbox "
            f"{new.sandbox_id} as {row.id} with a different config"
        )
    return row, created


def resolve_container_id(session: Session, id_or_prefix: str) -> str:
    return resolve_id(session, Container.id, id_or_prefix, "container")


def get_container(session: Session, id_or_prefix: str) -> Container:
    cid = resolve_container_id(session, id_or_prefix)
    return session.scalars(
        select(Container).options(selectinload(Container.labels)).where(Container.id == cid)
    ).one()


def load_container(session: Session, container_id: str) -> Container | None:
    return session.get(Container, container_id)


def _filtered(query: Any, flt: ContainerFilter | None, labels: bool) -> Any:
    """`query` (a select over container columns or rows) narrowed by `flt`."""
    if flt is None:
        return query
    if flt.id_prefix:
        query = query.where(id_prefix(Container.id, flt.id_prefix))
    if flt.sandbox_id:
        query = query.where(id_prefix(Container.sandbox_id, flt.sandbox_id))
    if flt.phases is not None:
        query = query.where(Container.phase.in_(flt.phases))
    if labels:
        query = with_labels(
            query, ContainerLabel.__table__, "container_id", Container.id, flt.labels
        )
    return query


def list_containers(session: Session, flt: ContainerFilter | None = None) -> list[Container]:
    query = select(Container).options(selectinload(Container.labels))
    return list(session.scalars(_filtered(query, flt, labels=True).order_by(Container.created_at)))


def container_labels(container: Container, kind: LabelKind) -> dict[str, str]:
    return {label.key: label.value for label in container.labels if label.kind == kind}


def _must(session: Session, container_id: str) -> Container:
    c = session.get(Container, container_id)
    if c is None:
        raise NotFound(f"container {container_id} not found")
    return c


_ORDER = [
    ContainerDesired.CREATED,
    ContainerDesired.RUNNING,
    ContainerDesired.EXITED,
    ContainerDesired.REMOVED,
]


def set_container_desired(
    session: Session, container_id: str, desired: ContainerDesired
) -> Container:
    """Records what CRI asked (never backwards: a stopped container is not started again)."""
    c = _must(session, container_id)
    if _ORDER.index(ContainerDesired(desired)) > _ORDER.index(ContainerDesired(c.desired)):
        record_event(
            session,
            "container",
            container_id,
            "desired",
            reason=str(desired),
            message=f"{c.desired} -> {desired}",
        )
        c.desired = desired
        c.generation += 1
        c.updated_at = now_ns()
    return c


def record_container_created(
    session: Session, container_id: str, uid: int, gid: int, groups: list[int]
) -> None:
    c = _must(session, container_id)
    c.uid, c.gid, c.supplemental_groups = uid, gid, json.dumps(groups)
    if c.phase == ContainerPhase.PENDING:
        switch_container_phase(session, c, ContainerPhase.CREATED, reason="Created")


def record_container_started(session: Session, container_id: str, pid: int) -> None:
    c = _must(session, container_id)
    c.task_pid = pid
    c.started_at = now_ns()
    switch_container_phase(
        session, c, ContainerPhase.RUNNING, reason="Started", message=f"pid {pid}"
    )


def record_container_exited(
    session: Session,
    container_id: str,
    exit_code: int,
    reason: str,
    message: str = "",
    finished_at: int | None = None,
) -> None:
    c = session.get(Container, container_id)
    if c is None or c.phase in (ContainerPhase.EXITED, ContainerPhase.REMOVING):
        return
    c.exit_code = exit_code
    c.finished_at = finished_at or now_ns()
    switch_container_phase(session, c, ContainerPhase.EXITED, reason, message)


def update_container_config(session: Session, container_id: str, config: str) -> None:
    """A new config after UpdateContainerResources; its digest (the container's identity
    for retried creates) stays that of the create request."""
    c = _must(session, container_id)
    c.config = config
    c.updated_at = now_ns()
    record_event(session, "container", container_id, "resources-updated")


def mark_container_observed(session: Session, container_id: str, generation: int) -> None:
    c = session.get(Container, container_id)
    if c is not None:
        c.observed_generation = max(c.observed_generation, generation)


def delete_container(session: Session, container_id: str, reason: str = "Removed") -> None:
    c = session.get(Container, container_id)
    if c is None:
        return
    session.execute(sa_delete(Container).where(Container.id == container_id))
    gone(session, "container", container_id)
    record_event(session, "container", container_id, "removed", from_phase=c.phase, reason=reason)


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
