"""Schema migrations (Alembic) run from code: `crictld migrate` and the daemon's start.

The migration scripts live in `alembic/` at the repo root; the wheel ships them as
`crictl/_migrations`.

Alembic is imported only when a migration is due: a daemon starting on a database already at
`HEAD` (every start but the first after an upgrade) reads the revision with one query, and
neither pays Alembic's import (~90 ms) nor holds its modules. When one is due, the daemon runs
it in a child process (`upgrade_in_child`): Alembic's imports (Mako, Pygments with every lexer,
SQLAlchemy's other dialects) took the daemon from 87 to 98 MiB RSS, kept until its next start.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from crictl.errors import FailedPrecondition, Internal
from crictl.store.engine import make_engine, sqlite_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# The newest migration in alembic/versions (tests/unit/test_migrations.py checks it is
# Alembic's head): a new migration changes it.
HEAD = "0007"


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
    # Read-only: a connection that may write checkpoints the WAL into the file when it closes,
    # even one that found the file unreadable, and deletes the WAL; a refused database is
    # left exactly as it was, its WAL beside it, for whoever restores or recovers it.
    conn = sqlite3.connect(f"{Path(db_path).absolute().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None
        raise
    except sqlite3.DatabaseError as e:  # not a database (SQLITE_NOTADB), or corrupt
        raise FailedPrecondition(
            f"crictld's state database {db_path} cannot be read: {e} "
            f"({getattr(e, 'sqlite_errorname', '?')}); restore a backup of it (docs/node.md, "
            "Backups); nothing was changed"
        ) from e
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


REFUSED = 3  # the child's exit status when the database is one this crictld must not touch


async def upgrade_in_child(db_path: Path) -> tuple[str | None, str | None]:
    """`upgrade_to_head` without loading Alembic here: in a child process when a migration is
    due. The child dies with its parent (a migration cut short rolls back whole)."""
    before = await asyncio.to_thread(current_revision, db_path)
    if before == HEAD:
        return before, HEAD
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "crictl.store.migrate",
        str(db_path),
        str(os.getpid()),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    message = err.decode(errors="replace").strip()
    if proc.returncode == REFUSED:
        raise FailedPrecondition(message)
    if proc.returncode != 0:
        raise Internal(f"migrating {db_path} failed (exit status {proc.returncode}): {message}")
    was, now = json.loads(out)
    return was, now


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the daemon dies; and if it died before this was set, exit now."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        sys.exit(1)


def _main(argv: list[str]) -> int:
    if len(argv) > 1:
        _die_with_parent(int(argv[1]))
    try:
        before, after = upgrade_to_head(Path(argv[0]))
    except FailedPrecondition as e:
        print(str(e), file=sys.stderr)
        return REFUSED
    print(json.dumps([before, after]))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
