"""The SQLite engine and the transaction plumbing.

SQLite runs in WAL mode (readers never wait for the writer), with foreign keys enforced and
`synchronous=NORMAL`: a commit appends to the WAL without an fsync (the WAL is synced at each
checkpoint). A transaction that returned survives the daemon's death in any way (kill -9, a
crash, OOM: the kernel holds its pages); after a power loss or a kernel crash the database is
intact but its last transactions may be rolled back. That tail is absorbed by what runs after
a machine restart anyway: every task is dead, so recovery re-reads the world; a sandbox or
container whose row rolled back is an orphan to the sweep (its containerd records, snapshot,
IP are labelled as crictld's and removed); a removal that rolled back is a row whose objects
are gone, which recovery marks exited/not ready and kubelet removes again. docs/architecture.md
("Durability") has the argument; tests/integration/test_power_loss.py plays it.

Calls block. `Store.write()` runs a write on the calling loop's thread where it waits for
nothing (no other write of this process under way, SQLite's write lock free: a transaction
takes it at its BEGIN), else hands it to the one writer thread, which also runs the WAL's
checkpoints, so no write waits for their fsyncs. `Store.read()` reads in a small reader pool;
most reads need neither, and take the read model's `snapshot` (crictl/store/readmodel.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError

from crictl import errors, metrics, trace
from crictl.store.common import On, Tx
from crictl.store.events import COMMITTED_EVENTS, RecordedEvent
from crictl.store.readmodel import ReadModel, Snapshot, begin

if TYPE_CHECKING:  # the daemon never imports the ORM (crictl/store/orm.py)
    from sqlalchemy.orm import Session

T = TypeVar("T")

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000

# The writer connection's WAL checkpoint, every this many of its commits (~5-15 pages each:
# about SQLite's own 1000-page mark), in the writer thread (`Store._after_commit`).
CHECKPOINT_EVERY = 64

# SQLite's primary result codes for a write the node refused, as CRI errors (by `_refusal`).
_REFUSALS: dict[int, tuple[str, type[errors.CrictlError], str]] = {
    sqlite3.SQLITE_FULL: ("full", errors.ResourceExhausted, "its disk is full"),
    sqlite3.SQLITE_IOERR: ("io", errors.Unavailable, "an I/O error"),
    sqlite3.SQLITE_READONLY: ("readonly", errors.Unavailable, "it is read-only"),
    sqlite3.SQLITE_CORRUPT: ("corrupt", errors.Internal, "it is corrupt"),
    sqlite3.SQLITE_NOTADB: ("corrupt", errors.Internal, "it is not a database"),
    sqlite3.SQLITE_BUSY: (
        "busy",
        errors.Unavailable,
        f"another process held its write lock for over {BUSY_TIMEOUT_MS / 1000:g}s",
    ),
}


def sqlite_url(db_path: Path | str) -> str:
    return f"sqlite:///{db_path}" if str(db_path) != ":memory:" else "sqlite://"


def make_engine(db_path: Path | str) -> Engine:
    """An engine whose every connection has crictld's pragmas set."""
    if str(db_path) != ":memory:":
        create_private(Path(db_path))
    engine = create_engine(
        sqlite_url(db_path),
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
    )
    event.listen(engine, "connect", _on_connect)
    event.listen(engine, "begin", _on_begin)
    return engine


def create_private(db_path: Path) -> None:
    """The database holds secrets (every container's config as sent, env values included):
    it is 0600 from its first moment. SQLite would create it 0644 (less the umask), so it is
    created here first, empty (SQLite takes an empty file as an empty database); SQLite gives
    a new -wal and -shm the database's mode. Files an older crictld left wider are tightened
    (by path: closing a descriptor of an open database would drop this process's SQLite locks
    on it). A directory made for it (`crictld migrate` on a new state dir) is 0700."""
    db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = f"{db_path}{suffix}"
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)


def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
    # pysqlite's own transaction handling never BEGINs before DDL, which would let a migration
    # that is killed halfway leave half a schema. Take control: no implicit transactions, and an
    # explicit BEGIN whenever SQLAlchemy starts one (the recipe in SQLAlchemy's SQLite docs).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    finally:
        cur.close()


