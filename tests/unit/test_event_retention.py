"""The event log keeps its newest rows: trimmed oldest first, in batches, against the real
store (SQLite at the schema's head)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from crictl import metrics
from crictl.store.common import Tx
from crictl.store.engine import Store
from crictl.store.events import record_event
from crictl.store.retention import EventLogRetention, trim_event_log
from tests.unit.rows import list_events


def _append(store: Store, count: int, kind: str = "container") -> None:
    def write(session: Tx) -> None:
        for i in range(count):
            record_event(session, kind, f"{i:064x}", "created")

    store.write_sync(write)


def trimmed_total() -> float:
    value = metrics.REGISTRY.get_sample_value("crictld_event_log_trimmed_total")
    assert value is not None
    return value


def _ids(store: Store) -> list[int]:
    return [e.id for e in store.read_sync(list_events)]


async def test_only_the_newest_rows_are_kept(store: Store) -> None:
    _append(store, 2500)
    before = _ids(store)
    assert await trim_event_log(store, keep=1000, batch=300, min_age=0) == 1500
    assert _ids(store) == before[-1000:]
    assert await trim_event_log(store, keep=1000, batch=300, min_age=0) == 0
    _append(store, 10)
    grown = _ids(store)
    assert await trim_event_log(store, keep=1000, batch=300, min_age=0) == 10
    assert _ids(store) == grown[10:]


async def test_fewer_rows_than_kept_or_none_at_all(store: Store) -> None:
    assert await trim_event_log(store, keep=5, min_age=0) == 0
    _append(store, 5)
    assert await trim_event_log(store, keep=5, min_age=0) == 0
    assert await trim_event_log(store, keep=4, min_age=0) == 1
    assert len(_ids(store)) == 4


async def test_a_batch_of_exactly_what_is_left_ends_the_trim(store: Store) -> None:
    _append(store, 600)
    assert await trim_event_log(store, keep=0, batch=300, min_age=0) == 600
    assert _ids(store) == []


async def test_the_daemons_trim_runs_at_start_and_each_interval(store: Store) -> None:
    _append(store, 50)
    counted = trimmed_total()
    retention = EventLogRetention(store, keep=20, interval=0.05, min_age=0)
    retention.start()
    try:
        for _ in range(200):
            if len(_ids(store)) == 20:
                break
            await asyncio.sleep(0.01)
        assert len(_ids(store)) == 20
        _append(store, 7)
        for _ in range(200):
            if len(_ids(store)) == 20:
                break
            await asyncio.sleep(0.01)
        assert len(_ids(store)) == 20
    finally:
        await retention.stop()
    assert trimmed_total() - counted == 37


async def test_rows_younger_than_the_minimum_age_stay(store: Store) -> None:
    # what the orphan sweep reads (the "created" rows of creates cut short) outlives its looks
    _append(store, 30)
    ids = _ids(store)
    hour = 3600 * 10**9
    store.write_sync(
        lambda s: s.connection.execute(
            text("UPDATE event SET at = at - :age WHERE id <= :last"),
            {"age": 2 * hour, "last": ids[9]},
        )
    )
    assert await trim_event_log(store, keep=5, min_age=3600) == 10
    assert _ids(store) == ids[10:]
    assert await trim_event_log(store, keep=5, min_age=3600) == 0


async def test_zero_keeps_every_row(store: Store) -> None:
    _append(store, 30)
    retention = EventLogRetention(store, keep=0, interval=0.01, min_age=0)
    retention.start()
    await asyncio.sleep(0.1)
    await retention.stop()
    assert len(_ids(store)) == 30
