"""Where a StartContainer's time goes, in both runtimes: the processes it runs, timed by the
kernel.

StartContainer is containerd's task create and start: containerd runs the runc shim's
`start` command (which finds the pod's shim and exits), the shim runs `runc create` (which runs
`runc init` in the new namespaces) and then `runc start`, after which the container's program
runs; under crictld the shim also starts crictld-logger (its `binary://` stdio) before runc.
Those processes' exec and exit are read from the kernel's own trace events
(`sched_process_exec`, `sched_process_exit` through tracefs), which cost the traced
processes nothing measurable, unlike strace, whose ptrace of the multi-threaded shim added tens
of milliseconds to each step. Each timed StartContainer is bracketed by two lines written to
`trace_marker`, so every milestone is in ms from the call's start, at the client.

Before the first round, on every runtime (untimed): the pause and busybox images pulled and one
pod run. Per round: one busybox container (`sleep 3600`) created (untimed), started (timed),
stopped and removed (untimed). Printed: StartContainer's figures side by side, then each
milestone's median over the rounds, for each runtime.

    .venv/bin/python -m benchmarks.start_timeline              # brings everything up itself
    .venv/bin/python -m benchmarks.start_timeline --rounds 40
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.containers import COMMAND, ContainerWorkload, run_pod_workload
from benchmarks.cri_bench import BenchError, Runtime
from crictl.gen.cri.runtime.v1 import api_pb2

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("sched/sched_process_exec", "sched/sched_process_exit")
OP = "StartContainer"
# `<task>-<pid> [cpu] flags <seconds>: <event>: <fields>`
LINE = re.compile(r"\s(\d+\.\d+): (\w+): (.*)$")


@dataclass
class Span:
    """One timed StartContainer: the trace events between its two markers."""

    runtime: str
    began: float
    ended: float = 0.0
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (s, event, fields)

    def execs(self, match: Callable[[str], bool]) -> list[float]:
        """When each exec of a file MATCH accepts happened, ms from the call's start."""
        found = []
        for at, event, fields in self.events:
            name = re.search(r"filename=(\S+)", fields)
            if event == "sched_process_exec" and name and match(name.group(1)):
                found.append((at - self.began) * 1000)
        return found

    def exits(self, comm: str) -> list[float]:
        return [
            (at - self.began) * 1000
            for at, event, fields in self.events
            if event == "sched_process_exit" and f"comm={comm} " in fields
        ]

    def milestones(self, command: str) -> dict[str, float]:
        nan = float("nan")
        runc = self.execs(lambda f: f.endswith("/runc"))
        create_exec = runc[0] if runc else nan
        start_exec = runc[1] if len(runc) > 1 else nan
        # runc create ends when its last thread exits, before runc start is run
        create_exits = [t for t in self.exits("runc") if t < start_exec]
        first = {
            "shim's start command exec": self.execs(lambda f: "containerd-shim" in f),
            "crictld-logger exec": self.execs(lambda f: f.endswith("/crictld-logger")),
            "runc init exec": self.execs(lambda f: f == "/proc/self/exe"),
            f"the container's {command} exec": self.execs(lambda f: f.endswith("/" + command)),
        }
        out = {name: times[0] if times else nan for name, times in first.items()}
        out["runc create exec"] = create_exec
        out["runc create exit"] = max(create_exits) if create_exits else nan
        out["runc start exec"] = start_exec
        out["the answer, at the client"] = (self.ended - self.began) * 1000
        order = (
            "shim's start command exec",
            "crictld-logger exec",
            "runc create exec",
            "runc init exec",
            "runc create exit",
            "runc start exec",
            f"the container's {command} exec",
            "the answer, at the client",
        )
        return {name: out[name] for name in order}


@contextlib.contextmanager
def kernel_trace() -> Iterator[Path]:
    """Process exec and exit events on, for the duration; yields trace_marker's path."""
    if not (TRACEFS / "trace_marker").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=False)
    if not (TRACEFS / "trace_marker").exists():
        raise BenchError(f"no tracefs at {TRACEFS} (the kernel's trace events are needed)")
    (TRACEFS / "trace").write_text("")
    for event in EVENTS:
        (TRACEFS / "events" / event / "enable").write_text("1")
    (TRACEFS / "tracing_on").write_text("1")
    try:
        yield TRACEFS / "trace_marker"
    finally:
        (TRACEFS / "tracing_on").write_text("0")
        for event in EVENTS:
            (TRACEFS / "events" / event / "enable").write_text("0")


