"""The scale workload: many pods at once, their memory, and a restart of the CRI server.

For each runtime in turn (crictld, then containerd's CRI), on a node brought up here:

1. **RunPodSandbox x PODS at once**: PODS threads each send one RunPodSandbox on the one channel
   (as kubelet's pod workers do); timed from the first send to the last answer, then checked:
   every pod READY in one ListPodSandbox. Per-call latencies are reported too, and the CPU the
   phase took: the whole machine's (busy time in /proc/stat) and each daemon's (its own time
   plus that of the children it reaped: crictld's CNI plugin runs; containerd's, for the
   reference). The shims and runc are in the machine's figure only (the shims daemonize).
   Meanwhile one more thread sends ListPodSandbox every 100 ms on the same channel (kubelet's
   relist) and its latencies are reported: how a runtime answers reads while it is busiest.
2. **containers**: PER_POD busybox containers (`sleep 3600`) created and started in every pod,
   10 at a time, timed as a whole.
3. **memory** at that size: the CRI daemon (crictld and its managed containerd; containerd with
   its CRI plugin), the shims, and the shims' helpers (crictld's per-container loggers), VmRSS
   summed per group and PSS (shared pages split); crictld's total is compared with containerd's.
   Then IDLE_S seconds with nothing asked: the CPU the node takes at that size at rest.

The CPU of each phase (pods, containers, idle) is also printed by command name: every process
on the machine read from /proc before and after, the time of those alive at the end and, as
"reaped", that of the children they reaped (the shims' runc runs, the daemons' CNI runs).
4. **restart**: the CRI server is killed (SIGKILL: a crash, the worst case) and started again;
   timed from the new process's start to (a) its first answer to `Version`, (b) the first
   moment its answers are whole again: ListPodSandbox lists every pod READY, ListContainers every
   container RUNNING, and the statuses of one pod and one container agree. crictld's managed
   containerd keeps running (crictld's own restart); for the reference, containerd itself is
   the CRI server, so containerd restarts (its shims keep running). SETTLE_S seconds later the
   memory is measured again: crictld's daemon has recovered and run its first orphan sweep,
   which a daemon at this size also runs every few minutes, so this is its steady size; the
   figure of step 3 is that of a daemon that has not yet swept at this size. `--settle
   10,120,300` measures it at each of those times instead (how much of what the restart grew
   each runtime's processes give back, and how soon).
5. **teardown**: every pod stopped and removed, PODS at once; then what is left on the node is
   counted as `benchmarks.sandboxes` does (netns files, IPs, containerd objects, veths), and
   after the runtimes are torn down.

    .venv/bin/python -m benchmarks.scale                      # 100 pods x 3 containers
    .venv/bin/python -m benchmarks.scale --pods 50 --per-pod 2 --json out.json
    .venv/bin/python -m benchmarks.scale --settle 10,120,300  # memory thrice after the restart

It cleans up after itself (also after a failure); `--keep-logs` keeps the runtimes' logs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from benchmarks.containers import BUSYBOX, busybox_image, measure
from benchmarks.cri_bench import (
    BenchError,
    Runtime,
    kubelet_linux_config,
    kubelet_sandbox_linux_config,
    percentile,
)
from benchmarks.sandboxes import RUN_LABEL, node_holdings
from benchmarks.setup import (
    Node,
    Target,
    format_teardown,
    leftovers,
    local_node,
    local_processes,
    local_registry,
    runtime_logs,
    write_figures,
)
from crictl.gen.cri.runtime.v1 import api_pb2

SANDBOX_TIMEOUT = 300.0
CALL_TIMEOUT = 120.0
RESTART_TIMEOUT = 120.0
CONTAINER_WORKERS = 10
IDLE_S = 20.0  # the idle window at scale: what the node costs with nothing asked of it
SETTLE_S = 10.0  # after the restart: crictld's first orphan sweep takes ~0.5 s at scale


@dataclass
class Figures:
    """One runtime's figures."""

    run_all_s: float = 0.0
    run_ms: list[float] = field(default_factory=list)
    run_errors: list[str] = field(default_factory=list)
    # ListPodSandbox (kubelet's relist) every 100 ms on the same channel while the pods start
    storm_list_ms: list[float] = field(default_factory=list)
    all_ready: bool = False
    containers_s: float = 0.0
    container_errors: list[str] = field(default_factory=list)
    memory_kib: dict[str, dict[str, int]] = field(default_factory=dict)  # group: rss, pss, n
    # the same once the restarted CRI server settled (crictld recovered and ran its first
    # orphan sweep, which a daemon at this size runs every few minutes), by seconds after
    # the restart's answers were whole
    memory_after_restart_kib: dict[float, dict[str, dict[str, int]]] = field(default_factory=dict)
    # "machine": seconds; a daemon: its own seconds, then its reaped children's
    run_cpu_s: dict[str, tuple[float, float]] = field(default_factory=dict)
    # every process on the machine, by command name: own seconds, reaped children's seconds
    run_cpu_by_name: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the same for the containers phase, and the machine's busy seconds in it
    containers_cpu_by_name: dict[str, tuple[float, float]] = field(default_factory=dict)
    containers_cpu_s: float = 0.0
    # IDLE_S seconds at scale, nothing asked: the machine's busy seconds, and by command name
    idle_cpu_s: float = 0.0
    idle_cpu_by_name: dict[str, tuple[float, float]] = field(default_factory=dict)
    first_answer_s: float | None = None
    whole_s: float | None = None
    restart_note: str = ""
    teardown_s: float = 0.0
    teardown_errors: list[str] = field(default_factory=list)
    left: dict[str, list[str]] = field(default_factory=dict)


