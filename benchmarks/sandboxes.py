"""The sandbox workload: run, inspect, list, stop and remove pod sandboxes on every runtime.

Per round, one pod (a fresh name and uid, namespace `default`, a hostname, the label
`bench=sandbox`, no cgroup parent): RunPodSandbox, PodSandboxStatus, ListPodSandbox,
ListPodSandbox filtered by `bench=sandbox`, StopPodSandbox, RemovePodSandbox. Then, on each
runtime in turn, SCALE pods (`RunPodSandbox@SCALE`), 50 calls each of ListPodSandbox,
ListPodSandbox filtered by one pod's `io.kubernetes.pod.uid` and PodSandboxStatus at that scale,
then StopPodSandbox and RemovePodSandbox of every one of them. The pause image is pulled
(untimed) before the first round, so no RunPodSandbox pays for a pull.

    .venv/bin/python -m benchmarks.sandboxes                      # brings everything up itself
    .venv/bin/python -m benchmarks.sandboxes --rounds 10 --scale 100 --json out.json
    .venv/bin/python -m benchmarks.sandboxes --registry 127.0.0.1:5000 \\
        --endpoint crictld=unix:///run/crictld/crictld.sock --endpoint containerd=unix:///...

After the run it prints where crictld's time goes (the handler time crictld logs for each CRI
call next to the client-observed latency) and what the run left on the node: once every pod is
removed, with the runtimes still up (netns files, IPAM addresses, containerd containers, tasks,
snapshots and leases, veths on the bridges, cgroups), and again after the runtimes were torn down
(bridges, mounts, processes and dirs of the run).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from benchmarks.cri_bench import (
    BenchError,
    Call,
    Result,
    Runtime,
    format_comparison,
    format_cpu,
    format_table,
    kubelet_sandbox_linux_config,
    parse_endpoint,
    percentile,
    run_workload,
)
from benchmarks.setup import (
    Node,
    Target,
    leftovers,
    link_exists,
    local_node,
    local_registry,
    pause_image,
    runtime_logs,
)
from crictl.gen.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from crictl.gen.containerd.api.services.leases.v1 import leases_pb2, leases_pb2_grpc
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from crictl.gen.containerd.api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from crictl.gen.cri.runtime.v1 import api_pb2

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

PULL_TIMEOUT = 300.0
SANDBOX_TIMEOUT = 120.0
CALLS_AT_SCALE = 50
BENCH_LABEL = ("bench", "sandbox")
RUN_LABEL = "bench-run"  # this run's tag: what teardown removes on a shared runtime
UID_LABEL = "io.kubernetes.pod.uid"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class RuntimeState:
    trace: list[Call] = field(default_factory=list)
    sandbox_ids: list[str] = field(default_factory=list)  # every pod this run created
    veths: set[str] = field(default_factory=set)  # bridge ports seen at scale
    baseline: dict[str, frozenset[str]] = field(default_factory=dict)
    left: dict[str, list[str]] = field(default_factory=dict)  # after the pods were removed


class SandboxWorkload:
    """One pod's life per round; `ScalePhase` runs the at-scale part with the same state."""

    name = "sandboxes"

    def __init__(
        self,
        pause: str,
        scale: int,
        targets: dict[str, Target] | None = None,
        calls_at_scale: int = CALLS_AT_SCALE,
    ) -> None:
        self.pause = pause
        self.scale = scale
        self.calls_at_scale = calls_at_scale
        self.targets = targets or {}
        self.tag = secrets.token_hex(3)
        self.state: dict[str, RuntimeState] = {}
        self.checks: list[str] = []  # answers that were wrong though the call succeeded

    def describe(self) -> str:
        return (
            f"one pod per round (run, status, list, list by label, stop, remove), then "
            f"{self.scale} pods (run; {self.calls_at_scale}x list, list by uid, status; stop; "
            f"remove); pause image {self.pause}"
        )

    # -------------------------------------------------------------------- calls

    def _st(self, rt: Runtime) -> RuntimeState:
        return self.state.setdefault(rt.name, RuntimeState())

    def _timed(
        self,
        rt: Runtime,
        op: str,
        rpc: str,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float = 60.0,
    ) -> Resp | None:
        stats = rt.ops.get(op)
        before = len(stats.samples) if stats is not None else 0
        started = time.time()
        response = rt.call(op, method, request, timeout=timeout)
        ended = time.time()
        samples = rt.ops[op].samples
        seconds = samples[-1] if response is not None and len(samples) > before else None
        self._st(rt).trace.append(Call(op, rpc, started, ended, seconds))
        return response

    def _quiet(
        self,
        rt: Runtime,
        rpc: str,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float = 60.0,
    ) -> Resp | None:
        started = time.time()
        response = rt.quietly(method, request, timeout=timeout)
        self._st(rt).trace.append(Call("", rpc, started, time.time(), None))
        return response

    def _check(self, rt: Runtime, op: str, ok: bool, what: str) -> None:
        if not ok and len(self.checks) < 20:
            self.checks.append(f"{rt.name} {op}: {what}")

    def config(self, rt: Runtime, kind: str, index: int) -> api_pb2.PodSandboxConfig:
        name = f"bench-{self.tag}-{kind}{index}"
        uid = f"{self.tag}-{rt.name}-{kind}{index}"
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="default", uid=uid, attempt=0),
            hostname=name,
            labels={BENCH_LABEL[0]: BENCH_LABEL[1], RUN_LABEL: self.tag, UID_LABEL: uid},
            linux=kubelet_sandbox_linux_config(),
        )

    def _run(self, rt: Runtime, op: str, config: api_pb2.PodSandboxConfig) -> str | None:
        resp = self._timed(
            rt,
            op,
            "RunPodSandbox",
            rt.runtime.RunPodSandbox,
            api_pb2.RunPodSandboxRequest(config=config),
            timeout=SANDBOX_TIMEOUT,
        )
        if resp is None:
            return None
        self._st(rt).sandbox_ids.append(resp.pod_sandbox_id)
        return resp.pod_sandbox_id

    def _status(self, rt: Runtime, op: str, sid: str, uid: str) -> None:
        resp = self._timed(
            rt,
            op,
            "PodSandboxStatus",
            rt.runtime.PodSandboxStatus,
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid),
        )
        if resp is not None:
            s = resp.status
            self._check(
                rt,
                op,
                s.id == sid and s.state == api_pb2.SANDBOX_READY and s.metadata.uid == uid,
                f"{sid[:12]}: id {s.id[:12]}, state {s.state}, uid {s.metadata.uid!r}",
            )

    def _list(self, rt: Runtime, op: str, labels: dict[str, str] | None = None) -> list[str] | None:
        request = api_pb2.ListPodSandboxRequest(
            filter=api_pb2.PodSandboxFilter(label_selector=labels) if labels else None
        )
        resp = self._timed(rt, op, "ListPodSandbox", rt.runtime.ListPodSandbox, request)
        if resp is None:
            return None
        return [p.id for p in resp.items if p.labels.get(RUN_LABEL) == self.tag]

    def _stop(self, rt: Runtime, op: str, sid: str) -> None:
        self._timed(
            rt,
            op,
            "StopPodSandbox",
            rt.runtime.StopPodSandbox,
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid),
            timeout=SANDBOX_TIMEOUT,
        )

    def _remove(self, rt: Runtime, op: str, sid: str) -> None:
        self._timed(
            rt,
            op,
            "RemovePodSandbox",
            rt.runtime.RemovePodSandbox,
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid),
            timeout=SANDBOX_TIMEOUT,
        )

    # -------------------------------------------------------------------- workload

    def setup(self, rt: Runtime) -> None:
        st = self._st(rt)
        target = self.targets.get(rt.name)
        if target is not None:
            st.baseline = node_holdings(target)
        pulled = self._quiet(
            rt,
            "PullImage",
            rt.image.PullImage,
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=self.pause)),
            timeout=PULL_TIMEOUT,
        )
        if pulled is None:
            raise BenchError(f"{rt.name}: cannot pull the pause image {self.pause}")

    def run_round(self, rt: Runtime, index: int) -> None:
        config = self.config(rt, "r", index)
        uid = config.metadata.uid
        sid = self._run(rt, "RunPodSandbox", config)
        if sid is not None:
            self._status(rt, "PodSandboxStatus", sid, uid)
        ids = self._list(rt, "ListPodSandbox")
        if ids is not None and sid is not None:
            self._check(rt, "ListPodSandbox", ids == [sid], f"our pods listed: {len(ids)}")
        ids = self._list(rt, "ListPodSandbox(label)", dict([BENCH_LABEL]))
        if ids is not None and sid is not None:
            self._check(rt, "ListPodSandbox(label)", ids == [sid], f"our pods listed: {len(ids)}")
        if sid is not None:
            self._stop(rt, "StopPodSandbox", sid)
            self._remove(rt, "RemovePodSandbox", sid)

    def run_scale(self, rt: Runtime) -> None:
        n = self.scale
        pods: list[tuple[str, str]] = []  # (id, uid)
        for i in range(n):
            config = self.config(rt, "s", i)
            sid = self._run(rt, f"RunPodSandbox@{n}", config)
            if sid is not None:
                pods.append((sid, config.metadata.uid))
        target = self.targets.get(rt.name)
        if target is not None:
            self._st(rt).veths |= bridge_ports(target.network.bridge)
        expected = sorted(sid for sid, _ in pods)
        for k in range(self.calls_at_scale if pods else 0):
            sid, uid = pods[(k * 37) % len(pods)]  # spread over the pods
            ids = self._list(rt, f"ListPodSandbox@{n}")
            if ids is not None:
                self._check(
                    rt, f"ListPodSandbox@{n}", sorted(ids) == expected, f"{len(ids)} listed"
                )
            ids = self._list(rt, f"ListPodSandbox(uid)@{n}", {UID_LABEL: uid})
            if ids is not None:
                self._check(rt, f"ListPodSandbox(uid)@{n}", ids == [sid], f"listed {ids}")
            self._status(rt, f"PodSandboxStatus@{n}", sid, uid)
        for sid, _ in pods:
            self._stop(rt, f"StopPodSandbox@{n}", sid)
        for sid, _ in pods:
            self._remove(rt, f"RemovePodSandbox@{n}", sid)

    def teardown(self, rt: Runtime) -> None:
        pass  # the rounds are over; `finish` comes after the scale phase

    def finish(self, rt: Runtime) -> None:
        """Removes whatever pod of this run is still there, then counts what is left."""
        resp = self._quiet(
            rt,
            "ListPodSandbox",
            rt.runtime.ListPodSandbox,
            api_pb2.ListPodSandboxRequest(
                filter=api_pb2.PodSandboxFilter(label_selector={RUN_LABEL: self.tag})
            ),
        )
        left = [p.id for p in resp.items] if resp is not None else []
        for sid in left:
            self._quiet(
                rt,
                "StopPodSandbox",
                rt.runtime.StopPodSandbox,
                api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid),
                timeout=SANDBOX_TIMEOUT,
            )
            self._quiet(
                rt,
                "RemovePodSandbox",
                rt.runtime.RemovePodSandbox,
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid),
                timeout=SANDBOX_TIMEOUT,
            )
        st = self._st(rt)
        found: dict[str, list[str]] = {}
        if left:
            found["pods (removed by teardown)"] = left
        if resp is None:
            found["pods"] = ["ListPodSandbox failed at teardown"]
        target = self.targets.get(rt.name)
        if target is not None:
            now = node_holdings(target)
            for kind, names in now.items():
                extra = sorted(names - st.baseline.get(kind, frozenset()))
                if extra:
                    found[kind] = extra
        cgroups = cgroups_named(set(st.sandbox_ids))
        if cgroups:
            found["cgroups"] = cgroups
        st.left = found


