"""`crictld sql` is bounded: a time limit, a row limit, an allow list of SQL functions and
memory bounds, each with a clear message; ordinary queries on the views still work."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from crictl.cli import main
from crictl.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from crictl.store import inspect
from crictl.store.engine import Store, make_engine
from crictl.store.events import record_event
from crictl.store.migrate import upgrade_to_head
from crictl.store.sandboxes import NewSandbox, create_sandbox

ENDLESS = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n"
ROWS_20000 = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
    "SELECT i FROM n"
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "crictld.db"
    upgrade_to_head(path)
    store = Store(make_engine(path))
    store.write_sync(
        lambda s: create_sandbox(
            s,
            NewSandbox(
                id="d" * 64,
                name="web",
                namespace="prod",
                uid="u",
                attempt=1,
                config="{}",
                config_digest="x",
                labels={"app": "web"},
                annotations={},
            ),
        )
    )
    store.write_sync(lambda s: record_event(s, "daemon", "1", "started", message="hello"))
    store.close()
    return path


def test_an_endless_query_stops_at_the_timeout(db: Path) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"^query stopped after 0\.5 s \(--timeout\)$"):
        inspect.run_query(db, ENDLESS, inspect.Limits(timeout=0.5))
    assert time.monotonic() - started < 5


def test_an_endless_query_that_grows_stops_too(db: Path) -> None:
    # UNION (not ALL) keeps every row seen: memory grows until the time or the heap limit.
    grows = (
        "WITH RECURSIVE n(i, s) AS (SELECT 1, 'x' UNION SELECT i + 1, s FROM n) "
        "SELECT count(*) FROM n"
    )
    with pytest.raises((DeadlineExceeded, ResourceExhausted), match="query stopped"):
        inspect.run_query(db, grows, inspect.Limits(timeout=1))


def test_the_cli_names_the_timeout(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "--db", str(db), "--timeout", "0.3", ENDLESS]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "crictld: query stopped after 0.3 s (--timeout)"
    assert captured.out == ""


@pytest.mark.parametrize(
    ("sql", "function"),
    [
        ("SELECT length(randomblob(1e9))", "randomblob"),
        ("SELECT randomblob(16)", "randomblob"),
        ("SELECT zeroblob(1000000000)", "zeroblob"),
        ("SELECT load_extension('/tmp/evil.so')", "load_extension"),
        ("SELECT LOAD_EXTENSION('/tmp/evil.so', 'entry')", "load_extension"),
        ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer"),
        ("SELECT sqlite_log(1, 'x')", "sqlite_log"),
        ("SELECT name FROM pods WHERE length(zeroblob(10)) > 0", "zeroblob"),
    ],
)
def test_functions_off_the_allow_list_are_refused(db: Path, sql: str, function: str) -> None:
    with pytest.raises(
        InvalidArgument, match=f"^function {function} is not allowed in crictld sql"
    ):
        inspect.run_query(db, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "WITH x AS (SELECT 1) UPDATE sqlite_master SET sql = ''",
        "WITH x AS (SELECT 1) DELETE FROM sqlite_schema",
        "WITH x AS (SELECT 1) INSERT INTO sqlite_master VALUES ('t', 't', 't', 0, '')",
    ],
)
def test_the_schema_table_stays_unwritable(db: Path, sql: str) -> None:
    # The authorizer lets SQLite declare eponymous virtual tables (json_each, pragma_*), which
    # it checks as an UPDATE of sqlite_master: a query's own writes there are still refused.
    before = db.read_bytes()
    with pytest.raises(InvalidArgument, match="read-only"):
        inspect.run_query(db, sql)
    assert db.read_bytes() == before


def test_the_cli_names_a_refused_function(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "--db", str(db), "SELECT hex(randomblob(1000000000))"]) == 2
    assert "function randomblob is not allowed in crictld sql" in capsys.readouterr().err


def test_a_long_result_stops_at_the_row_limit(db: Path) -> None:
    r = inspect.run_query(db, ROWS_20000)
    assert r.truncated and len(r.rows) == inspect.DEFAULT_MAX_ROWS == 10_000
    assert r.rows[0] == (1,) and r.rows[-1] == (10_000,)
    r = inspect.run_query(db, ROWS_20000, inspect.Limits(max_rows=0))
    assert not r.truncated and len(r.rows) == 20_000
    r = inspect.run_query(db, ROWS_20000, inspect.Limits(max_rows=20_000))
    assert not r.truncated and len(r.rows) == 20_000  # exactly at the limit is not over it


def test_the_cli_prints_the_rows_read_then_says_it_stopped(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sql", "--db", str(db), ROWS_20000]) == 3
    captured = capsys.readouterr()
    assert captured.err.strip() == "crictld: stopped after 10000 rows (--max-rows)"
    lines = captured.out.splitlines()
    assert lines[-1] == "(10000 rows)" and lines[-2] == "10000"
    assert main(["sql", "--db", str(db), "--json", "--max-rows", "5", ROWS_20000]) == 3
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [{"i": i} for i in range(1, 6)]
    assert captured.err.strip() == "crictld: stopped after 5 rows (--max-rows)"


def test_bad_limits_are_refused(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidArgument, match="--timeout"):
        inspect.Limits(timeout=-1)
    with pytest.raises(InvalidArgument, match="--timeout"):
        inspect.Limits(timeout=float("nan"))
    with pytest.raises(InvalidArgument, match="--max-rows"):
        inspect.Limits(max_rows=-1)
    assert main(["sql", "--db", str(db), "--max-rows", "-3", "SELECT 1"]) == 2
    assert "--max-rows -3" in capsys.readouterr().err


def test_values_are_bounded(db: Path) -> None:
    # printf's width is capped by the length limit (SQLite answers NULL) ...
    assert inspect.run_query(db, "SELECT printf('%1000000000d', 1)").rows == [(None,)]
    # ... and a value built up past it stops the query with a clear message.
    with pytest.raises(ResourceExhausted, match="larger than 32 MiB"):
        inspect.run_query(
            db, "SELECT replace(printf('%.*c', 30000000, 'x'), 'x', 'xx')", inspect.Limits()
        )


def test_ordinary_queries_still_work(db: Path) -> None:
    r = inspect.run_query(
        db,
        "SELECT name, namespace, state, json_extract(labels, '$.app') AS app, "
        "labels ->> '$.app' AS app2, upper(substr(id, 1, 4)) AS short, "
        "strftime('%Y', created) >= '2024' AS recent, coalesce(ip, '-') AS ip, "
        "length(id) AS n, typeof(attempt) AS t FROM pods",
    )
    assert r.columns == [
        "name",
        "namespace",
        "state",
        "app",
        "app2",
        "short",
        "recent",
        "ip",
        "n",
        "t",
    ]
    assert r.rows == [
        ("web", "prod", "SANDBOX_NOTREADY", "web", "web", "DDDD", 1, "-", 64, "integer")
    ]
    assert not r.truncated
    for view in ("pods", "containers", "events", "images"):
        inspect.run_query(db, f"SELECT * FROM {view}")
    r = inspect.run_query(
        db,
        "SELECT object_kind, count(*), group_concat(action), max(at_ns) > 0, "
        "row_number() OVER (ORDER BY object_kind) FROM events GROUP BY object_kind",
    )
    assert [row[0] for row in r.rows] == ["daemon", "sandbox"]
    r = inspect.run_query(
        db,
        "SELECT key, value FROM json_each((SELECT labels FROM pods)) "
        "UNION ALL SELECT name, type FROM pragma_table_info('event') WHERE name = 'id'",
    )
    assert r.rows == [("app", "web"), ("id", "INTEGER")]
    r = inspect.run_query(
        db,
        "SELECT abs(-2), round(2.5), iif(1, 'y', 'n'), nullif(1, 1), instr('abc', 'c'), "
        "printf('%05d', 42), hex('A'), quote('x'), 'ab' LIKE 'a%', 'ab' GLOB 'a*', "
        "date('2024-01-02'), unixepoch('1970-01-01 00:01:00'), sqrt(16), "
        "json_array_length(json_array(1, 2)), json_object('a', 1), json_valid('{}')",
    )
    assert r.rows == [
        (2, 3.0, "y", None, 3, "00042", "41", "'x'", 1, 1, "2024-01-02", 60, 4.0, 2, '{"a":1}', 1)
    ]
