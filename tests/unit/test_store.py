from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from threading import current_thread

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from crictl.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from crictl.store.common import On, Tx
from crictl.store.containers import record_container_created, update_container_config
from crictl.store.engine import Store, WriterThread
from crictl.store.events import last_events, record_event
from crictl.store.models import LabelKind, SandboxDesired, SandboxPhase
from crictl.store.orm import Container, PodSandbox, get_sandbox, labels_of, list_sandboxes
from crictl.store.readmodel import sandbox_now
from crictl.store.sandboxes import (
    NewSandbox,
    SandboxFilter,
    create_sandbox,
    delete_sandbox,
    record_sandbox_lost,
    record_sandbox_started,
    resolve_sandbox_id,
    set_sandbox_desired,
)
from crictl.store.specs import inspected, stored_spec
from crictl.store.transitions import switch_sandbox_phase
from tests.unit.rows import list_events, store_with_created_container


def new(sid: str = "a" * 64, name: str = "web", digest: str = "d1", **kw: object) -> NewSandbox:
    args: dict[str, object] = {
        "id": sid,
        "name": name,
        "namespace": "default",
        "uid": "uid-1",
        "attempt": 0,
        "config": "{}",
        "config_digest": digest,
        "labels": {"app": "web", "io.kubernetes.pod.uid": "uid-1"},
        "annotations": {"a": "1"},
    }
    args.update(kw)
    return NewSandbox(**args)  # type: ignore[arg-type]


def test_pragmas_are_crash_safe(store: Store) -> None:
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        # NORMAL: durable across any death of the process; the tail a power loss may roll back
        # is absorbed by recovery and the sweep (crictl/store/engine.py, test_power_loss.py)
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1


def test_create_is_idempotent_for_the_same_request(store: Store) -> None:
    first, created = store.write_sync(lambda s: create_sandbox(s, new()))
    assert created
    again, created_again = store.write_sync(lambda s: create_sandbox(s, new(sid="b" * 64)))
    assert not created_again
    assert again.id == first.id == "a" * 64
    assert store.read_sync(lambda s: len(list_sandboxes(s))) == 1
    events = store.read_sync(lambda s: list_events(s, "sandbox", "a" * 64))
    assert [e.action for e in events] == ["created"]


def test_same_metadata_other_config_is_already_exists(store: Store) -> None:
    store.write_sync(lambda s: create_sandbox(s, new()))
    with pytest.raises(AlreadyExists, match=r"default/web .* already exists as a{64}"):
        store.write_sync(lambda s: create_sandbox(s, new(sid="b" * 64, digest="d2")))
    assert store.read_sync(lambda s: [x.id for x in list_sandboxes(s)]) == ["a" * 64]


def test_labels_and_annotations_round_trip_and_filter(store: Store) -> None:
    store.write_sync(lambda s: create_sandbox(s, new()))
    store.write_sync(
        lambda s: create_sandbox(
            s, new(sid="b" * 64, name="db", labels={"app": "db"}, annotations={})
        )
    )
    sb = store.read_sync(lambda s: get_sandbox(s, "aaaa"))
    assert labels_of(sb, LabelKind.LABEL) == {"app": "web", "io.kubernetes.pod.uid": "uid-1"}
    assert labels_of(sb, LabelKind.ANNOTATION) == {"a": "1"}

    def ids(flt: SandboxFilter) -> list[str]:
        return store.read_sync(lambda s: [x.id for x in list_sandboxes(s, flt)])

    assert ids(SandboxFilter(labels={"app": "db"})) == ["b" * 64]
    assert ids(SandboxFilter(labels={"app": "web", "io.kubernetes.pod.uid": "uid-1"})) == ["a" * 64]
    assert ids(SandboxFilter(labels={"a": "1"})) == []  # annotations are not labels
    assert ids(SandboxFilter(id_prefix="bb")) == ["b" * 64]
    assert ids(SandboxFilter(phases=frozenset({SandboxPhase.READY}))) == []
    # Ids are hex: LIKE's wildcards and patterns SQLite refuses as too long match nothing.
    assert ids(SandboxFilter(id_prefix="%")) == []
    assert ids(SandboxFilter(id_prefix="_")) == []
    assert ids(SandboxFilter(id_prefix="a" * 100_000)) == []
    with pytest.raises(NotFound):
        store.read_sync(lambda s: get_sandbox(s, "a" * 100_000))


