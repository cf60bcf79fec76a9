"""Prometheus metrics: `crictld serve --metrics-address` serves /metrics in the text format,
with CRI call latency by RPC and code, reconcile and store figures, containerd's state, and
pods and containers by phase."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_sandboxes import kill_pause, pod_config, remove, run
from tests.rig.daemon import Daemon
from tests.rig.images import push_unique_image
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(address: str) -> dict[str, list[tuple[dict[str, str], float, str]]]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(family.name, []).append((sample.labels, sample.value, sample.name))
    return out


def test_metrics_after_a_few_calls(
    image_daemon: Daemon, registry: Registry, tmp_path: Path
) -> None:
    d = image_daemon
    address = f"127.0.0.1:{free_port()}"
    d.stop()
    d.extra_args += ["--metrics-address", address]
    d.start()
    for _ in range(3):
        assert d.crictl("version").returncode == 0
    assert d.crictl("pods").returncode == 0
    assert d.crictl("inspectp", "no-such-pod").returncode != 0  # a NOT_FOUND
    sid = run(d, pod_config())
    # an image of blobs no containerd holds yet: the shared containerd may have the pause
    # image's from another test's namespace, and takes those without a transfer
    unique = push_unique_image(registry.host, tmp_path / "blobs")
    assert d.crictl("pull", unique).returncode == 0
    m = scrape(address)

    calls = m["crictld_cri_request_duration_seconds"]
    counts = {
        (labels["rpc"], labels["code"]): value
        for labels, value, name in calls
        if name.endswith("_count")
    }
    assert counts[("Version", "OK")] >= 3, counts
    assert counts[("ListPodSandbox", "OK")] >= 1, counts
    assert counts[("PodSandboxStatus", "NOT_FOUND")] >= 1, counts
    assert counts[("RunPodSandbox", "OK")] == 1, counts
    buckets = [
        v for labels, v, name in calls if name.endswith("_bucket") and labels["rpc"] == "Version"
    ]
    assert buckets and max(buckets) >= 3

    objects = {(labels["kind"], labels["phase"]): v for labels, v, _ in m["crictld_objects"]}
    assert objects[("pod", "READY")] == 1, objects
    assert [v for _, v, _ in m["crictld_containerd_up"]] == [1.0]
    passes = m["crictld_reconcile_pass_duration_seconds"]
    assert any(
        labels["kind"] == "sandbox" and labels["outcome"] == "ok" and v >= 1
        for labels, v, name in passes
        if name.endswith("_count")
    )
    assert any(
        name.endswith("_count") and v >= 1
        for _, v, name in m["crictld_store_write_duration_seconds"]
    )
    assert "crictld_reconcile_queue_depth" in m
    pulls = {
        labels["outcome"]: v
        for labels, v, name in m["crictld_image_pulls"]
        if name.endswith("_total")
    }
    assert pulls.get("ok", 0) >= 2, pulls  # the pause image and the unique one
    pulled = {
        labels["path"]: v
        for labels, v, name in m["crictld_image_pull_bytes"]
        if name.endswith("_total")
    }
    assert pulled.get("store", 0) + pulled.get("api", 0) > 0, pulled
    assert "crictld_pods_lost" not in m or all(v == 0 for _, v, _ in m["crictld_pods_lost"])

    # a pod the daemon finds broken is counted by reason
    kill_pause(d, sid)
    lost = {
        labels["reason"]: v
        for labels, v, name in scrape(address)["crictld_pods_lost"]
        if name.endswith("_total")
    }
    assert lost == {"PauseExited": 1.0}, lost
    remove(d, sid)