class ScalePhase:
    """SandboxWorkload's at-scale part as a workload of its own (run with rounds=1)."""

    name = "sandboxes"

    def __init__(self, workload: SandboxWorkload) -> None:
        self.workload = workload

    def describe(self) -> str:
        return self.workload.describe()

    def setup(self, rt: Runtime) -> None:
        pass

    def run_round(self, rt: Runtime, index: int) -> None:
        self.workload.run_scale(rt)

    def teardown(self, rt: Runtime) -> None:
        self.workload.finish(rt)


# ------------------------------------------------------------------------------------------
# What pods hold on the node


def bridge_ports(bridge: str) -> set[str]:
    """Interfaces enslaved to BRIDGE (the pods' host-side veths)."""
    brif = Path("/sys/class/net") / bridge / "brif"
    try:
        return {p.name for p in brif.iterdir()}
    except OSError:
        return set()


def _ips(ipam_dir: Path) -> frozenset[str]:
    # host-local: <dataDir>/<network>/<ip>, besides last_reserved_ip.* and lock
    return frozenset(p.name for p in ipam_dir.glob("*/*") if p.name[:1].isdigit() or ":" in p.name)


def containerd_holdings(address: str, namespace: str) -> dict[str, frozenset[str]]:
    """Containers, tasks, snapshots that are not image layers, and leases in NAMESPACE."""
    md = (("containerd-namespace", namespace),)
    with grpc.insecure_channel(f"unix://{address}") as channel:
        containers = containers_pb2_grpc.ContainersStub(channel).List(
            containers_pb2.ListContainersRequest(), metadata=md, timeout=10
        )
        tasks = tasks_pb2_grpc.TasksStub(channel).List(
            tasks_pb2.ListTasksRequest(), metadata=md, timeout=10
        )
        snapshots: set[str] = set()
        for resp in snapshots_pb2_grpc.SnapshotsStub(channel).List(
            snapshots_pb2.ListSnapshotsRequest(snapshotter="overlayfs"), metadata=md, timeout=10
        ):
            snapshots |= {i.name for i in resp.info if not i.name.startswith("sha256:")}
        leases = leases_pb2_grpc.LeasesStub(channel).List(
            leases_pb2.ListRequest(), metadata=md, timeout=10
        )
    return {
        "containerd containers": frozenset(c.id for c in containers.containers),
        "containerd tasks": frozenset(t.id for t in tasks.tasks),
        "containerd rw snapshots": frozenset(snapshots),
        "containerd leases": frozenset(lease.id for lease in leases.leases),
    }