def test_id_prefixes_resolve_uniquely(store: Store) -> None:
    store.write_sync(lambda s: create_sandbox(s, new(sid="ab" + "0" * 62)))
    store.write_sync(lambda s: create_sandbox(s, new(sid="ac" + "0" * 62, name="other")))
    assert store.read_sync(lambda s: resolve_sandbox_id(s, "ab")) == "ab" + "0" * 62
    with pytest.raises(InvalidArgument, match="ambiguous"):
        store.read_sync(lambda s: resolve_sandbox_id(s, "a"))
    with pytest.raises(NotFound, match="'ff'"):
        store.read_sync(lambda s: resolve_sandbox_id(s, "ff"))
    with pytest.raises(NotFound):
        store.read_sync(lambda s: resolve_sandbox_id(s, "a%"))  # no LIKE tricks


def _switch(s: Tx, phase: SandboxPhase, sid: str = "a" * 64) -> None:
    sb = sandbox_now(s, sid)
    assert sb is not None
    switch_sandbox_phase(s, sb, phase, reason="Test", message=f"to {phase}")


def test_transitions_are_checked_and_logged(store: Store) -> None:
    store.write_sync(lambda s: create_sandbox(s, new()))
    store.write_sync(lambda s: _switch(s, SandboxPhase.READY))
    store.write_sync(lambda s: _switch(s, SandboxPhase.NOTREADY))
    with pytest.raises(FailedPrecondition, match="NOTREADY -> READY"):
        store.write_sync(lambda s: _switch(s, SandboxPhase.READY))  # never resurrected
    sb = store.read_sync(lambda s: get_sandbox(s, "a" * 64))
    assert sb.phase == SandboxPhase.NOTREADY  # the refused move changed nothing
    events = store.read_sync(lambda s: list_events(s, "sandbox", "a" * 64))
    assert [(e.from_phase, e.to_phase) for e in events] == [
        (None, "PENDING"),
        ("PENDING", "READY"),
        ("READY", "NOTREADY"),
    ]


def test_a_loss_seen_from_an_old_snapshot_leaves_later_requests_alone(store: Store) -> None:
    """The loop decides from a snapshot; a stop or remove may commit before its write."""
    sid = "a" * 64
    store.write_sync(lambda s: create_sandbox(s, new()))
    store.write_sync(lambda s: _switch(s, SandboxPhase.READY))
    store.write_sync(lambda s: set_sandbox_desired(s, sid, SandboxDesired.NOTREADY))
    assert not store.write_sync(lambda s: record_sandbox_lost(s, sid, "PauseExited", "exit 1"))
    assert store.read_sync(lambda s: get_sandbox(s, sid)).phase == SandboxPhase.READY
    store.write_sync(lambda s: delete_sandbox(s, sid, "Removed"))
    assert not store.write_sync(lambda s: record_sandbox_lost(s, sid, "PauseExited", "exit 1"))

    other = "b" * 64
    store.write_sync(lambda s: create_sandbox(s, new(sid=other, name="db", digest="d2")))
    store.write_sync(lambda s: _switch(s, SandboxPhase.READY, other))
    assert store.write_sync(lambda s: record_sandbox_lost(s, other, "NetnsVanished", "gone"))
    sb = store.read_sync(lambda s: get_sandbox(s, other))
    assert (sb.phase, sb.reason) == (SandboxPhase.NOTREADY, "NetnsVanished")


