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
import queue
import secrets
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crictl import errors

log = logging.getLogger(__name__)

READ_PIECE = 1 << 20
SPOOL_PIECE = 256 << 10  # bytes gathered into one piece for the writing thread
WRITEBACK_PIECE = 256 << 10  # bytes written before the disk's writeback is started on them
BACKLOG = 16 << 20  # bytes received and not yet written before the download waits
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
    """One blob's download: the pieces appended are written and hashed, in order, by a thread
    of the file's own while the next ones arrive (the event loop only queues them: a hop to a
    thread and back for each piece cost the daemon ~10 % more CPU in the images benchmark),
    then checked, synced and linked into the backend."""

    def __init__(self, content: LocalContent, digest: str, what: str) -> None:
        self.content = content
        self.digest = digest
        self.what = what
        self.path = content.spool / f"{digest.partition(':')[2]}.{secrets.token_hex(4)}"
        self.size = 0  # bytes handed to `append`
        self._loop = asyncio.get_running_loop()
        self._hash = hashlib.sha256()
        self._pieces: queue.SimpleQueue[bytes | object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._backlog = 0  # bytes appended and not yet written (under _lock)
        self._room: asyncio.Future[None] | None = None  # an append waiting for the backlog
        self._error: Exception | None = None  # what ended the writing thread early
        self._running = True  # the writing thread takes pieces (under _lock)
        self._given_up = False  # `close` before `finish`: the pieces still queued are dropped
        self._ended: asyncio.Future[None] = self._loop.create_future()
        # Read-only once linked, as containerd leaves its committed blobs. The thread owns
        # the descriptor and closes it when it ends.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        threading.Thread(target=self._run, args=(fd,), name="spool", daemon=True).start()

    # -- the writing thread ------------------------------------------------------------------

    def _run(self, fd: int) -> None:
        error: Exception | None = None
        try:
            written = synced = 0
            while True:
                piece = self._pieces.get()
                if piece is _STOP:
                    break
                if self._given_up:
                    continue
                if piece is _SYNC:
                    os.fsync(fd)
                    break
                assert isinstance(piece, bytes)
                _write_all(fd, piece)
                self._hash.update(piece)
                written += len(piece)
                if _start_writeback is not None and written - synced >= WRITEBACK_PIECE:
                    # The disk starts on these pages now, so the sync before the link waits
                    # only for the last ones (2 MiB: ~2 ms of fsync -> ~0.5 here).
                    _start_writeback(fd, synced, written - synced, SYNC_FILE_RANGE_WRITE)
                    synced = written
                with self._lock:
                    self._backlog -= len(piece)
                    room = self._room if self._backlog <= BACKLOG // 2 else None
                    if room is not None:
                        self._room = None
                if room is not None:
                    self._wake(room)
        except Exception as e:  # raised to the download by its next append, or its finish
            error = e
        finally:
            os.close(fd)
            with self._lock:
                self._error, self._running = error, False
                room, self._room = self._room, None
            if room is not None:
                self._wake(room)
            self._wake(self._ended)

    def _wake(self, future: asyncio.Future[None]) -> None:
        def done() -> None:
            if not future.done():
                future.set_result(None)

        with contextlib.suppress(RuntimeError):  # the loop closed (the daemon is exiting)
            self._loop.call_soon_threadsafe(done)

    # -- the event loop's side -----------------------------------------------------------------

    async def append(self, piece: bytes) -> None:
        """Queues `piece` after the ones before it, to be written by the file's thread; waits
        while more than BACKLOG bytes are queued (a disk slower than the download)."""
        self._check()
        with self._lock:
            self._backlog += len(piece)
            room = None
            if self._backlog > BACKLOG and self._running:
                room = self._room = self._loop.create_future()
        self._pieces.put(piece)
        self.size += len(piece)
        if room is not None:
            await room
            self._check()

    async def finish(self, size: int) -> bool:
        """Everything written and synced; whether the bytes are the blob's."""
        if not self._ended.done():
            self._pieces.put(_SYNC)
            await asyncio.shield(self._ended)
        self._check()
        return self.size == size and f"sha256:{self._hash.hexdigest()}" == self.digest

    def _check(self) -> None:
        error = self._error
        if error is not None:
            named = _named(error, self)
            if named is error:
                raise error
            raise named from error

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
        """The spool file gone (its link in the backend, if made, stays), its thread ended."""
        try:
            if not self._ended.done():
                self._given_up = True
                self._pieces.put(_STOP)
                await asyncio.shield(self._ended)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


_SYNC = object()  # the last piece was queued: sync the file, end the thread
_STOP = object()  # the download is given up: end the thread


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _named(e: Exception, f: SpoolFile) -> Exception:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.ResourceExhausted(
            f"{f.what}: write blob {f.digest} to {f.path}: {os.strerror(e.errno).lower()}"
        )
    return e