def _errors(e: grpc.RpcError) -> str:
    if isinstance(e, grpc.Call):
        return f"{e.code().name}: {(e.details() or '')[:160]}"
    return str(e)[:160]


class Scale:
    def __init__(
        self,
        node: Node,
        pods: int,
        per_pod: int,
        log_root: Path,
        settle: Sequence[float] = (SETTLE_S,),
    ) -> None:
        self.node = node
        self.pods = pods
        self.per_pod = per_pod
        self.settle = sorted(settle)
        self.log_root = log_root
        self.tag = f"scale-{int(time.time())}"
        self.pause = node.pause_image
        self.busybox = busybox_image(node.registry)
        self.figures: dict[str, Figures] = {}
        self.baseline: dict[str, dict[str, frozenset[str]]] = {}

    # ------------------------------------------------------------------ configs

    def pod_config(self, rt: Runtime, i: int) -> api_pb2.PodSandboxConfig:
        uid = f"{self.tag}-{rt.name}-{i}"
        name = f"scale-{i}"
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="default", uid=uid, attempt=0),
            hostname=name,
            log_directory=str(self.log_root / rt.name / f"default_{name}_{uid}"),
            labels={"bench": "scale", RUN_LABEL: self.tag, "io.kubernetes.pod.uid": uid},
            linux=kubelet_sandbox_linux_config(),
        )

    def container_config(self, name: str) -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name, attempt=0),
            image=api_pb2.ImageSpec(image=self.busybox),
            command=["sleep", "3600"],
            log_path=f"{name}/0.log",
            labels={"bench": "scale", RUN_LABEL: self.tag},
            linux=kubelet_linux_config(),
        )

    # ------------------------------------------------------------------ phases

    def run(self, target: Target, restart: Callable[[], None]) -> Figures:
        rt = target.runtime
        fig = self.figures.setdefault(rt.name, Figures())
        rt.connect()
        try:
            for image in (self.pause, self.busybox):
                rt.image.PullImage(
                    api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)), timeout=300
                )
            configs = [self.pod_config(rt, i) for i in range(self.pods)]
            daemons = local_processes(target).daemons
            before = {label: cpu_seconds(pid) for label, pid in daemons.items()}
            machine_before = machine_busy_seconds()
            processes_before = processes_cpu()
            pods = self._run_pods(rt, configs, fig)
            fig.run_cpu_s = {"machine": (machine_busy_seconds() - machine_before, 0.0)}
            fig.run_cpu_by_name = cpu_by_name(processes_before, processes_cpu())
            for label, pid in daemons.items():
                own, children = cpu_seconds(pid)
                fig.run_cpu_s[label] = (own - before[label][0], children - before[label][1])
            machine_before, processes_before = machine_busy_seconds(), processes_cpu()
            self._containers(rt, pods, fig)
            fig.containers_cpu_s = machine_busy_seconds() - machine_before
            fig.containers_cpu_by_name = cpu_by_name(processes_before, processes_cpu())
            fig.memory_kib = _memory(target)
            machine_before, processes_before = machine_busy_seconds(), processes_cpu()
            time.sleep(IDLE_S)
            fig.idle_cpu_s = machine_busy_seconds() - machine_before
            fig.idle_cpu_by_name = cpu_by_name(processes_before, processes_cpu())
            self._restart(rt, restart, pods, fig)
            whole = time.monotonic()
            for seconds in self.settle:
                time.sleep(max(0.0, whole + seconds - time.monotonic()))
                fig.memory_after_restart_kib[seconds] = _memory(target)
            self._teardown(rt, fig)
            fig.left = {
                kind: sorted(names)
                for kind, names in node_holdings(target).items()
                if names - self.baseline.get(rt.name, {}).get(kind, frozenset())
            }
        finally:
            rt.close()
        return fig

    def _run_pods(
        self, rt: Runtime, configs: list[api_pb2.PodSandboxConfig], fig: Figures
    ) -> list[tuple[str, api_pb2.PodSandboxConfig]]:
        def one(config: api_pb2.PodSandboxConfig) -> tuple[str, float]:
            started = time.perf_counter()
            resp = rt.runtime.RunPodSandbox(
                api_pb2.RunPodSandboxRequest(config=config), timeout=SANDBOX_TIMEOUT
            )
            return resp.pod_sandbox_id, (time.perf_counter() - started) * 1000

        pods: list[tuple[str, api_pb2.PodSandboxConfig]] = []
        done = threading.Event()

        def relist() -> None:
            # what an operator's kubelet sees meanwhile: its relist, once a 100 ms here
            while not done.wait(0.1):
                t = time.perf_counter()
                try:
                    rt.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)
                except grpc.RpcError as e:
                    fig.run_errors.append("relist: " + _errors(e))
                    continue
                fig.storm_list_ms.append((time.perf_counter() - t) * 1000)

        lister = threading.Thread(target=relist, name="relist")
        lister.start()
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(configs)) as pool:
            futures = {pool.submit(one, c): c for c in configs}
            for f in concurrent.futures.as_completed(futures):
                try:
                    sid, ms = f.result()
                except grpc.RpcError as e:
                    fig.run_errors.append(_errors(e))
                    continue
                pods.append((sid, futures[f]))
                fig.run_ms.append(ms)
        fig.run_all_s = time.perf_counter() - started
        done.set()
        lister.join()
        listed = rt.runtime.ListPodSandbox(self._mine_filter(), timeout=CALL_TIMEOUT).items
        ready = {p.id for p in listed if p.state == api_pb2.SANDBOX_READY}
        fig.all_ready = len(pods) == len(configs) and {sid for sid, _ in pods} <= ready
        return pods

    def _mine_filter(self) -> api_pb2.ListPodSandboxRequest:
        return api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(label_selector={RUN_LABEL: self.tag})
        )

    def _containers(
        self, rt: Runtime, pods: list[tuple[str, api_pb2.PodSandboxConfig]], fig: Figures
    ) -> None:
        def one(sid: str, config: api_pb2.PodSandboxConfig, name: str) -> None:
            resp = rt.runtime.CreateContainer(
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=sid, config=self.container_config(name), sandbox_config=config
                ),
                timeout=CALL_TIMEOUT,
            )
            rt.runtime.StartContainer(
                api_pb2.StartContainerRequest(container_id=resp.container_id),
                timeout=CALL_TIMEOUT,
            )

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(CONTAINER_WORKERS) as pool:
            futures = [
                pool.submit(one, sid, config, f"c{j}")
                for sid, config in pods
                for j in range(self.per_pod)
            ]
            for f in futures:
                try:
                    f.result()
                except grpc.RpcError as e:
                    fig.container_errors.append(_errors(e))
        fig.containers_s = time.perf_counter() - started

    def _whole(self, rt: Runtime, pods: list[tuple[str, api_pb2.PodSandboxConfig]]) -> bool:
        """Every pod READY, every container RUNNING, and statuses that agree."""
        listed = rt.runtime.ListPodSandbox(self._mine_filter(), timeout=5).items
        if {p.id for p in listed if p.state == api_pb2.SANDBOX_READY} != {s for s, _ in pods}:
            return False
        containers = rt.runtime.ListContainers(
            api_pb2.ListContainersRequest(
                filter=api_pb2.ContainerFilter(label_selector={RUN_LABEL: self.tag})
            ),
            timeout=5,
        ).containers
        running = [c for c in containers if c.state == api_pb2.CONTAINER_RUNNING]
        if len(running) != len(pods) * self.per_pod:
            return False
        pod = rt.runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pods[-1][0]), timeout=5
        )
        status = rt.runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=running[-1].id), timeout=5
        )
        return (
            pod.status.state == api_pb2.SANDBOX_READY
            and status.status.state == api_pb2.CONTAINER_RUNNING
        )

    def _restart(
        self,
        rt: Runtime,
        restart: Callable[[], None],
        pods: list[tuple[str, api_pb2.PodSandboxConfig]],
        fig: Figures,
    ) -> None:
        if not fig.all_ready or fig.container_errors:
            fig.restart_note = "skipped: not every pod and container came up"
            return
        rt.close()
        restart()
        started = time.perf_counter()
        deadline = started + RESTART_TIMEOUT
        while True:
            try:
                rt.connect(timeout=1.0)
                break
            except BenchError as e:
                if time.perf_counter() > deadline:
                    fig.restart_note = str(e)
                    return
                time.sleep(0.01)
        fig.first_answer_s = time.perf_counter() - started
        while time.perf_counter() < deadline:
            try:
                if self._whole(rt, pods):
                    fig.whole_s = time.perf_counter() - started
                    return
            except grpc.RpcError as e:
                fig.restart_note = _errors(e)
            time.sleep(0.02)
        fig.restart_note = f"answers not whole after {RESTART_TIMEOUT:.0f} s"

    def _teardown(self, rt: Runtime, fig: Figures) -> None:
        listed = rt.runtime.ListPodSandbox(self._mine_filter(), timeout=CALL_TIMEOUT).items

        def one(sid: str) -> None:
            rt.runtime.StopPodSandbox(
                api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid), timeout=SANDBOX_TIMEOUT
            )
            rt.runtime.RemovePodSandbox(
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid), timeout=SANDBOX_TIMEOUT
            )

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max(1, len(listed))) as pool:
            for f in [pool.submit(one, p.id) for p in listed]:
                try:
                    f.result()
                except grpc.RpcError as e:
                    fig.teardown_errors.append(_errors(e))
        fig.teardown_s = time.perf_counter() - started


