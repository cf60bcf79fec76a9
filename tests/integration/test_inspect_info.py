"""crictl inspect and inspectp show under `info` what containerd's CRI does (the OCI spec, pid,
sandbox id, image, snapshot and runtime keys, config; for a pod the CNI result and whether its
netns is closed) and crictld's own view: phase, generation, last error, last events."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from crictl.containerd.client import ContainerdClient
from tests.integration.test_containers import Pod
from tests.integration.test_sandbox_crashes import arm, restart_after_fault
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


def test_resources_updated_before_start_are_the_ones_it_starts_with(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """UpdateContainerResources on a created container: the task starts with the new limits
    (they are in the spec it is made from) and inspect's runtimeSpec shows them, as after an
    update of a running one."""
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("app", ["sleep", "3600"], memory_limit_in_bytes=64 << 20)

    def resources() -> Any:
        info: Any = inspect(d, "inspect", cid)["info"]
        return info["runtimeSpec"]["linux"]["resources"]

    r = d.crictl("update", "--memory", str(96 << 20), "--cpu-share", "512", cid)
    assert r.returncode == 0, r.stderr
    now = resources()
    assert (now["memory"]["limit"], now["cpu"]["shares"]) == (96 << 20, 512)
    pod.start(cid)
    limit = Path(f"/sys/fs/cgroup/memory/crictld/{cid}/memory.limit_in_bytes")
    assert int(limit.read_text()) == 96 << 20
    shares = Path(f"/sys/fs/cgroup/cpu/crictld/{cid}/cpu.shares")
    assert int(shares.read_text()) == 512

    r = d.crictl("update", "--memory", str(80 << 20), cid)
    assert r.returncode == 0, r.stderr
    assert resources()["memory"]["limit"] == 80 << 20 and int(limit.read_text()) == 80 << 20
    # refused by runc (under what it uses): the record's spec is as it was
    r = d.crictl("update", "--memory", "13", cid)
    assert r.returncode != 0 and "cannot be applied" in r.stderr, r.stderr
    assert resources()["memory"]["limit"] == 80 << 20 and int(limit.read_text()) == 80 << 20
    remove(d, pod.id)


def _containerd_spec(d: Daemon, object_id: str) -> dict[str, object]:
    async def read() -> dict[str, object]:
        client = ContainerdClient(d.containerd_address, d.namespace)
        try:
            return await client.container_spec(object_id)
        finally:
            await client.close()

    return asyncio.run(read())


def test_the_spec_shown_is_containerds_from_the_row_or_from_containerd(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """inspect and inspectp show the spec containerd's record holds: the row's copy
    (crictl/store/specs.py), which an update replaces with the record's, and where the row
    has none (a row from before revision 0006, a record an earlier pass made), containerd's
    own, read on the daemon's loop."""
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("app", ["sleep", "3600"])
    pod.start(cid)
    r = d.crictl("update", "--memory", str(72 << 20), cid)
    assert r.returncode == 0, r.stderr
    rows = json.loads(
        d.sql(
            "--json",
            f"SELECT id, runtime_spec FROM container WHERE id = '{cid}' "
            f"UNION ALL SELECT id, runtime_spec FROM pod_sandbox WHERE id = '{pod.id}'",
        ).stdout
    )
    stored = {row["id"]: json.loads(row["runtime_spec"]) for row in rows}
    for object_id, command in ((cid, "inspect"), (pod.id, "inspectp")):
        truth = _containerd_spec(d, object_id)
        assert stored[object_id] == truth
        info: Any = inspect(d, command, object_id)["info"]
        assert info["runtimeSpec"] == truth

    with sqlite3.connect(d.state_dir / "crictld.db") as db:
        db.execute("UPDATE container SET runtime_spec = NULL")
        db.execute("UPDATE pod_sandbox SET runtime_spec = NULL")
    for object_id, command in ((cid, "inspect"), (pod.id, "inspectp")):
        info = inspect(d, command, object_id)["info"]
        assert info["runtimeSpec"] == _containerd_spec(d, object_id)
        assert info["crictld"]["lastEvents"]
    # an update without the row's copy starts from containerd's, and keeps the result
    r = d.crictl("update", "--memory", str(80 << 20), cid)
    assert r.returncode == 0, r.stderr
    truth = _containerd_spec(d, cid)
    assert truth["linux"]["resources"]["memory"]["limit"] == 80 << 20  # type: ignore[index]
    assert inspect(d, "inspect", cid)["info"]["runtimeSpec"] == truth  # type: ignore[index]
    assert pod.exec(cid, ["echo", "ok"]).stdout == b"ok\n"
    remove(d, pod.id)


def test_an_update_a_crash_cut_short_leaves_readers_asking_containerd(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """Killed once containerd's record has the new spec and before the row does: the row
    holds no spec (cleared first), so inspect shows the record's, never an older one; the
    update sent again is applied and kept."""
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("app", ["sleep", "3600"], memory_limit_in_bytes=64 << 20)
    pod.start(cid)
    arm(d, "resources-update:after-record")
    r = d.crictl("update", "--memory", str(96 << 20), cid)
    assert r.returncode != 0
    restart_after_fault(d)

    def stored() -> object:
        (row,) = json.loads(
            d.sql("--json", f"SELECT runtime_spec FROM container WHERE id = '{cid}'").stdout
        )
        return row["runtime_spec"]

    assert stored() is None
    info: Any = inspect(d, "inspect", cid)["info"]
    assert info["runtimeSpec"] == _containerd_spec(d, cid)
    assert info["runtimeSpec"]["linux"]["resources"]["memory"]["limit"] == 96 << 20
    r = d.crictl("update", "--memory", str(96 << 20), cid)
    assert r.returncode == 0, r.stderr
    limit = Path(f"/sys/fs/cgroup/memory/crictld/{cid}/memory.limit_in_bytes")
    assert int(limit.read_text()) == 96 << 20
    assert json.loads(str(stored())) == _containerd_spec(d, cid)
    remove(d, pod.id)
