"""The daemon's imports are on a restart's critical path (it serves only once they are done)
and stay in its memory for life, so the heavy ones it needs only later are imported then:
Alembic (in the migration's child process) and pyroute2 (at the first netlink read of a pod's
interfaces). aiohttp is never imported (the registry's client is h11; an import-linter contract
keeps it out). docs/performance.md has the figures."""

from __future__ import annotations

import json
import subprocess
import sys

LATER = ("alembic", "aiohttp", "pyroute2", "mako", "pygments")


def test_the_daemon_imports_none_of_what_it_needs_only_later() -> None:
    probe = (
        "import json, sys\n"
        "import crictl.daemon, crictl.cli\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({LATER!r}))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []
