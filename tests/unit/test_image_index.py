"""The in-memory image index: built from store rows, and after each write updated from the rows
that write changed, so that it always equals a fresh build from the rows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crictl import errors
from crictl.reconciler.images import ImageIndex, ImageLookup
from crictl.store.common import Tx
from crictl.store.engine import Store, make_engine
from crictl.store.images import (
    ImageRecord,
    NameRecord,
    delete_image_names,
    image_rows,
    put_image,
    replace_all_images,
)
from crictl.store.migrate import upgrade_to_head
from tests.unit.test_image_resync import manager

A = "sha256:" + "a" * 63 + "1"
B = "sha256:" + "a" * 63 + "2"
TARGET_A = "sha256:" + "0" * 64  # what the images' names point at (their index or manifest)
TARGET_B = "sha256:" + "b" * 64


def _rows(tmp_path: Path) -> Store:
    upgrade_to_head(tmp_path / "db")
    store = Store(make_engine(tmp_path / "db"))
    for image_id, target, names in (
        (A, TARGET_A, ["r/x:1", "r/x:2", f"r/x@{TARGET_A}"]),
        (B, TARGET_B, ["r/y:1"]),
    ):
        rec = ImageRecord(image_id, 10, 7 if image_id == A else None, "", "{}", "m", None)
        store.write_sync(
            lambda s, r=rec, t=target, n=names: put_image(  # type: ignore[misc]
                s, r, [NameRecord(x, "digest" if "@" in x else "tag", t, "t") for x in n]
            )
        )
    return store


def test_rebuild_and_find(tmp_path: Path) -> None:
    store = _rows(tmp_path)
    index = ImageIndex()
    index.rebuild(store.read_sync(image_rows), {"r/y:1"})
    a = index.find(ImageLookup(names=("r/x:2",)))
    assert a is not None and a.id == A
    # the digest record and the digest both tags stand for are one name
    assert a.repo_tags == ("r/x:1", "r/x:2") and a.repo_digests == (f"r/x@{TARGET_A}",)
    assert a.records == ("r/x:1", "r/x:2", f"r/x@{TARGET_A}")
    assert a.uid == 7 and not a.pinned
    b = index.find(ImageLookup(image_id=B))
    assert b is not None and b.pinned  # named by the pause image
    # a pull by tag made no digest record: the tag's repository digest is reported and found,
    # and RemoveImage deletes the one record
    assert b.repo_digests == (f"r/y@{TARGET_B}",) and b.records == ("r/y:1",)
    assert index.find(ImageLookup(names=(f"r/y@{TARGET_B}",))) == b
    assert f"r/y@{TARGET_B}" not in index.by_name  # not a record: an event for it is news
    assert index.find(ImageLookup(names=("r/zzz:1",))) is None
    assert index.find(ImageLookup(id_prefix=A[:-1] + "2")) == b
    with pytest.raises(errors.InvalidArgument, match="ambiguous"):
        index.find(ImageLookup(id_prefix="sha256:aaaa"))
    # The full id wins over a name that happens to be the same text.
    assert index.find(ImageLookup(image_id=A, names=("r/y:1",))) == a
    assert [v.id for v in index.all()] == [A, B]


def test_the_touched_ids_cover_a_moved_tag(tmp_path: Path) -> None:
    """Moving r/y:1 from B to A changes both images (B loses its last name, so its row goes)."""
    store = _rows(tmp_path)
    rec = ImageRecord(A, 10, 7, "", "{}", "m", None)
    touched = store.write_sync(lambda s: put_image(s, rec, [NameRecord("r/y:1", "tag", "d", "t")]))
    assert touched == {A, B}
    assert [r.image.id for r in store.read_sync(image_rows)] == [A]
    assert store.write_sync(lambda s: delete_image_names(s, ["r/x:1", "r/nope:1"])) == {A}
    assert store.write_sync(lambda s: delete_image_names(s, [])) == set()


# -- the index after random writes equals a fresh build --------------------------------------

IDS = [f"sha256:{i:064x}" for i in range(1, 5)]
NAMES = ["r/a:1", "r/a:2", "r/b:1", "r/c@sha256:" + "c" * 64, "r/d@sha256:" + "d" * 64]
PINNED = {"r/b:1"}

put = st.tuples(
    st.just("put"),
    st.sampled_from(IDS),
    st.integers(0, 9),  # size: a rewrite of the same image changes its row
    st.lists(st.sampled_from(NAMES), max_size=3, unique=True),
    # the names' target: one per image, or one that several images' tags share (records
    # that disagree with each other: their tags then stand for the same repository digest)
    st.sampled_from(["own", "shared"]),
)
remove = st.tuples(st.just("delete"), st.lists(st.sampled_from(NAMES), max_size=3, unique=True))
resync = st.tuples(st.just("resync"), st.lists(st.sampled_from(IDS), max_size=2, unique=True))


def _change(op: tuple[object, ...]) -> Callable[[Tx], set[str] | None]:
    match op:
        case ("put", str(image_id), int(size), list(names), str(target)):
            rec = ImageRecord(image_id, size, None, "", "{}", "m", None)
            digest = f"sha256:{image_id[-8:]}" if target == "own" else "sha256:shared"
            records = [NameRecord(n, "digest" if "@" in n else "tag", digest, "t") for n in names]
            return lambda s: put_image(s, rec, records)
        case ("delete", list(names)):
            return lambda s: delete_image_names(s, names)
        case ("resync", list(ids)):
            entries = [
                (
                    ImageRecord(i, 1, None, "", "{}", "m", None),
                    [NameRecord(f"r/resync{n}:1", "tag", "d", "t")],
                )
                for n, i in enumerate(ids)
            ]
            return lambda s: replace_all_images(s, entries)
    raise AssertionError(op)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(put, remove, resync), max_size=12))
def test_updates_equal_a_fresh_build(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:  # type: ignore[type-arg]
    db = tmp_path_factory.mktemp("index") / "db"
    upgrade_to_head(db)
    store = Store(make_engine(db))
    try:
        m, _ = manager(store, [])
        m.pinned_names = PINNED

        async def run() -> None:
            await m._write(lambda s: None)
            for op in ops:
                await m._write(_change(op))
                fresh = ImageIndex()
                fresh.rebuild(store.read_sync(image_rows), PINNED)
                assert m.index.by_id == fresh.by_id, op
                assert m.index.by_name == fresh.by_name, op
                assert m.index.targets == fresh.targets, op
                assert m.index.derived == fresh.derived, op

        asyncio.run(run())
    finally:
        store.close()


# -- the `images` view derives the repository digests as the rows do ------------------------

VIEW_NAMES = [
    "h:5000/r/a:1",  # a registry with a port: the repository keeps it
    "h:5000/r/a:2",
    "r/b:latest",
    "h:5000/r/a",  # no tag: the last colon is the port's, so no digest is derived
    "x",  # no colon at all
    ":odd",  # nothing before the colon
    "r/c@sha256:" + "c" * 64,  # a digest record
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    images=st.lists(
        st.tuples(st.sampled_from(IDS), st.lists(st.sampled_from(VIEW_NAMES), max_size=4)),
        max_size=4,
    )
)
def test_the_images_view_lists_the_digests_the_rows_stand_for(
    tmp_path_factory: pytest.TempPathFactory, images: list[tuple[str, list[str]]]
) -> None:
    db = tmp_path_factory.mktemp("view") / "db"
    upgrade_to_head(db)
    store = Store(make_engine(db))
    try:
        for image_id, names in images:
            rec = ImageRecord(image_id, 1, None, "", "{}", "m", None)
            target = f"sha256:{image_id[-8:]}"
            records = [
                NameRecord(n, "digest" if "@" in n else "tag", target, "t") for n in set(names)
            ]
            store.write_sync(lambda s, r=rec, n=records: put_image(s, r, n))  # type: ignore[misc]
        rows = {r.image.id: r for r in store.read_sync(image_rows)}
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        view = {
            image_id: (sorted(json.loads(tags)), sorted(json.loads(digests)))
            for image_id, tags, digests in conn.execute(
                "SELECT id, repo_tags, repo_digests FROM images"
            )
        }
    assert view == {i: (r.tags, r.digests) for i, r in rows.items()}
