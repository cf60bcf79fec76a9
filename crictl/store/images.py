"""Typed queries on the image cache (containerd's image store stays authoritative)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm import Session, selectinload

from crictl.store.events import now_ns, record_event
from crictl.store.models import Image, ImageName


@dataclass(frozen=True)
class ImageRecord:
    id: str
    size: int
    uid: int | None
    username: str
    config: str
    manifest_digest: str
    chain_id: str | None


@dataclass(frozen=True)
class NameRecord:
    name: str
    kind: str  # "tag" | "digest"
    target_digest: str
    target_media_type: str


def put_image(session: Session, image: ImageRecord, names: Sequence[NameRecord]) -> None:
    """Upserts the image and points each name at it (a moved tag leaves its old image, which
    is dropped once no name points at it)."""
    now = now_ns()
    values = {
        "id": image.id,
        "size": image.size,
        "uid": image.uid,
        "username": image.username,
        "config": image.config,
        "manifest_digest": image.manifest_digest,
        "chain_id": image.chain_id,
        "updated_at": now,
    }
    session.execute(
        insert(Image).values(values).on_conflict_do_update(index_elements=["id"], set_=values)
    )
    for n in names:
        row = {
            "name": n.name,
            "image_id": image.id,
            "kind": n.kind,
            "target_digest": n.target_digest,
            "target_media_type": n.target_media_type,
            "updated_at": now,
        }
        session.execute(
            insert(ImageName).values(row).on_conflict_do_update(index_elements=["name"], set_=row)
        )
    drop_unnamed_images(session)


def delete_image_names(session: Session, names: Iterable[str]) -> None:
    names = list(names)
    if names:
        session.execute(delete(ImageName).where(ImageName.name.in_(names)))
        drop_unnamed_images(session)


def replace_all_images(
    session: Session, entries: Sequence[tuple[ImageRecord, Sequence[NameRecord]]]
) -> None:
    """Makes the cache exactly `entries` (a full resync from containerd)."""
    keep = {n.name for _, names in entries for n in names}
    stale = [n for n in session.scalars(select(ImageName.name)) if n not in keep]
    if stale:
        session.execute(delete(ImageName).where(ImageName.name.in_(stale)))
    for image, names in entries:
        put_image(session, image, names)
    drop_unnamed_images(session)


def drop_unnamed_images(session: Session) -> None:
    gone = list(session.scalars(select(Image.id).where(~Image.names.any())))
    if gone:
        session.execute(delete(Image).where(Image.id.in_(gone)))
        for image_id in gone:
            record_event(session, "image", image_id, "removed")


def list_images(session: Session) -> list[Image]:
    return list(
        session.scalars(select(Image).options(selectinload(Image.names)).order_by(Image.id))
    )


def tags_of(image: Image) -> list[str]:
    return sorted(n.name for n in image.names if n.kind == "tag")


def digests_of(image: Image) -> list[str]:
    return sorted(n.name for n in image.names if n.kind == "digest")
