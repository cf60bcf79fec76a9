"""Typed queries on the image cache (containerd's image store stays authoritative)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select

from crictl.store.common import Tx
from crictl.store.events import now_ns, record_event
from crictl.store.models import image_name_table


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


def tag_digest(name: NameRecord) -> str | None:
    """The repository digest a tag stands for, `repository@<its target>`; None for a digest
    record or a name with no tag (`host:port/repo`). A pull by tag makes no digest record
    (one record per image, so RemoveImage deletes one): the `images` view (revision 0007)
    derives the same names in SQL."""
    repository, colon, tag = name.name.rpartition(":")
    if name.kind != "tag" or not colon or not repository or "/" in tag:
        return None
    return f"{repository}@{name.target_digest}"


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
        """Its repository digests: its digest records, and the one each tag stands for."""
        found = {n.name for n in self.names if n.kind == "digest"}
        found.update(d for d in map(tag_digest, self.names) if d is not None)
        return sorted(found)

    @property
    def derived_digests(self) -> set[str]:
        """The repository digests its tags stand for that no record of its own holds."""
        records = {n.name for n in self.names}
        return {d for d in map(tag_digest, self.names) if d is not None and d not in records}


# The cache is written after every pull, removal and image event: each statement goes to the
# driver as is (SQLAlchemy's Core costs ~0.15 ms a statement in Python; the driver ~0.015).
_IMAGE_COLUMNS = ("id", "size", "uid", "username", "config", "manifest_digest", "chain_id")
_NAME_COLUMNS = ("name", "kind", "target_digest", "target_media_type")
_PUT_IMAGE = (
    f"INSERT INTO image ({', '.join(_IMAGE_COLUMNS)}, updated_at) "
    f"VALUES ({', '.join('?' * (len(_IMAGE_COLUMNS) + 1))}) ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*_IMAGE_COLUMNS[1:], "updated_at"))
)
_PUT_NAME = (
    f"INSERT INTO image_name ({', '.join(_NAME_COLUMNS)}, image_id, updated_at) "
    f"VALUES ({', '.join('?' * (len(_NAME_COLUMNS) + 2))}) ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*_NAME_COLUMNS[1:], "image_id", "updated_at"))
)
_UNNAMED = (
    "SELECT id FROM image WHERE NOT EXISTS (SELECT 1 FROM image_name WHERE image_id = image.id)"
)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def put_image(tx: Tx, image: ImageRecord, names: Sequence[NameRecord]) -> set[str]:
    """Upserts the image and points each name at it (a moved tag leaves its old image, which
    is dropped once no name points at it). Returns the ids of the images this changed."""
    conn = tx.connection
    now = now_ns()
    touched = {image.id}
    if names:
        touched.update(
            r[0]
            for r in conn.exec_driver_sql(
                f"SELECT image_id FROM image_name WHERE name IN ({_marks(len(names))})",
                tuple(n.name for n in names),
            )
        )
    conn.exec_driver_sql(_PUT_IMAGE, (*(getattr(image, c) for c in _IMAGE_COLUMNS), now))
    for n in names:
        conn.exec_driver_sql(_PUT_NAME, (*(getattr(n, c) for c in _NAME_COLUMNS), image.id, now))
    return touched | drop_unnamed_images(tx)


def delete_image_names(tx: Tx, names: Iterable[str]) -> set[str]:
    """Returns the ids of the images that lost a name (and of any image left unnamed)."""
    names = list(names)
    if not names:
        return set()
    touched = {
        r[0]
        for r in tx.connection.exec_driver_sql(
            f"DELETE FROM image_name WHERE name IN ({_marks(len(names))}) RETURNING image_id",
            tuple(names),
        )
    }
    return touched | drop_unnamed_images(tx)


def replace_all_images(tx: Tx, entries: Sequence[tuple[ImageRecord, Sequence[NameRecord]]]) -> None:
    """Makes the cache exactly `entries` (a full resync from containerd)."""
    keep = {n.name for _, names in entries for n in names}
    stale = [n for n in tx.connection.scalars(select(image_name_table.c.name)) if n not in keep]
    if stale:
        tx.connection.execute(delete(image_name_table).where(image_name_table.c.name.in_(stale)))
    for image, names in entries:
        put_image(tx, image, names)
    drop_unnamed_images(tx)


def drop_unnamed_images(tx: Tx) -> set[str]:
    conn = tx.connection
    gone = [r[0] for r in conn.exec_driver_sql(_UNNAMED)]
    if gone:
        conn.exec_driver_sql(f"DELETE FROM image WHERE id IN ({_marks(len(gone))})", tuple(gone))
        for image_id in gone:
            record_event(tx, "image", image_id, "removed")
    return set(gone)


def image_rows(tx: Tx, ids: Collection[str] | None = None) -> list[ImageRow]:
    """The images with `ids` (all when None) and their names, by id; an id with no row is
    left out. The cache is read back after each of its writes."""
    images = f"SELECT {', '.join(_IMAGE_COLUMNS)} FROM image"
    names = f"SELECT image_id, {', '.join(_NAME_COLUMNS)} FROM image_name"
    params: tuple[str, ...] = ()
    if ids is not None:
        if not ids:
            return []
        params = tuple(ids)
        images += f" WHERE id IN ({_marks(len(params))})"
        names += f" WHERE image_id IN ({_marks(len(params))})"
    conn = tx.connection
    by_image: dict[str, list[NameRecord]] = {}
    for image_id, *fields in conn.exec_driver_sql(names + " ORDER BY name", params):
        by_image.setdefault(image_id, []).append(NameRecord(*fields))
    return [
        ImageRow(ImageRecord(*fields), tuple(by_image.get(fields[0], ())))
        for fields in conn.exec_driver_sql(images + " ORDER BY id", params)
    ]
