"""The container workload: create, start, inspect, list, exec into, stop and remove containers.

Before the first round, on every runtime (untimed): the pause image and
`e2e-test-images/busybox:1.29-2` are pulled and one pod is run for the rounds. Per round, in that
pod, one busybox container (`sleep 3600`, a fresh name, a log file under the pod's log
directory): CreateContainer, StartContainer, ContainerStatus, ListContainers, ExecSync
(`echo hi`, timeout 10 s), StopContainer (timeout 0), RemoveContainer. The round pod is removed
after the last round (untimed).

Then, on each runtime in turn, the scale phase: PODS pods with PER_POD started containers each
(`RunPodSandbox@PxC`, `CreateContainer@PxC`, `StartContainer@PxC`), 50 calls each, interleaved,
of ListContainers (no filter), ListContainers filtered by one pod's id, ContainerStatus (a
different container each call) and ListPodSandbox; the memory of each runtime's processes at
that point (and just before the scale phase); then StopContainer and RemoveContainer of every
container, StopPodSandbox and RemovePodSandbox of every pod, all timed.

    .venv/bin/python -m benchmarks.containers                     # brings everything up itself
    .venv/bin/python -m benchmarks.containers --rounds 10 --pods 100 --per-pod 3 --json out.json
    .venv/bin/python -m benchmarks.containers --registry 127.0.0.1:5000 \\
        --endpoint crictld=unix:///run/crictld/crictld.sock --endpoint containerd=unix:///...

Afterwards, as `benchmarks.sandboxes` does: where crictld's time goes (handler vs transport, from
its per-call log lines) and what the run left on the node, with the runtimes up (also this run's
containers, their cgroups, and shims or log helpers still running) and after their teardown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cri_bench import (
    BenchError,
    Result,
    Runtime,
    Workload,
    format_comparison,
    format_cpu,
    format_table,
    kubelet_linux_config,
    parse_endpoint,
    run_workload,
    write_json,
)
from benchmarks.sandboxes import (
    RUN_LABEL,
    SANDBOX_TIMEOUT,
    Breakdown,
    LogLine,
    SandboxWorkload,
    ScalePhase,
    after_teardown,
    breakdown,
    bridge_ports,
    cgroups_named,
    format_breakdown,
    format_leftovers,
    read_call_log,
)
from benchmarks.setup import (
    Node,
    Processes,
    Target,
    all_pids,
    cmdline,
    leftovers,
    local_node,
    local_processes,
    local_registry,
    pause_image,
    pids_with_args,
    runtime_logs,
)
from crictl.gen.cri.runtime.v1 import api_pb2

BUSYBOX = "e2e-test-images/busybox:1.29-2"  # repository:tag in the registry
PULL_TIMEOUT = 300.0
CONTAINER_TIMEOUT = 60.0
EXEC_TIMEOUT = 10  # ExecSync's own timeout, seconds
EXEC_DEADLINE = 30.0  # the gRPC deadline around it
CALLS_AT_SCALE = 50
BENCH_LABEL = ("bench", "container")
COMMAND = ["sleep", "3600"]
EXEC_COMMAND = ["echo", "hi"]
KIB_PER_MIB = 1024.0


def busybox_image(registry: str) -> str:
    return f"{registry}/{BUSYBOX}"


# ------------------------------------------------------------------------------------------
# Memory: the runtime's daemons, its shims, and helpers its shims start (crictld-logger)


@dataclass
class Rss:
    processes: int
    kib: int  # VmRSS: pages shared between processes are counted in each
    pss_kib: int  # proportional set size: a shared page is split between its users

    @property
    def mib(self) -> float:
        return self.kib / KIB_PER_MIB

    @property
    def pss_mib(self) -> float:
        return self.pss_kib / KIB_PER_MIB


def vm_rss_kib(pid: int) -> int | None:
    """VmRSS of PID in KiB (None: gone, or a zombie without one)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pss_kib(pid: int) -> int | None:
    """Pss of PID in KiB, from /proc/<pid>/smaps_rollup."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def shims_of(address: str) -> list[int]:
    return pids_with_args("-address", address)


def helpers_of(shims: Sequence[int]) -> list[int]:
    """Children of SHIMS in the host's pid namespace: not containers (those have their own pid
    namespace) but what the shim starts besides them, e.g. crictld's `crictld-logger`."""
    if not shims:
        return []
    host = _pid_namespace(os.getpid())
    parents = set(shims)
    return [pid for pid in all_pids() if _ppid(pid) in parents and _pid_namespace(pid) == host]