def node_holdings(target: Target) -> dict[str, frozenset[str]]:
    """What a runtime's pods hold right now: netns files, IPs, containerd objects, veths."""
    netns = target.netns_dir
    files = frozenset(p.name for p in netns.iterdir()) if netns.is_dir() else frozenset()
    out = {
        "netns files": files,
        "IPAM addresses": _ips(target.network.ipam_dir),
        "veths on the bridge": frozenset(bridge_ports(target.network.bridge)),
    }
    try:
        out.update(containerd_holdings(target.containerd_address, target.namespace))
    except grpc.RpcError as e:
        out["containerd"] = frozenset({f"cannot ask containerd: {e}"})
    return out


def cgroups_named(ids: set[str]) -> list[str]:
    """Cgroup dirs, in any hierarchy, named by one of IDS (or ending in it, as systemd scopes)."""
    if not ids:
        return []
    found = []
    for dirpath, dirnames, _ in os.walk(CGROUP_ROOT):
        for d in dirnames:
            name = d.removesuffix(".scope").rsplit("-", 1)[-1]
            if name in ids:
                found.append(os.path.join(dirpath, d))
    return sorted(found)


# ------------------------------------------------------------------------------------------
# Where crictld's time goes


@dataclass
class LogLine:
    rpc: str
    ms: float
    ts: float
    spans: dict[str, tuple[int, float]] = field(default_factory=dict)  # name: (count, ms)


