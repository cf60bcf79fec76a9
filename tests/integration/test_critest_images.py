"""critest's "Image Manager" group against crictld, and against containerd's own CRI plugin on
the same fixtures (so a failure can be told apart as a fixture bug or a runtime bug)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rig.cni import CniNetwork
from tests.rig.critest import UNREPRODUCIBLE, UPSTREAM_REGISTRIES, mirror_args, run_critest
from tests.rig.daemon import Daemon
from tests.rig.reference import ReferenceContainerd
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

FOCUS = "Image Manager"
EXPECTED = 9  # the group's 10 specs less the digest-pinned one


def test_critest_image_manager_on_crictld(
    image_daemon: Daemon, registry: Registry, crictl_path: Path, short_tmp: Path
) -> None:
    d = image_daemon
    d.stop()
    d.extra_args += mirror_args(registry.host)
    d.start()
    result = run_critest(
        crictl_path.with_name("critest"), d.endpoint, FOCUS, UNREPRODUCIBLE, workdir=short_tmp
    )
    assert result.failures == [], result.output[-4000:]
    assert (result.ran, result.passed, result.failed) == (EXPECTED, EXPECTED, 0)
    assert result.returncode == 0


def test_critest_image_manager_on_containerd_cri(
    registry: Registry, crictl_path: Path, cni_network: CniNetwork, short_tmp: Path
) -> None:
    with ReferenceContainerd(cni_network, registry.host, mirrors=UPSTREAM_REGISTRIES) as ref:
        result = run_critest(
            crictl_path.with_name("critest"), ref.endpoint, FOCUS, UNREPRODUCIBLE, workdir=short_tmp
        )
    assert result.failures == [], result.output[-4000:]
    assert (result.ran, result.passed, result.failed) == (EXPECTED, EXPECTED, 0)
