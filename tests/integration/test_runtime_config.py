"""UpdateRuntimeConfig: kubelet's pod CIDR fills the CNI config template (as containerd's
conf_template), written whole into the conf dir and used by the next RunPodSandbox."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import subprocess
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_images import failure, pull
from tests.integration.test_sandboxes import pod_config, remove, run, status
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


def update(d: Daemon, pod_cidr: str) -> None:
    d.runtime_call(
        "UpdateRuntimeConfig",
        api_pb2.UpdateRuntimeConfigRequest(
            runtime_config=api_pb2.RuntimeConfig(
                network_config=api_pb2.NetworkConfig(pod_cidr=pod_cidr)
            )
        ),
    )


def test_pod_cidr_fills_the_template_and_the_next_pod_uses_it(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = image_daemon
    bridge = f"crt{secrets.token_hex(3)}"
    template = short_tmp / "template.conflist"
    template.write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": f"tpl-{bridge}",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": bridge,
                        "isGateway": True,
                        "ipam": {
                            "type": "host-local",
                            "dataDir": str(short_tmp / "tpl-ipam"),
                            "ranges": ["RANGES"],
                            "routes": ["ROUTES"],
                        },
                    }
                ],
            }
        )
        .replace(
            '["RANGES"]',
            '[{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}[{"subnet": "{{$r}}"}]{{end}}]',
        )
        .replace(
            '["ROUTES"]',
            '[{{range $i, $r := .Routes}}{{if $i}}, {{end}}{"dst": "{{$r}}"}{{end}}]',
        )
    )
    d.stop()
    d.extra_args += ["--cni-conf-template", str(template)]
    d.start()
    written = cni_network.conf_dir / "10-crictld-net.conflist"
    try:
        for bad in ("not-a-cidr", "10.0.0.0/40"):
            code, message = failure(update, d, bad)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "pod_cidr" in message, message
        assert not written.exists()

        update(d, "172.31.77.0/24")
        conf = json.loads(written.read_text())
        assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "172.31.77.0/24"}]]
        pull(d, f"{registry.host}/pause:3.10")
        sid = run(d, pod_config("cidr", uid="uid-cidr"))
        ip = status(d, sid).status.network.ip
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("172.31.77.0/24"), ip
        remove(d, sid)
        history = d.sql(
            "--json", "SELECT message FROM events WHERE action = 'pod-cidr' ORDER BY id"
        ).stdout
        assert "172.31.77.0/24" in history
    finally:
        written.unlink(missing_ok=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


def test_update_pod_sandbox_resources(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """Pod-level resources go to the pod's cgroup (its cgroup_parent) and into its stored config;
    bad values and a pod that is not READY are refused with nothing written."""
    d = image_daemon
    pull(d, f"{registry.host}/pause:3.10")
    parent = f"/crictld-podres-{secrets.token_hex(3)}"
    config = pod_config("res", uid="uid-res")
    config.linux.cgroup_parent = parent
    sid = run(d, config)
    cpu, memory = (
        Path("/sys/fs/cgroup/cpu") / parent[1:],
        Path("/sys/fs/cgroup/memory") / parent[1:],
    )
    try:
        resources = api_pb2.LinuxContainerResources(
            cpu_shares=512, cpu_period=100_000, cpu_quota=50_000, memory_limit_in_bytes=256 << 20
        )

        def call(r: api_pb2.LinuxContainerResources, pod: str = sid) -> None:
            d.runtime_call(
                "UpdatePodSandboxResources",
                api_pb2.UpdatePodSandboxResourcesRequest(
                    pod_sandbox_id=pod, resources=r, overhead=api_pb2.LinuxContainerResources()
                ),
            )

        code, message = failure(call, api_pb2.LinuxContainerResources(memory_limit_in_bytes=-1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "resources" in message, message
        code, _ = failure(call, resources, "0" * 64)
        assert code == grpc.StatusCode.NOT_FOUND
        call(resources)
        assert (cpu / "cpu.shares").read_text().strip() == "512"
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(256 << 20)
        rows = json.loads(
            d.sql("--json", f"SELECT config FROM pod_sandbox WHERE id = '{sid}'").stdout
        )
        stored = json.loads(rows[0]["config"])["linux"]["resources"]
        assert (stored["cpu_shares"], stored["memory_limit_in_bytes"]) == ("512", str(256 << 20))
        d.runtime_call("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid))
        code, message = failure(call, resources)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "not READY" in message, message
    finally:
        remove(d, sid)
        # runc made the parent in every hierarchy, systemd's and the unified one included
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            with contextlib.suppress(OSError):
                (hierarchy / parent[1:]).rmdir()
        assert not list(Path("/sys/fs/cgroup").glob(f"*/{parent[1:]}"))
