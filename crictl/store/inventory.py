"""Read-only typed queries for the orphan sweep and `crictld doctor`: which rows exist, in which
phase, and since when. Nothing here writes.

`readonly_engine()` opens the database the way `crictld sql` does (SQLite `mode=ro`, and
`query_only` on top), so a doctor run beside a live daemon can never change its state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.pool import NullPool

from crictl.store.common import Tx
from crictl.store.inspect import open_readonly
from crictl.store.models import container_table, event_table, pod_sandbox_table


@dataclass(frozen=True)
class SandboxRow:
    id: str
    desired: str
    phase: str
    generation: int
    observed_generation: int
    netns_path: str | None  # None: host network
    network_released: bool
    updated_at: int  # ns since the epoch: the last change of phase or desired state


@dataclass(frozen=True)
class ContainerRow:
    id: str
    sandbox_id: str
    desired: str
    phase: str
    generation: int
    observed_generation: int
    updated_at: int


@dataclass(frozen=True)
class Rows:
    """Every sandbox and container row, as one read saw them; `made`: which of the ids asked
    about this database records having made (a sandbox or container "created" event), whether
    or not its row is still there."""

    sandboxes: tuple[SandboxRow, ...]
    containers: tuple[ContainerRow, ...]
    made: frozenset[str] = frozenset()

    @property
    def sandbox_ids(self) -> frozenset[str]:
        return frozenset(r.id for r in self.sandboxes)

    @property
    def container_ids(self) -> frozenset[str]:
        return frozenset(r.id for r in self.containers)


def read_rows(tx: Tx, asked: Iterable[str] = ()) -> Rows:
    s = pod_sandbox_table.c
    c = container_table.c
    sandboxes = tx.connection.execute(
        select(
            s.id,
            s.desired,
            s.phase,
            s.generation,
            s.observed_generation,
            s.netns_path,
            s.network_released,
            s.updated_at,
        ).order_by(s.created_at)
    ).all()
    containers = tx.connection.execute(
        select(
            c.id,
            c.sandbox_id,
            c.desired,
            c.phase,
            c.generation,
            c.observed_generation,
            c.updated_at,
        ).order_by(c.created_at)
    ).all()
    e = event_table.c
    made: set[str] = set()
    ids = sorted(set(asked))
    for i in range(0, len(ids), 500):  # within SQLite's bound on parameters
        made.update(
            tx.connection.execute(
                select(e.object_id)
                .where(
                    e.object_kind.in_(("sandbox", "container")),
                    e.object_id.in_(ids[i : i + 500]),
                    e.action == "created",
                )
                .distinct()
            ).scalars()
        )
    return Rows(
        tuple(SandboxRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7]) for r in sandboxes),
        tuple(ContainerRow(*r) for r in containers),
        frozenset(made),
    )


def readonly_engine(db_path: Path) -> Engine:
    """An engine on `db_path` that cannot write (NotFound if there is no database). Each
    session gets a connection of its own, in whichever thread runs it."""
    open_readonly(db_path).close()  # fail now, with crictld's error, rather than on first use

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(
            f"file:{db_path}?mode=ro", uri=True, timeout=10, check_same_thread=False
        )

    engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)
    event.listen(engine, "connect", _query_only)
    return engine


def _query_only(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    dbapi_conn.execute("PRAGMA query_only=ON")


def count_by_phase(tx: Tx) -> dict[tuple[str, str], int]:
    """{("pod" | "container", phase): how many}: the metrics' pods and containers by phase."""
    counts: dict[tuple[str, str], int] = {}
    for kind, table in (("pod", pod_sandbox_table), ("container", container_table)):
        phase = table.c.phase
        rows = tx.connection.execute(select(phase, func.count()).group_by(phase))
        for value, n in rows:
            counts[(kind, value)] = n
    return counts