_BEGIN = "crictld.begin"  # a connection's `info` key: how its next transaction begins, once


def _on_begin(conn: Connection) -> None:
    # straight to the driver, as the write path's statements go (store/common.py `execute`)
    conn.connection.driver_connection.execute(conn.info.pop(_BEGIN, "BEGIN"))  # type: ignore[union-attr]


_WAITS = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class WriterThread:
    """One thread that runs the store's writes in the order they were handed to it, each
    awaited by its caller's event loop (the writes that would have waited on the loop, and
    those of other threads), and the jobs `post`ed to it (the WAL's checkpoints).

    What `loop.run_in_executor` on a one-thread pool did, with half its CPU: the pool's
    futures, their lock and the chaining of a concurrent future into an asyncio one cost ~90
    us a hand-off and back where a queue and `call_soon_threadsafe` cost ~45 (a scratch
    loop, warm); in the daemon every write RPC pays one to three. As with the pool, a write
    whose caller was cancelled before it began is not run; one that began runs to its end.
    The thread is started at the first write; `close` runs what was handed over, then ends
    it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._awaited = 0  # jobs handed over by `run` and not yet done (under `_lock`)

    @property
    def closed(self) -> bool:
        return self._closed

    def idle(self) -> bool:
        """No job handed over by `run` is waiting or running (`post`'s do not count)."""
        return self._awaited == 0

    async def run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._hand_over((loop, future, fn), awaited=True)
        return await future

    def post(self, fn: Callable[[], object]) -> None:
        """`fn` runs in the thread after what was handed over before it; nobody waits for it,
        and what it raises is logged."""
        self._hand_over((None, None, fn), awaited=False)

    def _hand_over(self, job: _Job, awaited: bool) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._awaited += awaited
            self._jobs.put(job)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn = job
            if loop is None or future is None:
                try:
                    fn()
                except Exception:
                    log.exception("a store job failed")
                continue
            if future.cancelled():  # its caller went away before it began
                self._done()
                continue
            try:
                result, error = fn(), None
            except BaseException as e:  # the caller's to see, as the pool gave it
                result, error = None, e
            self._done()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_settle, future, result, error)

    def _done(self) -> None:
        with self._lock:
            self._awaited -= 1

    def close(self) -> None:
        """Runs what was handed over, then ends the thread (from any thread but its own)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._jobs.put(None)
            thread.join()


_Job = tuple[asyncio.AbstractEventLoop | None, "asyncio.Future[Any] | None", Callable[[], Any]]


class _WouldWait(Exception):
    """A write on the caller's thread would have waited (for a write of this process under way,
    or for SQLite's write lock another process holds), having done nothing: it goes to the
    writer thread."""


def _code(error: DBAPIError | sqlite3.Error) -> int:
    """SQLite's (extended) result code of `error`; -1 where it carries none."""
    orig = error.orig if isinstance(error, DBAPIError) else error
    code = getattr(orig, "sqlite_errorcode", None)
    return code if isinstance(code, int) else -1


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled while it ran
        return
    if error is None:
        future.set_result(result)
    elif isinstance(error, StopIteration):  # which a future refuses to carry
        future.set_exception(RuntimeError(f"a store write raised {error!r}"))
    else:
        future.set_exception(error)


def _joined_session(conn: Connection) -> Session:
    """An ORM session in the transaction on `conn` (`Tx.orm`, for tests and tools): it
    flushes into it and never commits or ends it (SQLAlchemy's "rollback_only" join: the
    store commits). The ORM is imported here, on first use: the daemon never asks."""
    from crictl.store.orm import sessions

    return sessions()(bind=conn, join_transaction_mode="rollback_only")


