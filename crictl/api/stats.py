"""ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: fresh cgroup
samples per call (one thread hop for every container of the answer), the writable layers from
the collector's periodic cache, pod network counters from the pod's netns
(crictl/reconciler/stats.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import replace

from crictl.api import cadvisor
from crictl.api.chunks import chunks
from crictl.api.interceptor import Context
from crictl.api.validation import label_selector
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.reconciler.cgroups import open_files
from crictl.reconciler.containers import container_config_of
from crictl.reconciler.sandboxes import config_of
from crictl.reconciler.stats import (
    StatsCollector,
    Usage,
    network,
    pod_cgroup_key,
    pod_key,
    pod_total,
)
from crictl.store.containers import (
    ContainerFilter,
    live_container,
    removal_asked,
    select_containers,
)
from crictl.store.engine import Store
from crictl.store.models import ContainerPhase, SandboxPhase
from crictl.store.readmodel import ContainerView, SandboxView
from crictl.store.sandboxes import SandboxFilter, select_sandboxes


def _u64(v: int | None) -> api_pb2.UInt64Value | None:
    return api_pb2.UInt64Value(value=v) if v is not None else None


def _cpu(u: Usage) -> api_pb2.CpuUsage:
    return api_pb2.CpuUsage(
        timestamp=u.timestamp,
        usage_core_nano_seconds=_u64(u.sample.cpu_ns),
        usage_nano_cores=_u64(u.nano_cores),
    )


def _memory(u: Usage) -> api_pb2.MemoryUsage:
    s = u.sample
    return api_pb2.MemoryUsage(
        timestamp=u.timestamp,
        working_set_bytes=_u64(s.working_set),
        available_bytes=_u64(s.available),
        usage_bytes=_u64(s.memory_usage),
        rss_bytes=_u64(s.rss),
        page_faults=_u64(s.page_faults),
        major_page_faults=_u64(s.major_page_faults),
    )


class Stats:
    def __init__(self, store: Store, stats: StatsCollector) -> None:
        self.store = store
        self.stats = stats

    def _container(self, row: ContainerView, u: Usage) -> api_pb2.ContainerStats:
        stats = api_pb2.ContainerStats(
            attributes=api_pb2.ContainerAttributes(
                id=row.id,
                metadata=api_pb2.ContainerMetadata(name=row.name, attempt=row.attempt),
                labels=row.labels,
                annotations=row.annotations,
            ),
            cpu=_cpu(u),
            memory=_memory(u),
            writable_layer=api_pb2.FilesystemUsage(
                timestamp=u.timestamp,
                fs_id=api_pb2.FilesystemIdentifier(mountpoint=self.stats.mountpoint),
                used_bytes=_u64(u.writable_bytes),
                inodes_used=_u64(u.writable_inodes),
            ),
        )
        if u.sample.swap is not None:
            stats.swap.CopyFrom(
                api_pb2.SwapUsage(timestamp=u.timestamp, swap_usage_bytes=_u64(u.sample.swap))
            )
        return stats

    async def _containers(self, rows: list[ContainerView]) -> list[api_pb2.ContainerStats]:
        rows = [r for r in rows if r.phase != ContainerPhase.PENDING]
        usage = await self.stats.usage([r.id for r in rows])
        return [self._container(r, usage[r.id]) for r in rows if r.id in usage]

    async def container_stats(
        self, request: api_pb2.ContainerStatsRequest, context: Context
    ) -> api_pb2.ContainerStatsResponse:
        row = live_container(self.store.snapshot, request.container_id)
        usage = await self.stats.usage([row.id])
        if row.id not in usage:  # removed meanwhile
            return api_pb2.ContainerStatsResponse()
        return api_pb2.ContainerStatsResponse(stats=self._container(row, usage[row.id]))

    async def list_container_stats(
        self, request: api_pb2.ListContainerStatsRequest, context: Context
    ) -> api_pb2.ListContainerStatsResponse:
        f = request.filter
        flt = ContainerFilter(
            id_prefix=f.id or None,
            sandbox_id=f.pod_sandbox_id or None,
            labels=label_selector(f.label_selector, "filter.label_selector"),
        )
        rows = [r for r in select_containers(self.store.snapshot, flt) if not removal_asked(r)]
        return api_pb2.ListContainerStatsResponse(stats=await self._containers(list(rows)))

    async def _pod_usage(
        self, sandbox: SandboxView, full: bool = False
    ) -> tuple[list[ContainerView], dict[str, Usage], Usage]:
        """The pod's containers, their usage, and the pod's own: kubelet's pod-level cgroup
        when there is one (it holds everything the pod runs), else the parts summed."""
        rows = select_containers(self.store.snapshot, ContainerFilter(sandbox_id=sandbox.id))
        containers = [
            r
            for r in rows
            if r.sandbox_id == sandbox.id
            and r.phase != ContainerPhase.PENDING
            and not removal_asked(r)
        ]
        keys = [pod_key(sandbox.id), pod_cgroup_key(sandbox.id), *(c.id for c in containers)]
        usage = await self.stats.usage(keys, full)
        pod_cgroup = usage.get(pod_cgroup_key(sandbox.id))
        parts = [u for k, u in usage.items() if k != pod_cgroup_key(sandbox.id)]
        if pod_cgroup is not None and pod_cgroup.sample.cpu_ns is not None:
            if pod_cgroup.sample.processes is None:
                # kubelet's pod cgroup holds its processes in the cgroups below it (the pause's,
                # the containers'): its own cgroup.procs is empty, their count is the pod's
                # (kubelet ranks pods by it under PID pressure)
                counted = pod_total(parts).sample.processes
                pod_cgroup = replace(
                    pod_cgroup, sample=replace(pod_cgroup.sample, processes=counted)
                )
            return containers, usage, pod_cgroup
        return containers, usage, pod_total(parts)

    async def _pod(self, sandbox: SandboxView) -> api_pb2.PodSandboxStats:
        containers, usage, pod = await self._pod_usage(sandbox)
        container_stats = [self._container(c, usage[c.id]) for c in containers if c.id in usage]
        linux = api_pb2.LinuxPodSandboxStats(
            cpu=_cpu(pod),
            memory=_memory(pod),
            process=api_pb2.ProcessUsage(
                timestamp=pod.timestamp, process_count=_u64(pod.sample.processes)
            ),
            containers=container_stats,
        )
        if sandbox.phase == SandboxPhase.READY:
            interfaces = [
                api_pb2.NetworkInterfaceUsage(
                    name=i.name,
                    rx_bytes=_u64(i.rx_bytes),
                    rx_errors=_u64(i.rx_errors),
                    tx_bytes=_u64(i.tx_bytes),
                    tx_errors=_u64(i.tx_errors),
                )
                for i in await network(sandbox.netns_path, sandbox.task_pid)
            ]
            if interfaces:
                default = next((i for i in interfaces if i.name == "eth0"), interfaces[0])
                linux.network.CopyFrom(
                    api_pb2.NetworkUsage(
                        timestamp=pod.timestamp,
                        default_interface=default,
                        interfaces=[i for i in interfaces if i is not default],
                    )
                )
        return api_pb2.PodSandboxStats(
            attributes=api_pb2.PodSandboxAttributes(
                id=sandbox.id,
                metadata=config_of(sandbox).metadata,
                labels=sandbox.labels,
                annotations=sandbox.annotations,
            ),
            linux=linux,
        )

    async def pod_sandbox_stats(
        self, request: api_pb2.PodSandboxStatsRequest, context: Context
    ) -> api_pb2.PodSandboxStatsResponse:
        sandbox = self.store.snapshot.sandbox(request.pod_sandbox_id)
        return api_pb2.PodSandboxStatsResponse(stats=await self._pod(sandbox))

    async def list_pod_sandbox_stats(
        self, request: api_pb2.ListPodSandboxStatsRequest, context: Context
    ) -> api_pb2.ListPodSandboxStatsResponse:
        f = request.filter
        flt = SandboxFilter(
            id_prefix=f.id or None, labels=label_selector(f.label_selector, "filter.label_selector")
        )
        sandboxes = select_sandboxes(self.store.snapshot, flt)
        return api_pb2.ListPodSandboxStatsResponse(stats=[await self._pod(sb) for sb in sandboxes])

    async def stream_container_stats(
        self, request: api_pb2.StreamContainerStatsRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamContainerStatsResponse]:
        listed = await self.list_container_stats(
            api_pb2.ListContainerStatsRequest(filter=request.filter), context
        )
        for run in chunks(listed.stats):
            yield api_pb2.StreamContainerStatsResponse(container_stats=run)

    async def stream_pod_sandbox_stats(
        self, request: api_pb2.StreamPodSandboxStatsRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamPodSandboxStatsResponse]:
        listed = await self.list_pod_sandbox_stats(
            api_pb2.ListPodSandboxStatsRequest(filter=request.filter), context
        )
        for run in chunks(listed.stats):
            yield api_pb2.StreamPodSandboxStatsResponse(pod_sandbox_stats=run)

    async def list_metric_descriptors(
        self, request: api_pb2.ListMetricDescriptorsRequest, context: Context
    ) -> api_pb2.ListMetricDescriptorsResponse:
        return api_pb2.ListMetricDescriptorsResponse(descriptors=cadvisor.descriptors())

    async def _pod_metrics(self, sandbox: SandboxView) -> api_pb2.PodSandboxMetrics:
        containers, usage, pod = await self._pod_usage(sandbox, full=True)
        name = config_of(sandbox).metadata.name
        metrics = cadvisor.usage_metrics(sandbox.id, name, pod)
        if sandbox.phase == SandboxPhase.READY:
            links = await network(sandbox.netns_path, sandbox.task_pid)
            metrics += cadvisor.network_metrics(sandbox.id, name, links, pod.timestamp)
        measured = [c for c in containers if c.id in usage]
        extras = await self._extras(measured, usage)
        return api_pb2.PodSandboxMetrics(
            pod_sandbox_id=sandbox.id,
            metrics=metrics,
            container_metrics=[
                api_pb2.ContainerMetrics(
                    container_id=c.id,
                    metrics=cadvisor.usage_metrics(c.id, c.name, usage[c.id], extras[c.id]),
                )
                for c in measured
            ],
        )

    async def _extras(
        self, rows: list[ContainerView], usage: dict[str, Usage]
    ) -> dict[str, cadvisor.Extras]:
        """What the containers' metrics carry besides their cgroups: their processes' open
        files and the filesystem's figures, read in one thread hop for all."""

        def read() -> tuple[dict[str, tuple[int, int]], tuple[int, int, int] | None]:
            files = {r.id: open_files(usage[r.id].sample.pids) for r in rows}
            return files, filesystem(self.stats.mountpoint)

        files, fs = await asyncio.to_thread(read) if rows else ({}, None)
        return {
            r.id: cadvisor.Extras(
                device=self.stats.mountpoint,
                fs=fs,
                files=files[r.id],
                started_at_ns=r.started_at,
                resources=container_config_of(r).linux.resources,
            )
            for r in rows
        }

    async def list_pod_sandbox_metrics(
        self, request: api_pb2.ListPodSandboxMetricsRequest, context: Context
    ) -> api_pb2.ListPodSandboxMetricsResponse:
        sandboxes = select_sandboxes(self.store.snapshot, SandboxFilter())
        return api_pb2.ListPodSandboxMetricsResponse(
            pod_metrics=[await self._pod_metrics(sb) for sb in sandboxes]
        )

    async def stream_pod_sandbox_metrics(
        self, request: api_pb2.StreamPodSandboxMetricsRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamPodSandboxMetricsResponse]:
        listed = await self.list_pod_sandbox_metrics(
            api_pb2.ListPodSandboxMetricsRequest(), context
        )
        for run in chunks(listed.pod_metrics):
            yield api_pb2.StreamPodSandboxMetricsResponse(pod_sandbox_metrics=run)


def filesystem(path: str) -> tuple[int, int, int] | None:
    """(inodes free, inodes total, bytes) of the filesystem holding `path`."""
    if not path:
        return None
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_ffree, st.f_files, st.f_blocks * st.f_frsize
