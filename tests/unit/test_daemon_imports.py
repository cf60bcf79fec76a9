"""The daemon's imports are on a restart's critical path (it serves only once they are done)
and stay in its memory for life, so the heavy ones it needs only later are imported then:
Alembic (in the migration's child process) and pyroute2 (at the first netlink read of a pod's
interfaces). aiohttp is never imported (the registry's client is h11; an import-linter contract
keeps it out), nor SQLAlchemy's ORM (the daemon writes and reads the tables through Core and SQL
sent as is; `crictl.store.orm` maps classes for tests and tools). docs/performance.md has the
figures."""

from __future__ import annotations

import json
import subprocess
import sys

LATER = ("alembic", "aiohttp", "pyroute2", "mako", "pygments")
NEVER = ("sqlalchemy.orm", "crictl.store.orm")


def test_the_daemon_imports_none_of_what_it_needs_only_later() -> None:
    probe = (
        "import json, sys\n"
        "import crictl.daemon, crictl.cli\n"
        f"later = {{m.split('.')[0] for m in sys.modules}} & set({LATER!r})\n"
        f"print(json.dumps(sorted(later | (set(sys.modules) & set({NEVER!r})))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


def test_the_orm_is_still_there_for_tests_and_tools() -> None:
    """The probe above can see the ORM: it is what `crictl.store.orm` imports."""
    probe = (
        "import json, sys\n"
        "import crictl.store.orm\n"
        f"print(json.dumps(sorted(set(sys.modules) & set({NEVER!r}))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == sorted(NEVER)
