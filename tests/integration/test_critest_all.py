"""critest as a whole against crictld, but for Streaming, which test_critest_streaming.py runs
over both transports.

Skipped by name, each for a stated reason: the digest-pinned upstream image (cannot be made
offline) and the benchmarks (not conformance). Everything else must pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rig.critest import mirror_args, run_critest
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

SKIP = (
    "Streaming",
    "public image with digest should be pulled and removed",
    "benchmark",
)


def test_critest_everything_but_streaming(
    image_daemon: Daemon, registry: Registry, crictl_path: Path, short_tmp: Path
) -> None:
    d = image_daemon
    d.stop()
    d.extra_args += [*mirror_args(registry.host), "--pause-image", "registry.k8s.io/pause:3.10"]
    d.start()
    result = run_critest(
        crictl_path.with_name("critest"), d.endpoint, "", SKIP, workdir=short_tmp, timeout=1500
    )
    assert result.failures == [], result.output[-6000:]
    assert result.failed == 0 and result.passed == result.ran and result.ran >= 90, (
        result.ran,
        result.passed,
    )
