"""Typed queries on pod sandboxes. The caller owns the session and so the transaction."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, exists, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm import Session, selectinload

from crictl.errors import AlreadyExists, InvalidArgument, NotFound
from crictl.store.events import now_ns, record_event
from crictl.store.models import (
    LabelKind,
    PodSandbox,
    PodSandboxLabel,
    SandboxDesired,
    SandboxPhase,
)

_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class NewSandbox:
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    config: str
    config_digest: str
    runtime_handler: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxFilter:
    id_prefix: str | None = None
    phases: frozenset[str] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def create_sandbox(session: Session, new: NewSandbox) -> tuple[PodSandbox, bool]:
    """Inserts the sandbox unless one with the same CRI metadata exists.

    Returns (row, created). The same metadata with the same config is the retry of an earlier
    request and yields the earlier row; with another config it is AlreadyExists.
    """
    now = now_ns()
    result = session.execute(
        insert(PodSandbox)
        .values(
            id=new.id,
            name=new.name,
            namespace=new.namespace,
            uid=new.uid,
            attempt=new.attempt,
            runtime_handler=new.runtime_handler,
            config=new.config,
            config_digest=new.config_digest,
            desired=SandboxDesired.READY,
            phase=SandboxPhase.PENDING,
            reason="",
            message="",
            generation=1,
            observed_generation=0,
            additional_ips="[]",
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["name", "namespace", "uid", "attempt"])
    )
    created = cast("CursorResult[Any]", result).rowcount == 1
    if created:
        session.add_all(_label_rows(new))
        record_event(session, "sandbox", new.id, "created", to_phase=SandboxPhase.PENDING)
    row = session.scalars(
        select(PodSandbox).where(
            PodSandbox.name == new.name,
            PodSandbox.namespace == new.namespace,
            PodSandbox.uid == new.uid,
            PodSandbox.attempt == new.attempt,
        )
    ).one()
    if not created and row.config_digest != new.config_digest:
        raise AlreadyExists(
            f"pod sandbox {new.namespace}/{new.name} (uid {new.uid}, attempt {new.attempt}) "
            f"already exists as {row.id} with a different config"
        )
    return row, created


def _label_rows(new: NewSandbox) -> list[PodSandboxLabel]:
    return [
        PodSandboxLabel(sandbox_id=new.id, kind=kind, key=k, value=v)
        for kind, items in ((LabelKind.LABEL, new.labels), (LabelKind.ANNOTATION, new.annotations))
        for k, v in items.items()
    ]


def resolve_sandbox_id(session: Session, id_or_prefix: str) -> str:
    """The full id of the one sandbox whose id starts with `id_or_prefix`."""
    if not id_or_prefix:
        raise InvalidArgument("pod sandbox id is empty")
    if not _HEX.match(id_or_prefix):
        raise NotFound(f"pod sandbox {id_or_prefix!r} not found")
    ids = list(
        session.scalars(
            select(PodSandbox.id).where(PodSandbox.id.startswith(id_or_prefix)).limit(2)
        )
    )
    if not ids:
        raise NotFound(f"pod sandbox {id_or_prefix!r} not found")
    if len(ids) > 1:
        raise InvalidArgument(f"pod sandbox id prefix {id_or_prefix!r} is ambiguous")
    return ids[0]


def get_sandbox(session: Session, id_or_prefix: str) -> PodSandbox:
    sandbox_id = resolve_sandbox_id(session, id_or_prefix)
    return session.scalars(
        select(PodSandbox)
        .options(selectinload(PodSandbox.labels))
        .where(PodSandbox.id == sandbox_id)
    ).one()


def list_sandboxes(session: Session, flt: SandboxFilter | None = None) -> list[PodSandbox]:
    query = select(PodSandbox).options(selectinload(PodSandbox.labels))
    if flt is not None:
        if flt.id_prefix:
            query = query.where(PodSandbox.id.startswith(flt.id_prefix))
        if flt.phases is not None:
            query = query.where(PodSandbox.phase.in_(flt.phases))
        for key, value in flt.labels.items():
            query = query.where(
                exists().where(
                    PodSandboxLabel.sandbox_id == PodSandbox.id,
                    PodSandboxLabel.kind == LabelKind.LABEL,
                    PodSandboxLabel.key == key,
                    PodSandboxLabel.value == value,
                )
            )
    return list(session.scalars(query.order_by(PodSandbox.created_at)))


def labels_of(sandbox: PodSandbox, kind: LabelKind) -> dict[str, str]:
    return {label.key: label.value for label in sandbox.labels if label.kind == kind}
