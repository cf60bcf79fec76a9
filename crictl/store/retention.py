"""The event log's bound: it keeps its newest rows only.

Every transition, creation and removal appends a row (`events.record_event`), so on a node
that runs pods all day a log nothing trims grows for as long as the node lives. A row takes
~250 bytes with its two indexes (4561 rows took 1.13 MB in `benchmarks.containers`, whose
container lives write 8 each), so the default 100000 rows (`event_log_rows`) hold ~25 MB.
SQLite reuses the pages freed, so the file stops growing at that size.

A row younger than `MIN_AGE` stays whatever the bound: the orphan sweep asks the log which
cgroups and runc states this daemon made (the "created" rows of creates cut short), and it
runs at start and every 5 minutes, so it has looked many times before such a row can go.

The oldest rows go first, in batches of their own transactions, so a trim holds the store's
one writer for a few milliseconds at a time (500 rows of a 120000-row log: 2.3-3.7 ms): every
`interval` seconds, and once at start. They run in the store's writer thread, not on the
daemon's loop (`Store.write(off_loop=True)`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from crictl import metrics
from crictl.store.engine import Store
from crictl.store.events import delete_events_through, last_event_beyond, now_ns

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 300.0
BATCH = 500
MIN_AGE = 3600.0


async def trim_event_log(
    store: Store, keep: int, batch: int = BATCH, min_age: float = MIN_AGE
) -> int:
    """Deletes every event but the newest `keep` and those younger than `min_age` seconds,
    oldest first, `batch` rows a transaction; returns how many. Rows written meanwhile are
    newer than the ones it deletes."""
    before = now_ns() - int(min_age * 1e9)
    last = await store.read(lambda s: last_event_beyond(s, keep, before))
    if last is None:
        return 0
    trimmed = 0
    while True:
        deleted = await store.write(lambda s: delete_events_through(s, last, batch), off_loop=True)
        trimmed += deleted
        if deleted < batch:
            return trimmed


class EventLogRetention:
    """Keeps the event log at its newest `keep` rows (0: every row), and any younger than
    `min_age` seconds: trims it at start, then every `interval` seconds, until stopped."""

    def __init__(
        self,
        store: Store,
        keep: int,
        interval: float = DEFAULT_INTERVAL,
        min_age: float = MIN_AGE,
    ) -> None:
        self.store = store
        self.keep = keep
        self.interval = interval
        self.min_age = min_age
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.keep > 0:
            self._task = asyncio.create_task(self._every_interval(), name="event-log-trim")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def trim_once(self) -> int:
        started = time.perf_counter()
        try:
            trimmed = await trim_event_log(self.store, self.keep, min_age=self.min_age)
        except Exception:  # the database busy or a bug: the next round tries again
            log.exception("event log trim failed")
            return 0
        if trimmed:
            metrics.EVENTS_TRIMMED.inc(trimmed)
            log.info(
                "event log trimmed",
                extra={
                    "deleted": trimmed,
                    "kept": self.keep,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )
        return trimmed

    async def _every_interval(self) -> None:
        while True:
            await self.trim_once()
            await asyncio.sleep(self.interval)
