"""cAdvisor-named metrics for ListMetricDescriptors and ListPodSandboxMetrics, which kubelet serves
on /metrics/cadvisor when PodAndContainerStatsFromCRI is on.

Names, help texts' sense and label keys follow cAdvisor (and containerd's and CRI-O's CRI,
which copy them): every metric is labelled `id` and `name` (the container's id and name, or the
pod's for pod-level metrics), network metrics `interface` too, filesystem ones `device`.
The set is what critest v1.37 expects of a runtime (cAdvisor's, less the pressure, hugetlb
and ulimit metrics no runtime has yet); each value comes from the cgroup files, /proc or the
container's config, and a counter whose file this kernel lacks is 0, as cAdvisor reports it.
Values are uint64 (the CRI's type): times in whole seconds, as the names say.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.network.netns import LinkStats
from crictl.reconciler.stats import Usage

BASE = ("id", "name")
COUNTER, GAUGE = api_pb2.COUNTER, api_pb2.GAUGE


@dataclass(frozen=True)
class Kind:
    name: str
    help: str
    type: api_pb2.MetricType.ValueType
    extra: tuple[str, ...] = ()

    def descriptor(self) -> api_pb2.MetricDescriptor:
        return api_pb2.MetricDescriptor(
            name=self.name, help=self.help, label_keys=[*BASE, *self.extra]
        )


def _k(name: str, help: str, type: api_pb2.MetricType.ValueType, *extra: str) -> Kind:
    return Kind(name, help, type, tuple(extra))


CPU = _k("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", COUNTER)
CPU_USER = _k(
    "container_cpu_user_seconds_total", "Cumulative user CPU time consumed in seconds.", COUNTER
)
CPU_SYSTEM = _k(
    "container_cpu_system_seconds_total", "Cumulative system CPU time consumed in seconds.", COUNTER
)
CFS_PERIODS = _k(
    "container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", COUNTER
)
CFS_THROTTLED = _k(
    "container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", COUNTER
)
CFS_THROTTLED_SECONDS = _k(
    "container_cpu_cfs_throttled_seconds_total",
    "Total time duration the container has been throttled.",
    COUNTER,
)
MEMORY_USAGE = _k(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed",
    GAUGE,
)
MEMORY_MAX = _k("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", GAUGE)
WORKING_SET = _k("container_memory_working_set_bytes", "Current working set in bytes.", GAUGE)
RSS = _k("container_memory_rss", "Size of RSS in bytes.", GAUGE)
CACHE = _k("container_memory_cache", "Number of bytes of page cache memory.", GAUGE)
MAPPED = _k("container_memory_mapped_file", "Size of memory mapped files in bytes.", GAUGE)
KERNEL = _k("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", GAUGE)
SWAP = _k("container_memory_swap", "Container swap usage in bytes.", GAUGE)
FAILCNT = _k("container_memory_failcnt", "Number of memory usage hits limits", COUNTER)
FAILURES = _k(
    "container_memory_failures_total",
    "Cumulative count of memory allocation failures.",
    COUNTER,
    "failure_type",
    "scope",
)
OOM = _k(
    "container_oom_events_total",
    "Count of out of memory events observed for the container",
    COUNTER,
)
PROCESSES = _k("container_processes", "Number of processes running inside the container.", GAUGE)
THREADS = _k("container_threads", "Number of threads running inside the container", GAUGE)
THREADS_MAX = _k(
    "container_threads_max",
    "Maximum number of threads allowed inside the container, infinity if value is zero",
    GAUGE,
)
FDS = _k("container_file_descriptors", "Number of open file descriptors for the container.", GAUGE)
SOCKETS = _k("container_sockets", "Number of open sockets for the container.", GAUGE)
FS_USAGE = _k(
    "container_fs_usage_bytes",
    "Number of bytes that are consumed by the container on this filesystem.",
    GAUGE,
    "device",
)
FS_INODES_FREE = _k("container_fs_inodes_free", "Number of available Inodes", GAUGE, "device")
FS_INODES_TOTAL = _k("container_fs_inodes_total", "Number of Inodes", GAUGE, "device")
FS_LIMIT = _k(
    "container_fs_limit_bytes",
    "Number of bytes that can be consumed by the container on this filesystem.",
    GAUGE,
    "device",
)
FS_READ_BYTES = _k(
    "container_fs_reads_bytes_total", "Cumulative count of bytes read", COUNTER, "device"
)
FS_READS = _k("container_fs_reads_total", "Cumulative count of reads completed", COUNTER, "device")
FS_WRITE_BYTES = _k(
    "container_fs_writes_bytes_total", "Cumulative count of bytes written", COUNTER, "device"
)
FS_WRITES = _k(
    "container_fs_writes_total", "Cumulative count of writes completed", COUNTER, "device"
)
BLKIO = _k(
    "container_blkio_device_usage_total",
    "Blkio device bytes usage",
    COUNTER,
    "device",
    "major",
    "minor",
    "operation",
)
LAST_SEEN = _k("container_last_seen", "Last time a container was seen by the exporter", GAUGE)
START_TIME = _k(
    "container_start_time_seconds",
    "Start time of the container since unix epoch in seconds.",
    GAUGE,
)
SPEC_PERIOD = _k("container_spec_cpu_period", "CPU period of the container.", GAUGE)
SPEC_SHARES = _k("container_spec_cpu_shares", "CPU share of the container.", GAUGE)
SPEC_MEMORY = _k("container_spec_memory_limit_bytes", "Memory limit for the container.", GAUGE)
SPEC_SWAP = _k(
    "container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.", GAUGE
)
NET = {
    field: _k(name, help, COUNTER, "interface")
    for field, name, help in (
        ("rx_bytes", "container_network_receive_bytes_total", "Cumulative count of bytes received"),
        (
            "rx_packets",
            "container_network_receive_packets_total",
            "Cumulative count of packets received",
        ),
        (
            "rx_dropped",
            "container_network_receive_packets_dropped_total",
            "Cumulative count of packets dropped while receiving",
        ),
        (
            "rx_errors",
            "container_network_receive_errors_total",
            "Cumulative count of errors encountered while receiving",
        ),
        (
            "tx_bytes",
            "container_network_transmit_bytes_total",
            "Cumulative count of bytes transmitted",
        ),
        (
            "tx_packets",
            "container_network_transmit_packets_total",
            "Cumulative count of packets transmitted",
        ),
        (
            "tx_dropped",
            "container_network_transmit_packets_dropped_total",
            "Cumulative count of packets dropped while transmitting",
        ),
        (
            "tx_errors",
            "container_network_transmit_errors_total",
            "Cumulative count of errors encountered while transmitting",
        ),
    )
}
KINDS = (
    CPU,
    CPU_USER,
    CPU_SYSTEM,
    CFS_PERIODS,
    CFS_THROTTLED,
    CFS_THROTTLED_SECONDS,
    MEMORY_USAGE,
    MEMORY_MAX,
    WORKING_SET,
    RSS,
    CACHE,
    MAPPED,
    KERNEL,
    SWAP,
    FAILCNT,
    FAILURES,
    OOM,
    PROCESSES,
    THREADS,
    THREADS_MAX,
    FDS,
    SOCKETS,
    FS_USAGE,
    FS_INODES_FREE,
    FS_INODES_TOTAL,
    FS_LIMIT,
    FS_READ_BYTES,
    FS_READS,
    FS_WRITE_BYTES,
    FS_WRITES,
    BLKIO,
    LAST_SEEN,
    START_TIME,
    SPEC_PERIOD,
    SPEC_SHARES,
    SPEC_MEMORY,
    SPEC_SWAP,
    *NET.values(),
)


@dataclass(frozen=True)
class Extras:
    """What a container's metrics need besides its cgroup sample."""

    device: str = ""  # the writable layer's filesystem (the snapshotter's mount point)
    fs: tuple[int, int, int] | None = None  # its inodes free, inodes total, bytes
    files: tuple[int, int] = (0, 0)  # open file descriptors, sockets
    started_at_ns: int | None = None
    resources: api_pb2.LinuxContainerResources | None = None