# ------------------------------------------------------------------------------------------
# Output


def cpu_seconds(pid: int) -> tuple[float, float]:
    """A process's user and system time, and that of the children it reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    tick = os.sysconf("SC_CLK_TCK")
    return (utime + stime) / tick, (cutime + cstime) / tick


def processes_cpu() -> dict[tuple[int, int], tuple[str, float, float]]:
    """Every process's command name, its own CPU seconds and its reaped children's, keyed by
    pid and start time (a pid reused during the phase is another process)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[int, int], tuple[str, float, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        out[(int(entry.name), int(fields[19]))] = (
            name,
            (utime + stime) / tick,
            (cutime + cstime) / tick,
        )
    return out


def cpu_by_name(
    before: dict[tuple[int, int], tuple[str, float, float]],
    after: dict[tuple[int, int], tuple[str, float, float]],
) -> dict[str, tuple[float, float]]:
    """What each command name took between two `processes_cpu` readings: the processes alive
    at the end (from zero if they started meanwhile), and in "reaped" what their ancestors
    reaped (processes that ended meanwhile; those reparented are in pid 1's)."""
    totals: dict[str, tuple[float, float]] = {}
    for key, (name, own, children) in after.items():
        _, own0, children0 = before.get(key, (name, 0.0, 0.0))
        o, c = totals.get(name, (0.0, 0.0))
        totals[name] = (o + own - own0, c + children - children0)
    return totals


def machine_busy_seconds() -> float:
    """CPU time spent by every core on anything but idle and iowait since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def _cpu_by_name_rows(
    row: Callable[[str, Sequence[str]], str],
    per_runtime: list[dict[str, tuple[float, float]]],
    top: int = 12,
) -> list[str]:
    """The `top` command names that took the most CPU in a phase, for each runtime."""
    most: dict[str, float] = {}
    for by_name in per_runtime:
        for name, (own, reaped) in by_name.items():
            most[name] = max(most.get(name, 0.0), own + reaped)
    return [
        row(
            f"  CPU s by process: {name}: own / reaped",
            ["{:.2f} / {:.2f}".format(*f[name]) if name in f else "-" for f in per_runtime],
        )
        for name in sorted(most, key=lambda n: -most[n])[:top]
    ]


def _memory(target: Target) -> dict[str, dict[str, int]]:
    return {
        label: {"processes": r.processes, "rss": r.kib, "pss": r.pss_kib}
        for label, r in measure(local_processes(target)).items()
    }


def _memory_rows(
    row: Callable[[str, Sequence[str]], str],
    names: Sequence[str],
    memory: Sequence[dict[str, dict[str, int]]],
) -> list[str]:
    lines: list[str] = []
    groups: list[str] = []
    for m in memory:
        groups += [g for g in m if g not in groups]
    for g in groups:
        lines.append(
            row(
                f"  {g}",
                [
                    f"{_mib(m[g]['rss'])} ({_mib(m[g]['pss'])}) x{m[g]['processes']}"
                    if g in m
                    else "-"
                    for m in memory
                ],
            )
        )
    totals = [
        (sum(g["rss"] for g in m.values()), sum(g["pss"] for g in m.values())) for m in memory
    ]
    lines.append(row("  total", [f"{_mib(r)} ({_mib(p)})" for r, p in totals]))
    if len(memory) == 2 and totals[1][1]:
        lines.append(
            f"  {names[0]} / {names[1]} total PSS: {totals[0][1] / totals[1][1]:.2f}, "
            f"RSS: {totals[0][0] / totals[1][0]:.2f}"
        )
    return lines


def format_figures(scale: Scale) -> str:
    names = list(scale.figures)
    figs = [scale.figures[n] for n in names]
    width = 44

    def row(label: str, cells: Sequence[str]) -> str:
        return " | ".join([label.ljust(width), *(c.rjust(14) for c in cells)])

    def secs(v: float | None) -> str:
        return f"{v:.2f} s" if v is not None else "-"

    lines = [
        f"scale: {scale.pods} pods x {scale.per_pod} containers ({BUSYBOX}), one runtime at a time",
        "",
        row("", names),
        "-" * (width + 17 * len(names)),
        row(
            f"RunPodSandbox x{scale.pods} at once: all answered", [secs(f.run_all_s) for f in figs]
        ),
        row(
            "  per call p50 / p95 (ms)",
            [
                f"{percentile(f.run_ms, 0.5):.0f} / {percentile(f.run_ms, 0.95):.0f}"
                if f.run_ms
                else "-"
                for f in figs
            ],
        ),
        row(
            "  ListPodSandbox meanwhile p50 / p95 / max",
            [
                f"{percentile(f.storm_list_ms, 0.5):.0f} / {percentile(f.storm_list_ms, 0.95):.0f}"
                f" / {max(f.storm_list_ms):.0f} ms"
                if f.storm_list_ms
                else "-"
                for f in figs
            ],
        ),
        row("  every pod READY", ["yes" if f.all_ready else "NO" for f in figs]),
        row(
            "  CPU s: the whole machine",
            [f"{f.run_cpu_s['machine'][0]:.2f}" if f.run_cpu_s else "-" for f in figs],
        ),
    ]
    cpu_labels: list[str] = []
    for f in figs:
        cpu_labels += [g for g in f.run_cpu_s if g != "machine" and g not in cpu_labels]
    for label in cpu_labels:
        lines.append(
            row(
                f"  CPU s: {label}: own / children",
                [
                    "{:.2f} / {:.2f}".format(*f.run_cpu_s[label]) if label in f.run_cpu_s else "-"
                    for f in figs
                ],
            )
        )
    lines += _cpu_by_name_rows(row, [f.run_cpu_by_name for f in figs])
    lines += [
        row(
            f"containers: create+start x{scale.pods * scale.per_pod} "
            f"({CONTAINER_WORKERS} at a time)",
            [secs(f.containers_s) for f in figs],
        ),
        row("  CPU s: the whole machine", [f"{f.containers_cpu_s:.2f}" for f in figs]),
        *_cpu_by_name_rows(row, [f.containers_cpu_by_name for f in figs]),
        row(
            f"idle at scale, {IDLE_S:.0f} s: CPU s, the whole machine",
            [f"{f.idle_cpu_s:.2f}" for f in figs],
        ),
        *_cpu_by_name_rows(row, [f.idle_cpu_by_name for f in figs], 6),
        row("restart (SIGKILL): first answer", [secs(f.first_answer_s) for f in figs]),
        row("restart: every pod and container whole", [secs(f.whole_s) for f in figs]),
        row(f"stop+remove x{scale.pods} at once", [secs(f.teardown_s) for f in figs]),
    ]
    lines += ["", "memory at scale (MiB): RSS (PSS), processes"]
    lines += _memory_rows(row, names, [f.memory_kib for f in figs])
    for seconds in scale.settle:
        lines += ["", f"memory {seconds:.0f} s after the restart's answers were whole (MiB)"]
        lines += _memory_rows(row, names, [f.memory_after_restart_kib[seconds] for f in figs])
    if len(figs) == 2 and figs[1].run_all_s:
        lines.append(
            f"  {names[0]} / {names[1]} all pods answered: "
            f"{figs[0].run_all_s / figs[1].run_all_s:.2f}"
        )
    notes = []
    for name, f in zip(names, figs, strict=True):
        for what, msgs in (
            ("RunPodSandbox", f.run_errors),
            ("containers", f.container_errors),
            ("teardown", f.teardown_errors),
        ):
            if msgs:
                notes.append(f"  {name} {what}: {len(msgs)} errors, first: {msgs[0]}")
        if f.restart_note:
            notes.append(f"  {name} restart: {f.restart_note}")
        for kind, left in f.left.items():
            notes.append(f"  {name} LEFT with the runtime up: {kind}: {', '.join(left[:5])}")
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def _seconds_list(text: str) -> tuple[float, ...]:
    try:
        seconds = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of seconds: {text!r}") from None
    if any(s < 0 for s in seconds):
        raise argparse.ArgumentTypeError(f"a negative number of seconds: {text!r}")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description="Pods at scale, memory and restart, crictld next to containerd's CRI.",
    )
    parser.add_argument("--pods", type=int, default=100, help="pods (100)")
    parser.add_argument("--per-pod", type=int, default=3, help="containers per pod (3)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw figures to OUT")
    parser.add_argument("--keep-logs", action="store_true", help="keep the runtimes' logs")
    parser.add_argument(
        "--settle",
        type=_seconds_list,
        default=(SETTLE_S,),
        metavar="S[,S...]",
        help=f"measure memory again S seconds after the restart, at each S ({SETTLE_S:.0f})",
    )
    args = parser.parse_args(argv)
    pod_logs = Path(tempfile.mkdtemp(prefix="crd-bench-podlogs-", dir="/tmp"))
    dirty = False
    try:
        with (
            runtime_logs(args.keep_logs, "scale") as (logs_dir, failed),
            local_registry(None, None) as registry,
        ):
            with local_node(registry, logs_dir) as node:
                scale = Scale(node, args.pods, args.per_pod, pod_logs, args.settle)
                for target in node.targets:
                    scale.baseline[target.runtime.name] = dict(node_holdings(target))
                for target in node.targets:
                    print(f"{target.runtime.name}: scale phase", file=sys.stderr, flush=True)
                    if target.restart is None:
                        raise BenchError(f"{target.runtime.name}: cannot be restarted")
                    scale.run(target, target.restart)
            after = leftovers(node)
            dirty = any(f.left for f in scale.figures.values()) or any(after.values())
            failed[0] = (
                failed[0]
                or dirty
                or any(
                    f.run_errors or f.container_errors or f.teardown_errors or f.restart_note
                    for f in scale.figures.values()
                )
            )
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(pod_logs, ignore_errors=True)
    print(format_figures(scale))
    print()
    print(format_teardown(after, dirty))
    if args.json:
        write_figures(args.json, {"pods": args.pods, "per_pod": args.per_pod}, scale.figures, after)
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())
