"""Time CRI calls against several runtimes in the same run and compare them.

Library:

    runtimes = [Runtime("crictld", "unix:///run/crictld/crictld.sock"),
                Runtime("containerd", "unix:///tmp/crd-ref-x/containerd.sock")]
    result = run_workload(StatusWorkload(), runtimes, rounds=50)
    print(format_table(result))

Every CRI call a workload makes goes through `Runtime.call`, which times it with
`time.perf_counter` around the blocking gRPC call (generated stubs, one channel per runtime,
opened before the first round so connection set-up is not measured). Rounds are interleaved:
round r runs on every runtime before round r+1 starts, alternating the order, so drift in the
machine's load hits all runtimes alike.

An RPC answering UNIMPLEMENTED is recorded as such and shown as "unimplemented" instead of
figures; any other error is counted (the first distinct messages are kept) and the workload goes
on with the next call.

CLI: `python -m benchmarks.cri_bench [--workload status|images] [--endpoint NAME=ADDR ...]`;
without `--endpoint` it starts a registry, crictld and containerd's CRI (benchmarks.images) and
tears them down afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from crictl.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

DEFAULT_TIMEOUT = 60.0
MAX_MESSAGES = 3


class BenchError(Exception):
    """The benchmark cannot run (a runtime does not answer, a bad argument)."""


@dataclass
class Call:
    """One CRI call made to a runtime, timed or not, in the order made (for the log match)."""

    op: str  # "" for untimed calls
    rpc: str  # method name, e.g. "RunPodSandbox"
    started: float  # time.time() around the call
    ended: float
    seconds: float | None  # client-observed latency, None if untimed or failed


@dataclass
class OpStats:
    """Figures for one operation on one runtime."""

    samples: list[float] = field(default_factory=list)  # seconds, successful calls only
    labels: list[str] = field(default_factory=list)  # one per sample (e.g. the image)
    errors: int = 0
    unimplemented: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def only_unimplemented(self) -> bool:
        return self.unimplemented > 0 and not self.samples and self.errors == 0

    def summary(self) -> dict[str, object]:
        ms = [s * 1000.0 for s in self.samples]
        return {
            "n": len(ms),
            "p50_ms": percentile(ms, 0.50) if ms else None,
            "p95_ms": percentile(ms, 0.95) if ms else None,
            "min_ms": min(ms) if ms else None,
            "max_ms": max(ms) if ms else None,
            "errors": self.errors,
            "unimplemented": self.unimplemented,
            "messages": self.messages,
            "samples_ms": ms,
            **({"labels": self.labels} if any(self.labels) else {}),
        }


def kubelet_sandbox_linux_config(cgroup_parent: str = "") -> api_pb2.LinuxPodSandboxConfig:
    """What kubelet v1.34 sends in every RunPodSandbox's linux part that a runtime acts on
    here: the RuntimeDefault seccomp profile for the sandbox (kubernetes#84623,
    pkg/kubelet/kuberuntime/kuberuntime_sandbox.go), which puts the pause under a filter."""
    config = api_pb2.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent)
    config.security_context.seccomp.profile_type = api_pb2.SecurityProfile.RuntimeDefault
    return config


def kubelet_linux_config() -> api_pb2.LinuxContainerConfig:
    """What kubelet v1.34 sends in every non-privileged container's CreateContainer: the
    masked and read-only /proc and /sys paths (pkg/securitycontext/util.go, default proc
    mount), so both runtimes mount what they mount under kubelet. Without them each runtime
    falls back to its own default: none for containerd's CRI, a list for crictld."""
    masked = [
        "/proc/asound",
        "/proc/acpi",
        "/proc/interrupts",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ]
    for cpu in range(os.cpu_count() or 1):
        throttle = f"/sys/devices/system/cpu/cpu{cpu}/thermal_throttle"
        if os.path.exists(throttle):
            masked.append(throttle)
    readonly = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
    return api_pb2.LinuxContainerConfig(
        security_context=api_pb2.LinuxContainerSecurityContext(
            masked_paths=masked, readonly_paths=readonly
        )
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The Q-quantile (0..1) of VALUES, linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Runtime:
    """One named CRI endpoint, its stubs, and the figures recorded against it."""

    def __init__(self, name: str, endpoint: str) -> None:
        self.name = name
        self.endpoint = endpoint
        self.ops: dict[str, OpStats] = {}
        self.trace: list[Call] = []  # the successful timed calls, in order
        self.version: str = ""
        self._channel: grpc.Channel | None = None
        self._runtime: api_pb2_grpc.RuntimeServiceStub | None = None
        self._image: api_pb2_grpc.ImageServiceStub | None = None
        # label -> pid of the processes whose CPU each round counts (set by `local_node`),
        # and the CPU (ns) each spent in the rounds run so far
        self.processes: dict[str, int] = {}
        self.cpu_ns: dict[str, int] = {}
        self.cpu_rounds = 0

    def round_cpu(self) -> dict[str, int]:
        """Every watched process's CPU so far, to pass to `count_cpu` after a round."""
        return {label: process_cpu_ns(pid) for label, pid in self.processes.items()}

    def count_cpu(self, before: dict[str, int]) -> None:
        for label, pid in self.processes.items():
            if label in before:
                spent = max(0, process_cpu_ns(pid) - before[label])
                self.cpu_ns[label] = self.cpu_ns.get(label, 0) + spent
        if before:
            self.cpu_rounds += 1

    @property
    def runtime(self) -> api_pb2_grpc.RuntimeServiceStub:
        if self._runtime is None:
            raise BenchError(f"{self.name}: not connected")
        return self._runtime

    @property
    def image(self) -> api_pb2_grpc.ImageServiceStub:
        if self._image is None:
            raise BenchError(f"{self.name}: not connected")
        return self._image

    def connect(self, timeout: float = 10.0) -> None:
        """Opens the channel and asks Version (untimed) so the connection is up before round 0."""
        self._channel = grpc.insecure_channel(self.endpoint)
        self._runtime = api_pb2_grpc.RuntimeServiceStub(self._channel)
        self._image = api_pb2_grpc.ImageServiceStub(self._channel)
        try:
            v = self._runtime.Version(api_pb2.VersionRequest(), timeout=timeout)
        except grpc.RpcError as e:
            self.close()
            raise BenchError(
                f"{self.name} ({self.endpoint}) does not answer: {_describe(e)}"
            ) from e
        self.version = f"{v.runtime_name} {v.runtime_version}"

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._runtime = self._image = None

    def __enter__(self) -> Runtime:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def call(
        self,
        op: str,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float = DEFAULT_TIMEOUT,
        label: str = "",
    ) -> Resp | None:
        """Times one unary call under the name OP; returns its response, or None on an error.

        LABEL goes with the sample into the raw figures (e.g. which image was pulled)."""
        stats = self.ops.setdefault(op, OpStats())
        wall = time.time()
        start = time.perf_counter()
        try:
            response = method(request, timeout=timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                stats.unimplemented += 1
            else:
                stats.errors += 1
                message = _describe(e)
                if message not in stats.messages and len(stats.messages) < MAX_MESSAGES:
                    stats.messages.append(message)
            return None
        seconds = time.perf_counter() - start
        stats.samples.append(seconds)
        stats.labels.append(label)
        # an op is named by its RPC, then a qualifier: "ImageStatus(id)", "ListPodSandbox@10",
        # "PullImage [busybox]"
        named = _RPC_OF_OP.match(op)
        rpc = named.group(0) if named else op
        self.trace.append(Call(op, rpc, wall, wall + seconds, seconds))
        return response

    def quietly(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Resp | None:
        """An untimed call for set-up and clean-up; errors are ignored."""
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError:
            return None


_RPC_OF_OP = re.compile(r"[A-Za-z]+")


def _describe(e: grpc.RpcError) -> str:
    code = e.code() if isinstance(e, grpc.Call) else None
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    name = code.name if code is not None else "ERROR"
    return f"{name}: {(details or '').strip()[:200]}"


class Workload(Protocol):
    """A repeatable sequence of CRI calls. `run_round` must leave the runtime as it found it."""

    name: str

    def describe(self) -> str: ...

    def setup(self, rt: Runtime) -> None: ...

    def run_round(self, rt: Runtime, index: int) -> None: ...

    def teardown(self, rt: Runtime) -> None: ...


@dataclass
class Result:
    workload: str
    description: str
    rounds: int
    runtimes: list[Runtime]
    seconds: float

    def operations(self) -> list[str]:
        """Every operation seen, in the order of the runtime that saw the most, then the rest."""
        seen: dict[str, None] = {}
        for rt in sorted(self.runtimes, key=lambda r: -len(r.ops)):
            for op in rt.ops:
                seen.setdefault(op, None)
        return list(seen)

    def as_json(self) -> dict[str, object]:
        return {
            "workload": self.workload,
            "description": self.description,
            "rounds": self.rounds,
            "seconds": self.seconds,
            "runtimes": {
                rt.name: {
                    "endpoint": rt.endpoint,
                    "version": rt.version,
                    "ops": {op: stats.summary() for op, stats in rt.ops.items()},
                }
                for rt in self.runtimes
            },
        }


def run_workload(
    workload: Workload,
    runtimes: Sequence[Runtime],
    rounds: int,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """Connects to every runtime, runs set-up, ROUNDS interleaved rounds, then tear-down."""
    if rounds < 1:
        raise BenchError("rounds must be at least 1")
    names = [rt.name for rt in runtimes]
    if len(set(names)) != len(names):
        raise BenchError(f"runtime names must be unique: {names}")
    connected: list[Runtime] = []
    start = time.monotonic()
    try:
        for rt in runtimes:
            rt.connect()
            connected.append(rt)
        for rt in runtimes:
            workload.setup(rt)
        for index in range(rounds):
            order = list(runtimes) if index % 2 == 0 else list(reversed(runtimes))
            for rt in order:
                before = rt.round_cpu()
                workload.run_round(rt, index)
                rt.count_cpu(before)
            if progress is not None:
                progress(f"round {index + 1}/{rounds} done")
        for rt in runtimes:
            workload.teardown(rt)
    finally:
        for rt in connected:
            rt.close()
    return Result(
        workload.name, workload.describe(), rounds, list(runtimes), time.monotonic() - start
    )


# ------------------------------------------------------------------------------------------
# Output


COLUMNS = ("n", "p50 ms", "p95 ms", "errors")
WIDTHS = (5, 9, 9, 6)
GROUP_WIDTH = sum(WIDTHS) + 2 * (len(WIDTHS) - 1)


def _cell(stats: OpStats | None) -> str:
    """One runtime's figures for one operation, GROUP_WIDTH wide."""
    if stats is None:
        return "-".ljust(GROUP_WIDTH)
    if stats.only_unimplemented:
        return "unimplemented".ljust(GROUP_WIDTH)
    ms = [s * 1000.0 for s in stats.samples]
    values = (
        str(len(ms)),
        f"{percentile(ms, 0.50):.2f}" if ms else "-",
        f"{percentile(ms, 0.95):.2f}" if ms else "-",
        str(stats.errors + stats.unimplemented),
    )
    return "  ".join(v.rjust(w) for v, w in zip(values, WIDTHS, strict=True))


def format_table(result: Result) -> str:
    """operation | for each runtime: n, p50 ms, p95 ms, errors; then the error messages."""
    ops = result.operations()
    op_width = max([len("operation"), *(len(op) for op in ops)])
    group = max([GROUP_WIDTH, *(len(rt.name) for rt in result.runtimes)])

    def line(first: str, cells: Sequence[str]) -> str:
        return " | ".join([first.ljust(op_width), *(c.ljust(group) for c in cells)]).rstrip()

    columns = "  ".join(c.rjust(w) for c, w in zip(COLUMNS, WIDTHS, strict=True))
    lines = [
        f"workload {result.workload}: {result.description}; {result.rounds} rounds, "
        f"{result.seconds:.1f} s",
        *(f"  {rt.name}: {rt.endpoint} ({rt.version})" for rt in result.runtimes),
        "",
        line("operation", [rt.name for rt in result.runtimes]),
        line("", [columns for _ in result.runtimes]),
        "-+-".join(["-" * op_width, *("-" * group for _ in result.runtimes)]),
    ]
    lines += [line(op, [_cell(rt.ops.get(op)) for rt in result.runtimes]) for op in ops]
    notes = [
        f"  {rt.name} {op}: {message}"
        for rt in result.runtimes
        for op, stats in rt.ops.items()
        for message in stats.messages
    ]
    if notes:
        lines += ["", "errors:", *notes]
    return "\n".join(lines)


def format_comparison(result: Result, floor: str | None = None) -> str:
    """Per operation: each runtime's p50, the first runtime's over the second's, and (with
    FLOOR, an operation every round makes, e.g. Version) each runtime's p50 above its FLOOR's."""
    rts = result.runtimes
    if len(rts) < 2:
        return ""
    first, second = rts[0], rts[1]

    def p50(rt: Runtime, op: str) -> float | None:
        stats = rt.ops.get(op)
        if stats is None or not stats.samples:
            return None
        return percentile([s * 1000.0 for s in stats.samples], 0.5)

    ops = result.operations()
    width = max([len("operation"), *(len(op) for op in ops)])
    head = [f"{first.name} p50", f"{second.name} p50", "ratio"]
    if floor is not None:
        head += [f"{first.name} -{floor}", f"{second.name} -{floor}"]
    widths = [max(len(h), 9) for h in head]
    lines = [
        f"p50 side by side (ratio = {first.name} / {second.name}"
        + (f"; -{floor}: p50 above the runtime's own {floor} p50" if floor else "")
        + ")",
        " | ".join(
            ["operation".ljust(width), *(h.rjust(w) for h, w in zip(head, widths, strict=True))]
        ),
        "-+-".join(["-" * width, *("-" * w for w in widths)]),
    ]
    for op in ops:
        a, b = p50(first, op), p50(second, op)
        cells = [
            f"{a:.3f}" if a is not None else "-",
            f"{b:.3f}" if b is not None else "-",
            f"{a / b:.2f}" if a is not None and b else "-",
        ]
        if floor is not None:
            fa, fb = p50(first, floor), p50(second, floor)
            cells += [
                f"{a - fa:+.3f}" if a is not None and fa is not None else "-",
                f"{b - fb:+.3f}" if b is not None and fb is not None else "-",
            ]
        lines.append(
            " | ".join([op.ljust(width), *(c.rjust(w) for c, w in zip(cells, widths, strict=True))])
        )
    return "\n".join(lines)


# clock_getcpuclockid(3) for a process: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED), as glibc
# builds it (linux/posix-timers.h); CPUCLOCK_SCHED counts in ns, like each thread's schedstat.
_CPUCLOCK_SCHED = 2


def process_cpu_ns(pid: int) -> int:
    """The CPU time (ns) PID has used so far, every thread's, those that ended included: the
    process's CPU clock (0 once PID is gone).

    The live threads' /proc/PID/task/*/schedstat summed (what this read before) loses the
    time of every thread that ends. containerd's CRI makes each pod's network namespace on an
    OS thread it then lets die (`pkg/netns` in v1.6.20 locks the goroutine to its thread and
    never unlocks it), and the Go runtime thread that dies takes with it all it had run
    before, so that sum missed half or more of containerd's CRI's CPU in a pod's life."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | _CPUCLOCK_SCHED)
    except OSError:
        return 0


def format_cpu(result: Result, calls_per_round: int | None = None) -> str:
    """Per runtime, its watched processes' CPU per round (mean over the rounds), their total,
    and the totals' ratio; with CALLS_PER_ROUND, per call too. Empty if nothing was watched."""
    rts = [rt for rt in result.runtimes if rt.cpu_rounds]
    if not rts:
        return ""
    per_call = calls_per_round is not None and calls_per_round > 0
    lines = [
        "CPU per round of the runtimes' own processes (each process's CPU clock around each\n"
        "round, threads that ended included; not counted: shims, runc, CNI plugins,\n"
        "crictld's log helpers, and work a round leaves running unless a later round of the\n"
        "same runtime is under way when it runs)",
        f"{'runtime':<12} | {'process':<26} | {'us/round':>9}" + (" | us/call" if per_call else ""),
    ]
    totals: list[float] = []
    for rt in rts:
        total = sum(rt.cpu_ns.values())
        for label, ns in [*rt.cpu_ns.items(), ("(total)", total)]:
            per_round = ns / rt.cpu_rounds / 1000.0
            cell = f" | {per_round / calls_per_round:>7.0f}" if per_call and calls_per_round else ""
            lines.append(f"{rt.name:<12} | {label:<26} | {per_round:>9.0f}{cell}")
        totals.append(total / rt.cpu_rounds)
    if len(totals) >= 2 and totals[1]:
        lines.append(f"total ratio {rts[0].name} / {rts[1].name}: {totals[0] / totals[1]:.2f}")
    return "\n".join(lines)


def write_json(results: Sequence[Result], path: Path) -> None:
    data: object = results[0].as_json() if len(results) == 1 else [r.as_json() for r in results]
    path.write_text(json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------------------------
# A cheap workload: the calls kubelet makes all the time, touching no image or pod


class StatusWorkload:
    """Version, Status, RuntimeConfig, ListPodSandbox, ListContainers, ListImages, ImageFsInfo."""

    name = "status"

    def describe(self) -> str:
        return "one call of each status/list RPC per round"

    def setup(self, rt: Runtime) -> None:
        pass

    def teardown(self, rt: Runtime) -> None:
        pass

    def run_round(self, rt: Runtime, index: int) -> None:
        r, i = rt.runtime, rt.image
        rt.call("Version", r.Version, api_pb2.VersionRequest())
        rt.call("Status", r.Status, api_pb2.StatusRequest())
        rt.call("RuntimeConfig", r.RuntimeConfig, api_pb2.RuntimeConfigRequest())
        rt.call("ListPodSandbox", r.ListPodSandbox, api_pb2.ListPodSandboxRequest())
        rt.call("ListContainers", r.ListContainers, api_pb2.ListContainersRequest())
        rt.call("ListImages", i.ListImages, api_pb2.ListImagesRequest())
        rt.call("ImageFsInfo", i.ImageFsInfo, api_pb2.ImageFsInfoRequest())


# ------------------------------------------------------------------------------------------
# CLI


def parse_endpoint(text: str) -> Runtime:
    name, sep, address = text.partition("=")
    if not sep or not name or not address:
        raise argparse.ArgumentTypeError(f"expected NAME=ADDRESS, got {text!r}")
    if "://" not in address:
        address = f"unix://{address}"
    return Runtime(name, address)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cri_bench",
        description="Run a CRI workload against named endpoints and compare latencies.",
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        type=parse_endpoint,
        default=[],
        metavar="NAME=ADDR",
        help="a CRI endpoint, e.g. crictld=unix:///run/crictld/crictld.sock (repeatable); "
        "without any, a registry, crictld and containerd's CRI are started and torn down",
    )
    parser.add_argument("--workload", choices=["status", "images"], default="status")
    parser.add_argument("--rounds", type=int, default=None, help="default 50 (status), 5 (images)")
    parser.add_argument(
        "--registry",
        help="HOST:PORT of a registry holding the fixture images (default: start one)",
    )
    parser.add_argument(
        "--images", help="images workload: comma-separated short names or repository:tag"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw figures to OUT")
    args = parser.parse_args(argv)

    # The image workload and the bring-up live in benchmarks.images (which imports this module).
    from benchmarks.images import ImageWorkload, local_registry, local_runtimes, parse_images

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        with contextlib.ExitStack() as stack:
            workload: Workload
            registry: str = args.registry or ""
            if args.workload == "images" or not args.endpoint:
                registry = stack.enter_context(local_registry(args.registry, None))
            if args.workload == "images":
                workload = ImageWorkload(registry, parse_images(args.images))
                rounds = args.rounds or 5
            else:
                workload = StatusWorkload()
                rounds = args.rounds or 50
            runtimes = args.endpoint or stack.enter_context(local_runtimes(registry))
            result = run_workload(workload, runtimes, rounds, progress=progress)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    if args.json:
        write_json([result], args.json)
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: benchmarks.images imports
    # benchmarks.cri_bench, and its exceptions and classes must be the same objects.
    from benchmarks.cri_bench import main as _main

    sys.exit(_main())