def _sum_rss(pids: Sequence[int]) -> Rss:
    rss = pss = n = 0
    for pid in pids:
        r = vm_rss_kib(pid)
        if r is None:
            continue
        n += 1
        rss += r
        pss += pss_kib(pid) or 0
    return Rss(n, rss, pss)


def measure(processes: Processes) -> dict[str, Rss]:
    """RSS and PSS of each daemon, of the shims together, and of the shims' helpers together."""
    out = {label: _sum_rss([pid]) for label, pid in processes.daemons.items()}
    if processes.containerd_address is not None:
        shims = shims_of(processes.containerd_address)
        out["shims"] = _sum_rss(shims)
        out["shim helpers (host pid ns)"] = _sum_rss(helpers_of(shims))
    return out


# ------------------------------------------------------------------------------------------
# The workload


@dataclass
class Pod:
    id: str
    config: api_pb2.PodSandboxConfig


class ContainerWorkload(SandboxWorkload):
    """One container's life per round in a pod run at set-up; `ScalePhase` runs the at-scale
    part (PODS pods of PER_POD containers) through `run_scale` and `finish`."""

    name = "containers"

    def __init__(
        self,
        pause: str,
        busybox: str,
        pods: int,
        per_pod: int,
        log_root: Path,
        targets: dict[str, Target] | None = None,
        processes: dict[str, Processes] | None = None,
        calls_at_scale: int = CALLS_AT_SCALE,
    ) -> None:
        super().__init__(pause, pods, targets, calls_at_scale)
        self.busybox = busybox
        self.per_pod = per_pod
        self.log_root = log_root
        self.processes = processes or {}
        self.round_pods: dict[str, Pod] = {}
        self.container_ids: dict[str, list[str]] = {}  # every container this run created
        self.memory: dict[str, dict[str, dict[str, Rss]]] = {}  # runtime -> when -> label -> Rss

    @property
    def scale_tag(self) -> str:
        return f"@{self.scale}x{self.per_pod}"

    def describe(self) -> str:
        return (
            f"one container per round in one pod (create, start, status, list, exec, stop, "
            f"remove), then {self.scale} pods x {self.per_pod} containers (run, create, start; "
            f"{self.calls_at_scale}x list, list by pod, status, list pods; stop, remove); "
            f"image {self.busybox}"
        )

    # -------------------------------------------------------------------- configs

    def config(self, rt: Runtime, kind: str, index: int) -> api_pb2.PodSandboxConfig:
        config = super().config(rt, kind, index)
        config.labels[BENCH_LABEL[0]] = BENCH_LABEL[1]
        md = config.metadata
        # kubelet's layout: /var/log/pods/<namespace>_<name>_<uid>/<container>/<attempt>.log
        config.log_directory = str(self.log_root / rt.name / f"{md.namespace}_{md.name}_{md.uid}")
        return config

    def container_config(self, name: str) -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name, attempt=0),
            image=api_pb2.ImageSpec(image=self.busybox),
            command=COMMAND,
            log_path=f"{name}/0.log",
            labels={BENCH_LABEL[0]: BENCH_LABEL[1], RUN_LABEL: self.tag},
            linux=kubelet_linux_config(),
        )

    # -------------------------------------------------------------------- calls

    def _create(
        self, rt: Runtime, op: str, pod: Pod, config: api_pb2.ContainerConfig
    ) -> str | None:
        resp = self._timed(
            rt,
            op,
            "CreateContainer",
            rt.runtime.CreateContainer,
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
            ),
            timeout=CONTAINER_TIMEOUT,
        )
        if resp is None:
            return None
        self.container_ids.setdefault(rt.name, []).append(resp.container_id)
        return resp.container_id

    def _start(self, rt: Runtime, op: str, cid: str) -> bool:
        resp = self._timed(
            rt,
            op,
            "StartContainer",
            rt.runtime.StartContainer,
            api_pb2.StartContainerRequest(container_id=cid),
            timeout=CONTAINER_TIMEOUT,
        )
        return resp is not None

    def _container_status(
        self,
        rt: Runtime,
        op: str,
        cid: str,
        name: str,
        state: api_pb2.ContainerState.ValueType | None,
    ) -> None:
        resp = self._timed(
            rt,
            op,
            "ContainerStatus",
            rt.runtime.ContainerStatus,
            api_pb2.ContainerStatusRequest(container_id=cid),
        )
        if resp is not None:
            s = resp.status
            self._check(
                rt,
                op,
                s.id == cid and s.metadata.name == name and (state is None or s.state == state),
                f"{cid[:12]}: id {s.id[:12]}, name {s.metadata.name!r}, state {s.state}",
            )

    def _list_containers(self, rt: Runtime, op: str, pod_id: str | None = None) -> list[str] | None:
        request = api_pb2.ListContainersRequest(
            filter=api_pb2.ContainerFilter(pod_sandbox_id=pod_id) if pod_id else None
        )
        resp = self._timed(rt, op, "ListContainers", rt.runtime.ListContainers, request)
        if resp is None:
            return None
        return sorted(c.id for c in resp.containers if c.labels.get(RUN_LABEL) == self.tag)

    def _exec(self, rt: Runtime, op: str, cid: str) -> None:
        resp = self._timed(
            rt,
            op,
            "ExecSync",
            rt.runtime.ExecSync,
            api_pb2.ExecSyncRequest(container_id=cid, cmd=EXEC_COMMAND, timeout=EXEC_TIMEOUT),
            timeout=EXEC_DEADLINE,
        )
        if resp is not None:
            self._check(
                rt,
                op,
                resp.exit_code == 0 and resp.stdout == b"hi\n",
                f"exit {resp.exit_code}, stdout {resp.stdout[:40]!r}, stderr {resp.stderr[:80]!r}",
            )

    def _stop_container(self, rt: Runtime, op: str, cid: str) -> None:
        self._timed(
            rt,
            op,
            "StopContainer",
            rt.runtime.StopContainer,
            api_pb2.StopContainerRequest(container_id=cid, timeout=0),
            timeout=CONTAINER_TIMEOUT,
        )

    def _remove_container(self, rt: Runtime, op: str, cid: str) -> None:
        self._timed(
            rt,
            op,
            "RemoveContainer",
            rt.runtime.RemoveContainer,
            api_pb2.RemoveContainerRequest(container_id=cid),
            timeout=CONTAINER_TIMEOUT,
        )

    def _measure(self, rt: Runtime, when: str) -> None:
        processes = self.processes.get(rt.name)
        if processes is not None:
            self.memory.setdefault(rt.name, {})[when] = measure(processes)

    # -------------------------------------------------------------------- workload

    def setup(self, rt: Runtime) -> None:
        super().setup(rt)  # the node's baseline, and the pause image pulled
        pulled = self._quiet(
            rt,
            "PullImage",
            rt.image.PullImage,
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=self.busybox)),
            timeout=PULL_TIMEOUT,
        )
        if pulled is None:
            raise BenchError(f"{rt.name}: cannot pull {self.busybox}")
        config = self.config(rt, "r", 0)
        resp = self._quiet(
            rt,
            "RunPodSandbox",
            rt.runtime.RunPodSandbox,
            api_pb2.RunPodSandboxRequest(config=config),
            timeout=SANDBOX_TIMEOUT,
        )
        if resp is None:
            raise BenchError(f"{rt.name}: cannot run the pod for the rounds")
        self._st(rt).sandbox_ids.append(resp.pod_sandbox_id)
        self.round_pods[rt.name] = Pod(resp.pod_sandbox_id, config)

    def run_round(self, rt: Runtime, index: int) -> None:
        pod = self.round_pods[rt.name]
        name = f"bench-r{index}"
        cid = self._create(rt, "CreateContainer", pod, self.container_config(name))
        if cid is None:
            return
        started = self._start(rt, "StartContainer", cid)
        running = api_pb2.CONTAINER_RUNNING if started else None
        self._container_status(rt, "ContainerStatus", cid, name, running)
        ids = self._list_containers(rt, "ListContainers")
        if ids is not None:
            self._check(rt, "ListContainers", ids == [cid], f"our containers listed: {len(ids)}")
        if started:
            self._exec(rt, "ExecSync", cid)
        self._stop_container(rt, "StopContainer", cid)
        self._remove_container(rt, "RemoveContainer", cid)

    def teardown(self, rt: Runtime) -> None:
        """After the rounds: the round pod goes (untimed), before the scale phase."""
        pod = self.round_pods.pop(rt.name, None)
        if pod is None:
            return
        self._quiet(
            rt,
            "StopPodSandbox",
            rt.runtime.StopPodSandbox,
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id),
            timeout=SANDBOX_TIMEOUT,
        )
        self._quiet(
            rt,
            "RemovePodSandbox",
            rt.runtime.RemovePodSandbox,
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
            timeout=SANDBOX_TIMEOUT,
        )

    def run_scale(self, rt: Runtime) -> None:
        tag = self.scale_tag
        self._measure(rt, "before scale")
        pods: list[tuple[Pod, list[str]]] = []
        started: set[str] = set()
        names: dict[str, str] = {}
        begun = time.monotonic()
        for i in range(self.scale):
            config = self.config(rt, "s", i)
            sid = self._run(rt, f"RunPodSandbox{tag}", config)
            if sid is None:
                continue
            pod = Pod(sid, config)
            cids = []
            for j in range(self.per_pod):
                name = f"c{j}"
                cid = self._create(rt, f"CreateContainer{tag}", pod, self.container_config(name))
                if cid is None:
                    continue
                cids.append(cid)
                names[cid] = name
                if self._start(rt, f"StartContainer{tag}", cid):
                    started.add(cid)
            pods.append((pod, cids))
            if (i + 1) % 25 == 0:
                _progress(
                    f"{rt.name}: {i + 1}/{self.scale} pods up, {time.monotonic() - begun:.0f} s"
                )
        target = self.targets.get(rt.name)
        if target is not None:
            self._st(rt).veths |= bridge_ports(target.network.bridge)
        containers = [cid for _, cids in pods for cid in cids]
        expected = sorted(containers)
        pod_ids = sorted(pod.id for pod, _ in pods)
        for k in range(self.calls_at_scale if containers else 0):
            pod, cids = pods[(k * 37) % len(pods)]
            cid = containers[(k * 37) % len(containers)]  # spread over the containers
            op = f"ListContainers{tag}"
            ids = self._list_containers(rt, op)
            if ids is not None:
                self._check(rt, op, ids == expected, f"{len(ids)} of {len(expected)} listed")
            op = f"ListContainers(pod){tag}"
            ids = self._list_containers(rt, op, pod.id)
            if ids is not None:
                self._check(rt, op, ids == sorted(cids), f"{len(ids)} of {len(cids)} listed")
            running = api_pb2.CONTAINER_RUNNING if cid in started else None
            self._container_status(rt, f"ContainerStatus{tag}", cid, names[cid], running)
            op = f"ListPodSandbox{tag}"
            listed = self._list(rt, op)
            if listed is not None:
                self._check(rt, op, sorted(listed) == pod_ids, f"{len(listed)} pods listed")
        self._measure(rt, f"at {self.scale}x{self.per_pod}")
        _progress(f"{rt.name}: at scale after {time.monotonic() - begun:.0f} s; tearing down")
        for cid in containers:
            self._stop_container(rt, f"StopContainer{tag}", cid)
        for cid in containers:
            self._remove_container(rt, f"RemoveContainer{tag}", cid)
        for pod, _ in pods:
            self._stop(rt, f"StopPodSandbox{tag}", pod.id)
        for pod, _ in pods:
            self._remove(rt, f"RemovePodSandbox{tag}", pod.id)
        _progress(f"{rt.name}: scale phase done in {time.monotonic() - begun:.0f} s")

    def finish(self, rt: Runtime) -> None:
        """Removes whatever container and pod of this run is still there, then counts what is
        left: what `SandboxWorkload.finish` counts, plus containers, their cgroups, and shims
        or shim helpers still running."""
        resp = self._quiet(
            rt,
            "ListContainers",
            rt.runtime.ListContainers,
            api_pb2.ListContainersRequest(
                filter=api_pb2.ContainerFilter(label_selector={RUN_LABEL: self.tag})
            ),
        )
        left = [c.id for c in resp.containers] if resp is not None else []
        for cid in left:
            self._quiet(
                rt,
                "StopContainer",
                rt.runtime.StopContainer,
                api_pb2.StopContainerRequest(container_id=cid, timeout=0),
                timeout=CONTAINER_TIMEOUT,
            )
            self._quiet(
                rt,
                "RemoveContainer",
                rt.runtime.RemoveContainer,
                api_pb2.RemoveContainerRequest(container_id=cid),
                timeout=CONTAINER_TIMEOUT,
            )
        super().finish(rt)
        found = self._st(rt).left
        if left:
            found["containers (removed by teardown)"] = left
        if resp is None:
            found["containers"] = ["ListContainers failed at teardown"]
        cgroups = cgroups_named(set(self.container_ids.get(rt.name, [])))
        if cgroups:
            found["container cgroups"] = cgroups
        processes = self.processes.get(rt.name)
        if processes is not None and processes.containerd_address is not None:
            shims = shims_of(processes.containerd_address)
            helpers = helpers_of(shims)
            if shims:
                found["shims"] = [f"{pid} {_program(pid)}" for pid in shims]
            if helpers:
                found["shim helpers"] = [f"{pid} {_program(pid)}" for pid in helpers]