def descriptors() -> list[api_pb2.MetricDescriptor]:
    return [k.descriptor() for k in KINDS]


def _metric(kind: Kind, labels: Sequence[str], value: int | None, at: int) -> api_pb2.Metric | None:
    if value is None:
        return None
    return api_pb2.Metric(
        name=kind.name,
        timestamp=at,
        metric_type=kind.type,
        label_values=list(labels),
        value=api_pb2.UInt64Value(value=value),
    )


def _seconds(ns: int | None) -> int | None:
    return ns // 1_000_000_000 if ns is not None else None


def usage_metrics(
    object_id: str, name: str, u: Usage, extras: Extras | None = None
) -> list[api_pb2.Metric]:
    """A container's (or, without `extras`, a pod's) metrics. Values cAdvisor reports as 0
    when a counter file is absent (swap without swap accounting...) are 0 here too."""
    s, base, at = u.sample, (object_id, name), u.timestamp

    def zero(v: int | None) -> int:
        return v or 0

    found = [
        _metric(CPU, base, _seconds(s.cpu_ns), at),
        _metric(MEMORY_USAGE, base, s.memory_usage, at),
        _metric(WORKING_SET, base, s.working_set, at),
        _metric(RSS, base, s.rss, at),
        _metric(PROCESSES, base, s.processes, at),
        _metric(LAST_SEEN, base, time.time_ns() // 1_000_000_000, at),
    ]
    if extras is not None:
        device = (*base, extras.device)
        res = extras.resources or api_pb2.LinuxContainerResources()
        found += [
            _metric(CPU_USER, base, _seconds(s.cpu_user_ns), at),
            _metric(CPU_SYSTEM, base, _seconds(s.cpu_system_ns), at),
            _metric(CFS_PERIODS, base, zero(s.cfs_periods), at),
            _metric(CFS_THROTTLED, base, zero(s.cfs_throttled_periods), at),
            _metric(CFS_THROTTLED_SECONDS, base, zero(_seconds(s.cfs_throttled_ns)), at),
            _metric(MEMORY_MAX, base, s.memory_max_usage, at),
            _metric(CACHE, base, zero(s.memory_cache), at),
            _metric(MAPPED, base, zero(s.memory_mapped_file), at),
            _metric(KERNEL, base, zero(s.memory_kernel), at),
            _metric(SWAP, base, zero(s.swap), at),
            _metric(FAILCNT, base, zero(s.memory_failcnt), at),
            _metric(FAILURES, (*base, "pgfault", "container"), s.page_faults, at),
            _metric(FAILURES, (*base, "pgmajfault", "container"), s.major_page_faults, at),
            _metric(OOM, base, zero(s.oom_kills), at),
            _metric(THREADS, base, s.threads, at),
            _metric(THREADS_MAX, base, zero(s.threads_max), at),
            _metric(FDS, base, extras.files[0], at),
            _metric(SOCKETS, base, extras.files[1], at),
            _metric(FS_USAGE, device, u.writable_bytes, at),
            _metric(START_TIME, base, _seconds(extras.started_at_ns), at),
            _metric(SPEC_PERIOD, base, res.cpu_period, at),
            _metric(SPEC_SHARES, base, res.cpu_shares, at),
            _metric(SPEC_MEMORY, base, max(res.memory_limit_in_bytes, 0), at),
            _metric(SPEC_SWAP, base, max(res.memory_swap_limit_in_bytes, 0), at),
        ]
        for dev, rbytes, wbytes, reads, writes in s.io:
            major, _, minor = dev.partition(":")
            found += [
                _metric(FS_READ_BYTES, (*base, dev), rbytes, at),
                _metric(FS_READS, (*base, dev), reads, at),
                _metric(FS_WRITE_BYTES, (*base, dev), wbytes, at),
                _metric(FS_WRITES, (*base, dev), writes, at),
                _metric(BLKIO, (*base, dev, major, minor, "Read"), rbytes, at),
                _metric(BLKIO, (*base, dev, major, minor, "Write"), wbytes, at),
            ]
        if extras.fs is not None:
            free, total, limit = extras.fs
            found += [
                _metric(FS_INODES_FREE, device, free, at),
                _metric(FS_INODES_TOTAL, device, total, at),
                _metric(FS_LIMIT, device, limit, at),
            ]
    return [m for m in found if m is not None]


def network_metrics(
    object_id: str, name: str, links: Sequence[LinkStats], at: int
) -> list[api_pb2.Metric]:
    out = []
    for link in links:
        labels = (object_id, name, link.name)
        for field, kind in NET.items():
            metric = _metric(kind, labels, getattr(link, field), at)
            assert metric is not None
            out.append(metric)
    return out
