from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from crictl.cli import main
from crictl.errors import InvalidArgument, NotFound
from crictl.store import inspect
from crictl.store.engine import Store, make_engine
from crictl.store.migrate import upgrade_to_head
from crictl.store.sandboxes import NewSandbox, create_sandbox


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "crictld.db"
    upgrade_to_head(path)
    store = Store(make_engine(path))
    store.write_sync(
        lambda s: create_sandbox(
            s,
            NewSandbox(
                id="c" * 64,
                name="web",
                namespace="prod",
                uid="u",
                attempt=1,
                config="{}",
                config_digest="x",
                labels={"app": "web"},
                annotations={"note": "hi"},
            ),
        )
    )
    store.close()
    return path


def _digest(db: Path) -> str:
    h = hashlib.sha256()
    for suffix in ("", "-wal"):
        p = Path(str(db) + suffix)
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_views_read_like_the_docs_say(db: Path) -> None:
    r = inspect.run_query(db, "SELECT name, namespace, state, phase, labels, annotations FROM pods")
    assert r.columns == ["name", "namespace", "state", "phase", "labels", "annotations"]
    name, ns, state, phase, labels, annotations = r.rows[0]
    assert (name, ns, state, phase) == ("web", "prod", "SANDBOX_NOTREADY", "PENDING")
    assert json.loads(labels) == {"app": "web"}
    assert json.loads(annotations) == {"note": "hi"}
    ev = inspect.run_query(db, "SELECT object_kind, action, to_phase, at FROM events")
    assert ev.rows[0][:3] == ("sandbox", "created", "PENDING")
    assert ev.rows[0][3].endswith("Z")


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM pods",
        "DELETE FROM pod_sandbox",
        "UPDATE pod_sandbox SET phase = 'READY'",
        "INSERT INTO event (at, object_kind, object_id, action, reason, message) "
        "VALUES (1, 'x', 'y', 'z', '', '')",
        "DROP TABLE event",
        "CREATE TABLE t (x)",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA user_version = 7",
        "ATTACH DATABASE '/tmp/crictld-attached.db' AS other",
        "VACUUM",
    ],
)
def test_writes_are_refused_and_change_nothing(db: Path, sql: str) -> None:
    before = _digest(db)
    with pytest.raises(InvalidArgument, match="read-only"):
        inspect.run_query(db, sql)
    assert _digest(db) == before
    assert not Path("/tmp/crictld-attached.db").exists()


def test_read_pragmas_and_ctes_are_allowed(db: Path) -> None:
    cols = inspect.run_query(db, "PRAGMA table_info(pod_sandbox)")
    assert "netns_path" in [row[1] for row in cols.rows]
    assert inspect.run_query(db, "PRAGMA journal_mode").rows == [("wal",)]
    r = inspect.run_query(
        db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n "
        "WHERE i < 3) SELECT count(*) FROM n",
    )
    assert r.rows == [(3,)]


def test_bad_sql_and_missing_db(db: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="no such table"):
        inspect.run_query(db, "SELECT * FROM nope")
    with pytest.raises(NotFound, match="no crictld database"):
        inspect.run_query(tmp_path / "absent.db", "SELECT 1")


def test_cli_table_json_schema_and_refusal(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "--db", str(db), "SELECT name, attempt FROM pods"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["name", "attempt"]
    assert "web" in out and "(1 row)" in out
    assert main(["sql", "--db", str(db), "--json", "SELECT name, attempt FROM pods"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "web", "attempt": 1}]
    assert main(["sql", "--db", str(db), "--schema"]) == 0
    schema = capsys.readouterr().out
    for view in ("pods", "containers", "events"):
        assert f"-- view {view}\nCREATE VIEW {view}" in schema
    assert main(["sql", "--db", str(db), "DELETE FROM pods"]) == 2
    assert "read-only" in capsys.readouterr().err
