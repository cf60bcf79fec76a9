"""The typed tables of crictld's desired and observed state.

These tables, and the views created by the migrations (`pods`, `containers`, `events`), are a
documented public interface (docs/schema.md): operators query them with `crictld sql`. Change them
only through an Alembic migration.

Times are integers, nanoseconds since the Unix epoch (CRI's unit); the views add readable UTC text.
Configs are stored as the protobuf JSON of the CRI request's config, so they are readable with
SQLite's json_extract() and round-trip exactly.

The tables are SQLAlchemy Core's: the daemon writes and reads them with Core statements and
SQL sent as is, and never imports the ORM. Tests and tools that want rows as objects import
`crictl.store.orm`, which maps classes onto these tables.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

# Named constraints, so SQLite batch migrations can find and recreate them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

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


def _required(name: str, *args: Any, **kw: Any) -> Column[Any]:
    return Column(name, *args, nullable=False, **kw)


def _optional(name: str, *args: Any, **kw: Any) -> Column[Any]:
    return Column(name, *args, nullable=True, **kw)


# One row per pod sandbox that CRI asked for and that is not yet removed.
pod_sandbox_table = Table(
    "pod_sandbox",
    metadata,
    _required("id", String(64), primary_key=True),
    _required("name", Text),
    _required("namespace", Text),
    _required("uid", Text),
    _required("attempt", Integer),
    _required("runtime_handler", Text, default=""),
    _required("config", Text),  # PodSandboxConfig as protobuf JSON
    _required("config_digest", String(64)),  # sha256 of the deterministic bytes
    _required("desired", String(16)),
    _required("phase", String(16)),
    _required("reason", Text, default=""),
    _required("message", Text, default=""),
    _required("generation", Integer, default=1),
    _required("observed_generation", Integer, default=0),
    _optional("netns_path", Text),
    _optional("cni_result", Text),  # the CNI ADD result, JSON
    # The network configuration (a conflist, JSON) the ADD ran with: CHECK and DEL use it.
    _optional("cni_config", Text),
    _optional("ip", Text),
    _required("additional_ips", Text, default="[]"),  # JSON list
    _optional("pause_container_id", String(64)),
    _optional("task_pid", Integer),
    # Set once CNI DEL succeeded and the netns is gone: Remove after Stop needs no second DEL.
    _required("network_released", Boolean, default=False, server_default=false()),
    # The OCI spec (JSON) crictld gave containerd's record of the pause container; NULL when
    # containerd's record is the one to read (see crictl/store/specs.py). No view holds it.
    _optional("runtime_spec", Text),
    _required("created_at", Integer),
    _optional("started_at", Integer),
    _optional("finished_at", Integer),
    _required("updated_at", Integer),
    UniqueConstraint("name", "namespace", "uid", "attempt"),
    CheckConstraint(_one_of("desired", SandboxDesired), name="desired"),
    CheckConstraint(_one_of("phase", SandboxPhase), name="phase"),
)

# Labels and annotations of a sandbox, one row each, so selectors are plain SQL.
pod_sandbox_label_table = Table(
    "pod_sandbox_label",
    metadata,
    _required(
        "sandbox_id", String(64), ForeignKey("pod_sandbox.id", ondelete="CASCADE"), primary_key=True
    ),
    _required("kind", String(16), primary_key=True),
    _required("key", Text, primary_key=True),
    _required("value", Text),
    CheckConstraint(_one_of("kind", LabelKind), name="kind"),
    Index("ix_pod_sandbox_label_kind_key_value", "kind", "key", "value"),
)

# One row per container that CRI asked for and that is not yet removed.
container_table = Table(
    "container",
    metadata,
    _required("id", String(64), primary_key=True),
    _required("sandbox_id", String(64), ForeignKey("pod_sandbox.id"), index=True),
    _required("name", Text),
    _required("attempt", Integer),
    _required("config", Text),  # ContainerConfig as protobuf JSON
    _required("config_digest", String(64)),
    _required("image", Text),  # the image as the config names it
    _optional("image_ref", Text),  # resolved: repo@sha256:...
    _optional("image_id", Text),  # the image config digest
    _optional("log_path", Text),  # absolute
    _required("desired", String(16)),
    _required("phase", String(16)),
    _required("reason", Text, default=""),
    _required("message", Text, default=""),
    _optional("exit_code", Integer),
    _required("generation", Integer, default=1),
    _required("observed_generation", Integer, default=0),
    _optional("task_pid", Integer),
    # The user the process runs as, resolved at create (image USER, /etc/passwd, security
    # context): what ContainerStatus reports.
    _optional("uid", Integer),
    _optional("gid", Integer),
    _required("supplemental_groups", Text, default="[]", server_default="[]"),  # JSON list
    # The OCI spec (JSON) crictld gave containerd's record (at create, on a resources
    # update); NULL when containerd's record is the one to read (crictl/store/specs.py).
    _optional("runtime_spec", Text),
    _required("created_at", Integer),
    _optional("started_at", Integer),
    _optional("finished_at", Integer),
    _required("updated_at", Integer),
    UniqueConstraint("sandbox_id", "name", "attempt"),
    CheckConstraint(_one_of("desired", ContainerDesired), name="desired"),
    CheckConstraint(_one_of("phase", ContainerPhase), name="phase"),
)

container_label_table = Table(
    "container_label",
    metadata,
    _required(
        "container_id", String(64), ForeignKey("container.id", ondelete="CASCADE"), primary_key=True
    ),
    _required("kind", String(16), primary_key=True),
    _required("key", Text, primary_key=True),
    _required("value", Text),
    CheckConstraint(_one_of("kind", LabelKind), name="kind"),
    Index("ix_container_label_kind_key_value", "kind", "key", "value"),
)

# An image in containerd's image store (which stays authoritative): a cache, refreshed from
# containerd at start and from its image events, so that ImageStatus and ListImages are SQL
# reads and operators can query images like everything else.
image_table = Table(
    "image",
    metadata,
    _required("id", Text, primary_key=True),  # config digest, sha256:...
    _required("size", Integer),
    _optional("uid", Integer),  # from the config's numeric USER
    _required("username", Text, default=""),  # from a named USER
    _required("config", Text),  # the image config JSON (OCI image spec)
    _required("manifest_digest", Text),  # the platform's manifest
    _optional("chain_id", Text),  # top snapshot (NULL: no layers)
    _required("updated_at", Integer),
)

# One image record name in containerd: a tag (repo:tag) or a digest (repo@sha256:...).
image_name_table = Table(
    "image_name",
    metadata,
    _required("name", Text, primary_key=True),
    _required("image_id", Text, ForeignKey("image.id", ondelete="CASCADE"), index=True),
    _required("kind", String(8)),
    _required("target_digest", Text),  # what the name points at in containerd
    _required("target_media_type", Text),
    _required("updated_at", Integer),
    CheckConstraint("kind IN ('tag', 'digest')", name="kind"),
)

# Append-only log of every transition and every cleanup: "why did this pod die?" in SQL.
# Rows outlive the objects they name (removed sandboxes and containers keep their history).
event_table = Table(
    "event",
    metadata,
    _required("id", Integer, primary_key=True, autoincrement=True),
    _required("at", Integer, index=True),
    _required("object_kind", String(16)),  # sandbox | container | daemon | gc ...
    _required("object_id", Text),
    _required("action", Text),  # transition | created | removed | cleanup | ...
    _optional("from_phase", String(16)),
    _optional("to_phase", String(16)),
    _required("reason", Text, default=""),
    _required("message", Text, default=""),
    Index("ix_event_object", "object_kind", "object_id"),
)
