"""Schema migrations (Alembic) run from code: `crictld migrate` and the daemon's start.

The migration scripts live in `alembic/` at the repo root; the wheel ships them as
`crictl/_migrations`.

Alembic is imported only when a migration is due: a daemon starting on a database already at
`HEAD` (every start but the first after an upgrade) reads the revision with one query, and
neither pays Alembic's import (~90 ms) nor holds its modules (~11 MiB).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from crictl.errors import FailedPrecondition
from crictl.store.engine import make_engine, sqlite_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# The newest migration in alembic/versions (tests/unit/test_migrations.py checks it is
# Alembic's head): a new migration changes it.
HEAD = "0004"


def script_location() -> Path:
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError(f"crictld's migration scripts are missing (looked near {package})")


def alembic_config(db_path: Path | str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("sqlalchemy.url", sqlite_url(db_path))
    return cfg


def current_revision(db_path: Path | str) -> str | None:
    """The schema revision the database is at (None: not created yet)."""
    engine = make_engine(db_path)  # creates the file 0600 if it is new
    engine.dispose()
    conn = sqlite3.connect(str(db_path), timeout=10)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None
        raise
    finally:
        conn.close()
    return str(row[0]) if row else None


def head_revision() -> str | None:
    """Alembic's head, read from the scripts (imports Alembic)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(":memory:")).get_current_head()


def upgrade_to_head(db_path: Path | str) -> tuple[str | None, str | None]:
    """Migrates the database to head; returns (revision before, revision after).

    Each Alembic migration runs in a transaction (SQLite has transactional DDL), so a kill in
    the middle leaves the previous revision, and the next start simply runs it again.
    """
    before = current_revision(db_path)
    if before == HEAD:
        return before, HEAD
    from alembic import command

    head = head_revision()
    if before is not None and before != head and not _known(before):
        # Written by a newer crictld (a downgrade of the binary): never touch it.
        raise FailedPrecondition(
            f"database {db_path} is at schema revision {before}, which this crictld does not "
            f"know (its newest is {head}): it was written by a newer crictld; run that one, or "
            "restore a backup made for this version"
        )
    if before != head:
        command.upgrade(alembic_config(db_path), "head")
    return before, head


def _known(revision: str) -> bool:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config(":memory:"))
    return any(s.revision == revision for s in scripts.walk_revisions())
