"""Stats for real: crictl stats and statsp (and their JSON forms) on a spinning container and a
pod that is pinged; fresh CPU samples per call, memory, the writable layer, processes, and the
pod's network counters read from its netns."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from crictl.containerd.client import ContainerdClient
from crictl.containerd.usage import SnapshotUsage
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.reconciler.sandboxes import SNAPSHOTTER
from tests.integration.test_containers import BUSYBOX, Pod
from tests.integration.test_images import pull
from tests.integration.test_sandboxes import pod_config, remove, run, status
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


def container_stats(d: Daemon, cid: str) -> api_pb2.ContainerStats:
    resp = d.runtime_call("ContainerStats", api_pb2.ContainerStatsRequest(container_id=cid))
    stats: api_pb2.ContainerStats = resp.stats
    return stats


def pod_stats(d: Daemon, sid: str) -> api_pb2.PodSandboxStats:
    resp = d.runtime_call("PodSandboxStats", api_pb2.PodSandboxStatsRequest(pod_sandbox_id=sid))
    stats: api_pb2.PodSandboxStats = resp.stats
    return stats


def test_fresh_stats_of_containers_and_pods(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    busy = pod.create("busy", ["sh", "-c", "echo data > /written; while true; do :; done"])
    idle = pod.create("idle", ["sleep", "3600"], memory_limit_in_bytes=64 << 20)
    pod.start(busy)
    pod.start(idle)

    # two samples a second apart: the second carries a second more CPU time and a rate
    first = container_stats(d, busy)
    time.sleep(1.0)
    st = container_stats(d, busy)
    assert st.cpu.timestamp - first.cpu.timestamp >= 900_000_000
    assert st.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
    assert st.cpu.usage_nano_cores.value > 300_000_000, st.cpu  # a spinning shell
    assert st.attributes.id == busy and st.attributes.metadata.name == "busy"
    assert st.memory.working_set_bytes.value > 0 and st.memory.rss_bytes.value > 0
    assert st.memory.usage_bytes.value >= st.memory.working_set_bytes.value
    assert st.memory.page_faults.value > 0
    assert st.writable_layer.used_bytes.value > 0  # /written
    assert st.writable_layer.fs_id.mountpoint

    idle_stats = container_stats(d, idle)
    limited = idle_stats.memory
    assert 0 < limited.available_bytes.value <= (64 << 20) - limited.working_set_bytes.value
    assert not st.memory.HasField("available_bytes")  # no limit, nothing to be available against

    listed = d.runtime_call("ListContainerStats", api_pb2.ListContainerStatsRequest())
    assert {s.attributes.id for s in listed.stats} == {busy, idle}
    by_label = d.runtime_call(
        "ListContainerStats",
        api_pb2.ListContainerStatsRequest(
            filter=api_pb2.ContainerStatsFilter(label_selector={"c": "idle"})
        ),
    )
    assert [s.attributes.id for s in by_label.stats] == [idle]
    by_pod = d.runtime_call(
        "ListContainerStats",
        api_pb2.ListContainerStatsRequest(
            filter=api_pb2.ContainerStatsFilter(pod_sandbox_id=pod.id, id=busy[:8])
        ),
    )
    assert [s.attributes.id for s in by_pod.stats] == [busy]

    ps = pod_stats(d, pod.id)
    assert ps.attributes.id == pod.id and ps.attributes.metadata.name == "web"
    linux = ps.linux
    assert {c.attributes.id for c in linux.containers} == {busy, idle}
    assert linux.cpu.usage_core_nano_seconds.value >= st.cpu.usage_core_nano_seconds.value
    assert linux.memory.working_set_bytes.value > 0
    assert linux.process.process_count.value >= 3  # pause, the busy shell, sleep

    # network: 20 KB of pings to the pod's IP show in its default interface's rx bytes
    ip = status(d, pod.id).status.network.ip
    before = linux.network.default_interface
    assert before.name == "eth0" and before.rx_bytes.value > 0
    subprocess.run(
        ["ping", "-c", "20", "-i", "0.05", "-s", "1000", "-W", "2", ip],
        check=True,
        capture_output=True,
    )
    after = pod_stats(d, pod.id).linux.network.default_interface
    assert after.rx_bytes.value - before.rx_bytes.value >= 20 * 1000
    assert after.tx_bytes.value - before.tx_bytes.value >= 20 * 1000  # the replies

    listed_pods = d.runtime_call("ListPodSandboxStats", api_pb2.ListPodSandboxStatsRequest())
    assert [p.attributes.id for p in listed_pods.stats] == [pod.id]
    remove(d, pod.id)


def test_crictl_stats_and_statsp(image_daemon: Daemon, registry: Registry, short_tmp: Path) -> None:
    """The commands that failed with "cpu stat is not updated during sample"."""
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    busy = pod.create("busy", ["sh", "-c", "while true; do :; done"])
    pod.start(busy)
    time.sleep(0.5)

    out = d.crictl("stats")
    assert out.returncode == 0, out.stderr
    [line] = [x for x in out.stdout.splitlines() if x.startswith(busy[:13])]
    cpu_percent = float(line.split()[2])  # CONTAINER NAME CPU% MEM DISK INODES
    assert cpu_percent > 30, line

    out = d.crictl("stats", "-o", "json")
    assert out.returncode == 0, out.stderr
    [entry] = json.loads(out.stdout)["stats"]
    assert int(entry["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
    assert int(entry["memory"]["workingSetBytes"]["value"]) > 0

    out = d.crictl("statsp")
    assert out.returncode == 0, out.stderr
    assert pod.id[:13] in out.stdout, out.stdout
    out = d.crictl("statsp", "-o", "json")
    assert out.returncode == 0, out.stderr
    [entry] = json.loads(out.stdout)["stats"]
    assert entry["linux"]["network"]["defaultInterface"]["name"] == "eth0"
    assert int(entry["linux"]["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
    remove(d, pod.id)


def test_cadvisor_metrics_from_the_cri(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """ListMetricDescriptors and ListPodSandboxMetrics (and the stream), as kubelet reads
    them with PodAndContainerStatsFromCRI: cAdvisor's names, labels id and name (interface,
    device), values that move."""
    d = image_daemon
    descriptors = {
        m.name: list(m.label_keys)
        for m in d.runtime_call(
            "ListMetricDescriptors", api_pb2.ListMetricDescriptorsRequest()
        ).descriptors
    }
    assert descriptors["container_cpu_usage_seconds_total"] == ["id", "name"]
    assert descriptors["container_memory_working_set_bytes"] == ["id", "name"]
    assert descriptors["container_network_receive_bytes_total"] == ["id", "name", "interface"]
    assert descriptors["container_fs_usage_bytes"] == ["id", "name", "device"]

    pod = Pod(d, registry, short_tmp / "logs")
    busy = pod.create("busy", ["sh", "-c", "while true; do :; done"])
    pod.start(busy)
    time.sleep(1.5)
    [pm] = d.runtime_call(
        "ListPodSandboxMetrics", api_pb2.ListPodSandboxMetricsRequest()
    ).pod_metrics
    assert pm.pod_sandbox_id == pod.id
    pod_metrics = {(m.name, tuple(m.label_values)): m for m in pm.metrics}
    rx = pod_metrics[("container_network_receive_bytes_total", (pod.id, "web", "eth0"))]
    assert rx.metric_type == api_pb2.COUNTER and rx.value.value > 0
    [cm] = pm.container_metrics
    assert cm.container_id == busy
    by_name = {m.name: m for m in cm.metrics}
    for m in cm.metrics:  # every metric's labels match its descriptor's keys
        assert len(m.label_values) == len(descriptors[m.name]), m
        assert m.label_values[:2] == [busy, "busy"] and m.timestamp > 0
    assert by_name["container_cpu_usage_seconds_total"].value.value >= 1  # 1.5 s of spinning
    assert by_name["container_memory_working_set_bytes"].metric_type == api_pb2.GAUGE
    assert by_name["container_memory_working_set_bytes"].value.value > 0
    assert by_name["container_processes"].value.value >= 1
    streamed = list(
        itertools.chain.from_iterable(
            r.pod_sandbox_metrics
            for r in d.runtime_stream(
                "StreamPodSandboxMetrics", api_pb2.StreamPodSandboxMetricsRequest()
            )
        )
    )
    assert [p.pod_sandbox_id for p in streamed] == [pod.id]
    remove(d, pod.id)


def test_layer_usage_is_what_containerd_measures(
    image_daemon: Daemon, registry: Registry, short_tmp: Path, containerd_address: str
) -> None:
    """crictld walks an active snapshot's writable directory itself (crictl/containerd/usage.py)
    where it asked containerd's snapshotter for each one: the figures must be containerd's own,
    for a layer with a directory tree, a hard link and a symlink, for a pause's, and summed
    over every snapshot as ImageFsInfo reports them."""
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    script = (
        "mkdir -p /d/e && head -c 100000 /dev/zero > /d/e/f && ln /d/e/f /d/g && "
        "ln -s /d/e/f /d/h && touch /done && sleep 3600"
    )
    cid = pod.create("writer", ["sh", "-c", script])
    pod.start(cid)
    deadline = time.monotonic() + 10
    while pod.exec(cid, ["ls", "/done"]).exit_code != 0:
        assert time.monotonic() < deadline, "the layer was not written"
        time.sleep(0.1)

    async def compare() -> None:
        client = ContainerdClient(containerd_address, d.namespace)
        try:

            async def containerds(key: str) -> tuple[int, int]:
                u = await client.call(
                    "snapshot usage",
                    client.snapshots.Usage(
                        snapshots_pb2.UsageRequest(snapshotter=SNAPSHOTTER, key=key),
                        metadata=client.metadata,
                    ),
                )
                return u.size, u.inodes

            usage = SnapshotUsage(client, SNAPSHOTTER)
            ours = await usage.active([cid, pod.id])
            layer = ours[cid]
            assert layer == await containerds(cid)
            assert layer is not None and layer[0] >= 100_000
            assert ours[pod.id] == await containerds(pod.id)
            keys = [
                info.name
                async for resp in client.snapshots.List(
                    snapshots_pb2.ListSnapshotsRequest(snapshotter=SNAPSHOTTER),
                    metadata=client.metadata,
                )
                for info in resp.info
            ]
            expected = [await containerds(k) for k in keys]
            total = (sum(s for s, _ in expected), sum(i for _, i in expected))
            assert await usage.total() == total
            assert await usage.total() == total  # the committed ones from what it kept
        finally:
            await client.close()

    asyncio.run(compare())
    writable = container_stats(d, cid).writable_layer
    assert writable.used_bytes.value >= 100_000 and writable.inodes_used.value >= 5


class ParentedPod(Pod):
    """A pod in a pod-level cgroup of its own, as kubelet makes every pod."""

    def __init__(self, d: Daemon, registry: Registry, logs: Path, parent: str) -> None:
        self.d = d
        self.image = f"{registry.host}/{BUSYBOX}"
        pull(d, self.image)
        self.config = pod_config("parented", uid="uid-parented")
        self.config.log_directory = str(logs)
        self.config.linux.cgroup_parent = parent
        self.id = run(d, self.config)


def test_a_pod_in_its_own_cgroup_counts_its_processes(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """kubelet's pod cgroup holds the pod's processes in the cgroups below it; kubelet ranks
    pods by this count under PID pressure."""
    d = image_daemon
    parent = f"/crictld-procs-{secrets.token_hex(3)}"
    pod = ParentedPod(d, registry, short_tmp / "logs", parent)
    try:
        cid = pod.create("app", ["sh", "-c", "sleep 3600 & sleep 3600 & wait"])
        pod.start(cid)
        linux = pod_stats(d, pod.id).linux
        assert linux.cpu.usage_core_nano_seconds.value > 0
        assert linux.process.process_count.value >= 4, linux  # pause, sh, two sleeps
    finally:
        remove(d, pod.id)
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            with contextlib.suppress(OSError):
                (hierarchy / parent[1:]).rmdir()
