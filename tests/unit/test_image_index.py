"""The in-memory image index: rebuilt from store rows, never ahead of or behind the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from crictl import errors
from crictl.reconciler.images import ImageIndex, ImageLookup
from crictl.store.engine import Store, make_engine
from crictl.store.images import ImageRecord, NameRecord, delete_image_names, list_images, put_image
from crictl.store.migrate import upgrade_to_head

A = "sha256:" + "a" * 63 + "1"
B = "sha256:" + "a" * 63 + "2"


def _rows(tmp_path: Path) -> Store:
    upgrade_to_head(tmp_path / "db")
    store = Store(make_engine(tmp_path / "db"))
    for image_id, names in ((A, ["r/x:1", "r/x:2", "r/x@sha256:" + "0" * 64]), (B, ["r/y:1"])):
        rec = ImageRecord(image_id, 10, 7 if image_id == A else None, "", "{}", "m", None)
        store.write_sync(
            lambda s, r=rec, n=names: put_image(  # type: ignore[misc]
                s, r, [NameRecord(x, "digest" if "@" in x else "tag", "d", "t") for x in n]
            )
        )
    return store


def test_rebuild_and_find(tmp_path: Path) -> None:
    store = _rows(tmp_path)
    index = ImageIndex()
    index.rebuild(1, store.read_sync(list_images), {"r/y:1"})
    a = index.find(ImageLookup(names=("r/x:2",)))
    assert a is not None and a.id == A
    assert a.repo_tags == ("r/x:1", "r/x:2") and a.repo_digests == ("r/x@sha256:" + "0" * 64,)
    assert a.uid == 7 and not a.pinned
    b = index.find(ImageLookup(image_id=B))
    assert b is not None and b.pinned  # named by the pause image
    assert index.find(ImageLookup(names=("r/zzz:1",))) is None
    assert index.find(ImageLookup(id_prefix=A[:-1] + "2")) == b
    with pytest.raises(errors.InvalidArgument, match="ambiguous"):
        index.find(ImageLookup(id_prefix="sha256:aaaa"))
    # The full id wins over a name that happens to be the same text.
    assert index.find(ImageLookup(image_id=A, names=("r/y:1",))) == a
    assert [v.id for v in index.all()] == [A, B]


def test_an_older_rebuild_never_lands_last(tmp_path: Path) -> None:
    store = _rows(tmp_path)
    index = ImageIndex()
    before = store.read_sync(list_images)
    store.write_sync(lambda s: delete_image_names(s, ["r/y:1"]))
    after = store.read_sync(list_images)
    index.rebuild(5, after, set())
    index.rebuild(4, before, set())  # a slower, older rebuild arriving late is ignored
    assert index.find(ImageLookup(image_id=B)) is None
    assert [v.id for v in index.all()] == [A]
