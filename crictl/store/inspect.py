"""Read-only SQL on crictld's database, for operators (`crictld sql`).

The database is opened with SQLite's `mode=ro` and an authorizer that allows only reads, so a
mistyped DELETE is refused before it runs and changes nothing, even if it came through a
trigger, an ATTACH of another file or a writing PRAGMA.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crictl.errors import FailedPrecondition, InvalidArgument, NotFound

_ALLOWED = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}
_READ_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "database_list",
    "user_version",
    "schema_version",
    "journal_mode",
    "page_count",
    "page_size",
    "freelist_count",
    "compile_options",
    "integrity_check",
    "quick_check",
    "function_list",
    "pragma_list",
    "collation_list",
}
# pragmas that only read when given no value
_QUERY_ONLY_PRAGMAS = {"user_version", "schema_version", "journal_mode", "page_size"}


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


class _Refusal:
    """Authorizer that remembers why it refused, for a precise message."""

    def __init__(self) -> None:
        self.refused: str | None = None

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
    ) -> int:
        if action in _ALLOWED:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and arg1 is not None:
            name = arg1.lower()
            if name in _READ_PRAGMAS and (arg2 is None or name not in _QUERY_ONLY_PRAGMAS):
                return sqlite3.SQLITE_OK
        self.refused = _ACTION_NAMES.get(action, f"action {action}")
        if arg1:
            self.refused += f" {arg1}"
        return sqlite3.SQLITE_DENY


_ACTION_NAMES = {
    value: name.removeprefix("SQLITE_").lower().replace("_", " ")
    for name, value in vars(sqlite3).items()
    if name.startswith("SQLITE_")
    and isinstance(value, int)
    and name not in {"SQLITE_OK", "SQLITE_DENY", "SQLITE_IGNORE"}
    and not name.startswith("SQLITE_LIMIT")
    and not name.startswith("SQLITE_DBCONFIG")
}


def open_readonly(db_path: Path) -> sqlite3.Connection:
    if not db_path.exists():
        raise NotFound(f"no crictld database at {db_path}")
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as e:
        raise FailedPrecondition(f"cannot open {db_path} read-only: {e}") from e
    return conn


_WRITE_KEYWORDS = {
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "UPSERT",
    "CREATE",
    "DROP",
    "ALTER",
    "ATTACH",
    "DETACH",
    "VACUUM",
    "REINDEX",
    "ANALYZE",
    "BEGIN",
    "COMMIT",
    "END",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
}
_LEADING_COMMENTS = re.compile(r"^(\s+|--[^\n]*(\n|$)|/\*.*?\*/)*", re.DOTALL)


def _refuse(what: str) -> InvalidArgument:
    return InvalidArgument(
        f"refused: crictld sql is read-only and the statement needs {what}; "
        "the database is unchanged"
    )


def run_query(db_path: Path, sql: str) -> QueryResult:
    # A friendly early answer for the obvious cases (SQLite would otherwise complain that a
    # view cannot be modified); the authorizer below is what actually guarantees read-only.
    body = _LEADING_COMMENTS.sub("", sql, count=1)
    keyword = body.split(None, 1)[0].upper() if body.split() else ""
    if keyword in _WRITE_KEYWORDS:
        raise _refuse(keyword.lower())
    conn = open_readonly(db_path)
    refusal = _Refusal()
    conn.set_authorizer(refusal)
    try:
        cursor = conn.execute(sql)
        rows = cursor.fetchall()
        columns = [d[0] for d in cursor.description or []]
        return QueryResult(columns, rows)
    except sqlite3.DatabaseError as e:
        if refusal.refused is not None or "readonly" in str(e) or "not authorized" in str(e):
            raise _refuse(refusal.refused or "a write") from e
        raise InvalidArgument(f"SQL error: {e}") from e
    finally:
        conn.close()


def schema(db_path: Path) -> str:
    """The CREATE statements of the views (the stable interface) and then the tables."""
    conn = open_readonly(db_path)
    try:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master "
            "WHERE type IN ('view', 'table') AND name NOT LIKE 'sqlite_%' "
            "ORDER BY type = 'table', name"
        ).fetchall()
    finally:
        conn.close()
    return "\n\n".join(f"-- {kind} {name}\n{sql.strip()};" for kind, name, sql in rows)


def format_table(result: QueryResult) -> str:
    cells = [[_cell(v) for v in row] for row in result.rows]
    widths = [len(c) for c in result.columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(result.columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.append(f"({len(cells)} row{'s' if len(cells) != 1 else ''})")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return value.hex()
    return str(value).replace("\n", "\\n")
