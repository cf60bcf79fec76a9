"""Rows as objects: ORM classes mapped onto the store's tables (`crictl/store/models.py`), for
tests and tools.

The daemon never imports this module, nor SQLAlchemy's ORM (6.1-6.7 MiB of its memory and
~60 ms of its start, measured: docs/performance.md "Memory"): it writes with SQL sent as is
and Core statements and reads rows as tuples into the read model's views. A transaction makes
an ORM session only when something asks it for one (`Tx.orm`); the store flushes it before the
commit, and the read model takes what it flushed (`readmodel.track`).
"""

from __future__ import annotations

import functools

from sqlalchemy import event, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    column_property,
    relationship,
    selectinload,
    sessionmaker,
)

from crictl.store import readmodel
from crictl.store.common import Tx, id_prefix, with_labels
from crictl.store.containers import ContainerFilter
from crictl.store.models import (
    LabelKind,
    container_label_table,
    container_table,
    event_table,
    image_name_table,
    image_table,
    metadata,
    pod_sandbox_label_table,
    pod_sandbox_table,
)
from crictl.store.sandboxes import SandboxFilter, resolve_sandbox_id


class Base(DeclarativeBase):
    metadata = metadata


class PodSandbox(Base):
    """A row of `pod_sandbox`."""

    __table__ = pod_sandbox_table

    id: Mapped[str]
    name: Mapped[str]
    namespace: Mapped[str]
    uid: Mapped[str]
    attempt: Mapped[int]
    runtime_handler: Mapped[str]
    config: Mapped[str]
    config_digest: Mapped[str]
    desired: Mapped[str]
    phase: Mapped[str]
    reason: Mapped[str]
    message: Mapped[str]
    generation: Mapped[int]
    observed_generation: Mapped[int]
    netns_path: Mapped[str | None]
    cni_result: Mapped[str | None]
    cni_config: Mapped[str | None]
    ip: Mapped[str | None]
    additional_ips: Mapped[str]
    pause_container_id: Mapped[str | None]
    task_pid: Mapped[int | None]
    network_released: Mapped[bool]
    # never loaded with the row (specs are read alone: crictl/store/specs.py)
    runtime_spec: Mapped[str | None] = column_property(
        pod_sandbox_table.c.runtime_spec, deferred=True
    )
    created_at: Mapped[int]
    started_at: Mapped[int | None]
    finished_at: Mapped[int | None]
    updated_at: Mapped[int]

    labels: Mapped[list[PodSandboxLabel]] = relationship(
        back_populates="sandbox", cascade="all, delete-orphan", lazy="raise"
    )
    containers: Mapped[list[Container]] = relationship(back_populates="sandbox", lazy="raise")


class PodSandboxLabel(Base):
    """A row of `pod_sandbox_label`: one label or annotation of a sandbox."""

    __table__ = pod_sandbox_label_table

    sandbox_id: Mapped[str]
    kind: Mapped[str]
    key: Mapped[str]
    value: Mapped[str]

    sandbox: Mapped[PodSandbox] = relationship(back_populates="labels", lazy="raise")


class Container(Base):
    """A row of `container`."""

    __table__ = container_table

    id: Mapped[str]
    sandbox_id: Mapped[str]
    name: Mapped[str]
    attempt: Mapped[int]
    config: Mapped[str]
    config_digest: Mapped[str]
    image: Mapped[str]
    image_ref: Mapped[str | None]
    image_id: Mapped[str | None]
    log_path: Mapped[str | None]
    desired: Mapped[str]
    phase: Mapped[str]
    reason: Mapped[str]
    message: Mapped[str]
    exit_code: Mapped[int | None]
    generation: Mapped[int]
    observed_generation: Mapped[int]
    task_pid: Mapped[int | None]
    uid: Mapped[int | None]
    gid: Mapped[int | None]
    supplemental_groups: Mapped[str]
    runtime_spec: Mapped[str | None] = column_property(
        container_table.c.runtime_spec, deferred=True
    )
    created_at: Mapped[int]
    started_at: Mapped[int | None]
    finished_at: Mapped[int | None]
    updated_at: Mapped[int]

    sandbox: Mapped[PodSandbox] = relationship(back_populates="containers", lazy="raise")
    labels: Mapped[list[ContainerLabel]] = relationship(
        back_populates="container", cascade="all, delete-orphan", lazy="raise"
    )


