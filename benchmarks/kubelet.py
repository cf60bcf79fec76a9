"""Pods through a real kubelet: static pods written, then removed, on each runtime.

The other workloads send CRI calls themselves; this one lets kubelet v1.34 (built by
hack/install-kubelet.sh, as the suite's) send them, in its own order and with its own reads
around each write, so the figures are what a node operator sees. kubelet runs standalone
(tests.rig.kubelet) against one runtime at a time: two kubelets would share host paths (the
device plugin socket, /var/log/containers) and the two cores. The runtimes alternate in
blocks: each block starts a kubelet on the runtime, runs one round untimed (kubelet pulls the
image and warms up), then ROUNDS timed rounds, and stops it.

A round writes PODS static pods of CONTAINERS busybox containers each at once (a namespace of
the round's own), then removes them:

- `started`: from the manifests' write to the last container's start, as the runtime records
  it (`ContainerStatus.started_at`: its own clock, read once every container runs, so the
  polling interval is not in the figure). This is kubelet's pod sync: RunPodSandbox, the
  image's status, CreateContainer and StartContainer for each container, and kubelet's reads
  between them.
- `running`: to kubelet's `/pods` showing every pod Running with every container running
  (polled every 100 ms). It waits for kubelet's next relist (every second), so it moves by up
  to a second whatever the runtime does; it is printed to show what kubelet reports, not to
  compare.
- `stopped`: from the manifests' removal to no container of the round running (polled every
  50 ms, so within 50 ms; the containers end at once on SIGTERM). kubelet removes a deleted
  pod's containers as soon as its relist sees them exit, so their `finished_at` may be gone
  before it can be read.
- `pod stopped`: to every pod sandbox NOTREADY (polled every 50 ms).

Then the benchmark removes the round's pods itself (kubelet would only at its next container
GC) and checks nothing of them is left in the runtime.

After a block's timed rounds, IDLE_PODS pods are left running while kubelet alone calls the
runtime (its relist, pod syncs, stats, `Version`) for IDLE_SECONDS: the CPU per second of each
runtime's processes and of kubelet, what a node costs at rest.

    .venv/bin/python -m benchmarks.kubelet                        # 2 blocks of 8 rounds, 1 pod
    .venv/bin/python -m benchmarks.kubelet --pods 10 --containers 2 --rounds 4
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from benchmarks.cri_bench import BenchError, Runtime, percentile, process_cpu_ns
from benchmarks.setup import (
    Node,
    Target,
    format_teardown,
    leftovers,
    local_node,
    local_registry,
    runtime_logs,
    write_figures,
)
from crictl.gen.cri.runtime.v1 import api_pb2

if TYPE_CHECKING:
    from tests.rig.kubelet import Kubelet

T = TypeVar("T")

# Ends at once on SIGTERM: `wait` is interrupted by a trapped signal, a foreground sleep is not.
SCRIPT = "trap 'exit 0' TERM; sleep 100000 & wait"
GRACE = 2  # terminationGracePeriodSeconds
POLL_CRI = 0.05
POLL_KUBELET = 0.1
SETTLE = 12.0  # s between the idle pods running and the idle CPU's measure
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"

Json = dict[str, Any]


@dataclass
class Figures:
    """One runtime's samples, in ms, and the CPU its own processes spent in timed rounds."""

    started: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)
    stopped: list[float] = field(default_factory=list)
    pod_stopped: list[float] = field(default_factory=list)
    cpu_ns: dict[str, int] = field(default_factory=dict)
    kubelet_cpu_ns: int = 0
    rounds: int = 0
    idle_cpu_ns: dict[str, int] = field(default_factory=dict)
    idle_kubelet_cpu_ns: int = 0
    idle_seconds: float = 0.0
    # the idle pods, written at once: their `started` and `running`, one sample a block
    burst_started: list[float] = field(default_factory=list)
    burst_running: list[float] = field(default_factory=list)
    stop_retries: int = 0  # the benchmark's own StopPodSandbox sent again (see Rounds._remove)
    remove_retries: int = 0  # and its RemovePodSandbox
    # kubelet's own histograms, summed over the blocks: name -> [sum of seconds, count]
    kubelet_seen: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def manifest(name: str, namespace: str, image: str, containers: int) -> Json:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": {"bench": "kubelet"}},
        "spec": {
            "terminationGracePeriodSeconds": GRACE,
            "containers": [
                {
                    "name": f"c{i}",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", SCRIPT],
                }
                for i in range(containers)
            ],
        },
    }


def _in(namespace: str) -> dict[str, str]:
    return {NAMESPACE_LABEL: namespace}


