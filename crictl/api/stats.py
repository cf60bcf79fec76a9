"""ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: answered from the
stats collector's periodic cache (crictl/reconciler/stats.py), never a fan-out per call."""

from __future__ import annotations

from crictl.api.interceptor import Context
from crictl.api.validation import label_selector
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.reconciler.sandboxes import config_of
from crictl.reconciler.stats import StatsCollector, Usage, network_usage
from crictl.store.containers import (
    ContainerFilter,
    container_labels,
    get_container,
    list_containers,
)
from crictl.store.engine import Store
from crictl.store.models import Container, ContainerPhase, LabelKind, PodSandbox, SandboxPhase
from crictl.store.sandboxes import SandboxFilter, get_sandbox, labels_of, list_sandboxes


def _u64(v: int | None) -> api_pb2.UInt64Value | None:
    return api_pb2.UInt64Value(value=v) if v is not None else None


def _cpu(u: Usage) -> api_pb2.CpuUsage:
    return api_pb2.CpuUsage(
        timestamp=u.timestamp,
        usage_core_nano_seconds=_u64(u.cpu_ns),
        usage_nano_cores=_u64(u.nano_cores),
    )


def _memory(u: Usage) -> api_pb2.MemoryUsage:
    return api_pb2.MemoryUsage(
        timestamp=u.timestamp,
        working_set_bytes=_u64(u.working_set),
        usage_bytes=_u64(u.memory_usage),
        rss_bytes=_u64(u.rss),
        page_faults=_u64(u.page_faults),
        major_page_faults=_u64(u.major_page_faults),
    )


class Stats:
    def __init__(self, store: Store, stats: StatsCollector) -> None:
        self.store = store
        self.stats = stats

    async def _container(self, row: Container) -> api_pb2.ContainerStats:
        u = await self.stats.usage(row)
        return api_pb2.ContainerStats(
            attributes=api_pb2.ContainerAttributes(
                id=row.id,
                metadata=api_pb2.ContainerMetadata(name=row.name, attempt=row.attempt),
                labels=container_labels(row, LabelKind.LABEL),
                annotations=container_labels(row, LabelKind.ANNOTATION),
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

    async def container_stats(
        self, request: api_pb2.ContainerStatsRequest, context: Context
    ) -> api_pb2.ContainerStatsResponse:
        row = await self.store.read(lambda s: get_container(s, request.container_id))
        return api_pb2.ContainerStatsResponse(stats=await self._container(row))

    async def list_container_stats(
        self, request: api_pb2.ListContainerStatsRequest, context: Context
    ) -> api_pb2.ListContainerStatsResponse:
        f = request.filter
        flt = ContainerFilter(
            id_prefix=f.id or None,
            sandbox_id=f.pod_sandbox_id or None,
            labels=label_selector(f.label_selector, "filter.label_selector"),
        )
        rows = await self.store.read(lambda s: list_containers(s, flt))
        return api_pb2.ListContainerStatsResponse(
            stats=[await self._container(r) for r in rows if r.phase != ContainerPhase.PENDING]
        )

    async def _pod(self, sandbox: PodSandbox) -> api_pb2.PodSandboxStats:
        rows = await self.store.read(
            lambda s: list_containers(s, ContainerFilter(sandbox_id=sandbox.id))
        )
        containers = [
            r for r in rows if r.sandbox_id == sandbox.id and r.phase != ContainerPhase.PENDING
        ]
        if f"sandbox:{sandbox.id}" not in self.stats.cache:
            await self.stats.collect(only=f"sandbox:{sandbox.id}")  # this pod alone
        container_stats = [await self._container(c) for c in containers]
        pod = self.stats.pod_usage(sandbox.id, [c.id for c in containers])
        linux = api_pb2.LinuxPodSandboxStats(
            cpu=_cpu(pod),
            memory=_memory(pod),
            process=api_pb2.ProcessUsage(
                timestamp=pod.timestamp, process_count=_u64(pod.processes)
            ),
            containers=container_stats,
        )
        if sandbox.task_pid and sandbox.phase == SandboxPhase.READY:
            interfaces = [
                api_pb2.NetworkInterfaceUsage(
                    name=i.name,
                    rx_bytes=_u64(i.rx_bytes),
                    rx_errors=_u64(i.rx_errors),
                    tx_bytes=_u64(i.tx_bytes),
                    tx_errors=_u64(i.tx_errors),
                )
                for i in network_usage(sandbox.task_pid)
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
                labels=labels_of(sandbox, LabelKind.LABEL),
                annotations=labels_of(sandbox, LabelKind.ANNOTATION),
            ),
            linux=linux,
        )

    async def pod_sandbox_stats(
        self, request: api_pb2.PodSandboxStatsRequest, context: Context
    ) -> api_pb2.PodSandboxStatsResponse:
        sandbox = await self.store.read(lambda s: get_sandbox(s, request.pod_sandbox_id))
        return api_pb2.PodSandboxStatsResponse(stats=await self._pod(sandbox))

    async def list_pod_sandbox_stats(
        self, request: api_pb2.ListPodSandboxStatsRequest, context: Context
    ) -> api_pb2.ListPodSandboxStatsResponse:
        f = request.filter
        flt = SandboxFilter(
            id_prefix=f.id or None, labels=label_selector(f.label_selector, "filter.label_selector")
        )
        sandboxes = await self.store.read(lambda s: list_sandboxes(s, flt))
        return api_pb2.ListPodSandboxStatsResponse(stats=[await self._pod(sb) for sb in sandboxes])
