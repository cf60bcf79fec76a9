"""Read-only SQL on crictld's database, for operators (`crictld sql`).

The database is opened with SQLite's `mode=ro` and an authorizer that allows only reads, so a
mistyped DELETE is refused before it runs and changes nothing, even if it came through a
trigger, an ATTACH of another file or a writing PRAGMA.

A query is also bounded, so that a typo cannot hang or starve the node it runs on:
  - SQL functions come from an allow list (the core scalar, aggregate, window, date, math and
    JSON functions); `load_extension`, `randomblob`, `zeroblob`, `fts3_tokenizer` and the like
    are refused before the query runs;
  - a time limit (`--timeout`, checked by a progress handler every thousand VM steps) stops
    a query that runs too long, e.g. a recursive CTE without an end;
  - a row limit (`--max-rows`) stops reading after that many rows (the rows read are printed);
  - a value is at most MAX_VALUE_BYTES, and SQLite's heap in the process at most MAX_HEAP_BYTES
    (temporary tables are kept in memory, so a runaway query cannot fill the disk either).
The database holds secrets (stored configs carry env values): it is private to root, and a
user who cannot read it is told so plainly.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crictl.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)

DEFAULT_TIMEOUT = 10.0  # seconds
DEFAULT_MAX_ROWS = 10_000
MAX_VALUE_BYTES = 32 << 20  # SQLITE_LIMIT_LENGTH: any string, blob or row
# sqlite3_hard_heap_limit64: process-wide, and it can only be lowered (PRAGMA semantics), which
# is fine for the short-lived `crictld sql` process.
MAX_HEAP_BYTES = 256 << 20
_PROGRESS_STEPS = 1000  # VM instructions between two looks at the clock

_ALLOWED = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
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


# The SQL functions a query may call. Everything else is refused, notably load_extension,
# randomblob and zeroblob (gigabytes in one call), fts3_tokenizer (takes a pointer), the FTS and
# R-tree helpers, sqlite_log and the shell's readfile/writefile/edit. `->`/`->>` are JSON's.
ALLOWED_FUNCTIONS = frozenset(
    {
        # core scalar
        "abs", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "ifnull",
        "iif", "instr", "length", "like", "likelihood", "likely", "lower", "ltrim", "max",
        "min", "nullif", "octet_length", "printf", "quote", "random", "replace", "round",
        "rtrim", "sign", "soundex", "sqlite_source_id", "sqlite_version", "substr",
        "substring", "trim", "typeof", "unhex", "unicode", "unlikely", "upper",
        # aggregate
        "avg", "count", "group_concat", "string_agg", "sum", "total",
        # window
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag",
        "lead", "first_value", "last_value", "nth_value",
        # date and time
        "date", "time", "datetime", "julianday", "strftime", "unixepoch", "timediff",
        "current_date", "current_time", "current_timestamp",
        # math
        "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos",
        "cosh", "degrees", "exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow",
        "power", "radians", "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
        # JSON (json_each and json_tree are table-valued: reads, not function calls)
        "->", "->>", "json", "json_array", "json_array_length", "json_error_position",
        "json_extract", "json_group_array", "json_group_object", "json_insert", "json_object",
        "json_patch", "json_pretty", "json_quote", "json_remove", "json_replace", "json_set",
        "json_type", "json_valid",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Limits:
    """Bounds of one query; 0 means no bound (for timeout and max_rows)."""

    timeout: float = DEFAULT_TIMEOUT
    max_rows: int = DEFAULT_MAX_ROWS

    def __post_init__(self) -> None:
        if not self.timeout >= 0:  # also refuses NaN
            raise InvalidArgument(f"--timeout {self.timeout}: must be 0 (none) or positive")
        if self.max_rows < 0:
            raise InvalidArgument(f"--max-rows {self.max_rows}: must be 0 (none) or positive")


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    # True when the query had more rows than Limits.max_rows: `rows` holds the first ones.
    truncated: bool = False


class _Refusal:
    """Authorizer that remembers why it refused, for a precise message."""

    def __init__(self) -> None:
        self.refused: str | None = None
        self.function: str | None = None

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None
    ) -> int:
        if action == sqlite3.SQLITE_FUNCTION:
            name = (arg2 or "").lower()
            if name in ALLOWED_FUNCTIONS:
                return sqlite3.SQLITE_OK
            self.function = name
            return sqlite3.SQLITE_DENY
        if action in _ALLOWED:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master" and _db == "main":
            # Asked while SQLite declares an eponymous virtual table (json_each, json_tree,
            # pragma_table_info...) on first use: compiled, never run. A query's own UPDATE of
            # the schema table fails before the authorizer is asked ("may not be modified"),
            # and the connection is read-only anyway.
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


def not_readable(db_path: Path) -> PermissionDenied:
    return PermissionDenied(
        f"cannot read the database {db_path}: permission denied "
        "(it is private to root; run crictld sql as root)"
    )


def open_readonly(db_path: Path, busy_timeout: float = 10.0) -> sqlite3.Connection:
    try:
        db_path.stat()
    except FileNotFoundError:
        raise NotFound(f"no crictld database at {db_path}") from None
    except PermissionError:  # the state dir is 0700
        raise not_readable(db_path) from None
    # A WAL reader needs the database and, when they exist, its -wal and -shm files.
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        if (path == db_path or path.exists()) and not os.access(path, os.R_OK):
            raise not_readable(db_path)
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=busy_timeout)
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


class _Clock:
    """The progress handler: interrupts the query once its time is up."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout if timeout else None
        self.expired = False

    def __call__(self) -> int:
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.expired = True
            return 1
        return 0