def containers_of(rt: Runtime, namespace: str) -> list[api_pb2.Container]:
    resp = rt.runtime.ListContainers(
        api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(label_selector=_in(namespace))
        ),
        timeout=10,
    )
    return list(resp.containers)


def sandboxes_of(rt: Runtime, namespace: str) -> list[api_pb2.PodSandbox]:
    resp = rt.runtime.ListPodSandbox(
        api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(label_selector=_in(namespace))
        ),
        timeout=10,
    )
    return list(resp.items)


_HISTOGRAM = re.compile(
    r"^kubelet_(runtime_operations_duration_seconds|pleg_relist_duration_seconds)_(sum|count)"
    r'(?:\{(?:.*,)?operation_type="([^"]*)"(?:,.*)?\})? (\S+)$'
)


def kubelet_histograms(text: bytes) -> dict[str, tuple[float, float]]:
    """From kubelet's /metrics: how long its PLEG relists took and each CRI operation as
    kubelet timed it (`kubelet_runtime_operations_duration_seconds`, by operation), each as
    (seconds summed, count)."""
    out: dict[str, list[float]] = {}
    for line in text.decode(errors="replace").splitlines():
        m = _HISTOGRAM.match(line)
        if m is None:
            continue
        metric, part, operation, value = m.groups()
        name = "PLEG relist" if metric.startswith("pleg") else (operation or "")
        if not name:
            continue
        entry = out.setdefault(name, [0.0, 0.0])
        entry[0 if part == "sum" else 1] += float(value)
    return {name: (total, count) for name, (total, count) in out.items()}


def _add_cpu(into: dict[str, int], rt: Runtime, before: dict[str, int]) -> None:
    """Adds what each of RT's processes spent since `before` (`Runtime.round_cpu`)."""
    for label, was in before.items():
        into[label] = into.get(label, 0) + process_cpu_ns(rt.processes[label]) - was


def _pid(kubelet: Kubelet) -> int:
    assert kubelet.process is not None, "kubelet is not running"
    return kubelet.process.pid


def wait_until(what: str, check: Callable[[], T], timeout: float, interval: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)


