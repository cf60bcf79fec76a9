"""Query pieces shared by sandboxes and containers: id prefixes and label selectors."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select, exists, false, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import InstrumentedAttribute, Session

from crictl.errors import InvalidArgument, NotFound
from crictl.store.models import LabelKind

_HEX = re.compile(r"^[0-9a-f]+$")

LabelMaps = dict[str, tuple[dict[str, str], dict[str, str]]]


ID_LENGTH = 64


# What a statement sent as is runs on: a session (its transaction's connection), or a SQLite
# connection already in a transaction (`Store.read_on_loop`'s, without a session around it)
On = Session | sqlite3.Connection


def _driver(on: On) -> sqlite3.Connection:
    if isinstance(on, sqlite3.Connection):
        return on
    conn = on.connection().connection.driver_connection
    assert isinstance(conn, sqlite3.Connection)  # the store's engine is SQLite's
    return conn


def execute(session: On, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
    """`sql` sent as is to the SQLite connection of the session's transaction (which
    `session.connection()` begins, or is already in), or to a SQLite connection (`On`). The
    write path's statements go this way:
    SQLAlchemy's execution context around each cost more than the statement itself (a
    desired-state write measured alone took 0.17-0.22 ms through it, 0.11-0.13 ms this way; the
    raw BEGIN, UPDATE, INSERT, COMMIT take 0.03 ms). An error is raised as SQLAlchemy raises it
    (IntegrityError, OperationalError, ...), so callers see one kind either way."""
    try:
        return _driver(session).execute(sql, params)
    except sqlite3.Error as e:
        raise DBAPIError.instance(sql, params, e, sqlite3.Error) from e


def execute_many(session: Session, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """`sql` once per row of `rows`, as `execute` sends one."""
    rows = list(rows)
    try:
        _driver(session).executemany(sql, rows)
    except sqlite3.Error as e:
        raise DBAPIError.instance(sql, rows, e, sqlite3.Error) from e


def is_id_text(text: str) -> bool:
    """Could be an id or an id prefix: lowercase hex, no longer than an id."""
    return len(text) <= ID_LENGTH and _HEX.fullmatch(text) is not None


def id_prefix(column: ColumnElement[str] | InstrumentedAttribute[str], prefix: str) -> Any:
    """`column` starts with `prefix`, for list filters. Ids are lowercase hex, so anything else
    matches nothing, and is never handed to LIKE (where % and _ are wildcards and a very long
    pattern is an SQLite error)."""
    if not is_id_text(prefix):
        return false()
    return column.startswith(prefix)


def resolve_id(
    session: Session, id_column: InstrumentedAttribute[str], id_or_prefix: str, what: str
) -> str:
    """The full id of the one row whose id starts with `id_or_prefix` (CRI lets clients use
    unique prefixes); `what` names the kind of object in errors."""
    if not id_or_prefix:
        raise InvalidArgument(f"{what} id is empty")
    if not is_id_text(id_or_prefix):
        raise NotFound(f"{what} {id_or_prefix[:80]!r} not found")
    ids = list(
        session.scalars(select(id_column).where(id_column.startswith(id_or_prefix)).limit(2))
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
    owner_id: ColumnElement[str] | InstrumentedAttribute[str],
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
    session: Session,
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
    for owner, kind, key, value in session.execute(query):
        maps = out.get(owner)
        if maps is not None:
            maps[0 if kind == LabelKind.LABEL else 1][key] = value
    return out
