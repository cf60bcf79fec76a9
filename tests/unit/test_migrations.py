from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from alembic import command
from crictl.errors import FailedPrecondition
from crictl.store.migrate import (
    HEAD,
    alembic_config,
    current_revision,
    head_revision,
    upgrade_in_child,
    upgrade_to_head,
)

VIEWS = {"pods", "containers", "events", "images"}


def _objects(db: Path, kind: str) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite_%'", (kind,)
        )
        return {r[0] for r in rows}


def test_upgrade_check_downgrade_upgrade(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    cfg = alembic_config(db)
    command.upgrade(cfg, "head")
    assert current_revision(db) == head_revision()
    assert _objects(db, "view") >= VIEWS
    command.check(cfg)  # the models and the migrations agree
    command.downgrade(cfg, "base")
    assert _objects(db, "view") == set()
    assert _objects(db, "table") == {"alembic_version"}
    command.upgrade(cfg, "head")
    assert _objects(db, "view") >= VIEWS


def test_the_head_constant_is_alembics_head() -> None:
    """`HEAD` lets a start skip Alembic when nothing is due: it must name the newest script."""
    assert head_revision() == HEAD


def test_upgrade_to_head_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    assert upgrade_to_head(db) == (None, head_revision())
    assert upgrade_to_head(db) == (head_revision(), head_revision())


def test_a_failing_migration_leaves_no_half_schema(tmp_path: Path) -> None:
    """SQLite DDL is transactional here: a migration that dies halfway is rolled back whole."""
    db = tmp_path / "m.db"
    scripts = tmp_path / "alembic"
    real = alembic_config(db).get_main_option("script_location")
    assert real is not None
    (scripts / "versions").mkdir(parents=True)
    for name in ("env.py", "script.py.mako"):
        (scripts / name).write_text((Path(real) / name).read_text())
    (scripts / "versions" / "0001_broken.py").write_text(
        "from alembic import op\n"
        "revision = '0001'\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n"
        "def upgrade():\n"
        "    op.execute('CREATE TABLE first_half (x INTEGER)')\n"
        "    op.execute('THIS IS NOT SQL')\n"
        "def downgrade():\n    pass\n"
    )
    cfg = alembic_config(db)
    cfg.set_main_option("script_location", str(scripts))
    with pytest.raises(Exception, match="syntax error"):
        command.upgrade(cfg, "head")
    assert "first_half" not in _objects(db, "table")
    assert current_revision(db) is None


def test_a_database_from_a_newer_crictld_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    upgrade_to_head(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    before = db.read_bytes()
    with pytest.raises(FailedPrecondition, match="written by a newer crictld"):
        upgrade_to_head(db)
    assert db.read_bytes() == before
    assert current_revision(db) == "ffffffffffff"


_IN_CHILD = """
import asyncio, json, sys
from pathlib import Path
from crictl.store.migrate import upgrade_in_child
result = asyncio.run(upgrade_in_child(Path(sys.argv[1])))
print(json.dumps([result, [m for m in ("alembic", "mako", "pygments") if m in sys.modules]]))
"""


def _in_child_from_a_fresh_process(db: Path) -> tuple[list[str | None], list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", _IN_CHILD, str(db)], capture_output=True, text=True, check=True
    )
    result, loaded = json.loads(out.stdout)
    return result, loaded


def test_the_daemons_migration_runs_in_a_child(tmp_path: Path) -> None:
    """The daemon migrates through `upgrade_in_child`: the schema is made, and the daemon's
    process never loads Alembic and what it imports (~11 MiB it would keep)."""
    db = tmp_path / "m.db"
    assert _in_child_from_a_fresh_process(db) == ([None, HEAD], [])
    assert current_revision(db) == HEAD and _objects(db, "view") >= VIEWS
    assert _in_child_from_a_fresh_process(db) == ([HEAD, HEAD], [])


def test_a_child_refusing_a_newer_database_says_why(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    upgrade_to_head(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    tables = _objects(db, "table")
    with pytest.raises(FailedPrecondition, match=r"ffffffffffff.*written by a newer crictld"):
        asyncio.run(upgrade_in_child(db))
    assert current_revision(db) == "ffffffffffff" and _objects(db, "table") == tables


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "crictld.db"
    garbage = bytes(range(256)) * 64
    db.write_bytes(garbage)
    with pytest.raises(FailedPrecondition) as e:
        current_revision(db)
    assert str(e.value) == (
        f"crictld's state database {db} cannot be read: file is not a database (SQLITE_NOTADB); "
        "restore a backup of it (docs/node.md, Backups); nothing was changed"
    )
    assert db.read_bytes() == garbage


def test_a_corrupt_database_is_refused_with_its_wal_untouched(tmp_path: Path) -> None:
    """A crash leaves committed pages in the -wal; a connection that may write would, on
    closing, checkpoint them into the corrupt file and delete the WAL, even after reading
    nothing. The refusal reads only."""
    db = tmp_path / "crictld.db"
    upgrade_to_head(db)
    script = (  # a writer killed with pages in the WAL that page 1 does not hold
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA wal_autocheckpoint=0')\n"
        'c.execute("UPDATE alembic_version SET version_num = version_num")\n'
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(db)], check=True, timeout=30)
    wal = db.with_name("crictld.db-wal")
    assert wal.stat().st_size > 0
    with db.open("r+b") as f:
        f.write(b"\xde\xad" * 50)  # the header
    files = db.read_bytes(), wal.read_bytes()
    with pytest.raises(FailedPrecondition, match=r"SQLITE_NOTADB.*nothing was changed"):
        current_revision(db)
    assert (db.read_bytes(), wal.read_bytes()) == files
