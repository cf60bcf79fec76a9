"""Everything a pod can hold on the node, counted where it lives: the netns dir, host-local's
IPAM dir, containerd (containers, tasks, snapshots besides image layers, leases), runc's state
dirs (which its shim removes with the task), the cgroup tree and the bridge's veth ports."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from crictl.containerd.client import ContainerdClient
from crictl.containerd.runc import RUNC_ROOT
from tests.rig.cni import CniNetwork
from tests.rig.inventory import inventory

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Holdings:
    netns: frozenset[str]
    ips: frozenset[str]
    containers: frozenset[str]
    tasks: frozenset[str]
    rw_snapshots: frozenset[str]  # snapshots that are not image layers
    leases: frozenset[str]
    runc_states: frozenset[str]  # runc's state dirs in the namespace's runc root
    cgroups: frozenset[str]
    veths: frozenset[str]

    def total(self) -> int:
        return sum(len(v) for v in vars(self).values())


def _ips(ipam_dir: Path) -> frozenset[str]:
    out = set()
    for path in ipam_dir.glob("*/*"):
        try:
            ipaddress.ip_address(path.name)
            out.add(path.name)
        except ValueError:
            continue
    return frozenset(out)


def _cgroups() -> frozenset[str]:
    found = set()
    for controller in ("memory", "cpu", "pids"):
        base = CGROUP_ROOT / controller / "crictld"
        if base.is_dir():
            found |= {p.name for p in base.iterdir() if p.is_dir()}
    return frozenset(found)


def _runc_states(namespace: str) -> frozenset[str]:
    root = RUNC_ROOT / namespace
    return frozenset(p.name for p in root.iterdir()) if root.is_dir() else frozenset()


def _veths(bridge: str) -> frozenset[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show", "master", bridge], capture_output=True, text=True
    )
    return frozenset(
        line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines() if ":" in line
    )


async def _tasks(address: str, namespace: str, ids: frozenset[str]) -> frozenset[str]:
    c = ContainerdClient(address, namespace)
    try:
        ordered = list(ids)
        states = await asyncio.gather(*(c.task_state(i) for i in ordered))
        return frozenset(i for i, st in zip(ordered, states, strict=True) if st is not None)
    finally:
        await c.close()


def holdings(address: str, namespace: str, netns_dir: Path, net: CniNetwork) -> Holdings:
    inv = asyncio.run(inventory(address, namespace))
    layers = {s for s in inv.snapshots if s.startswith("sha256:")}
    return Holdings(
        netns=frozenset(p.name for p in netns_dir.glob("*")) if netns_dir.is_dir() else frozenset(),
        ips=_ips(net.ipam_dir),
        containers=inv.containers,
        tasks=asyncio.run(_tasks(address, namespace, inv.containers)),
        rw_snapshots=frozenset(inv.snapshots - layers),
        leases=inv.leases,
        runc_states=_runc_states(namespace),
        cgroups=_cgroups(),
        veths=_veths(net.bridge),
    )
