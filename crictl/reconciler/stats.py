"""Container resource usage, collected periodically from the cgroup tree (cgroup v1) into a
cache that ContainerStats and ListContainerStats answer from: kubelet asks every ~10 s, and
fanning out to every container per call is a known scaling bug. A container not yet in the
cache (just started) is read on demand, alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from crictl import errors
from crictl.containerd.client import ContainerdClient
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2
from crictl.oci.spec import cgroups_path
from crictl.reconciler.sandboxes import SNAPSHOTTER, config_of
from crictl.store.containers import list_containers
from crictl.store.engine import Store
from crictl.store.models import Container
from crictl.store.sandboxes import list_sandboxes

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD = 10.0


@dataclass(frozen=True)
class Usage:
    timestamp: int
    cpu_ns: int | None
    nano_cores: int | None
    memory_usage: int | None
    working_set: int | None
    rss: int | None
    page_faults: int | None
    major_page_faults: int | None
    writable_bytes: int | None
    writable_inodes: int | None
    processes: int | None = None


@dataclass(frozen=True)
class Interface:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def network_usage(pid: int) -> list[Interface]:
    """The interfaces of `pid`'s network namespace, from /proc/<pid>/net/dev (loopback out)."""
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return []
    out = []
    for line in lines:
        name, _, rest = line.partition(":")
        f = rest.split()
        if name.strip() == "lo" or len(f) < 11:
            continue
        out.append(Interface(name.strip(), int(f[0]), int(f[2]), int(f[8]), int(f[10])))
    return out


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _memory_stat(path: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}
    except (OSError, ValueError):
        return {}


def read_cgroup(cgroup: str) -> tuple[int, int | None, int | None, dict[str, int], int | None]:
    """(timestamp, cpu ns, memory usage, memory.stat, processes) of a cgroup v1 path."""
    rel = cgroup.lstrip("/")
    now = time.time_ns()
    cpu = _read_int(CGROUP_ROOT / "cpuacct" / rel / "cpuacct.usage")
    mem = _read_int(CGROUP_ROOT / "memory" / rel / "memory.usage_in_bytes")
    stat = _memory_stat(CGROUP_ROOT / "memory" / rel / "memory.stat")
    pids = _read_int(CGROUP_ROOT / "pids" / rel / "pids.current")
    return now, cpu, mem, stat, pids


class StatsCollector:
    def __init__(self, store: Store, containerd: ContainerdClient, period: float = PERIOD) -> None:
        self.store = store
        self.containerd = containerd
        self.period = period
        self.cache: dict[str, Usage] = {}
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
                await self.collect()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("stats collection failed", extra={"error": str(e)})
            await asyncio.sleep(self.period)

    async def _cgroups(self) -> dict[str, str]:
        """Container id -> its cgroup path, for containers that may be running."""

        def read(session: Session) -> dict[str, str]:
            parents = {s.id: config_of(s).linux.cgroup_parent for s in list_sandboxes(session)}
            # The pause task's cgroup counts too (as "sandbox:<id>"), for pod stats.
            pause = {f"sandbox:{sid}": cgroups_path(parent, sid) for sid, parent in parents.items()}
            return pause | {
                c.id: cgroups_path(parents.get(c.sandbox_id, ""), c.id)
                for c in list_containers(session)
            }

        return await self.store.read(read)

    async def collect(self, only: str | None = None) -> None:
        paths = await self._cgroups()
        if only is not None:
            paths = {only: paths[only]} if only in paths else {}
        samples = await asyncio.to_thread(
            lambda: {cid: read_cgroup(path) for cid, path in paths.items()}
        )
        fresh: dict[str, Usage] = {}
        for cid, (ts, cpu, mem, stat, pids) in samples.items():
            prev = self.cache.get(cid)
            nano = None
            if (
                prev is not None
                and prev.cpu_ns is not None
                and cpu is not None
                and ts > prev.timestamp
            ):
                nano = (cpu - prev.cpu_ns) * 1_000_000_000 // (ts - prev.timestamp)
            inactive = stat.get("total_inactive_file", 0)
            working = max(mem - inactive, 0) if mem is not None else None
            size, inodes = (None, None) if cid.startswith("sandbox:") else await self._writable(cid)
            fresh[cid] = Usage(
                ts,
                cpu,
                nano,
                mem,
                working,
                stat.get("total_rss"),
                stat.get("total_pgfault"),
                stat.get("total_pgmajfault"),
                size,
                inodes,
                pids,
            )
        if only is None:
            self.cache = fresh
        else:
            self.cache.update(fresh)

    async def _writable(self, cid: str) -> tuple[int | None, int | None]:
        try:
            usage = await self.containerd.call(
                "snapshot usage",
                self.containerd.snapshots.Usage(
                    snapshots_pb2.UsageRequest(snapshotter=SNAPSHOTTER, key=cid),
                    metadata=self.containerd.metadata,
                ),
            )
        except errors.CrictlError:
            return None, None
        return usage.size, usage.inodes

    def pod_usage(self, sandbox_id: str, container_ids: list[str]) -> Usage:
        """The pod's usage: its pause task and its containers, summed (without a pod-level
        cgroup parent each has a cgroup of its own)."""
        parts = [
            self.cache[k] for k in (f"sandbox:{sandbox_id}", *container_ids) if k in self.cache
        ]

        def total(field: str) -> int | None:
            values = [getattr(u, field) for u in parts if getattr(u, field) is not None]
            return sum(values) if values else None

        return Usage(
            max((u.timestamp for u in parts), default=time.time_ns()),
            total("cpu_ns"),
            total("nano_cores"),
            total("memory_usage"),
            total("working_set"),
            total("rss"),
            total("page_faults"),
            total("major_page_faults"),
            None,
            None,
            total("processes"),
        )

    async def usage(self, row: Container) -> Usage:
        if row.id not in self.cache:
            await self.collect(only=row.id)
        return self.cache.get(row.id) or Usage(time.time_ns(), *([None] * 9))
