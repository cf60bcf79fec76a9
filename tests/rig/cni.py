"""A CNI network private to one test run: its own conf dir, bridge name, subnet and IPAM dir."""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

CNI_BIN_DIRS = [Path("/usr/lib/cni"), Path("/opt/cni/bin")]


@dataclass(frozen=True)
class CniNetwork:
    conf_dir: Path
    ipam_dir: Path
    bridge: str
    subnet: str
    name: str

    @property
    def bin_dirs(self) -> list[Path]:
        return [d for d in CNI_BIN_DIRS if d.is_dir()]

    def remove(self) -> None:
        """Deletes the bridge the plugins created, if any (the dirs belong to the caller)."""
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


def make_network(root: Path) -> CniNetwork:
    tag = secrets.token_hex(3)
    # 10.<200..249>.<0..255>.0/24: private to this run's bridge, on this machine only.
    n = int(tag, 16)
    subnet = f"10.{200 + n % 50}.{(n >> 8) % 256}.0/24"
    net = CniNetwork(
        conf_dir=root / "net.d",
        ipam_dir=root / "ipam",
        bridge=f"crd{tag}",
        subnet=subnet,
        name=f"crictld-test-{tag}",
    )
    net.conf_dir.mkdir(parents=True)
    conf = {
        "cniVersion": "1.0.0",
        "name": net.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "dataDir": str(net.ipam_dir),
                },
            },
            # no loopback plugin, as in the configurations nodes run (calico, flannel):
            # the runtime brings the pod's lo up itself
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (net.conf_dir / "10-crictld-test.conflist").write_text(json.dumps(conf, indent=2))
    return net