def read_call_log(path: Path) -> list[LogLine]:
    """crictld's per-call lines ({"msg": "cri call", "rpc": ..., "ms": ...}), in file order."""
    lines = []
    with path.open(errors="replace") as f:
        for raw in f:
            if '"cri call"' not in raw:
                continue
            try:
                entry = json.loads(raw)
                ts = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
                spans = {
                    str(k): (int(v[0]), float(v[1])) for k, v in entry.get("spans", {}).items()
                }
                lines.append(LogLine(str(entry["rpc"]), float(entry["ms"]), ts, spans))
            except (ValueError, KeyError, TypeError):
                continue
    return lines


@dataclass
class Breakdown:
    op: str
    n: int
    client_ms: float
    handler_ms: float
    transport_ms: float  # median over calls of (client - handler)
    # per span the handler recorded (crictl/trace.py): median count and ms per call
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)


def match_calls(trace: Sequence[Call], lines: Sequence[LogLine]) -> list[tuple[Call, LogLine]]:
    """Pairs each call with its log line: calls are sequential, so the lines come in the same
    order; a line matches when it names the RPC and was written while the call was under way
    (its timestamp is cut to the millisecond). Lines of other clients' calls are skipped."""
    pairs = []
    j = 0
    for call in trace:
        k = j
        while k < len(lines):
            line = lines[k]
            if line.ts > call.ended + 0.002:
                break
            if line.rpc.endswith("/" + call.rpc) and line.ts >= call.started - 0.002:
                pairs.append((call, line))
                j = k + 1
                break
            k += 1
    return pairs