def _bound(conn: sqlite3.Connection) -> None:
    """Memory bounds, set before the authorizer (which would refuse these pragmas)."""
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.execute("PRAGMA temp_store = MEMORY")  # temp tables count against the heap limit
    conn.execute(f"PRAGMA hard_heap_limit = {MAX_HEAP_BYTES}")  # only ever lowers it


def run_query(db_path: Path, sql: str, limits: Limits | None = None) -> QueryResult:
    limits = limits or Limits()
    # A friendly early answer for the obvious cases (SQLite would otherwise complain that a
    # view cannot be modified); the authorizer below is what actually guarantees read-only.
    body = _LEADING_COMMENTS.sub("", sql, count=1)
    keyword = body.split(None, 1)[0].upper() if body.split() else ""
    if keyword in _WRITE_KEYWORDS:
        raise _refuse(keyword.lower())
    conn = open_readonly(db_path, busy_timeout=limits.timeout or 10.0)
    refusal = _Refusal()
    clock = _Clock(limits.timeout)
    try:
        _bound(conn)
        conn.set_authorizer(refusal)
        conn.set_progress_handler(clock, _PROGRESS_STEPS)
        cursor = conn.execute(sql)
        columns = [d[0] for d in cursor.description or []]
        if not limits.max_rows:
            return QueryResult(columns, cursor.fetchall())
        rows = cursor.fetchmany(limits.max_rows + 1)
        truncated = len(rows) > limits.max_rows
        return QueryResult(columns, rows[: limits.max_rows], truncated)
    except sqlite3.DatabaseError as e:
        if refusal.function is not None:
            raise InvalidArgument(
                f"function {refusal.function} is not allowed in crictld sql (it allows the "
                "core scalar, aggregate, window, date, math and JSON functions)"
            ) from e
        if clock.expired:
            raise DeadlineExceeded(f"query stopped after {limits.timeout:g} s (--timeout)") from e
        if refusal.refused is not None or any(
            why in str(e) for why in ("readonly", "not authorized", "may not be modified")
        ):
            raise _refuse(refusal.refused or "a write") from e
        if isinstance(e, sqlite3.DataError) and "too big" in str(e):
            raise ResourceExhausted(
                f"query stopped: a value would be larger than {MAX_VALUE_BYTES >> 20} MiB"
            ) from e
        raise InvalidArgument(f"SQL error: {e}") from e
    except MemoryError as e:
        raise ResourceExhausted(
            f"query stopped: it needs more than {MAX_HEAP_BYTES >> 20} MiB of memory"
        ) from e
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