class Store:
    """Owns the engine; runs transaction functions off the event loop.

    A transaction function takes a `Tx` and does its work inside it; `write()` commits when the
    function returns and rolls back if it raises, so each call is one transaction.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = WriterThread("store-writer")
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="store-reader")
        self._listeners: list[Callable[[list[RecordedEvent]], None]] = []
        # One transaction at a time in this process (SQLite has one writer anyway), so that
        # the read model's publishes land in commit order.
        self._write_lock = threading.RLock()
        self.model = ReadModel()
        # Writes go through one connection kept for them (made at the first write, under the
        # write lock): checking one out of the pool and back, its reset rollback included,
        # was ~20 % of a transaction's CPU (benchmarks.store_writes). It is made again after
        # engine.dispose().
        self._writer_conn: Connection | None = None
        self._waits_ms = BUSY_TIMEOUT_MS  # the writer connection's busy timeout as last set
        self._commits = 0  # the writer connection's, since the last checkpoint was asked
        # `read_on_loop`'s connections: one per thread that reads here (the CRI front loop's; the
        # daemon's, for a front handler that fell back to it)
        self._here = threading.local()
        self._here_lock = threading.Lock()
        self._here_conns: list[Connection] = []
        event.listen(engine, "engine_disposed", self._drop_writer_connection)

    def session(self) -> Session:
        """An ORM session of its own (tools and tests; `Tx.of` makes it a transaction)."""
        from crictl.store.orm import sessions

        return sessions()(bind=self.engine)

    def build_model(self) -> Snapshot:
        """Loads the read model from the rows (at start, once the schema is at head)."""
        with self._write_lock, self.engine.connect() as conn:
            return self.model.build(Tx(conn))

    @property
    def snapshot(self) -> Snapshot:
        """The read model now: every sandbox and container as of the last commit. Built on
        first use if the daemon did not build it yet (tools and tests)."""
        if not self.model.built:
            self.build_model()
        return self.model.snapshot

    def add_listener(self, listener: Callable[[list[RecordedEvent]], None]) -> None:
        """`listener` gets the events each write recorded, after it committed, in commit order
        (in whichever thread the write ran, the store's write lock held: it must only hand
        them on)."""
        self._listeners.append(listener)

    def write_sync(
        self,
        fn: Callable[[Tx], T],
        spans: trace.Trace | None = None,
        then: Callable[[T], None] | None = None,
    ) -> T:
        """One transaction: `fn` in it, then the commit. `then(result)` runs once committed,
        still under the write lock, so what it publishes lands in commit order, before the
        write returns and before any later transaction begins.

        The transaction is the writer connection's own; an ORM session is made in it only if
        `fn` asks for one (`Tx.orm`), and flushed before the commit. Where another process
        holds SQLite's write lock, this waits for it up to the busy timeout."""
        with self._write_lock:
            return self._transaction(fn, spans, then, wait=True)

    def _write_here(
        self, fn: Callable[[Tx], T], spans: trace.Trace | None, then: Callable[[T], None] | None
    ) -> T:
        """`write_sync` on the calling thread where that waits for nothing. `_WouldWait`,
        having done nothing, where a write of this process is under way or another process
        holds SQLite's write lock (the transaction's `BEGIN IMMEDIATE` found it taken)."""
        if not self._write_lock.acquire(blocking=False):
            raise _WouldWait
        try:
            return self._transaction(fn, spans, then, wait=False)
        finally:
            self._write_lock.release()

    def _transaction(
        self,
        fn: Callable[[Tx], T],
        spans: trace.Trace | None,
        then: Callable[[T], None] | None,
        wait: bool,
    ) -> T:
        """The write itself, the write lock held, so the read model's publish, `then` and the
        event listeners see the commits in their order, wherever each write ran. `wait`: for
        SQLite's write lock, up to the busy timeout, where another process holds it; else
        `_WouldWait` is raised at once."""
        conn = self._writer_connection()
        self._set_waits(conn, BUSY_TIMEOUT_MS if wait else 0)
        tx = Tx(conn, make_orm=_joined_session)
        began = False
        try:
            started = time.perf_counter()
            begin(tx, self.model.snapshot if self.model.built else None)
            try:
                # SQLite's write lock taken at the BEGIN (or SQLITE_BUSY there), before `fn`
                # ran, so a write that would wait finds out having done nothing, and one that
                # reads before it writes cannot fail to upgrade (SQLITE_BUSY_SNAPSHOT). A
                # publish's read back after the commit begins as a reader does.
                conn.info[_BEGIN] = "BEGIN IMMEDIATE"
                with conn.begin():
                    began = True
                    result = fn(tx)
                    orm = tx.orm_made
                    if orm is not None:
                        orm.flush()
            except (DBAPIError, sqlite3.Error) as e:
                # The connection is kept: closing it (the last one) could checkpoint and
                # delete the WAL, and a full disk would then take writes again for a while.
                if not wait and not began and _code(e) & 0xFF in _WAITS:
                    raise _WouldWait from e
                refusal = self._refusal(e)
                if refusal is None:
                    raise
                raise refusal from e
            committed = time.perf_counter()
            # Committed: the read model takes the rows before the write returns.
            try:
                self.model.publish(tx)
            except Exception:  # a defect; the rows are right, so the model is made again
                log.exception("read model publish failed: rebuilding it from the rows")
                if conn.in_transaction():
                    conn.rollback()
                self.model.build(tx)
            if then is not None:
                then(result)
            self._after_commit()
            self._hand_on(tx)
            if spans is not None:
                spans.add("store commit", committed - started)
                spans.add("store publish", time.perf_counter() - committed)
        finally:
            # a publish's read back (or a failed one) began a transaction: none is kept
            if conn.in_transaction():
                conn.rollback()
            orm = tx.orm_made
            if orm is not None:
                orm.close()
        return result

    def _hand_on(self, tx: Tx) -> None:
        recorded: list[RecordedEvent] = tx.info.pop(COMMITTED_EVENTS, [])
        if recorded:
            for listener in self._listeners:
                listener(recorded)

    def _set_waits(self, conn: Connection, ms: int) -> None:
        if self._waits_ms != ms:
            conn.connection.driver_connection.execute(f"PRAGMA busy_timeout={ms}")  # type: ignore[union-attr]
            self._waits_ms = ms

    def _after_commit(self) -> None:
        """Every `CHECKPOINT_EVERY` commits a WAL checkpoint is handed to the writer thread:
        the writer connection checkpoints nothing itself (`wal_autocheckpoint=0`), so no write
        waits for a checkpoint's fsyncs, wherever it runs."""
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY:
            self._commits = 0
            with contextlib.suppress(RuntimeError):  # closed: closing checkpoints
                self._writer.post(self._checkpoint)

    def _checkpoint(self) -> None:
        """A PASSIVE checkpoint (it waits for no reader or writer: what it cannot copy now, a
        later one does), on a pooled connection of the writer thread's, beside the writes."""
        raw = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert isinstance(driver, sqlite3.Connection)  # the store's engine is SQLite's
            driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            raw.close()

    def _writer_connection(self) -> Connection:
        conn = self._writer_conn
        if conn is not None and (conn.closed or conn.invalidated or conn.in_transaction()):
            # Never left in a transaction by a write (it rolls back whatever fn raised and
            # ends a publish's read back); one that was could hold a write half done.
            log.error("the store's writer connection was not idle: made again")
            self._drop_writer_connection()
            conn = None
        if conn is None:
            conn = self._writer_conn = self.engine.connect()
            driver = conn.connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)  # the store's engine is SQLite's
            driver.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints: `_after_commit`
            self._waits_ms = BUSY_TIMEOUT_MS  # as `_on_connect` set it
            self._commits = 0
        return conn

    def _drop_writer_connection(self, *_: object) -> None:
        with self._write_lock:
            conn, self._writer_conn = self._writer_conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.invalidate()  # closes SQLite's connection, not back to a pool
                    conn.close()

    def _refusal(self, error: DBAPIError | sqlite3.Error) -> errors.CrictlError | None:
        """What a write the node refused is to CRI (nothing was written: the transaction
        rolled back): the state disk full, an I/O error, the file read-only or corrupt, or the
        write lock held by another process (a `sqlite3` shell in a write transaction) beyond
        the busy timeout. None: a defect, raised as is."""
        code = _code(error)
        if code < 0:
            return None
        primary = code & 0xFF  # extended codes (SQLITE_IOERR_WRITE, ...) keep it in the low byte
        kind = _REFUSALS.get(primary)
        if kind is None:
            return None
        reason, cls, why = kind
        metrics.STORE_WRITE_REFUSALS.labels(reason).inc()
        orig = error.orig if isinstance(error, DBAPIError) else error
        name = getattr(orig, "sqlite_errorname", str(code))
        database = self.engine.url.database
        return cls(
            f"crictld's state database {database} cannot be written: {why} ({name}); "
            "nothing was changed"
        )

    def read_sync(self, fn: Callable[[Tx], T]) -> T:
        """`fn` in a read transaction of a pooled connection (rolled back: a read)."""
        with self.engine.connect() as conn:
            tx = Tx(conn, make_orm=_joined_session)
            try:
                return fn(tx)
            finally:
                orm = tx.orm_made
                if orm is not None:
                    orm.close()

    async def write(
        self,
        fn: Callable[[Tx], T],
        then: Callable[[T], None] | None = None,
        *,
        off_loop: bool = False,
    ) -> T:
        """`fn` in one transaction, committed: on the calling loop's thread where that waits
        for nothing, else in the writer thread, in the order the writes were asked either way;
        the caller yields to its loop once. `off_loop`: in the writer thread always, for a
        write of many rows (a trim of the event log, the image cache made again) that would
        hold the loop for milliseconds."""
        spans = trace.CURRENT.get()
        with metrics.STORE_WRITES.time(), trace.span("store write"):
            if off_loop or not self._writer.idle() or self._writer.closed:
                return await self._writer.run(lambda: self.write_sync(fn, spans, then))
            try:
                result = self._write_here(fn, spans, then)
            except _WouldWait:
                return await self._writer.run(lambda: self.write_sync(fn, spans, then))
        # As a write in the thread did, one here lets what else is ready run before its caller
        # goes on (a loop of writes, a recovery's, would otherwise hold the loop throughout).
        await asyncio.sleep(0)
        return result

    async def read(self, fn: Callable[[Tx], T]) -> T:
        with trace.span("store read"):
            return await asyncio.get_running_loop().run_in_executor(
                self._readers, self.read_sync, fn
            )

    async def read_on_loop(self, fn: Callable[[On], T]) -> T:
        """`fn` in a read transaction on the calling thread, on a connection of that thread's
        own that never waits for SQLite's lock; where it would have, through the reader
        threads (`read`, which gives `fn` a `Tx`). For the CRI front loop's read of a few
        indexed rows, where the hop to a reader thread and back cost two to three times the
        read itself, measured in the daemon at rest and under critest's loop
        (docs/performance.md, "Verbose statuses"). `fn` is given the SQLite connection, in a
        BEGIN it sends its statements as is into (`common.execute`): a session's transaction
        around the same two statements took 0.19 ms, the raw BEGIN, statements and end 0.05.
        A WAL reader waits for nothing but a WAL being recovered or reset, so this answers at
        once; the connection is made (its pragmas may wait) in a reader thread."""
        conn: Connection | None = getattr(self._here, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = await asyncio.get_running_loop().run_in_executor(
                self._readers, self._connect_here
            )
            self._here.conn = conn
        driver = conn.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)  # the store's engine is SQLite's
        try:
            driver.execute("BEGIN")
            try:
                return fn(driver)
            finally:
                if driver.in_transaction:
                    driver.execute("ROLLBACK")  # a read: nothing to keep; the snapshot let go
        except (DBAPIError, sqlite3.Error) as e:
            if _code(e) & 0xFF not in _WAITS:
                raise
        return await self.read(fn)

    def _connect_here(self) -> Connection:
        conn = self.engine.connect()
        conn.connection.driver_connection.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
        with self._here_lock:
            self._here_conns.append(conn)
        return conn

    def close(self) -> None:
        self._writer.close()
        self._readers.shutdown(wait=True)
        with self._here_lock:
            for conn in self._here_conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self._here_conns.clear()
        self.engine.dispose()  # the writer's connection with the pool's
