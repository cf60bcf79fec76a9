"""crictl inspect and inspectp show under `info` what containerd's CRI does (the OCI spec, pid,
sandbox id, image, snapshot and runtime keys, config; for a pod the CNI result and whether its
netns is closed) and crictld's own view: phase, generation, last error, last events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_containers import Pod
from tests.integration.test_sandboxes import remove, stop
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


def inspect(d: Daemon, *args: str) -> dict[str, object]:
    out = d.crictl(*args)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_inspect_and_inspectp_info(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("app", ["sleep", "3600"])
    pod.start(cid)

    info = inspect(d, "inspect", cid)["info"]
    assert isinstance(info, dict)
    assert info["sandboxID"] == pod.id and info["pid"] == pod.pid(cid) > 0
    assert info["runtimeSpec"]["process"]["args"] == ["sleep", "3600"]
    assert info["runtimeSpec"]["annotations"]["io.kubernetes.cri.sandbox-id"] == pod.id
    assert info["image"].startswith(registry.host) and "@sha256:" in info["image"]
    assert (info["snapshotKey"], info["snapshotter"]) == (cid, "overlayfs")
    assert info["runtimeType"] == "io.containerd.runc.v2"
    assert info["runtimeOptions"] == {"systemd_cgroup": False}
    assert info["config"]["metadata"]["name"] == "app"
    view = info["crictld"]
    assert (view["desired"], view["phase"], view["lastError"]) == ("RUNNING", "RUNNING", None)
    assert view["generation"] >= 1
    assert [e["to"] for e in view["lastEvents"] if e["action"] == "transition"][-2:] == [
        "CREATED",
        "RUNNING",
    ]

    podinfo = inspect(d, "inspectp", pod.id)["info"]
    assert isinstance(podinfo, dict)
    assert podinfo["pid"] > 0 and podinfo["image"].endswith("/pause:3.10")
    assert podinfo["runtimeSpec"]["process"]["args"] == ["/pause"]
    assert podinfo["cniResult"]["ips"] and podinfo["netNamespaceClosed"] is False
    assert podinfo["crictld"]["phase"] == "READY"
    stop(d, pod.id)
    podinfo = inspect(d, "inspectp", pod.id)["info"]
    assert isinstance(podinfo, dict)
    assert podinfo["netNamespaceClosed"] is True and podinfo["crictld"]["phase"] == "NOTREADY"
    remove(d, pod.id)
