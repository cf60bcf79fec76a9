"""RuntimeClass handlers from the config: a handler runs its pods through its own runc-compatible
binary (here a wrapper that records each call and runs runc), Status lists it with its
features, and an unknown handler is refused with its name."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_images import failure, pull
from tests.integration.test_sandboxes import pod_config, remove, run
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


def test_a_configured_handler_runs_its_pods(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    d = image_daemon
    runc = shutil.which("runc")
    assert runc
    calls = short_tmp / "wrapper.calls"
    wrapper = short_tmp / "runc-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {runc} "$@"\n')
    wrapper.chmod(0o755)
    config = short_tmp / "crictld.toml"
    config.write_text(f'[runtime_handlers]\nwrapped = "{wrapper}"\n')
    d.stop()
    d.extra_args += ["--config", str(config)]
    d.start()

    handlers = {h.name for h in d.status().runtime_handlers}
    assert handlers == {"", "runc", "wrapped"}, handlers
    pull(d, f"{registry.host}/pause:3.10")
    code, message = failure(
        d.runtime_call,
        "RunPodSandbox",
        api_pb2.RunPodSandboxRequest(config=pod_config("x", uid="uid-x"), runtime_handler="nope"),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'nope'" in message, message
    assert "wrapped" in message

    plain = run(d, pod_config("plain", uid="uid-plain"))
    assert not calls.exists()  # runc's own pods do not go through the wrapper
    resp = d.runtime_call(
        "RunPodSandbox",
        api_pb2.RunPodSandboxRequest(
            config=pod_config("wrapped", uid="uid-wrapped"), runtime_handler="wrapped"
        ),
    )
    sid = resp.pod_sandbox_id
    assert " create " in f" {calls.read_text()} " and sid in calls.read_text()
    remove(d, sid)
    remove(d, plain)
