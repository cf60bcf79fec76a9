"""Query pieces shared by sandboxes and containers: id prefixes and label selectors."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, FromClause, Select, exists, false, select
from sqlalchemy.exc import DBAPIError

from crictl.errors import InvalidArgument, NotFound
from crictl.store.models import LabelKind

if TYPE_CHECKING:  # the daemon never imports the ORM (crictl/store/orm.py)
    from sqlalchemy.orm import InstrumentedAttribute, Session

_HEX = re.compile(r"^[0-9a-f]+$")

LabelMaps = dict[str, tuple[dict[str, str], dict[str, str]]]


ID_LENGTH = 64


# `Tx.info` key of the transaction an ORM session was made for (`Tx.orm`)
TX_KEY = "crictld.tx"


class Tx:
    """One transaction of the store, as the store's functions are given it: its SQLAlchemy
    `connection` (Core statements), that connection's SQLite `driver` (statements sent as
    is, `execute`), `info` (what the transaction touched, for the read model and the event
    listeners) and, made on first use, an ORM session joined to the same transaction (`orm`).

    A write's transaction is the connection's own (`Store.write_sync`): the write path's
    functions send their statements as is and never make the session, whose construction,
    transaction bookkeeping and commit were half of a write's CPU (`benchmarks.store_writes`:
    a container's nine transactions 1.40-1.82 ms through a session, 0.74-0.79 without).
    Whatever uses the ORM (lists of rows as objects, tests) gets `orm`; the store flushes it
    before the commit."""

    __slots__ = ("_make_orm", "_orm", "connection", "driver", "info")

    def __init__(
        self,
        connection: Connection,
        make_orm: Callable[[Connection], Session] | None = None,
        orm: Session | None = None,
    ) -> None:
        self.connection = connection
        driver = connection.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)  # the store's engine is SQLite's
        self.driver = driver
        self._orm = orm
        self._make_orm = make_orm
        self.info: dict[str, Any] = orm.info if orm is not None else {}

    @classmethod
    def of(cls, session: Session) -> Tx:
        """The transaction `session` is in (begun if it is not yet), the session its `orm`."""
        return cls(session.connection(), orm=session)

    @property
    def orm(self) -> Session:
        """An ORM session in this transaction (made now if there is none yet)."""
        if self._orm is None:
            if self._make_orm is None:
                raise RuntimeError("this transaction was made without an ORM session")
            self._orm = self._make_orm(self.connection)
            self._orm.info[TX_KEY] = self
        return self._orm

    @property
    def orm_made(self) -> Session | None:
        """The ORM session if one was made: None, no ORM object was loaded or added."""
        return self._orm


def tx_info(session: Session) -> dict[str, Any]:
    """The `info` of the transaction `session` was made for (its own for a session a `Tx`
    was made of)."""
    tx = session.info.get(TX_KEY)
    return tx.info if isinstance(tx, Tx) else session.info


# What a statement sent as is runs on: a transaction, or a SQLite connection already in one
# (`Store.read_on_loop`'s, without a session around it)
On = Tx | sqlite3.Connection


def _driver(on: On) -> sqlite3.Connection:
    if isinstance(on, sqlite3.Connection):
        return on
    return on.driver


def execute(on: On, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
    """`sql` sent as is to the SQLite connection of the transaction, or to a SQLite connection
    (`On`). The write path's statements go this way:
    SQLAlchemy's execution context around each cost more than the statement itself (a
    desired-state write measured alone took 0.17-0.22 ms through it, 0.11-0.13 ms this way; the
    raw BEGIN, UPDATE, INSERT, COMMIT take 0.03 ms). An error is raised as SQLAlchemy raises it
    (IntegrityError, OperationalError, ...), so callers see one kind either way."""
    try:
        return _driver(on).execute(sql, params)
    except sqlite3.Error as e:
        raise DBAPIError.instance(sql, params, e, sqlite3.Error) from e


def execute_many(tx: Tx, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """`sql` once per row of `rows`, as `execute` sends one."""
    rows = list(rows)
    try:
        tx.driver.executemany(sql, rows)
    except sqlite3.Error as e:
        raise DBAPIError.instance(sql, rows, e, sqlite3.Error) from e


def is_id_text(text: str) -> bool:
    """Could be an id or an id prefix: lowercase hex, no longer than an id."""
    return len(text) <= ID_LENGTH and _HEX.fullmatch(text) is not None


def id_prefix(column: ColumnElement[Any] | InstrumentedAttribute[Any], prefix: str) -> Any:
    """`column` starts with `prefix`, for list filters. Ids are lowercase hex, so anything else
    matches nothing, and is never handed to LIKE (where % and _ are wildcards and a very long
    pattern is an SQLite error)."""
    if not is_id_text(prefix):
        return false()
    return column.startswith(prefix)


def resolve_id(tx: Tx, id_column: ColumnElement[Any], id_or_prefix: str, what: str) -> str:
    """The full id of the one row whose id starts with `id_or_prefix` (CRI lets clients use
    unique prefixes); `what` names the kind of object in errors."""
    if not id_or_prefix:
        raise InvalidArgument(f"{what} id is empty")
    if not is_id_text(id_or_prefix):
        raise NotFound(f"{what} {id_or_prefix[:80]!r} not found")
    ids: list[str] = list(
        tx.connection.scalars(select(id_column).where(id_column.startswith(id_or_prefix)).limit(2))
    )
    if not ids:
        raise NotFound(f"{what} {id_or_prefix!r} not found")
    if len(ids) > 1:
        raise InvalidArgument(f"{what} id prefix {id_or_prefix!r} is ambiguous")
    return ids[0]


def with_labels(
    query: Select[Any],
    labels_table: FromClause,
    owner_column: str,
    owner_id: ColumnElement[Any],
    selector: Mapping[str, str],
) -> Select[Any]:
    """Restricts `query` to owners carrying every label of `selector`."""
    lt = labels_table.c
    for key, value in selector.items():
        query = query.where(
            exists().where(
                lt[owner_column] == owner_id,
                lt.kind == LabelKind.LABEL,
                lt.key == key,
                lt.value == value,
            )
        )
    return query


def label_maps(
    tx: Tx,
    labels_table: FromClause,
    owner_column: str,
    ids: list[str],
    every: bool = False,
) -> LabelMaps:
    """{owner id: (labels, annotations)} for `ids`, in one query (EVERY: `ids` are all the
    owners, so the whole table is read, with no list of ids to bind)."""
    out: LabelMaps = {i: ({}, {}) for i in ids}
    lt = labels_table.c
    query = select(lt[owner_column], lt.kind, lt.key, lt.value)
    if not every:
        query = query.where(lt[owner_column].in_(ids))
    for owner, kind, key, value in tx.connection.execute(query):
        maps = out.get(owner)
        if maps is not None:
            maps[0 if kind == LabelKind.LABEL else 1][key] = value
    return out
