"""UpdateRuntimeConfig: kubelet's pod CIDR fills the CNI config template (as containerd's
conf_template), written whole into the conf dir and used by the next RunPodSandbox."""

from __future__ import annotations

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
