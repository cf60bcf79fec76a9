"""cAdvisor-named metrics for ListMetricDescriptors and ListPodSandboxMetrics, which kubelet serves
on /metrics/cadvisor when PodAndContainerStatsFromCRI is on.

Names, help texts' sense and label keys follow cAdvisor (and containerd's and CRI-O's CRI,
which copy them): every metric is labelled `id` and `name` (the container's id and name, or the
pod's for pod-level metrics), network metrics `interface` too, filesystem ones `device`.
Only what crictld measures is described; nothing is sent as a placeholder. Values are uint64
(the CRI's type): CPU time in whole seconds, as its cAdvisor name says.
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


CPU = Kind("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", COUNTER)
MEMORY_USAGE = Kind(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed",
    GAUGE,
)
WORKING_SET = Kind("container_memory_working_set_bytes", "Current working set in bytes.", GAUGE)
RSS = Kind("container_memory_rss", "Size of RSS in bytes.", GAUGE)
SWAP = Kind("container_memory_swap", "Container swap usage in bytes.", GAUGE)
PROCESSES = Kind("container_processes", "Number of processes running inside the container.", GAUGE)
FS_USAGE = Kind(
    "container_fs_usage_bytes",
    "Number of bytes that are consumed by the container on this filesystem.",
    GAUGE,
    ("device",),
)
FS_INODES = Kind(
    "container_fs_inodes_used", "Number of inodes used by the container.", GAUGE, ("device",)
)
LAST_SEEN = Kind("container_last_seen", "Last time a container was seen by the exporter", GAUGE)
RX_BYTES = Kind(
    "container_network_receive_bytes_total",
    "Cumulative count of bytes received",
    COUNTER,
    ("interface",),
)
RX_ERRORS = Kind(
    "container_network_receive_errors_total",
    "Cumulative count of errors encountered while receiving",
    COUNTER,
    ("interface",),
)
TX_BYTES = Kind(
    "container_network_transmit_bytes_total",
    "Cumulative count of bytes transmitted",
    COUNTER,
    ("interface",),
)
TX_ERRORS = Kind(
    "container_network_transmit_errors_total",
    "Cumulative count of errors encountered while transmitting",
    COUNTER,
    ("interface",),
)
KINDS = (
    CPU,
    MEMORY_USAGE,
    WORKING_SET,
    RSS,
    SWAP,
    PROCESSES,
    FS_USAGE,
    FS_INODES,
    LAST_SEEN,
    RX_BYTES,
    RX_ERRORS,
    TX_BYTES,
    TX_ERRORS,
)


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


def usage_metrics(object_id: str, name: str, u: Usage, device: str = "") -> list[api_pb2.Metric]:
    """A container's (or a pod's) cgroup metrics, and its writable layer when measured."""
    s, base, at = u.sample, (object_id, name), u.timestamp
    found = [
        _metric(CPU, base, s.cpu_ns // 1_000_000_000 if s.cpu_ns is not None else None, at),
        _metric(MEMORY_USAGE, base, s.memory_usage, at),
        _metric(WORKING_SET, base, s.working_set, at),
        _metric(RSS, base, s.rss, at),
        _metric(SWAP, base, s.swap, at),
        _metric(PROCESSES, base, s.processes, at),
        _metric(LAST_SEEN, base, time.time_ns() // 1_000_000_000, at),
        _metric(FS_USAGE, (*base, device), u.writable_bytes, at),
        _metric(FS_INODES, (*base, device), u.writable_inodes, at),
    ]
    return [m for m in found if m is not None]


def network_metrics(
    object_id: str, name: str, links: Sequence[LinkStats], at: int
) -> list[api_pb2.Metric]:
    out = []
    for link in links:
        labels = (object_id, name, link.name)
        for kind, value in (
            (RX_BYTES, link.rx_bytes),
            (RX_ERRORS, link.rx_errors),
            (TX_BYTES, link.tx_bytes),
            (TX_ERRORS, link.tx_errors),
        ):
            metric = _metric(kind, labels, value, at)
            assert metric is not None
            out.append(metric)
    return out
