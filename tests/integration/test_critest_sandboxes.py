"""critest's runtime-info, PodSandbox (run, stop, remove, attributes, sysctls) and Idempotence
groups against crictld: all 15 specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rig.critest import mirror_args, run_critest
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

FOCUS = "Runtime info|PodSandbox|Idempotence"
EXPECTED = 17  # with the two metrics specs, which skip where the RPCs are unimplemented


def test_critest_sandbox_groups_on_crictld(
    image_daemon: Daemon, registry: Registry, crictl_path: Path, short_tmp: Path
) -> None:
    d = image_daemon
    d.stop()
    d.extra_args += [*mirror_args(registry.host), "--pause-image", "registry.k8s.io/pause:3.10"]
    d.start()
    result = run_critest(crictl_path.with_name("critest"), d.endpoint, FOCUS, workdir=short_tmp)
    assert result.failures == [], result.output[-4000:]
    assert (result.ran, result.passed, result.failed) == (EXPECTED, EXPECTED, 0)