def _program(pid: int) -> str:
    args = [a.decode(errors="replace") for a in cmdline(pid) if a]
    return " ".join(args[:2])


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# Run and report


def run(
    runtimes: Sequence[Runtime],
    workload: ContainerWorkload,
    rounds: int,
) -> Result:
    start = time.monotonic()
    run_workload(workload, runtimes, rounds, progress=_progress)
    run_workload(ScalePhase(workload), runtimes, 1, progress=lambda _: _progress("scale done"))
    return Result(
        workload.name, workload.describe(), rounds, list(runtimes), time.monotonic() - start
    )


def format_memory(workload: ContainerWorkload) -> str:
    """Per runtime and process group: count, RSS and PSS before the scale phase and at scale."""
    if not workload.memory:
        return "memory: not measured (no process known for any runtime)"
    whens = list(dict.fromkeys(w for per in workload.memory.values() for w in per))
    name_w = max(len(n) for n in workload.memory)
    label_w = max(
        [
            len("total"),
            *(len(lb) for per in workload.memory.values() for m in per.values() for lb in m),
        ]
    )
    head = " | ".join(f"{w:>30}" for w in whens)
    sub = " | ".join(f"{'procs':>5}  {'RSS MiB':>10}  {'PSS MiB':>10}" for _ in whens)
    lines = [
        "memory in MiB, summed over each group's processes: RSS (VmRSS, /proc/<pid>/status: "
        "pages shared between processes counted in each) and PSS (smaps_rollup: a shared page "
        "split between its users):",
        "",
        f"{'runtime'.ljust(name_w)}  {'processes'.ljust(label_w)} | {head}",
        f"{''.ljust(name_w)}  {''.ljust(label_w)} | {sub}",
        f"{'-' * (name_w + 2 + label_w)}-+-{'-' * len(sub)}",
    ]
    for name, per in workload.memory.items():
        labels = list(dict.fromkeys(lb for m in per.values() for lb in m))
        rows = [*labels, "total"]
        for i, label in enumerate(rows):
            cells = []
            for when in whens:
                m = per.get(when, {})
                rss = (
                    Rss(
                        sum(r.processes for r in m.values()),
                        sum(r.kib for r in m.values()),
                        sum(r.pss_kib for r in m.values()),
                    )
                    if label == "total"
                    else m.get(label)
                )
                cells.append(
                    f"{rss.processes:5d}  {rss.mib:10.1f}  {rss.pss_mib:10.1f}"
                    if rss is not None
                    else f"{'-':>5}  {'-':>10}  {'-':>10}"
                )
            first = name if i == 0 else ""
            lines.append(f"{first.ljust(name_w)}  {label.ljust(label_w)} | {' | '.join(cells)}")
    return "\n".join(lines)


