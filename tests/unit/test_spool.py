"""The spool beside containerd's content store (crictl/images/spool.py): a blob's bytes are
kept only if their size and digest are the blob's, linked under the digest where containerd's
store keeps committed blobs, and nothing is left in the spool."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from crictl import errors
from crictl.images import spool
from crictl.images.spool import LocalContent

DATA = os.urandom(3 << 20 | 12345)
DIGEST = f"sha256:{hashlib.sha256(DATA).hexdigest()}"


def local(tmp_path: Path) -> LocalContent:
    (tmp_path / "content").mkdir()
    spool.leftovers(tmp_path / "pulls", None)
    found = LocalContent.find(str(tmp_path / "content"), tmp_path / "pulls")
    assert found is not None
    return found


async def write(content: LocalContent, digest: str, data: bytes, piece: int = 1 << 20) -> bool:
    f = content.open(digest, "pull r")
    try:
        for i in range(0, len(data), piece):
            await f.append(data[i : i + piece])
        ok = await f.finish(len(DATA))
        if ok:
            f.link()
        return ok
    finally:
        await f.close()


async def test_a_whole_blob_is_linked_under_its_digest_read_only(tmp_path: Path) -> None:
    content = local(tmp_path)
    assert not content.has(DIGEST, len(DATA))
    assert await write(content, DIGEST, DATA, piece=65536 + 7)
    blob = tmp_path / "content" / "blobs" / "sha256" / DIGEST[7:]
    assert blob.read_bytes() == DATA
    assert blob.stat().st_mode & 0o777 == 0o444
    assert content.has(DIGEST, len(DATA))
    assert not content.has(DIGEST, len(DATA) - 1)  # a size that is not the blob's
    assert list((tmp_path / "pulls").iterdir()) == []
    assert await write(content, DIGEST, DATA)  # there already: kept as it is
    assert blob.read_bytes() == DATA


@pytest.mark.parametrize(
    "data",
    [DATA[:-1], DATA + b"x", DATA[:100] + bytes([DATA[100] ^ 1]) + DATA[101:]],
    ids=["short", "long", "bit"],
)
async def test_bytes_that_are_not_the_blob_are_not_kept(tmp_path: Path, data: bytes) -> None:
    content = local(tmp_path)
    assert not await write(content, DIGEST, data)
    assert not (tmp_path / "content" / "blobs").exists()
    assert list((tmp_path / "pulls").iterdir()) == []


def test_only_sha256_blobs_have_a_place(tmp_path: Path) -> None:
    content = local(tmp_path)
    assert content.blob_path("sha512:" + "a" * 128) is None
    assert content.blob_path("sha256:abc") is None
    assert not content.has("sha256:abc", 3)


def test_a_store_elsewhere_or_unknown_is_not_used(tmp_path: Path) -> None:
    spool.leftovers(tmp_path / "pulls", None)
    assert LocalContent.find(None, tmp_path / "pulls") is None
    assert LocalContent.find(str(tmp_path / "missing"), tmp_path / "pulls") is None
    assert LocalContent.find("/dev/shm", tmp_path / "pulls") is None  # another filesystem


async def test_leftovers_are_removed_and_said_linked_or_not(tmp_path: Path) -> None:
    content = local(tmp_path)
    f = content.open(DIGEST, "pull r")
    await f.append(DATA)
    assert await f.finish(len(DATA))
    f.link()  # ...and the daemon dies: the spool file stays, its link too
    other = f"sha256:{'ab' * 32}"
    (tmp_path / "pulls" / f"{'ab' * 32}.1234").write_bytes(b"half")  # a download cut short
    (tmp_path / "content" / "blobs" / "sha256" / ("ab" * 32)).write_bytes(b"another file")
    left = sorted(spool.leftovers(tmp_path / "pulls", content), key=lambda x: x.linked)
    assert [(x.name, x.digest, x.size, x.linked) for x in left] == [
        (f"{'ab' * 32}.1234", other, 4, False),  # the blob there is not this file
        (f.path.name, DIGEST, len(DATA), True),
    ]
    assert list((tmp_path / "pulls").iterdir()) == []
    assert spool.leftovers(tmp_path / "pulls", content) == []
    await f.close()


async def test_a_full_disk_fails_the_download_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write the disk refuses ends the file's thread; the download's next append (or its
    finish) raises RESOURCE_EXHAUSTED naming the blob and the file, and nothing is kept."""
    content = local(tmp_path)

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool, "_write_all", full)
    f = content.open(DIGEST, "pull r")
    with pytest.raises(errors.ResourceExhausted) as raised:
        for i in range(0, len(DATA), 1 << 20):
            await f.append(DATA[i : i + (1 << 20)])
        await f.finish(len(DATA))
    assert str(raised.value) == (
        f"pull r: write blob {DIGEST} to {f.path}: no space left on device"
    )
    await f.close()
    assert list((tmp_path / "pulls").iterdir()) == []
    assert not (tmp_path / "content" / "blobs").exists()


async def test_appends_wait_while_the_disk_is_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More than BACKLOG bytes received and not yet written: the download waits for the
    disk (the daemon holds at most that much of a blob in memory), then goes on whole."""
    content = local(tmp_path)
    disk = threading.Event()
    write = spool._write_all

    def slow(fd: int, data: bytes) -> None:
        disk.wait()
        write(fd, data)

    monkeypatch.setattr(spool, "_write_all", slow)
    monkeypatch.setattr(spool, "BACKLOG", 1 << 20)
    f = content.open(DIGEST, "pull r")
    try:
        piece = 256 << 10
        for i in range(0, 1 << 20, piece):  # up to the backlog: taken at once
            await asyncio.wait_for(f.append(DATA[i : i + piece]), 1)
        waiting = asyncio.ensure_future(f.append(DATA[1 << 20 : (1 << 20) + piece]))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # one piece over: waits
        disk.set()
        await asyncio.wait_for(waiting, 5)
        for i in range((1 << 20) + piece, len(DATA), piece):
            await f.append(DATA[i : i + piece])
        assert await f.finish(len(DATA))
    finally:
        disk.set()
        await f.close()


async def test_a_download_given_up_ends_its_thread_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closed before its finish (a pull that failed or was cancelled): the thread writes
    nothing more of what was queued, ends, and the file is gone."""
    content = local(tmp_path)
    disk, writes = threading.Event(), []
    write = spool._write_all

    def slow(fd: int, data: bytes) -> None:
        writes.append(len(data))
        disk.wait()
        write(fd, data)

    monkeypatch.setattr(spool, "_write_all", slow)
    before = {t.ident for t in threading.enumerate()}
    f = content.open(DIGEST, "pull r")
    (spooler,) = [t for t in threading.enumerate() if t.ident not in before]
    for i in range(0, 1 << 20, 256 << 10):
        await f.append(DATA[i : i + (256 << 10)])
    for _ in range(500):  # the first piece's write under way
        if writes:
            break
        await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(f.close())
    await asyncio.sleep(0.1)
    disk.set()
    await asyncio.wait_for(closing, 5)
    spooler.join(5)
    assert not spooler.is_alive()
    assert writes == [256 << 10]  # the one under way when it was given up
    assert list((tmp_path / "pulls").iterdir()) == []