def breakdown(trace: Sequence[Call], lines: Sequence[LogLine]) -> tuple[list[Breakdown], int]:
    """Per timed operation: medians of client-observed and handler time; and how many timed
    calls found no log line."""
    per_op: dict[str, list[tuple[float, float]]] = {}
    op_lines: dict[str, list[LogLine]] = {}
    timed = [c for c in trace if c.op and c.seconds is not None]
    matched = 0
    for call, line in match_calls(trace, lines):
        if call.op and call.seconds is not None:
            per_op.setdefault(call.op, []).append((call.seconds * 1000.0, line.ms))
            op_lines.setdefault(call.op, []).append(line)
            matched += 1
    rows = []
    for op, pairs in per_op.items():
        names = sorted({n for line in op_lines[op] for n in line.spans})
        spans = {
            n: (
                percentile([float(ln.spans.get(n, (0, 0.0))[0]) for ln in op_lines[op]], 0.5),
                percentile([ln.spans.get(n, (0, 0.0))[1] for ln in op_lines[op]], 0.5),
            )
            for n in names
        }
        rows.append(
            Breakdown(
                op,
                len(pairs),
                percentile([c for c, _ in pairs], 0.5),
                percentile([h for _, h in pairs], 0.5),
                percentile([c - h for c, h in pairs], 0.5),
                spans,
            )
        )
    return rows, len(timed) - matched


def format_breakdown(name: str, rows: Sequence[Breakdown], unmatched: int) -> str:
    width = max([len("operation"), *(len(r.op) for r in rows)])
    lines = [
        f'{name}: handler time (the "ms" it logs per CRI call) vs client-observed, medians;',
        "transport = client-observed minus handler, per call (gRPC, protobuf, Python, socket)",
        "",
        f"{'operation'.ljust(width)} |     n  client ms  handler ms  transport ms  handler share",
        f"{'-' * width}-+-{'-' * 60}",
    ]
    for r in rows:
        share = r.handler_ms / r.client_ms * 100.0 if r.client_ms else 0.0
        lines.append(
            f"{r.op.ljust(width)} | {r.n:5d}  {r.client_ms:9.2f}  {r.handler_ms:10.2f}  "
            f"{r.transport_ms:12.2f}  {share:12.0f}%"
        )
    if unmatched:
        lines.append(
            f"({unmatched} timed calls found no line in the log and are left out: at INFO crictld"
            " logs no line for a read that succeeded)"
        )
    lines += [
        "",
        "inside the handler, per call (medians; spans nest, e.g. containerd calls inside the",
        "queue wait; `containerd ...` counts are round trips to containerd):",
    ]
    for r in rows:
        if not r.spans:
            continue
        trips = sum(n for name, (n, _) in r.spans.items() if name.startswith("containerd "))
        lines.append(f"  {r.op}: handler {r.handler_ms:.2f} ms, {trips:g} containerd round trips")
        for name, (n, ms) in sorted(r.spans.items(), key=lambda kv: -kv[1][1]):
            lines.append(f"    {name:<40} x{n:<4g} {ms:8.2f} ms")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Run


def run(
    runtimes: Sequence[Runtime],
    pause: str,
    rounds: int,
    scale: int,
    targets: dict[str, Target] | None = None,
) -> tuple[Result, SandboxWorkload]:
    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    workload = SandboxWorkload(pause, scale, targets)
    start = time.monotonic()
    run_workload(workload, runtimes, rounds, progress=progress)
    run_workload(ScalePhase(workload), runtimes, 1, progress=lambda _: progress("scale done"))
    result = Result(
        workload.name, workload.describe(), rounds, list(runtimes), time.monotonic() - start
    )
    return result, workload