def parse_rss(text: str) -> tuple[str, int]:
    name, sep, pid = text.partition("=")
    if not sep or not name or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=PID, got {text!r}")
    return name, int(pid)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.containers",
        description="Container RPC latency and memory, crictld next to containerd's CRI plugin.",
    )
    parser.add_argument("--rounds", type=int, default=10, help="one-container rounds (10)")
    parser.add_argument("--pods", type=int, default=100, help="pods in the scale phase (100)")
    parser.add_argument(
        "--per-pod", type=int, default=3, help="started containers per pod at scale (3)"
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        type=parse_endpoint,
        default=[],
        metavar="NAME=ADDR",
        help="benchmark this running CRI endpoint instead of starting crictld and containerd "
        "(repeatable); its pause image must be the one given by --pause-image",
    )
    parser.add_argument(
        "--registry", help="HOST:PORT of a registry with the fixture images (default: start one)"
    )
    parser.add_argument(
        "--pause-image", help="pause image to pull before the first round (REGISTRY/pause:3.10)"
    )
    parser.add_argument(
        "--image", help=f"container image (default REGISTRY/{BUSYBOX}); needs sleep and echo"
    )
    parser.add_argument(
        "--crictld-log",
        type=Path,
        help="with --endpoint: the log of the endpoint named crictld, for the time breakdown",
    )
    parser.add_argument(
        "--rss",
        action="append",
        type=parse_rss,
        default=[],
        metavar="NAME=PID",
        help="with --endpoint: the daemon process of endpoint NAME, for the memory figures",
    )
    parser.add_argument("--workdir", type=Path, help="image build dir (default .cache/rig-images)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs of a clean run")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw figures to OUT")
    args = parser.parse_args(argv)
    if args.pods < 0 or args.per_pod < 0:
        parser.error("--pods and --per-pod must be 0 or more")

    began = time.monotonic()
    node: Node | None = None
    logs: list[LogLine] = []
    pod_logs = Path(tempfile.mkdtemp(prefix="crd-bench-podlogs-", dir="/tmp"))
    try:
        with (
            runtime_logs(args.keep_logs, "containers") as (logs_dir, failed),
            local_registry(args.registry, args.workdir) as registry,
        ):
            pause = args.pause_image or pause_image(registry)
            image = args.image or busybox_image(registry)
            if args.endpoint:
                processes = {
                    name: Processes(daemons={f"{name} daemon": pid}) for name, pid in args.rss
                }
                workload = ContainerWorkload(
                    pause, image, args.pods, args.per_pod, pod_logs, processes=processes
                )
                result = run(args.endpoint, workload, args.rounds)
                if args.crictld_log:
                    logs = read_call_log(args.crictld_log)
                checked_after = None
            else:
                with local_node(registry, logs_dir) as node:
                    targets = {t.runtime.name: t for t in node.targets}
                    processes = {name: local_processes(t) for name, t in targets.items()}
                    workload = ContainerWorkload(
                        pause, image, args.pods, args.per_pod, pod_logs, targets, processes
                    )
                    result = run(node.runtimes, workload, args.rounds)
                    crictld_log = node.target("crictld").crictld_log
                    if crictld_log is not None:
                        logs = read_call_log(crictld_log)
                checked_after = after_teardown(node, workload)
                for name, ids in workload.container_ids.items():
                    checked_after.setdefault(name, [])
                    checked_after[name] += [f"cgroup {c}" for c in cgroups_named(set(ids))]
            text, dirty = format_leftovers(workload, checked_after, node is not None)
            body, verdict = text.rsplit("\n", 1)
            text = (
                f"{body}\n  (with the runtimes up, also: this run's containers, cgroups named by "
                f"its container ids, shims and shim helpers still running)\n{verdict}"
            )
            errors = any(s.errors for rt in result.runtimes for s in rt.ops.values())
            failed[0] = failed[0] or dirty or errors or bool(workload.checks)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(pod_logs, ignore_errors=True)

    print(format_table(result))
    print()
    print(format_comparison(result))
    print()
    print(format_cpu(result))
    if workload.checks:
        print("\nwrong answers (the call succeeded):")
        print("\n".join(f"  {c}" for c in workload.checks))
    crictld = workload.state.get("crictld")
    rows: list[Breakdown] = []
    if crictld is not None and logs:
        rows, unmatched = breakdown(crictld.trace, logs)
        print()
        print(format_breakdown("crictld", rows, unmatched))
    print()
    print(format_memory(workload))
    print()
    print(text)
    if logs_dir.is_dir():
        print(f"\nruntime logs (crictld, both containerds) kept in {logs_dir}")
    print(f"\nwhole run, bring-up and teardown included: {time.monotonic() - began:.0f} s")
    if args.json:
        data = result.as_json()
        data["checks"] = workload.checks
        data["crictld_breakdown"] = [vars(r) for r in rows]
        data["memory_kib"] = {
            name: {when: {label: vars(rss) for label, rss in m.items()} for when, m in per.items()}
            for name, per in workload.memory.items()
        }
        data["left_on_node"] = {
            "pods_removed": {name: st.left for name, st in workload.state.items()},
            "after_teardown": checked_after,
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())