class Rounds:
    def __init__(
        self,
        node: Node,
        pods: int,
        containers: int,
        timeout: float,
        idle_pods: int = 0,
        idle_seconds: float = 0.0,
    ) -> None:
        self.node = node
        self.idle_pods = idle_pods
        self.idle_seconds = idle_seconds
        self.pods = pods
        self.containers = containers
        self.timeout = timeout
        self.image = f"{node.registry}/e2e-test-images/busybox:1.29-2"
        self.figures: dict[str, Figures] = {t.runtime.name: Figures() for t in node.targets}
        self.serial = 0

    def block(self, target: Target, rounds: int, binary: Path) -> None:
        """A kubelet on TARGET for one untimed round, ROUNDS timed ones, then `idle_pods` pods
        left to kubelet for `idle_seconds`."""
        from tests.rig.kubelet import Kubelet

        rt = target.runtime
        self.serial += 1
        kubelet = Kubelet(
            binary, self.node.workdir / f"kubelet-{rt.name}-{self.serial}", rt.endpoint
        )
        figures = self.figures[rt.name]
        try:
            kubelet.start()
            for i in range(rounds + 1):
                timed = i > 0
                cpu_before = rt.round_cpu()
                kubelet_before = process_cpu_ns(_pid(kubelet))
                untimed = Figures()
                self.round(kubelet, rt, figures if timed else untimed)
                figures.stop_retries += untimed.stop_retries
                figures.remove_retries += untimed.remove_retries
                if timed:
                    _add_cpu(figures.cpu_ns, rt, cpu_before)
                    figures.kubelet_cpu_ns += process_cpu_ns(_pid(kubelet)) - kubelet_before
                    figures.rounds += 1
            if self.idle_pods and self.idle_seconds > 0:
                self.idle(kubelet, rt, self.idle_pods, self.idle_seconds, figures)
            for name, (total, count) in kubelet_histograms(kubelet.get("/metrics")).items():
                seen = figures.kubelet_seen.setdefault(name, [0.0, 0.0])
                seen[0] += total
                seen[1] += count
        except BenchError as e:
            figures.errors.append(str(e))
            print(
                f"{rt.name}: {e}\nkubelet's errors:\n" + "\n".join(kubelet.errors()[-20:]),
                file=sys.stderr,
            )
            raise
        finally:
            kubelet.cleanup()

    def round(self, kubelet: Kubelet, rt: Runtime, figures: Figures) -> None:
        self.serial += 1
        namespace = f"bench-{self.serial}"
        self.up(kubelet, rt, namespace, self.pods, figures)
        self.down(kubelet, rt, namespace, self.pods, figures)

    def idle(
        self, kubelet: Kubelet, rt: Runtime, pods: int, seconds: float, figures: Figures
    ) -> None:
        """PODS pods running, kubelet alone calling the runtime for SECONDS: the CPU each
        process spends while nothing happens on the node but kubelet's own loops."""
        self.serial += 1
        namespace = f"idle-{self.serial}"
        burst = Figures()
        self.up(kubelet, rt, namespace, pods, burst)
        figures.burst_started += burst.started
        figures.burst_running += burst.running
        # Past kubelet's first syncs of the new pods and crictld's first stats refresh after
        # them (every 10 s; it learns each new snapshot's writable dir once).
        time.sleep(SETTLE)
        before = rt.round_cpu()
        kubelet_before = process_cpu_ns(_pid(kubelet))
        time.sleep(seconds)
        _add_cpu(figures.idle_cpu_ns, rt, before)
        figures.idle_kubelet_cpu_ns += process_cpu_ns(_pid(kubelet)) - kubelet_before
        figures.idle_seconds += seconds
        untimed = Figures()
        self.down(kubelet, rt, namespace, pods, untimed)
        figures.stop_retries += untimed.stop_retries
        figures.remove_retries += untimed.remove_retries

    def up(
        self, kubelet: Kubelet, rt: Runtime, namespace: str, pods: int, figures: Figures
    ) -> None:
        names = [f"p{i}" for i in range(pods)]
        want = pods * self.containers

        begun = time.time_ns()
        for name in names:
            kubelet.write_manifest(manifest(name, namespace, self.image, self.containers))

        def all_running() -> list[api_pb2.Container]:
            found = containers_of(rt, namespace)
            running = [c for c in found if c.state == api_pb2.CONTAINER_RUNNING]
            return running if len(running) == want else []

        running = wait_until(
            f"{rt.name}: {want} containers running", all_running, self.timeout, POLL_CRI
        )
        started_at = max(self._status(rt, c.id).started_at for c in running)
        figures.started.append((started_at - begun) / 1e6)

        def kubelet_says_running() -> bool:
            seen = {
                p["metadata"]["name"]: p
                for p in kubelet.pods()
                if p["metadata"].get("namespace") == namespace
            }
            return len(seen) == pods and all(
                p["status"].get("phase") == "Running"
                and len(p["status"].get("containerStatuses") or []) == self.containers
                and all("running" in c["state"] for c in p["status"]["containerStatuses"])
                for p in seen.values()
            )

        wait_until(
            f"{rt.name}: kubelet reporting the pods Running",
            kubelet_says_running,
            self.timeout,
            POLL_KUBELET,
        )
        figures.running.append((time.time_ns() - begun) / 1e6)

    def down(
        self, kubelet: Kubelet, rt: Runtime, namespace: str, pods: int, figures: Figures
    ) -> None:
        removed = time.time_ns()
        for i in range(pods):
            kubelet.remove_manifest(f"p{i}")

        # kubelet removes a deleted pod's containers as soon as its relist sees them dead, so
        # an exited container may be gone before it is seen: none running is the condition.
        def none_running() -> bool:
            found = containers_of(rt, namespace)
            return not any(c.state == api_pb2.CONTAINER_RUNNING for c in found)

        wait_until(f"{rt.name}: the containers stopped", none_running, self.timeout, POLL_CRI)
        figures.stopped.append((time.time_ns() - removed) / 1e6)

        def all_notready() -> bool:
            found = sandboxes_of(rt, namespace)
            return all(s.state == api_pb2.SANDBOX_NOTREADY for s in found)

        wait_until(f"{rt.name}: the pods stopped", all_notready, self.timeout, POLL_CRI)
        figures.pod_stopped.append((time.time_ns() - removed) / 1e6)
        self._remove(rt, namespace, figures)

    @staticmethod
    def _status(rt: Runtime, cid: str) -> api_pb2.ContainerStatus:
        resp = rt.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=cid), timeout=10
        )
        return resp.status

    def _remove(self, rt: Runtime, namespace: str, figures: Figures) -> None:
        """Removes the round's pods (kubelet stopped them; its container GC would remove them
        only a minute later) and checks none is left.

        containerd's CRI says NOTREADY once the pause task is gone, before its StopPodSandbox
        has torn the network down and unmounted the netns: a second StopPodSandbox meanwhile
        can fail (its CNI DEL finds the netns file unmounted: "unknown FS magic"). A stop that
        fails is sent again, up to ten times; how often, per runtime, is printed. So is a
        RemovePodSandbox: kubelet removes a deleted static pod's dead containers meanwhile, and
        containerd's CRI refuses a pod's removal that races with one ("already in removing
        state", or NotFound for the container kubelet just removed)."""
        for sandbox in sandboxes_of(rt, namespace):
            stop = api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox.id)
            figures.stop_retries += _sent_until_answered(rt, "StopPodSandbox", stop)
            remove = api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id)
            figures.remove_retries += _sent_until_answered(rt, "RemovePodSandbox", remove)
        left = len(sandboxes_of(rt, namespace)) + len(containers_of(rt, namespace))
        if left:
            raise BenchError(f"{rt.name}: {left} pods or containers of {namespace} left")


