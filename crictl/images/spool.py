"""A layer's download written to disk beside containerd's content store, not through its API.

containerd's CRI plugin writes a pulled blob into its content store in-process. An
out-of-process client sends the bytes over containerd's content API instead: 5-8.5 ms of
containerd's CPU a MiB here, and ~20 ms of a 2 MiB layer's pull (docs/performance.md,
"Images"). When containerd's content store is a directory this daemon can write on the same
filesystem (the managed containerd's always is), a layer is downloaded into a file of the
spool dir, its size and digest checked as it is written, synced, and hard-linked into the
store's backend under its digest, where containerd keeps a committed blob. A Content.Write
opened with that digest then finds it in the backend and commits it to crictld's namespace
with no bytes sent: containerd's metadata content store shares a backend blob between
namespaces (`contentStore.Writer` in v1.6.20, the default `content_sharing_policy`), and from
the moment the write is open containerd's collector keeps the blob for it.

What this assumes, each checked where it can be and answered by the API path where it is
not: the backend keeps a blob at `<root>/blobs/<algorithm>/<hex>` (content/local, unchanged
since containerd 1.0), the spool dir is on the backend's filesystem (checked: st_dev), and
sharing is on (a write that does not find the blob gets the spooled bytes over the API; one
that finds it in the store and still does not take it turns the spool off for the daemon's
life, with a warning, and every later layer goes through the API).
The file is synced before it is linked, as containerd syncs an ingest before its rename: a
power loss cannot leave a partial blob under a digest. A spool file left by a crash is
removed at the daemon's next start. A blob linked into the
backend and never committed (a crash between the two) is no namespace's, and containerd
removes such a blob only in a collection that removed some content: at that start it is
committed under a lease of its own, which the start then deletes with containerd's
synchronous collection (`Puller.collect_spooled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crictl import errors

log = logging.getLogger(__name__)

READ_PIECE = 1 << 20
SPOOL_PIECE = 256 << 10  # bytes gathered before a write (and a hash) in a thread
SYNC_FILE_RANGE_WRITE = 2


def _writeback() -> Any:
    """libc's sync_file_range (Linux; not in Python's os module), or None."""
    try:
        f = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    f.restype = ctypes.c_int
    return f


_start_writeback = _writeback()


@dataclass(frozen=True)
class Leftover:
    """A spool file a crash left: the download of `digest`, and whether it was linked into
    containerd's store (the blob there is this file) but maybe never committed."""

    name: str
    digest: str
    size: int
    linked: bool


def leftovers(spool: Path, content: LocalContent | None) -> list[Leftover]:
    """The spool dir, made if missing, with what a crash left in it removed (and said)."""
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    removed = []
    for f in spool.iterdir():
        digest = f"sha256:{f.name.partition('.')[0]}"
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        linked = False
        blob = content.blob_path(digest) if content is not None else None
        if blob is not None:
            with contextlib.suppress(FileNotFoundError):
                b = blob.stat()
                linked = (b.st_dev, b.st_ino) == (st.st_dev, st.st_ino)
        f.unlink(missing_ok=True)
        removed.append(Leftover(f.name, digest, st.st_size, linked))
    return removed


@dataclass(frozen=True)
class LocalContent:
    """containerd's content store backend (`root`), and the spool dir on its filesystem."""

    root: Path
    spool: Path

    @classmethod
    def find(cls, root: str | None, spool: Path) -> LocalContent | None:
        """The backend at `root` (containerd's content plugin's), if blobs can be linked into
        it from `spool`; else None, and pulls send their bytes over containerd's API."""
        if not root:
            return None
        try:
            spool.mkdir(mode=0o700, parents=True, exist_ok=True)
            same = os.stat(root).st_dev == os.stat(spool).st_dev
        except OSError as e:
            log.info("pulls write through containerd's API", extra={"reason": str(e)})
            return None
        if not same:
            log.info(
                "pulls write through containerd's API",
                extra={"reason": f"{spool} is not on the filesystem of {root}"},
            )
            return None
        return cls(Path(root), spool)

    def blob_path(self, digest: str) -> Path | None:
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64:
            return None
        return self.root / "blobs" / algorithm / hexdigest

    def has(self, digest: str, size: int) -> bool:
        """The backend holds the blob (committed: containerd renames it there whole)."""
        path = self.blob_path(digest)
        try:
            return path is not None and path.stat().st_size == size
        except FileNotFoundError:
            return False

    def open(self, digest: str, what: str) -> SpoolFile:
        """A spool file for the blob `digest`; `what` begins its errors ("pull REF")."""
        return SpoolFile(self, digest, what)


class SpoolFile:
    """One blob's download: pieces appended in order (each written and hashed in a thread
    while the next arrives), then checked, synced and linked into the backend."""

    def __init__(self, content: LocalContent, digest: str, what: str) -> None:
        self.content = content
        self.digest = digest
        self.what = what
        self.path = content.spool / f"{digest.partition(':')[2]}.{secrets.token_hex(4)}"
        # Read-only once linked, as containerd leaves its committed blobs.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        self._hash = hashlib.sha256()
        self._writing: asyncio.Future[None] | None = None
        self.size = 0  # bytes handed to `append`
        self._written = 0  # bytes written (in the writing thread)

    def _write(self, piece: bytes) -> None:
        view = memoryview(piece)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._hash.update(piece)
        if _start_writeback is not None:
            # The disk starts on these pages now, so the sync before the link waits only for
            # the last piece's (2 MiB: ~2 ms of fsync -> ~0.8 here).
            _start_writeback(self._fd, self._written, len(piece), SYNC_FILE_RANGE_WRITE)
        self._written += len(piece)

    async def append(self, piece: bytes) -> None:
        """Queues `piece` after the ones before it; waits for the one before to be written."""
        await self.flush()
        self._writing = asyncio.ensure_future(asyncio.to_thread(self._write, piece))
        self.size += len(piece)

    async def flush(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            await _no_space_named(writing, self)

    async def finish(self, size: int) -> bool:
        """Everything written and synced; whether the bytes are the blob's."""
        await self.flush()
        await _no_space_named(asyncio.to_thread(os.fsync, self._fd), self)
        return self.size == size and f"sha256:{self._hash.hexdigest()}" == self.digest

    def link(self) -> None:
        """The synced file into the backend under its digest (kept if it is there already:
        containerd puts a blob there only whole and checked)."""
        target = self.content.blob_path(self.digest)
        assert target is not None
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.link(self.path, target)

    async def read(self, offset: int) -> AsyncIterator[bytes]:
        """The spooled bytes from `offset` (for containerd's API when the link was not seen)."""
        with open(self.path, "rb") as f:  # noqa: ASYNC230 - each read is in a thread
            f.seek(offset)
            while piece := await asyncio.to_thread(f.read, READ_PIECE):
                yield piece

    async def close(self) -> None:
        """The spool file gone (its link in the backend, if made, stays)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            with contextlib.suppress(BaseException):
                await writing
        os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


async def _no_space_named(aw: Awaitable[None], f: SpoolFile) -> None:
    try:
        await aw
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise errors.ResourceExhausted(
                f"{f.what}: write blob {f.digest} to {f.path}: {os.strerror(e.errno).lower()}"
            ) from e
        raise