def format_leftovers(
    workload: SandboxWorkload, after_teardown: dict[str, list[str]] | None, local: bool
) -> tuple[str, bool]:
    """The node checks as text, and whether anything was left."""
    lines = ["what the run left on the node:"]
    dirty = False
    for name, st in workload.state.items():
        scope = (
            "netns files, IPAM addresses, containerd containers/tasks/rw snapshots/leases, "
            "veths on its bridge, cgroups"
            if name in workload.targets
            else "this run's pods, cgroups"
        )
        if st.left:
            dirty = True
            lines.append(f"  {name}, all pods removed, runtime still up: LEFT ({scope}):")
            lines += [f"    {kind}: {', '.join(v[:5])}" for kind, v in st.left.items()]
        else:
            lines.append(f"  {name}, all pods removed, runtime still up: nothing ({scope})")
    if after_teardown is not None:
        for name, found in after_teardown.items():
            if found:
                dirty = True
                lines.append(f"  {name}, after teardown: LEFT:")
                lines += [f"    {f}" for f in found[:10]]
            else:
                lines.append(
                    f"  {name}, after teardown: nothing (its bridge, the veths seen at scale, "
                    "mounts, processes and files under its dirs are gone)"
                )
    elif not local:
        lines.append("  (runtimes not started here: nothing checked after teardown)")
    verdict = "LEAKS FOUND" if dirty else "nothing left on the node by either runtime"
    lines.append(f"  => {verdict}")
    return "\n".join(lines), dirty


def after_teardown(node: Node, workload: SandboxWorkload) -> dict[str, list[str]]:
    found = leftovers(node)
    for name, st in workload.state.items():
        still = sorted(v for v in st.veths if link_exists(v))
        cgroups = cgroups_named(set(st.sandbox_ids))
        found.setdefault(name, [])
        found[name] += [f"veth {v}" for v in still] + [f"cgroup {c}" for c in cgroups]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sandboxes",
        description="Pod sandbox RPC latency, crictld next to containerd's CRI plugin.",
    )
    parser.add_argument("--rounds", type=int, default=10, help="one-pod rounds (10)")
    parser.add_argument(
        "--scale", type=int, default=100, help="pods alive at once in the scale phase (100)"
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
        "--crictld-log",
        type=Path,
        help="with --endpoint: the log of the endpoint named crictld, for the time breakdown",
    )
    parser.add_argument("--workdir", type=Path, help="image build dir (default .cache/rig-images)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs of a clean run")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw figures to OUT")
    args = parser.parse_args(argv)
    if args.scale < 0:
        parser.error("--scale must be 0 or more")

    node: Node | None = None
    logs: list[LogLine] = []
    try:
        with (
            runtime_logs(args.keep_logs, "sandboxes") as (logs_dir, failed),
            local_registry(args.registry, args.workdir) as registry,
        ):
            pause = args.pause_image or pause_image(registry)
            if args.endpoint:
                result, workload = run(args.endpoint, pause, args.rounds, args.scale)
                if args.crictld_log:
                    logs = read_call_log(args.crictld_log)
                checked_after = None
            else:
                with local_node(registry, logs_dir) as node:
                    targets = {t.runtime.name: t for t in node.targets}
                    result, workload = run(node.runtimes, pause, args.rounds, args.scale, targets)
                    crictld_log = node.target("crictld").crictld_log
                    if crictld_log is not None:
                        logs = read_call_log(crictld_log)
                checked_after = after_teardown(node, workload)
            text, dirty = format_leftovers(workload, checked_after, node is not None)
            errors = any(s.errors for rt in result.runtimes for s in rt.ops.values())
            failed[0] = failed[0] or dirty or errors or bool(workload.checks)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

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
    print(text)
    if logs_dir.is_dir():
        print(f"\nruntime logs (crictld, both containerds) kept in {logs_dir}")
    if args.json:
        data = result.as_json()
        data["checks"] = workload.checks
        data["crictld_breakdown"] = [vars(r) for r in rows]
        data["left_on_node"] = {
            "pods_removed": {name: st.left for name, st in workload.state.items()},
            "after_teardown": checked_after,
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())