def _sent_until_answered(rt: Runtime, method: str, request: Any, attempts: int = 10) -> int:
    """Sends a RuntimeService call until it is answered OK (0.2 s apart, at most `attempts`
    times); returns how many times it was sent again."""
    for attempt in range(attempts):
        try:
            getattr(rt.runtime, method)(request, timeout=30)
            return attempt
        except grpc.RpcError as e:
            if attempt == attempts - 1:
                raise BenchError(f"{rt.name}: {method} {request}: {e}") from e
            time.sleep(0.2)
    raise BenchError(f"{rt.name}: {method} not sent: {attempts} attempts allowed")


def _p(values: Sequence[float], q: float) -> str:
    return f"{percentile(values, q):.0f}" if values else "-"


def format_kubelet_seen(r: Rounds) -> list[str]:
    """kubelet's own timing of its relists and of each CRI operation (its metrics, every call
    of the blocks: untimed and idle included), mean ms per runtime, the most frequent first."""
    names = list(r.figures)
    counts: dict[str, float] = {}
    for f in r.figures.values():
        for op, (_total, count) in f.kubelet_seen.items():
            counts[op] = counts.get(op, 0.0) + count
    if not counts:
        return []
    lines = [
        "",
        "as kubelet timed them (its metrics over every block): mean ms (calls)",
        f"{'':28}| " + " | ".join(f"{n:>22}" for n in names) + " |      ratio",
    ]
    for op in sorted(counts, key=lambda o: (o != "PLEG relist", -counts[o])):
        means = []
        cells = []
        for n in names:
            total, count = r.figures[n].kubelet_seen.get(op, [0.0, 0.0])
            mean = total / count * 1000 if count else 0.0
            means.append(mean)
            cells.append(f"{mean:>10.2f} ({count:>6.0f})" if count else "-")
        ratio = f"{means[0] / means[1]:.2f}" if len(means) == 2 and means[1] else "-"
        lines.append(f"{op:28}| " + " | ".join(f"{c:>22}" for c in cells) + f" | {ratio:>10}")
    return lines


def format_burst(r: Rounds) -> list[str]:
    """The idle pods' start, all written at once: one sample a block, each printed. kubelet's
    per-call means below include these calls, which overlap one another and the other pods'
    RunPodSandbox; how soon all of them run is what the node sees of them."""
    names = list(r.figures)
    rows = [("started", "burst_started"), ("running (kubelet's /pods)", "burst_running")]
    if not any(getattr(r.figures[n], attr) for n in names for _, attr in rows):
        return []
    lines = [
        f"{r.idle_pods} pods written at once (the idle pods): ms, each block; the ratio of the sums"
    ]
    for title, attr in rows:
        values = [getattr(r.figures[n], attr) for n in names]
        cells = [", ".join(f"{v:.0f}" for v in vs) or "-" for vs in values]
        sums = [sum(vs) for vs in values]
        same = len(values) == 2 and len(values[0]) == len(values[1]) and sums[1]
        ratio = f"{sums[0] / sums[1]:.2f}" if same else "-"
        lines.append(f"{title:28}| " + " | ".join(f"{c:>22}" for c in cells) + f" | {ratio:>9}")
    return lines


