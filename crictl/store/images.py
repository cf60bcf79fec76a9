"""Typed queries on the image cache (containerd's image store stays authoritative)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm import Session

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


@dataclass(frozen=True)
class ImageRow:
    """One cached image and every name pointing at it, as read from the rows."""

    image: ImageRecord
    names: tuple[NameRecord, ...]

    @property
    def tags(self) -> list[str]:
        return sorted(n.name for n in self.names if n.kind == "tag")

    @property
    def digests(self) -> list[str]:
        return sorted(n.name for n in self.names if n.kind == "digest")


def put_image(session: Session, image: ImageRecord, names: Sequence[NameRecord]) -> set[str]:
    """Upserts the image and points each name at it (a moved tag leaves its old image, which
    is dropped once no name points at it). Returns the ids of the images this changed."""
    now = now_ns()
    touched = {image.id, *_images_named(session, [n.name for n in names])}
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
    return touched | drop_unnamed_images(session)


def delete_image_names(session: Session, names: Iterable[str]) -> set[str]:
    """Returns the ids of the images that lost a name (and of any image left unnamed)."""
    names = list(names)
    if not names:
        return set()
    touched = set(
        session.scalars(
            delete(ImageName).where(ImageName.name.in_(names)).returning(ImageName.image_id)
        )
    )
    return touched | drop_unnamed_images(session)


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


def drop_unnamed_images(session: Session) -> set[str]:
    gone = list(session.scalars(select(Image.id).where(~Image.names.any())))
    if gone:
        session.execute(delete(Image).where(Image.id.in_(gone)))
        for image_id in gone:
            record_event(session, "image", image_id, "removed")
    return set(gone)


def _images_named(session: Session, names: Sequence[str]) -> list[str]:
    if not names:
        return []
    return list(session.scalars(select(ImageName.image_id).where(ImageName.name.in_(names))))


def image_rows(session: Session, ids: Collection[str] | None = None) -> list[ImageRow]:
    """The images with `ids` (all when None) and their names, by id; an id with no row is
    left out. Core selects: the cache is read back after each of its writes."""
    images = select(
        Image.id,
        Image.size,
        Image.uid,
        Image.username,
        Image.config,
        Image.manifest_digest,
        Image.chain_id,
    ).order_by(Image.id)
    names = select(
        ImageName.image_id,
        ImageName.name,
        ImageName.kind,
        ImageName.target_digest,
        ImageName.target_media_type,
    ).order_by(ImageName.name)
    if ids is not None:
        if not ids:
            return []
        images = images.where(Image.id.in_(ids))
        names = names.where(ImageName.image_id.in_(ids))
    by_image: dict[str, list[NameRecord]] = {}
    for image_id, *fields in session.execute(names):
        by_image.setdefault(image_id, []).append(NameRecord(*fields))
    return [
        ImageRow(ImageRecord(*fields), tuple(by_image.get(fields[0], ())))
        for fields in session.execute(images)
    ]
