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

Calls block, so async callers go through `Store.write()` (one writer thread: SQLite has one
writer at a time anyway) and `Store.read()` (a small reader pool); most reads need neither,
and take the read model's `snapshot` (crictl/store/readmodel.py).
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


def _on_begin(conn: Connection) -> None:
    # straight to the driver, as the write path's statements go (store/common.py `execute`)
    conn.connection.driver_connection.execute("BEGIN")  # type: ignore[union-attr]


_WAITS = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class WriterThread:
    """One thread that runs the store's writes in the order they were handed to it, each
    awaited by its caller's event loop.

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

    async def run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the store is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
            self._jobs.put((loop, future, fn))
        return await future

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn = job
            if future.cancelled():  # its caller went away before it began
                continue
            try:
                result, error = fn(), None
            except BaseException as e:  # the caller's to see, as the pool gave it
                result, error = None, e
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                loop.call_soon_threadsafe(_settle, future, result, error)

    def close(self) -> None:
        """Runs what was handed over, then ends the thread (from any thread but its own)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._jobs.put(None)
            thread.join()


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


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
        """`listener` gets the events each write recorded, after it committed (in the writer
        thread: it must only hand them on)."""
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
        `fn` asks for one (`Tx.orm`), and flushed before the commit."""
        with self._write_lock:
            conn = self._writer_connection()
            tx = Tx(conn, make_orm=_joined_session)
            try:
                started = time.perf_counter()
                begin(tx, self.model.snapshot if self.model.built else None)
                try:
                    with conn.begin():
                        result = fn(tx)
                        orm = tx.orm_made
                        if orm is not None:
                            orm.flush()
                except DBAPIError as e:
                    # The connection is kept: closing it (the last one) could checkpoint and
                    # delete the WAL, and a full disk would then take writes again for a while.
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
        recorded: list[RecordedEvent] = tx.info.pop(COMMITTED_EVENTS, [])
        if recorded:
            for listener in self._listeners:
                listener(recorded)
        return result

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
        return conn

    def _drop_writer_connection(self, *_: object) -> None:
        with self._write_lock:
            conn, self._writer_conn = self._writer_conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.invalidate()  # closes SQLite's connection, not back to a pool
                    conn.close()

    def _refusal(self, error: DBAPIError) -> errors.CrictlError | None:
        """What a write the node refused is to CRI (nothing was written: the transaction
        rolled back): the state disk full, an I/O error, the file read-only or corrupt, or the
        write lock held by another process (a `sqlite3` shell in a write transaction) beyond
        the busy timeout. None: a defect, raised as is."""
        code = getattr(error.orig, "sqlite_errorcode", None)
        if not isinstance(code, int):
            return None
        primary = code & 0xFF  # extended codes (SQLITE_IOERR_WRITE, ...) keep it in the low byte
        kind = _REFUSALS.get(primary)
        if kind is None:
            return None
        reason, cls, why = kind
        metrics.STORE_WRITE_REFUSALS.labels(reason).inc()
        name = getattr(error.orig, "sqlite_errorname", str(code))
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

    async def write(self, fn: Callable[[Tx], T], then: Callable[[T], None] | None = None) -> T:
        spans = trace.CURRENT.get()
        with metrics.STORE_WRITES.time(), trace.span("store write"):
            return await self._writer.run(lambda: self.write_sync(fn, spans, then))

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
            orig = e.orig if isinstance(e, DBAPIError) else e
            code = getattr(orig, "sqlite_errorcode", None)
            if not (isinstance(code, int) and code & 0xFF in _WAITS):
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