def format_figures(r: Rounds) -> str:
    names = list(r.figures)
    rows = [
        ("started", "started"),
        ("running (kubelet's /pods)", "running"),
        ("stopped (polled)", "stopped"),
        ("pod stopped (polled)", "pod_stopped"),
    ]
    lines = [
        f"{r.pods} pod(s) of {r.containers} container(s) a round, through kubelet v1.34; "
        "ms from the manifests' write (or removal), p50 / p95 of the timed rounds",
        f"{'':28}| " + " | ".join(f"{n:>22}" for n in names) + " |  p50 ratio",
        "-" * 28 + "+" + "-" * (25 * len(names)) + "+-----------",
    ]
    for title, attr in rows:
        cells = []
        p50 = []
        for n in names:
            values = getattr(r.figures[n], attr)
            cells.append(f"{_p(values, 0.5):>10} / {_p(values, 0.95):>9}")
            p50.append(percentile(values, 0.5) if values else 0.0)
        ratio = f"{p50[0] / p50[1]:.2f}" if len(p50) == 2 and p50[1] else "-"
        lines.append(f"{title:28}| " + " | ".join(f"{c:>22}" for c in cells) + f" | {ratio:>9}")
    lines += format_burst(r)
    lines.append("")
    lines.append(
        "CPU a timed round (ms): the runtime's own processes (shims, runc, CNI plugins and"
    )
    lines.append("crictld's loggers not counted), and kubelet's")
    for n in names:
        f = r.figures[n]
        if not f.rounds:
            continue
        own = " + ".join(f"{label} {ns / f.rounds / 1e6:.1f}" for label, ns in f.cpu_ns.items())
        lines.append(
            f"  {n}: {own}; kubelet {f.kubelet_cpu_ns / f.rounds / 1e6:.1f} ({f.rounds} rounds)"
        )
    for call, retried in (
        ("StopPodSandbox", {n: f.stop_retries for n, f in r.figures.items() if f.stop_retries}),
        (
            "RemovePodSandbox",
            {n: f.remove_retries for n, f in r.figures.items() if f.remove_retries},
        ),
    ):
        if retried:
            lines.append(
                f"the benchmark's own {call} (after kubelet's stop) sent again: "
                + ", ".join(f"{n} {k}x" for n, k in retried.items())
            )
    lines += format_kubelet_seen(r)
    idle = [n for n in names if r.figures[n].idle_seconds]
    if idle:
        lines.append("")
        lines.append(
            f"CPU while idle (ms a second): kubelet alone calling the runtime, {r.idle_pods} "
            f"pods of {r.containers} containers running"
        )
    for n in idle:
        f = r.figures[n]
        own = " + ".join(
            f"{label} {ns / f.idle_seconds / 1e6:.1f}" for label, ns in f.idle_cpu_ns.items()
        )
        total = sum(f.idle_cpu_ns.values()) / f.idle_seconds / 1e6
        lines.append(
            f"  {n}: {own} (= {total:.1f}); kubelet "
            f"{f.idle_kubelet_cpu_ns / f.idle_seconds / 1e6:.1f} ({f.idle_seconds:.0f} s)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kubelet",
        description="Static pods through a real kubelet, crictld next to containerd's CRI.",
    )
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds a block (8)")
    parser.add_argument("--blocks", type=int, default=2, help="blocks per runtime (2)")
    parser.add_argument("--pods", type=int, default=1, help="pods a round, written at once (1)")
    parser.add_argument("--containers", type=int, default=2, help="containers a pod (2)")
    parser.add_argument(
        "--idle-pods", type=int, default=10, help="pods left running for the idle CPU (10)"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=20.0, help="idle CPU measured over (20 s a block)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="per wait, s (120)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw figures to OUT")
    parser.add_argument("--keep-logs", action="store_true", help="keep the runtimes' logs")
    args = parser.parse_args(argv)

    from tests.rig.kubelet import kubelet_bin

    # SIGTERM tears down as an error does: kubelet, both runtimes and the registry stop, and
    # what kubelet changed on the host is undone.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        binary = kubelet_bin()
        with (
            runtime_logs(args.keep_logs, "kubelet") as (logs_dir, failed),
            local_registry(None, None) as registry,
        ):
            with local_node(registry, logs_dir) as node:
                rounds = Rounds(
                    node,
                    args.pods,
                    args.containers,
                    args.timeout,
                    args.idle_pods,
                    args.idle_seconds,
                )
                for rt in node.runtimes:
                    rt.connect()
                try:
                    for block in range(args.blocks):
                        order = node.targets if block % 2 == 0 else node.targets[::-1]
                        for target in order:
                            print(
                                f"block {block + 1}/{args.blocks}: {target.runtime.name}",
                                file=sys.stderr,
                                flush=True,
                            )
                            rounds.block(target, args.rounds, binary)
                finally:
                    for rt in node.runtimes:
                        rt.close()
            after = leftovers(node)
            dirty = any(after.values())
            failed[0] = failed[0] or dirty
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_figures(rounds))
    print()
    print(format_teardown(after, dirty))
    if args.json:
        write_figures(
            args.json, {"pods": args.pods, "containers": args.containers}, rounds.figures, after
        )
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())
