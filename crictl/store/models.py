"""The typed tables of crictld's desired and observed state.

These tables, and the views created by the migrations (`pods`, `containers`, `events`), are a
documented public interface (docs/schema.md): operators query them with `crictld sql`. Change them
only through an Alembic migration.

Times are integers, nanoseconds since the Unix epoch (CRI's unit); the views add readable UTC text.
Configs are stored as the protobuf JSON of the CRI request's config, so they are readable with
SQLite's json_extract() and round-trip exactly.
"""

from __future__ import annotations

import enum

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints, so SQLite batch migrations can find and recreate them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SandboxDesired(enum.StrEnum):
    READY = "READY"
    NOTREADY = "NOTREADY"
    REMOVED = "REMOVED"


class SandboxPhase(enum.StrEnum):
    PENDING = "PENDING"
    READY = "READY"
    NOTREADY = "NOTREADY"
    REMOVING = "REMOVING"


class ContainerDesired(enum.StrEnum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    REMOVED = "REMOVED"


class ContainerPhase(enum.StrEnum):
    PENDING = "PENDING"
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    UNKNOWN = "UNKNOWN"
    REMOVING = "REMOVING"


class LabelKind(enum.StrEnum):
    LABEL = "label"
    ANNOTATION = "annotation"


def _one_of(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class PodSandbox(Base):
    """One row per pod sandbox that CRI asked for and that is not yet removed."""

    __tablename__ = "pod_sandbox"
    __table_args__ = (
        UniqueConstraint("name", "namespace", "uid", "attempt"),
        CheckConstraint(_one_of("desired", SandboxDesired), name="desired"),
        CheckConstraint(_one_of("phase", SandboxPhase), name="phase"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    namespace: Mapped[str] = mapped_column(Text)
    uid: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    runtime_handler: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[str] = mapped_column(Text)  # PodSandboxConfig as protobuf JSON
    config_digest: Mapped[str] = mapped_column(String(64))  # sha256 of the deterministic bytes

    desired: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[str] = mapped_column(Text, default="")
    generation: Mapped[int] = mapped_column(Integer, default=1)
    observed_generation: Mapped[int] = mapped_column(Integer, default=0)

    netns_path: Mapped[str | None] = mapped_column(Text)
    cni_result: Mapped[str | None] = mapped_column(Text)  # the CNI ADD result, JSON
    # The network configuration (a conflist, JSON) the ADD ran with: CHECK and DEL use it.
    cni_config: Mapped[str | None] = mapped_column(Text)
    ip: Mapped[str | None] = mapped_column(Text)
    additional_ips: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    pause_container_id: Mapped[str | None] = mapped_column(String(64))
    task_pid: Mapped[int | None] = mapped_column(Integer)
    # Set once CNI DEL succeeded and the netns is gone: Remove after Stop needs no second DEL.
    network_released: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The OCI spec (JSON) crictld gave containerd's record of the pause container; NULL when
    # containerd's record is the one to read (see crictl/store/specs.py). Deferred: the ORM
    # never loads it with the row.
    runtime_spec: Mapped[str | None] = mapped_column(Text, deferred=True)

    created_at: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[int | None] = mapped_column(Integer)
    finished_at: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(Integer)

    labels: Mapped[list[PodSandboxLabel]] = relationship(
        back_populates="sandbox", cascade="all, delete-orphan", lazy="raise"
    )
    containers: Mapped[list[Container]] = relationship(back_populates="sandbox", lazy="raise")


class PodSandboxLabel(Base):
    """Labels and annotations of a sandbox, one row each, so selectors are plain SQL."""

    __tablename__ = "pod_sandbox_label"
    __table_args__ = (
        CheckConstraint(_one_of("kind", LabelKind), name="kind"),
        Index("ix_pod_sandbox_label_kind_key_value", "kind", "key", "value"),
    )

    sandbox_id: Mapped[str] = mapped_column(
        ForeignKey("pod_sandbox.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text)

    sandbox: Mapped[PodSandbox] = relationship(back_populates="labels", lazy="raise")


class Container(Base):
    """One row per container that CRI asked for and that is not yet removed."""

    __tablename__ = "container"
    __table_args__ = (
        UniqueConstraint("sandbox_id", "name", "attempt"),
        CheckConstraint(_one_of("desired", ContainerDesired), name="desired"),
        CheckConstraint(_one_of("phase", ContainerPhase), name="phase"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sandbox_id: Mapped[str] = mapped_column(ForeignKey("pod_sandbox.id"), index=True)
    name: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    config: Mapped[str] = mapped_column(Text)  # ContainerConfig as protobuf JSON
    config_digest: Mapped[str] = mapped_column(String(64))

    image: Mapped[str] = mapped_column(Text)  # the image as the config names it
    image_ref: Mapped[str | None] = mapped_column(Text)  # resolved: repo@sha256:...
    image_id: Mapped[str | None] = mapped_column(Text)  # the image config digest
    log_path: Mapped[str | None] = mapped_column(Text)  # absolute

    desired: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    observed_generation: Mapped[int] = mapped_column(Integer, default=0)

    task_pid: Mapped[int | None] = mapped_column(Integer)
    # The user the process runs as, resolved at create (image USER, /etc/passwd, security
    # context): what ContainerStatus reports.
    uid: Mapped[int | None] = mapped_column(Integer)
    gid: Mapped[int | None] = mapped_column(Integer)
    supplemental_groups: Mapped[str] = mapped_column(
        Text, default="[]", server_default="[]"
    )  # JSON list
    # The OCI spec (JSON) crictld gave containerd's record (at create, on a resources
    # update); NULL when containerd's record is the one to read (crictl/store/specs.py).
    runtime_spec: Mapped[str | None] = mapped_column(Text, deferred=True)
    created_at: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[int | None] = mapped_column(Integer)
    finished_at: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(Integer)

    sandbox: Mapped[PodSandbox] = relationship(back_populates="containers", lazy="raise")
    labels: Mapped[list[ContainerLabel]] = relationship(
        back_populates="container", cascade="all, delete-orphan", lazy="raise"
    )


class ContainerLabel(Base):
    __tablename__ = "container_label"
    __table_args__ = (
        CheckConstraint(_one_of("kind", LabelKind), name="kind"),
        Index("ix_container_label_kind_key_value", "kind", "key", "value"),
    )

    container_id: Mapped[str] = mapped_column(
        ForeignKey("container.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text)

    container: Mapped[Container] = relationship(back_populates="labels", lazy="raise")


class Image(Base):
    """An image in containerd's image store (which stays authoritative): a cache, refreshed from
    containerd at start and from its image events, so that ImageStatus and ListImages are SQL
    reads and operators can query images like everything else."""

    __tablename__ = "image"

    id: Mapped[str] = mapped_column(Text, primary_key=True)  # config digest, sha256:...
    size: Mapped[int] = mapped_column(Integer)
    uid: Mapped[int | None] = mapped_column(Integer)  # from the config's numeric USER
    username: Mapped[str] = mapped_column(Text, default="")  # from a named USER
    config: Mapped[str] = mapped_column(Text)  # the image config JSON (OCI image spec)
    manifest_digest: Mapped[str] = mapped_column(Text)  # the platform's manifest
    chain_id: Mapped[str | None] = mapped_column(Text)  # top snapshot (NULL: no layers)
    updated_at: Mapped[int] = mapped_column(Integer)

    names: Mapped[list[ImageName]] = relationship(
        back_populates="image", cascade="all, delete-orphan", lazy="raise"
    )


class ImageName(Base):
    """One image record name in containerd: a tag (repo:tag) or a digest (repo@sha256:...)."""

    __tablename__ = "image_name"
    __table_args__ = (CheckConstraint("kind IN ('tag', 'digest')", name="kind"),)

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    target_digest: Mapped[str] = mapped_column(Text)  # what the name points at in containerd
    target_media_type: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[int] = mapped_column(Integer)

    image: Mapped[Image] = relationship(back_populates="names", lazy="raise")


class Event(Base):
    """Append-only log of every transition and every cleanup: "why did this pod die?" in SQL.

    Rows outlive the objects they name (removed sandboxes and containers keep their history).
    """

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_object", "object_kind", "object_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(Integer, index=True)
    object_kind: Mapped[str] = mapped_column(String(16))  # sandbox | container | daemon | gc ...
    object_id: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)  # transition | created | removed | cleanup | ...
    from_phase: Mapped[str | None] = mapped_column(String(16))
    to_phase: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    message: Mapped[str] = mapped_column(Text, default="")
