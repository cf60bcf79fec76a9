"""A failed pass is retried with backoff, and its error is where operators look: a
StopPodSandbox whose CNI DEL fails leaves the pod NOTREADY with the error on its row, in the
event log and in verbose Status; once the plugin can release the address, a retry finishes
the stop."""

from __future__ import annotations

import json
import sys
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


GATE = "crictld-test-gate"


def add_gate(d: Daemon, net: CniNetwork, root: Path) -> Path:
    """Restarts `d` with a last plugin in its network's chain that refuses DEL while the file
    it returns exists (and passes the previous result on at ADD, as a chained plugin does)."""
    bin_dir = root / "cni-gate"
    bin_dir.mkdir()
    flag = root / "refuse-del"
    plugin = bin_dir / GATE
    plugin.write_text(
        f"""#!{sys.executable}
import json, os, sys
conf = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
if command == "DEL" and os.path.exists({str(flag)!r}):
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 999, "msg": "DEL refused"}}))
    sys.exit(1)
if command == "ADD":
    print(json.dumps(conf["prevResult"]))
"""
    )
    plugin.chmod(0o755)
    (conflist,) = net.conf_dir.iterdir()
    conf = json.loads(conflist.read_text())
    conflist.write_text(json.dumps({**conf, "plugins": [*conf["plugins"], {"type": GATE}]}))
    d.stop()
    d.cni_bin_dirs = [*d.cni_bin_dirs, bin_dir]
    d.start()
    return flag


def test_a_failed_stop_is_recorded_and_retried(
    image_daemon: Daemon, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = image_daemon
    gate = add_gate(d, cni_network, short_tmp)
    sid = run(d, pod_config())
    gate.touch()  # the plugin now refuses DEL, as one whose datastore is away would
    try:
        code, message = failure(
            d.runtime_call,
            "StopPodSandbox",
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid),
        )
        assert code == grpc.StatusCode.UNAVAILABLE, message
        assert message == f"CNI DEL {sid}: plugin {GATE} failed (exit 1): DEL refused", message
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
        assert held(d, cni_network).ips  # still held: DEL (last plugin first) stopped at the gate
    finally:
        gate.unlink()
    # No new call: the backoff retries the stop by itself.
    wait_for("the retry finishes the stop", lambda: not held(d, cni_network).ips, 60)
    wait_for(
        "no failing pass left",
        lambda: json.loads(d.status().info["daemon"])["failingPasses"] == [],
        30,
    )
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])
