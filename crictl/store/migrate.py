"""Schema migrations (Alembic) run from code: `crictld migrate` and the daemon's start.

The migration scripts live in `alembic/` at the repo root; the wheel ships them as
`crictl/_migrations`.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from alembic import command
from crictl.errors import FailedPrecondition
from crictl.store.engine import make_engine, sqlite_url


def script_location() -> Path:
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError(f"crictld's migration scripts are missing (looked near {package})")


def alembic_config(db_path: Path | str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("sqlalchemy.url", sqlite_url(db_path))
    return cfg


def current_revision(db_path: Path | str) -> str | None:
    engine = make_engine(db_path)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config(":memory:")).get_current_head()


def upgrade_to_head(db_path: Path | str) -> tuple[str | None, str | None]:
    """Migrates the database to head; returns (revision before, revision after).

    Each Alembic migration runs in a transaction (SQLite has transactional DDL), so a kill in
    the middle leaves the previous revision, and the next start simply runs it again.
    """
    before = current_revision(db_path)
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
    scripts = ScriptDirectory.from_config(alembic_config(":memory:"))
    return any(s.revision == revision for s in scripts.walk_revisions())
