"""The event log: one row per transition and per cleanup, appended, never updated."""

from __future__ import annotations

import time
from dataclasses import dataclass

from crictl.store.common import On, Tx, execute

# The events a transaction recorded, handed to the store's listeners once it committed.
COMMITTED_EVENTS = "crictld.events"


def now_ns() -> int:
    return time.time_ns()


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event row as `record_event` wrote it (the columns of `Event`), for the store's
    listeners once its transaction committed."""

    id: int
    at: int
    object_kind: str
    object_id: str
    action: str
    from_phase: str | None
    to_phase: str | None
    reason: str
    message: str


def record_event(
    tx: Tx,
    object_kind: str,
    object_id: str,
    action: str,
    *,
    from_phase: str | None = None,
    to_phase: str | None = None,
    reason: str = "",
    message: str = "",
) -> RecordedEvent:
    """Appends an event row at once (one INSERT, in call order, without the ORM's unit of
    work: every write records one or two) and returns what it wrote, for the listeners."""
    row = (
        now_ns(),
        object_kind,
        object_id,
        action,
        from_phase and str(from_phase),
        to_phase and str(to_phase),
        str(reason),
        message,
    )
    rowid = execute(tx, _INSERT, row).lastrowid
    assert rowid is not None  # an INSERT into a rowid table
    event = RecordedEvent(rowid, *row)
    tx.info.setdefault(COMMITTED_EVENTS, []).append(event)
    return event


_INSERT = (
    "INSERT INTO event (at, object_kind, object_id, action, from_phase, to_phase, reason, "
    "message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def last_event_beyond(tx: Tx, keep: int, before: int) -> int | None:
    """The id of the newest event that is neither among the newest `keep` nor at or after
    `before` (ns since the epoch); None if there is none."""
    found = execute(
        tx, "SELECT id FROM event ORDER BY id DESC LIMIT 1 OFFSET ?", (keep,)
    ).fetchone()
    if found is None:
        return None
    # walks down from there by id, over the rows too young to go
    old = execute(
        tx,
        "SELECT id FROM event WHERE id <= ? AND at < ? ORDER BY id DESC LIMIT 1",
        (found[0], before),
    ).fetchone()
    return None if old is None else int(old[0])


def delete_events_through(tx: Tx, last_id: int, limit: int) -> int:
    """Deletes the oldest `limit` events whose id is at most `last_id`; returns how many."""
    deleted = execute(
        tx,
        "DELETE FROM event WHERE id IN (SELECT id FROM event WHERE id <= ? ORDER BY id LIMIT ?)",
        (last_id, limit),
    ).rowcount
    return int(deleted)


def last_events(on: On, object_kind: str, object_id: str, n: int) -> list[RecordedEvent]:
    """The object's newest N events, oldest first (a verbose status shows them): one indexed
    read (ix_event_object, newest first by id) sent as is. Built as SQLAlchemy's statement
    each time, this read took 0.35-0.65 ms in a session; sent as is, 0.12 (the statement
    itself 0.015, the rest the session's BEGIN and its end)."""
    rows = execute(on, _LAST, (object_kind, object_id, n)).fetchall()
    return [RecordedEvent(*row) for row in reversed(rows)]


_LAST = (
    "SELECT id, at, object_kind, object_id, action, from_phase, to_phase, reason, message "
    "FROM event WHERE object_kind = ? AND object_id = ? ORDER BY id DESC LIMIT ?"
)
