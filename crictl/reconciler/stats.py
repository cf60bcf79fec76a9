"""Container and pod resource usage for the stats RPCs.

CPU, memory and process counts are sampled fresh on every call from the cgroup filesystem
(crictl/reconciler/cgroups.py: a few small file reads per container, no containerd round
trip), and `usage_nano_cores` is computed from this sample and the previous one of the same
cgroup, so two calls a second apart see a second of CPU time. The writable layer's usage is a
walk of its directory (crictl/containerd/usage.py, as containerd's snapshotter walks it), too
slow per call: a periodic task refreshes it for every container (a container not yet seen is
measured on demand, alone). A pod's
network counters are its netns's /proc/net/dev table, read through its pause task's /proc entry
while that is in the netns, else from inside the netns (crictl/network/netns.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from crictl import errors
from crictl.containerd.client import ContainerdClient
from crictl.containerd.usage import SnapshotUsage
from crictl.network import netns
from crictl.oci.spec import cgroups_path
from crictl.reconciler import cgroups
from crictl.reconciler.cgroups import Sample
from crictl.reconciler.sandboxes import SNAPSHOTTER, config_of
from crictl.store.engine import Store

log = logging.getLogger(__name__)

PERIOD = 10.0  # the writable layers' refresh


@dataclass(frozen=True)
class Usage:
    sample: Sample
    nano_cores: int | None = None
    writable_bytes: int | None = None
    writable_inodes: int | None = None

    @property
    def timestamp(self) -> int:
        return self.sample.timestamp


def pod_key(sandbox_id: str) -> str:
    """The pause task's own cgroup."""
    return f"sandbox:{sandbox_id}"


def pod_cgroup_key(sandbox_id: str) -> str:
    """The pod-level cgroup kubelet made (the sandbox's cgroup_parent), when there is one."""
    return f"pod:{sandbox_id}"


class StatsCollector:
    def __init__(
        self,
        store: Store,
        containerd: ContainerdClient,
        period: float = PERIOD,
        systemd_cgroup: bool = False,
    ) -> None:
        self.store = store
        self.containerd = containerd
        self.period = period
        self.systemd_cgroup = systemd_cgroup
        self.previous: dict[str, Sample] = {}  # the last sample of each cgroup, for nano cores
        self._known: dict[str, str] = {}  # key -> cgroups path ("" for none)
        self.writable: dict[str, tuple[int | None, int | None]] = {}
        self.layers = SnapshotUsage(containerd, SNAPSHOTTER)
        self._task: asyncio.Task[None] | None = None
        self.mountpoint = ""

    async def start(self) -> None:
        self.mountpoint = await self.containerd.snapshotter_root(SNAPSHOTTER) or ""
        self._task = asyncio.create_task(self._loop(), name="stats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh_writable()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("stats collection failed", extra={"error": str(e)})
            await asyncio.sleep(self.period)

    async def refresh_writable(self) -> None:
        snap = self.store.snapshot
        ids = list(snap.containers)
        measured = await self.layers.active(ids)
        self.writable = {cid: measured[cid] or (None, None) for cid in ids}
        self.layers.forget(set(ids))
        live = set(ids) | set(snap.sandboxes)
        for cache in (self.previous, self._known):  # forget what removed objects left
            for key in list(cache):
                if key.rsplit(":", 1)[-1] not in live:
                    del cache[key]

    def _cgroups(self, keys: set[str]) -> dict[str, str]:
        """key -> cgroups path, for the keys asked (container ids, pod_key, pod_cgroup_key),
        from the read model (the rows as committed)."""
        snap = self.store.snapshot
        parents = {s.id: config_of(s).linux.cgroup_parent for s in snap.sandboxes.values()}
        out: dict[str, str] = {}
        for sid, parent in parents.items():
            if pod_key(sid) in keys:
                out[pod_key(sid)] = cgroups_path(parent, sid, self.systemd_cgroup)
            if pod_cgroup_key(sid) in keys and parent:
                out[pod_cgroup_key(sid)] = parent
        for c in snap.containers.values():
            if c.id in keys:
                out[c.id] = cgroups_path(parents.get(c.sandbox_id, ""), c.id, self.systemd_cgroup)
        return out

    async def _paths(self, keys: list[str]) -> dict[str, str]:
        """The keys' cgroup paths: fixed for an object's life, so read from the store once
        ("" remembered for a key with none, e.g. a pod without a pod-level cgroup)."""
        missing = {k for k in keys if k not in self._known}
        if missing:
            found = self._cgroups(missing)
            for key in missing:
                self._known[key] = found.get(key, "")
        return {k: self._known[k] for k in keys if self._known.get(k)}

    async def usage(self, keys: list[str], full: bool = False) -> dict[str, Usage]:
        """Fresh samples of the keys' cgroups (one thread hop for all), with nano cores since
        each one's previous sample and, for containers, the writable layer. `full`: every
        field cAdvisor's metrics carry, not only the CRI stats' (cgroups.read)."""
        paths = await self._paths(keys)
        samples = await asyncio.to_thread(
            lambda: {key: cgroups.read(path, full=full) for key, path in paths.items()}
        )
        out: dict[str, Usage] = {}
        for key, sample in samples.items():
            nano = cgroups.nano_cores(self.previous.get(key), sample)
            self.previous[key] = sample
            size, inodes = (None, None)
            if not key.startswith(("sandbox:", "pod:")):
                if key not in self.writable:
                    self.writable[key] = await self._writable(key)
                size, inodes = self.writable[key]
            out[key] = Usage(sample, nano, size, inodes)
        return out

    async def _writable(self, cid: str) -> tuple[int | None, int | None]:
        return (await self.layers.active([cid]))[cid] or (None, None)


def pod_total(parts: list[Usage]) -> Usage:
    """A pod without a pod-level cgroup: its pause task's and containers' usage, summed."""

    def total(field: str) -> int | None:
        values = [getattr(u.sample, field) for u in parts if getattr(u.sample, field) is not None]
        return sum(values) if values else None

    nanos = [u.nano_cores for u in parts if u.nano_cores is not None]
    sample = Sample(
        max((u.timestamp for u in parts), default=0) or time.time_ns(),
        cpu_ns=total("cpu_ns"),
        memory_usage=total("memory_usage"),
        working_set=total("working_set"),
        rss=total("rss"),
        page_faults=total("page_faults"),
        major_page_faults=total("major_page_faults"),
        swap=total("swap"),
        processes=total("processes"),
    )
    return Usage(sample, sum(nanos) if nanos else None)


async def network(netns_path: str | None, pid: int | None = None) -> list[netns.LinkStats]:
    """The pod's interfaces' counters; none for a host-network pod or a netns gone. Read
    through `pid` (its pause task) where it is still in the netns, else from inside it."""
    if not netns_path:
        return []
    if pid:
        found = netns.link_stats_through(pid, Path(netns_path))
        if found is not None:
            return found
    try:
        return await asyncio.to_thread(netns.link_stats, Path(netns_path))
    except errors.CrictlError as e:
        log.info("pod network stats unreadable", extra={"netns": netns_path, "error": str(e)})
        return []
