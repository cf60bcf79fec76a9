"""The runtime's conditions for CRI Status: is containerd answering, is the network configured.

Status is polled by kubelet every few seconds and a hanging Status makes the node NotReady, so
every probe here is bounded: containerd gets PROBE_TIMEOUT to answer and is reported not ready if
it does not (a hung containerd must not hang kubelet).

Status runs on the CRI server's loop (crictl/api/front.py), not the daemon's: its probe goes
over a containerd client of its own, made for that loop (the daemon's client and its connection
belong to the daemon's loop), so what it measures is containerd's answer, not how busy the
daemon's loop is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from crictl import errors
from crictl.containerd.client import ContainerdClient
from crictl.network.cni import NetworkNotReady, load_network_config

PROBE_TIMEOUT = 0.8
RUNTIME_READY = "RuntimeReady"
NETWORK_READY = "NetworkReady"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str = ""
    message: str = ""


class Health:
    """`containerd`: a client used from the loop `conditions` runs on, and only there."""

    def __init__(
        self, containerd: ContainerdClient, cni_conf_dir: Path, cni_bin_dirs: list[Path]
    ) -> None:
        self.containerd = containerd
        self.cni_conf_dir = cni_conf_dir
        self.cni_bin_dirs = cni_bin_dirs

    async def conditions(self) -> list[Condition]:
        runtime, network = await asyncio.gather(self.runtime_condition(), self.network_condition())
        return [runtime, network]

    async def runtime_condition(self) -> Condition:
        try:
            await self.containerd.version(timeout=PROBE_TIMEOUT)
        except errors.DeadlineExceeded:
            return Condition(
                RUNTIME_READY,
                False,
                "ContainerdUnresponsive",
                f"containerd at {self.containerd.address} did not answer within {PROBE_TIMEOUT}s",
            )
        except errors.CrictlError as e:
            return Condition(RUNTIME_READY, False, "ContainerdUnreachable", str(e))
        return Condition(RUNTIME_READY, True)

    async def network_condition(self) -> Condition:
        try:
            await asyncio.to_thread(load_network_config, self.cni_conf_dir, self.cni_bin_dirs)
        except NetworkNotReady as e:
            return Condition(NETWORK_READY, False, e.reason, str(e))
        return Condition(NETWORK_READY, True)