class ContainerLabel(Base):
    """A row of `container_label`: one label or annotation of a container."""

    __table__ = container_label_table

    container_id: Mapped[str]
    kind: Mapped[str]
    key: Mapped[str]
    value: Mapped[str]

    container: Mapped[Container] = relationship(back_populates="labels", lazy="raise")


class Image(Base):
    """A row of `image`."""

    __table__ = image_table

    id: Mapped[str]
    size: Mapped[int]
    uid: Mapped[int | None]
    username: Mapped[str]
    config: Mapped[str]
    manifest_digest: Mapped[str]
    chain_id: Mapped[str | None]
    updated_at: Mapped[int]

    names: Mapped[list[ImageName]] = relationship(
        back_populates="image", cascade="all, delete-orphan", lazy="raise"
    )


class ImageName(Base):
    """A row of `image_name`."""

    __table__ = image_name_table

    name: Mapped[str]
    image_id: Mapped[str]
    kind: Mapped[str]
    target_digest: Mapped[str]
    target_media_type: Mapped[str]
    updated_at: Mapped[int]

    image: Mapped[Image] = relationship(back_populates="names", lazy="raise")


class Event(Base):
    """A row of `event`."""

    __table__ = event_table

    id: Mapped[int]
    at: Mapped[int]
    object_kind: Mapped[str]
    object_id: Mapped[str]
    action: Mapped[str]
    from_phase: Mapped[str | None]
    to_phase: Mapped[str | None]
    reason: Mapped[str]
    message: Mapped[str]


@functools.cache
def sessions() -> sessionmaker[Session]:
    """The store's sessions (bound when made): their flushes are what the read model takes
    from them (`readmodel.track`) when the store commits."""
    factory = sessionmaker(expire_on_commit=False)
    event.listen(factory, "after_flush", readmodel.track)
    return factory


# ------------------------------------------------------------------------------------------
# Rows as objects, for tests and tools (the daemon reads the read model's views)


def get_sandbox(tx: Tx, id_or_prefix: str) -> PodSandbox:
    sandbox_id = resolve_sandbox_id(tx, id_or_prefix)
    return tx.orm.scalars(
        select(PodSandbox)
        .options(selectinload(PodSandbox.labels))
        .where(PodSandbox.id == sandbox_id)
    ).one()


def list_sandboxes(tx: Tx, flt: SandboxFilter | None = None) -> list[PodSandbox]:
    query = select(PodSandbox).options(selectinload(PodSandbox.labels))
    if flt is not None:
        if flt.id_prefix:
            query = query.where(id_prefix(PodSandbox.id, flt.id_prefix))
        if flt.phases is not None:
            query = query.where(PodSandbox.phase.in_(flt.phases))
        query = with_labels(
            query, pod_sandbox_label_table, "sandbox_id", pod_sandbox_table.c.id, flt.labels
        )
    return list(tx.orm.scalars(query.order_by(PodSandbox.created_at)))


def labels_of(sandbox: PodSandbox, kind: LabelKind) -> dict[str, str]:
    return {label.key: label.value for label in sandbox.labels if label.kind == kind}


def list_containers(tx: Tx, flt: ContainerFilter | None = None) -> list[Container]:
    query = select(Container).options(selectinload(Container.labels))
    if flt is not None:
        if flt.id_prefix:
            query = query.where(id_prefix(Container.id, flt.id_prefix))
        if flt.sandbox_id:
            query = query.where(id_prefix(Container.sandbox_id, flt.sandbox_id))
        if flt.phases is not None:
            query = query.where(Container.phase.in_(flt.phases))
        query = with_labels(
            query, container_label_table, "container_id", container_table.c.id, flt.labels
        )
    return list(tx.orm.scalars(query.order_by(Container.created_at)))
