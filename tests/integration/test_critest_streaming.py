"""critest's Streaming group (exec, attach, port-forward, port-forward in the host network)
against crictld: over SPDY, as kubelet and crictl speak by default, and again over WebSocket
(v5 channels, and SPDY tunnelled in WebSocket for port-forward), which containerd refuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.rig.critest import mirror_args, run_critest
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

WEBSOCKET = ("-websocket-exec", "-websocket-attach", "-websocket-portforward")


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_critest_streaming(
    transport: str,
    image_daemon: Daemon,
    registry: Registry,
    crictl_path: Path,
    short_tmp: Path,
) -> None:
    d = image_daemon
    d.stop()
    d.extra_args += [*mirror_args(registry.host), "--pause-image", "registry.k8s.io/pause:3.10"]
    d.start()
    result = run_critest(
        crictl_path.with_name("critest"),
        d.endpoint,
        os.environ.get("CRITEST_FOCUS", "Streaming"),
        workdir=short_tmp,
        timeout=float(os.environ.get("CRITEST_TIMEOUT", "600")),
        extra=WEBSOCKET if transport == "websocket" else (),
    )
    assert result.failures == [], result.output[-8000:] + "\n--- crictld:\n" + d.log()[-12000:]
    assert (result.ran, result.passed) == (5, 5), result.output[-3000:]
