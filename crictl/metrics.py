"""Prometheus metrics of the daemon (prometheus-client), served on /metrics when
`metrics_address` is set (off by default).

Named the Prometheus way: the `crictld_` prefix, base units (seconds, bytes), `_total` for
counters. Instruments are module-level objects in one registry of crictld's own; gauges whose
value lives elsewhere (queue depth, containerd's connection, pods by phase) are read when
scraped through callbacks the daemon registers, so no code path updates them by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

# CRI calls answer in ~1 ms (reads) to minutes (pulls).
_CALL_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)

CRI_CALLS = Histogram(
    "crictld_cri_request_duration_seconds",
    "CRI calls by RPC and gRPC status code, with their duration.",
    ("rpc", "code"),
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)
RECONCILE_PASSES = Histogram(
    "crictld_reconcile_pass_duration_seconds",
    "Reconcile passes by kind of object and outcome (ok, error).",
    ("kind", "outcome"),
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)
RECONCILE_FAILURES = Counter(
    "crictld_reconcile_pass_failures_total",
    "Reconcile passes that failed (each is retried with backoff).",
    ("kind",),
    registry=REGISTRY,
)
RECONCILE_WAIT = Histogram(
    "crictld_reconcile_queue_wait_seconds",
    "From a wake-up to the start of the pass it caused: the queue's lag.",
    ("kind",),
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)
STORE_WRITES = Histogram(
    "crictld_store_write_duration_seconds",
    "SQLite write transactions, queueing for the one writer thread included.",
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)
STORE_WRITE_REFUSALS = Counter(
    "crictld_store_write_refusals_total",
    "SQLite writes the node refused, by reason (full: the state disk is full; io; readonly; "
    "corrupt; busy: another process held the write lock): the CRI call or reconcile pass "
    "failed and changed nothing.",
    ("reason",),
    registry=REGISTRY,
)
EVENTS_TRIMMED = Counter(
    "crictld_event_log_trimmed_total",
    "Event log rows deleted to keep the log at its bound (event_log_rows).",
    registry=REGISTRY,
)
PODS_LOST = Counter(
    "crictld_pods_lost_total",
    "Ready pods the daemon itself made NOTREADY, by reason (PauseExited, TaskVanished, "
    "NetnsVanished, NetworkLost, NetworkCheckFailed): kubelet replaces each with a new sandbox.",
    ("reason",),
    registry=REGISTRY,
)
IMAGE_PULLS = Counter(
    "crictld_image_pulls_total",
    "Image pulls by outcome (ok, error).",
    ("outcome",),
    registry=REGISTRY,
)
IMAGE_PULL_BYTES = Counter(
    "crictld_image_pull_bytes_total",
    "Bytes of image layers downloaded from registries into containerd, by path: 'store' "
    "(written beside containerd's content store and linked into it), 'api' (sent through "
    "containerd's content API).",
    ["path"],
    registry=REGISTRY,
)


class Gauges(Collector):
    """Gauges computed when scraped: each callback returns {label values: value}."""

    def __init__(self) -> None:
        self._gauges: list[
            tuple[str, str, tuple[str, ...], Callable[[], Mapping[tuple[str, ...], float]]]
        ] = []

    def add(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        read: Callable[[], Mapping[tuple[str, ...], float]],
    ) -> None:
        self._gauges.append((name, documentation, labels, read))

    def collect(self) -> Iterable[Metric]:
        for name, documentation, labels, read in self._gauges:
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            try:
                values = read()
            except Exception as e:  # a scrape never fails because one source did
                log.warning("metric not collected", extra={"metric": name, "error": str(e)})
                continue
            for label_values, value in values.items():
                family.add_metric(list(label_values), value)
            yield family

    def describe(self) -> Iterable[Metric]:
        return []


GAUGES = Gauges()
REGISTRY.register(GAUGES)


def serve(address: str) -> Any:
    """Starts /metrics on `address` (HOST:PORT) in a thread of its own; returns the server."""
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(
        int(port), addr=host.strip("[]") or "0.0.0.0", registry=REGISTRY
    )
    return server