def spans(trace: str) -> list[Span]:
    """The timed calls in TRACE, each with the events between its markers."""
    found: list[Span] = []
    current: Span | None = None
    for line in trace.splitlines():
        m = LINE.search(line)
        if m is None:
            continue
        at, event, fields = float(m.group(1)), m.group(2), m.group(3)
        if event == "tracing_mark_write":
            words = fields.split()
            if words[:1] == ["crictld-bench-begin"]:
                current = Span(words[1], at)
            elif words[:1] == ["crictld-bench-end"] and current is not None:
                current.ended = at
                found.append(current)
                current = None
        elif current is not None:
            current.events.append((at, event, fields))
    return found


class StartTimelineWorkload(ContainerWorkload):
    name = "start_timeline"

    def __init__(self, pause: str, busybox: str, log_root: Path, marker: Path) -> None:
        super().__init__(pause, busybox, 0, 0, log_root)
        self.marker = marker.open("w")

    def describe(self) -> str:
        return (
            "one pod; per round one busybox container created, started (timed, its processes "
            "traced by the kernel), stopped and removed"
        )

    def mark(self, text: str) -> None:
        self.marker.write(text + "\n")
        self.marker.flush()

    def run_round(self, rt: Runtime, index: int) -> None:
        r = rt.runtime
        config = self.container_config(f"t{index}")
        cid = self._create(rt, "create", self.round_pods[rt.name], config)
        rt.ops.pop("create", None)  # untimed: only the start is this workload's figure
        if cid is None:
            raise BenchError(f"{rt.name}: cannot create the round's container")
        time.sleep(0.2)  # the create's own work done
        self.mark(f"crictld-bench-begin {rt.name}")
        started = rt.call(OP, r.StartContainer, api_pb2.StartContainerRequest(container_id=cid))
        self.mark(f"crictld-bench-end {rt.name}")
        if started is None:
            raise BenchError(f"{rt.name}: cannot start the round's container")
        rt.quietly(r.StopContainer, api_pb2.StopContainerRequest(container_id=cid, timeout=0))
        rt.quietly(r.RemoveContainer, api_pb2.RemoveContainerRequest(container_id=cid))


def format_timeline(found: list[Span], command: str) -> str:
    names = sorted({s.runtime for s in found})
    by_runtime = {n: [s.milestones(command) for s in found if s.runtime == n] for n in names}
    milestones = list(next(iter(by_runtime.values()))[0]) if found else []
    width = max((len(m) for m in milestones), default=10)
    lines = [
        "StartContainer's processes, ms from the call's start (median over the rounds; "
        "kernel exec/exit events)",
        f"{'milestone':<{width}} | " + " | ".join(f"{n:>10}" for n in names),
        "-" * width + "-+-" + "-+-".join("-" * 10 for _ in names),
    ]
    for m in milestones:
        cells = []
        for n in names:
            values = [row[m] for row in by_runtime[n] if row[m] == row[m]]  # not NaN
            cells.append(f"{statistics.median(values):>10.2f}" if values else f"{'-':>10}")
        lines.append(f"{m:<{width}} | " + " | ".join(cells))
    counts = ", ".join(f"{n}: {len(by_runtime[n])}" for n in names)
    lines.append(f"(rounds traced: {counts})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.start_timeline",
        description="StartContainer's processes timed by the kernel, crictld next to "
        "containerd's CRI.",
    )
    parser.add_argument("--rounds", type=int, default=24, help="rounds (24)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw figures to OUT")
    args = parser.parse_args(argv)
    try:
        with kernel_trace() as marker:
            code, workload = run_pod_workload(
                "start_timeline",
                lambda pause, busybox, logs: StartTimelineWorkload(pause, busybox, logs, marker),
                args.rounds,
                args.json,
            )
            trace = (TRACEFS / "trace").read_text()
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if workload is not None:
        print()
        print(format_timeline(spans(trace), COMMAND[0]))
    return code


if __name__ == "__main__":
    sys.exit(main())