def test_database_constraints_hold_without_the_orm(store: Store) -> None:
    store.write_sync(lambda s: create_sandbox(s, new()))
    with pytest.raises(Exception, match="CHECK constraint failed"):
        store.write_sync(
            lambda s: s.connection.execute(text("UPDATE pod_sandbox SET phase = 'BOGUS'"))
        )
    with pytest.raises(Exception, match="FOREIGN KEY constraint failed"):
        store.write_sync(
            lambda s: s.connection.execute(
                text(
                    "INSERT INTO pod_sandbox_label (sandbox_id, kind, key, value) "
                    "VALUES ('nope', 'label', 'k', 'v')"
                )
            )
        )
    # Deleting a sandbox takes its labels along.
    store.write_sync(lambda s: s.connection.execute(text("DELETE FROM pod_sandbox")))
    assert (
        store.read_sync(
            lambda s: s.connection.execute(text("SELECT count(*) FROM pod_sandbox_label")).scalar()
        )
        == 0
    )


def test_async_write_and_read(store: Store) -> None:
    import asyncio

    async def go() -> list[str]:
        await store.write(lambda s: create_sandbox(s, new()))
        return await store.read(lambda s: [x.name for x in list_sandboxes(s)])

    assert asyncio.run(go()) == ["web"]


def test_the_writer_thread_runs_writes_in_order_and_skips_one_cancelled_before_it_began() -> None:
    """One thread, writes in the order handed over, errors to their callers, a write whose
    caller went away before it began not run (one that began runs to its end), and close
    runs what was handed over first."""
    import asyncio

    writer = WriterThread("store-writer-test")
    ran: list[str] = []
    gate = threading.Event()

    def job(name: str, wait: bool = False) -> str:
        if wait:
            gate.wait(5)
        ran.append(name)
        return name

    def fails() -> str:
        raise ValueError("refused")

    def stops() -> str:
        return next(iter([]))

    async def go() -> None:
        first = asyncio.ensure_future(writer.run(lambda: job("first", wait=True)))
        await asyncio.sleep(0.05)  # begun, waiting for the gate
        dropped = asyncio.ensure_future(writer.run(lambda: job("dropped")))
        second = asyncio.ensure_future(writer.run(lambda: job("second")))
        await asyncio.sleep(0)
        dropped.cancel()
        first.cancel()  # it began: it runs on, its answer goes nowhere
        gate.set()
        assert await second == "second"
        with pytest.raises(ValueError, match="refused"):
            await writer.run(fails)
        with pytest.raises(RuntimeError, match="StopIteration"):
            await writer.run(stops)
        assert ran == ["first", "second"]
        threads = [t.name for t in threading.enumerate() if t.name == "store-writer-test"]
        assert threads == ["store-writer-test"]
        queued = asyncio.ensure_future(writer.run(lambda: job("queued")))
        await asyncio.sleep(0)
        await asyncio.to_thread(writer.close)  # runs what was handed over, then ends
        assert await queued == "queued"
        with pytest.raises(RuntimeError, match="closed"):
            await writer.run(lambda: job("late"))

    asyncio.run(go())
    assert ran == ["first", "second", "queued"]
    assert not any(t.name == "store-writer-test" for t in threading.enumerate())