def run_pod_workload(
    name: str,
    make: Callable[[str, str, Path], Workload],
    rounds: int,
    json_out: Path | None,
    floor: str | None = None,
    calls_per_round: int | None = None,
) -> tuple[int, Workload | None]:
    """Brings a registry and both runtimes up, runs the workload MAKE(pause image, busybox
    image, pod log root) builds, prints the table, the comparison (against FLOOR) and the
    CPU per round (per call too, given CALLS_PER_ROUND), writes JSON_OUT; returns the exit
    status and the workload (None after an error)."""
    pod_logs = Path(tempfile.mkdtemp(prefix="crd-bench-podlogs-", dir="/tmp"))
    try:
        with (
            runtime_logs(False, name) as (logs_dir, _failed),
            local_registry(None, None) as registry,
        ):
            with local_node(registry, logs_dir) as node:
                workload = make(pause_image(registry), busybox_image(registry), pod_logs)
                result = run_workload(
                    workload,
                    node.runtimes,
                    rounds,
                    progress=lambda text: print(text, file=sys.stderr, flush=True),
                )
            left = leftovers(node)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1, None
    finally:
        shutil.rmtree(pod_logs, ignore_errors=True)
    for runtime, found in left.items():  # a shim that outlived its pod, a mount, a process
        if found:
            print(f"{runtime}, after teardown: LEFT: " + "; ".join(found[:5]), file=sys.stderr)
    print(format_table(result))
    print()
    print(format_comparison(result, floor=floor))
    print()
    print(format_cpu(result, calls_per_round))
    if json_out:
        write_json([result], json_out)
    return (1 if any(left.values()) else 0), workload
