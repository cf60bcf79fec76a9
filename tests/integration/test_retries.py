"""A failed pass is retried with backoff, and its error is where operators look: a
StopPodSandbox whose CNI DEL cannot run leaves the pod NOTREADY with the error on its row, in
the event log and in verbose Status; once the network is back, a retry finishes the stop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_containers import wait_for
from tests.integration.test_images import failure
from tests.integration.test_sandboxes import assert_nothing_held, held, pod_config, remove, run
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon

pytestmark = pytest.mark.integration


def test_a_failed_stop_is_recorded_and_retried(
    image_daemon: Daemon, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = image_daemon
    sid = run(d, pod_config())
    hidden = short_tmp / "cni-conf-away"
    shutil.move(str(cni_network.conf_dir), hidden)  # CNI DEL cannot run: no network config
    try:
        code, message = failure(
            d.runtime_call,
            "StopPodSandbox",
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid),
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "CNI config" in message, message
        status = d.runtime_call(
            "PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid)
        ).status
        assert status.state == api_pb2.SANDBOX_NOTREADY
        [row] = json.loads(
            d.sql("--json", f"SELECT reason, message FROM pods WHERE id = '{sid}'").stdout
        )
        assert row["reason"] == "TeardownFailed" and "CNI" in row["message"], row
        events = json.loads(
            d.sql("--json", f"SELECT action, message FROM events WHERE object_id = '{sid}'").stdout
        )
        assert any(e["action"] == "pass-failed" for e in events), events
        failing = json.loads(d.status().info["daemon"])["failingPasses"]
        assert [f["id"] for f in failing] == [sid] and failing[0]["attempts"] >= 1, failing
        assert held(d, cni_network).ips  # the IP is still held: DEL did not run
    finally:
        shutil.move(str(hidden), cni_network.conf_dir)
    # No new call: the backoff retries the stop by itself.
    wait_for("the retry finishes the stop", lambda: not held(d, cni_network).ips, 60)
    wait_for(
        "no failing pass left",
        lambda: json.loads(d.status().info["daemon"])["failingPasses"] == [],
        30,
    )
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])