def test_a_write_the_disk_refuses_is_resource_exhausted_and_changes_nothing(
    store: Store,
) -> None:
    """SQLite's "database or disk is full" (here: the file may not grow past its pages now)
    rolls the transaction back whole and is ResourceExhausted naming the database; the rows
    and the read model stay as they were, and the next write that fits goes through."""
    from crictl import metrics

    store.write_sync(lambda s: create_sandbox(s, new()))
    with store.engine.connect() as conn:
        pages = conn.execute(text("PRAGMA page_count")).scalar_one()

    @event.listens_for(store.engine, "connect")
    def cap(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    store.engine.dispose()  # the writer's next connection has the cap
    big = "x" * 200_000
    before = metrics.STORE_WRITE_REFUSALS.labels("full")._value.get()
    with pytest.raises(ResourceExhausted) as e:
        store.write_sync(lambda s: create_sandbox(s, new("b" * 64, "big", config=big)))
    assert str(e.value).startswith(
        f"crictld's state database {store.engine.url.database} cannot be written: its disk is full"
    )
    assert metrics.STORE_WRITE_REFUSALS.labels("full")._value.get() == before + 1
    assert list(store.snapshot.sandboxes) == ["a" * 64]
    assert store.read_sync(lambda s: [v.id for v in list_sandboxes(s, SandboxFilter())]) == [
        "a" * 64
    ]
    store.write_sync(lambda s: set_sandbox_desired(s, "a" * 64, SandboxDesired.NOTREADY))
    assert store.snapshot.sandboxes["a" * 64].desired == SandboxDesired.NOTREADY


def test_a_write_lock_held_by_another_process_is_unavailable(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crictl.store import engine

    monkeypatch.setattr(engine, "BUSY_TIMEOUT_MS", 50)
    store.engine.dispose()
    other = sqlite3.connect(str(store.engine.url.database), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # an operator's shell in a write transaction
    try:
        with pytest.raises(Unavailable, match="another process held its write lock"):
            store.write_sync(lambda s: create_sandbox(s, new()))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.snapshot.sandboxes == {}
    store.write_sync(lambda s: create_sandbox(s, new()))


def test_a_write_runs_on_the_loops_thread_unless_it_would_wait_and_then_in_the_writer_thread(
    store: Store,
) -> None:
    """A write waits for nothing on the loop: it runs there. Where another process holds
    SQLite's write lock, the loop is not held: the write goes to the writer thread, which waits
    for the lock, and every write after it goes there too until it is done, so none overtakes
    it; with the lock let go, writes run on the loop again."""
    import asyncio

    threads: list[str] = []

    def create(sid: str, name: str) -> Callable[[Tx], None]:
        def txn(tx: Tx) -> None:
            threads.append(current_thread().name)
            create_sandbox(tx, new(sid, name))

        return txn

    store.build_model()  # as the daemon does at start (building it takes the write lock)
    other = sqlite3.connect(str(store.engine.url.database), isolation_level=None)

    async def go() -> None:
        await store.write(create("a" * 64, "first"))
        assert threads == [current_thread().name]
        other.execute("BEGIN IMMEDIATE")  # an operator's shell in a write transaction
        held = asyncio.ensure_future(store.write(create("b" * 64, "held")))
        after = asyncio.ensure_future(store.write(create("c" * 64, "after")))
        ticks = 0
        while ticks < 5:  # the loop runs on while both wait
            await asyncio.sleep(0.01)
            ticks += 1
        assert not held.done() and not after.done()
        assert store.snapshot.sandboxes.keys() == {"a" * 64}
        other.execute("ROLLBACK")
        await asyncio.gather(held, after)
        assert threads[1:] == ["store-writer", "store-writer"]
        await store.write(create("d" * 64, "again"))
        assert threads[3] == current_thread().name

    try:
        asyncio.run(go())
    finally:
        other.close()
    assert _committed_sandboxes(store) == ["a" * 64, "b" * 64, "c" * 64, "d" * 64]
    assert list(store.snapshot.sandboxes) == ["a" * 64, "b" * 64, "c" * 64, "d" * 64]


def test_a_write_on_the_loop_yields_to_it_and_one_asked_off_the_loop_runs_in_the_thread(
    store: Store,
) -> None:
    """A write run on the loop's thread lets what else is ready run before its caller goes on,
    as one that waited for the writer thread did (a loop of writes does not hold the loop);
    `off_loop` sends a write of many rows to the writer thread whatever else holds."""
    import asyncio

    store.build_model()
    seen: list[str] = []

    def create(sid: str, name: str) -> Callable[[Tx], None]:
        def txn(tx: Tx) -> None:
            seen.append(f"{name} in {current_thread().name}")
            create_sandbox(tx, new(sid, name))

        return txn

    async def beside() -> None:
        seen.append("beside")

    async def go() -> None:
        here = current_thread().name
        ready = asyncio.ensure_future(beside())  # ready, not yet run
        await store.write(create("a" * 64, "first"))
        seen.append("after first")
        await ready
        await store.write(create("b" * 64, "bulk"), off_loop=True)
        assert seen == [f"first in {here}", "beside", "after first", "bulk in store-writer"]

    asyncio.run(go())
    assert list(store.snapshot.sandboxes) == ["a" * 64, "b" * 64]


def test_a_publish_that_reads_back_after_the_commit_does_not_take_the_write_lock(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the write's own BEGIN is IMMEDIATE: the read model's read back after the commit
    begins as a reader, so another process writing by then (here: holding the write lock)
    does not fail a write already committed, on the loop, where nothing waits for a lock."""
    import asyncio

    store.build_model()
    other = sqlite3.connect(str(store.engine.url.database), isolation_level=None)
    publish = store.model.publish

    read: list[object] = []

    def reads_back(tx: Tx) -> None:
        other.execute("BEGIN IMMEDIATE")  # another process writes right after the commit
        try:  # a publish that fails is caught (the model is built again): note what it met
            read.append(
                tx.connection.exec_driver_sql("SELECT count(*) FROM pod_sandbox").scalar_one()
            )
        except Exception as e:
            read.append(e)
            raise
        publish(tx)

    monkeypatch.setattr(store.model, "publish", reads_back)
    try:
        asyncio.run(store.write(lambda s: create_sandbox(s, new())))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert read == [1]
    assert list(store.snapshot.sandboxes) == ["a" * 64]


def test_the_writer_connection_checkpoints_nothing_itself_the_writer_thread_does(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer connection's automatic checkpoint is off (it would fsync inside a write on
    the loop); every CHECKPOINT_EVERY commits one runs in the writer thread and copies the
    WAL's pages into the database file, where a reader that ignores the WAL finds them."""
    import asyncio

    from crictl.store import engine

    monkeypatch.setattr(engine, "CHECKPOINT_EVERY", 3)
    ran: list[str] = []
    checkpoint = Store._checkpoint

    def spied(self: Store) -> None:
        checkpoint(self)
        ran.append(current_thread().name)

    monkeypatch.setattr(Store, "_checkpoint", spied)
    db = str(store.engine.url.database)

    def in_the_file() -> list[str]:  # the database file alone, without the WAL
        file = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
        try:
            return [r[0] for r in file.execute("SELECT id FROM pod_sandbox ORDER BY id")]
        finally:
            file.close()

    async def go() -> None:
        await store.write(lambda s: create_sandbox(s, new("a" * 64, "one")))
        assert ran == []
        assert in_the_file() == []
        await store.write(lambda s: create_sandbox(s, new("b" * 64, "two")))
        await store.write(lambda s: create_sandbox(s, new("c" * 64, "three")))
        for _ in range(200):
            if ran:
                break
            await asyncio.sleep(0.01)

    asyncio.run(go())
    assert ran == ["store-writer"]
    assert in_the_file() == ["a" * 64, "b" * 64, "c" * 64]
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 1000
    writer = store._writer_connection().connection.driver_connection
    assert isinstance(writer, sqlite3.Connection)
    assert writer.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)


def _committed_sandboxes(store: Store) -> list[str]:
    """The sandbox ids another connection sees: what is committed."""
    other = sqlite3.connect(str(store.engine.url.database))
    try:
        return [r[0] for r in other.execute("SELECT id FROM pod_sandbox ORDER BY id")]
    finally:
        other.close()


def test_writes_commit_through_the_writers_one_connection(store: Store) -> None:
    """Writes share one connection; a write that failed leaves it fit for the next, which
    commits; one found inside a transaction is not joined (its sessions would not commit)."""
    store.write_sync(lambda s: create_sandbox(s, new()))
    with pytest.raises(AlreadyExists):
        store.write_sync(lambda s: create_sandbox(s, new(digest="other")))
    store.write_sync(lambda s: create_sandbox(s, new("b" * 64, "db")))
    assert _committed_sandboxes(store) == ["a" * 64, "b" * 64]

    store._writer_connection().begin()  # as a defect would leave it
    store.write_sync(lambda s: create_sandbox(s, new("c" * 64, "cache")))
    assert _committed_sandboxes(store) == ["a" * 64, "b" * 64, "c" * 64]
    assert list(store.snapshot.sandboxes) == ["a" * 64, "b" * 64, "c" * 64]


def test_the_write_path_makes_no_orm_session_and_one_that_is_made_commits_with_the_write(
    store: Store,
) -> None:
    """A write whose functions send their statements as is makes no ORM session (making one
    was half of a write's CPU); one made on demand is in the write's transaction: its changes
    are flushed and committed with it, unflushed or not, and rolled back with it."""
    given: list[Tx] = []

    def create(tx: Tx) -> None:
        given.append(tx)
        create_sandbox(tx, new())
        set_sandbox_desired(tx, "a" * 64, SandboxDesired.NOTREADY)

    store.write_sync(create)
    assert given[0].orm_made is None
    assert store.snapshot.sandboxes["a" * 64].desired == SandboxDesired.NOTREADY

    def through_orm(tx: Tx, then_fail: bool) -> None:
        given.append(tx)
        set_sandbox_desired(tx, "a" * 64, SandboxDesired.REMOVED)  # a statement as is
        row = tx.orm.get(PodSandbox, "a" * 64)  # the same transaction sees it
        assert row is not None and row.desired == SandboxDesired.REMOVED
        row.reason = "changed-through-the-orm"  # not flushed by the function
        if then_fail:
            raise RuntimeError("the write fails after both")

    with pytest.raises(RuntimeError):
        store.write_sync(lambda tx: through_orm(tx, then_fail=True))
    assert given[-1].orm_made is not None
    with store.session() as s:
        row = s.get(PodSandbox, "a" * 64)
        assert row is not None and (row.desired, row.reason) == (SandboxDesired.NOTREADY, "")
    assert store.snapshot.sandboxes["a" * 64].desired == SandboxDesired.NOTREADY

    store.write_sync(lambda tx: through_orm(tx, then_fail=False))
    with store.session() as s:
        row = s.get(PodSandbox, "a" * 64)
        assert row is not None
        assert (row.desired, row.reason) == (SandboxDesired.REMOVED, "changed-through-the-orm")
    view = store.snapshot.sandboxes["a" * 64]
    assert (view.desired, view.reason) == (SandboxDesired.REMOVED, "changed-through-the-orm")
    assert not store._writer_connection().in_transaction()


def test_close_closes_the_writers_connection(store: Store) -> None:
    """The last connection to close checkpoints the WAL and removes it: none is left open."""
    store.write_sync(lambda s: create_sandbox(s, new()))
    wal = f"{store.engine.url.database}-wal"
    assert os.path.exists(wal)
    store.close()
    assert not os.path.exists(wal)


def test_last_events_are_the_objects_newest_oldest_first(store: Store) -> None:
    cid, other = "c" * 64, "d" * 64

    def write(session: Tx) -> None:
        for i in range(15):
            record_event(session, "container", cid, "transition", to_phase=f"p{i}")
            record_event(session, "container", other, "transition", to_phase=f"o{i}")
            record_event(session, "sandbox", cid, "transition", to_phase=f"s{i}")

    store.write_sync(write)
    events = store.read_sync(lambda s: last_events(s, "container", cid, 10))
    assert [e.to_phase for e in events] == [f"p{i}" for i in range(5, 15)]
    assert {(e.object_kind, e.object_id) for e in events} == {("container", cid)}
    every = store.read_sync(lambda s: list_events(s, "container", cid))[-10:]
    fields = ("id", "at", "action", "from_phase", "to_phase", "reason", "message")
    assert [[getattr(e, f) for f in fields] for e in events] == [
        [getattr(e, f) for f in fields] for e in every
    ]
    assert store.read_sync(lambda s: last_events(s, "container", "e" * 64, 10)) == []


def test_the_spec_is_kept_where_the_pass_made_the_record_and_never_loaded_with_the_row(
    tmp_path: Path,
) -> None:
    """crictl/store/specs.py: the spec given at create and on an update is read back with the
    last events; a record made by an earlier pass (no spec given) leaves NULL, which sends
    the reader to containerd; the ORM never loads it with a row."""
    sid, cid = "a" * 64, "b" * 64
    store = store_with_created_container(tmp_path, sid, cid, 42)
    assert store.read_sync(lambda s: stored_spec(s, "container", cid)) is None
    assert store.read_sync(lambda s: stored_spec(s, "sandbox", sid)) is None
    store.write_sync(lambda s: record_container_created(s, cid, 0, 0, [], '{"v": 1}'))
    store.write_sync(lambda s: update_container_config(s, cid, "{}", '{"v": 2}'))
    found = store.read_sync(lambda s: inspected(s, "container", cid, 1))
    assert found.runtime_spec == '{"v": 2}'
    assert [e.action for e in found.events] == ["resources-updated"]
    pod = "f" * 64
    new = NewSandbox(
        id=pod, name="q", namespace="d", uid="v", attempt=0, config="{}", config_digest="e"
    )
    store.write_sync(lambda s: create_sandbox(s, new))
    store.write_sync(lambda s: record_sandbox_started(s, pod, pod, 43, '{"pause": 1}'))
    assert store.read_sync(lambda s: stored_spec(s, "sandbox", pod)) == '{"pause": 1}'
    # a pass that found the record made: what it holds is not known for certain
    store.write_sync(lambda s: record_container_created(s, cid, 0, 0, []))
    assert store.read_sync(lambda s: inspected(s, "container", cid, 0)).runtime_spec is None
    assert store.read_sync(lambda s: stored_spec(s, "container", "e" * 64)) is None

    loaded: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: loaded.append(a[2]))
    store.write_sync(lambda s: update_container_config(s, cid, "{}", '{"v": 3}'))
    store.read_sync(lambda s: s.orm.get(Container, cid))
    store.read_sync(lambda s: s.orm.get(PodSandbox, sid))
    reads = [sql for sql in loaded if sql.lstrip().upper().startswith("SELECT")]
    assert reads and not any("runtime_spec" in sql for sql in reads), reads
    store.close()


async def test_a_read_on_the_loop_runs_on_its_thread_and_falls_back_where_sqlite_would_wait(
    tmp_path: Path,
) -> None:
    """Store.read_on_loop: the read runs on the caller's thread, on one SQLite connection of
    that thread's own, made in a reader thread (its pragmas may wait), in a transaction that
    ends with the read (an open one would hold the WAL from being checkpointed); a read
    SQLite refuses as busy (that connection never waits) is done again through the reader
    threads, in a session."""
    sid, cid = "a" * 64, "b" * 64
    store = store_with_created_container(tmp_path, sid, cid, 42)
    connected: list[str] = []
    event.listen(store.engine, "connect", lambda *_: connected.append(current_thread().name))
    here = current_thread().name
    ran: list[str] = []
    given: list[On] = []

    def read(session: On) -> str | None:
        ran.append(current_thread().name)
        given.append(session)
        if isinstance(session, sqlite3.Connection):
            assert session.in_transaction
        return stored_spec(session, "container", cid)

    store.write_sync(lambda s: record_container_created(s, cid, 0, 0, [], '{"v": 1}'))
    assert await store.read_on_loop(read) == '{"v": 1}'
    store.write_sync(lambda s: update_container_config(s, cid, "{}", '{"v": 2}'))
    assert await store.read_on_loop(read) == '{"v": 2}'  # what the last commit wrote
    assert ran == [here, here]
    assert len(connected) == 1 and connected[0].startswith("store-reader"), connected
    assert given[0] is given[1] and isinstance(given[0], sqlite3.Connection)
    assert not given[0].in_transaction

    def busy_once(session: On) -> str | None:
        if not ran or ran[-1] != "busy":
            ran.append("busy")
            locked = sqlite3.OperationalError("database is locked")
            locked.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise DBAPIError.instance("SELECT", (), locked, sqlite3.Error)
        return read(session)

    assert await store.read_on_loop(busy_once) == '{"v": 2}'
    assert ran[-2] == "busy" and ran[-1].startswith("store-reader")
    assert isinstance(given[-1], Tx) and not given[0].in_transaction

    def broken(session: On) -> None:
        raise DBAPIError.instance(
            "SELECT", (), sqlite3.OperationalError("disk I/O error"), sqlite3.Error
        )

    with pytest.raises(DBAPIError):  # anything else is raised as is
        await store.read_on_loop(broken)
    assert not given[0].in_transaction
    store.close()
