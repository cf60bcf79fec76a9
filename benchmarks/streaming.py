"""The streaming workload: Exec round trips and port-forward throughput through crictl.

Before the first round, on every runtime (untimed): the pause image and
`e2e-test-images/busybox:1.29-2` are pulled and one pod is run with two busybox containers:
`sleeper` (`sleep 3600`, exec'd into) and `server`, which writes a 100 MiB file of zeros and
serves it with busybox's httpd on port 8080 (`sh -c 'mkdir -p /www && dd ... && exec httpd -f
-p 8080 -h /www'`).

Per round (`--rounds`, default 30), interleaved as in `benchmarks.cri_bench`, in the sleeper:

- `crictl exec CID true` (SPDY, crictl's default): the whole crictl process, timed;
- `crictl exec -r websocket CID true`: the same over WebSocket;
- `Exec` RPC alone (`true`, stdout and stderr): the call answering the streaming URL, over the
  benchmark's one gRPC channel per runtime (the URL is not used);
- `ExecSync` RPC (`true`, timeout 10 s), for comparison.

Then, for each transport (SPDY, WebSocket) and runtime: `crictl port-forward [-r websocket]
POD LOCAL:8080` is started, waited for (a small file fetched through it, untimed), and the
100 MiB file downloaded `--pf-rounds` times (default 3) with `curl -o /dev/null`; the rate is
curl's `size_download / time_total`. A failed call counts as an error, its first messages (crictl's
or curl's stderr) listed under the table.

    .venv/bin/python -m benchmarks.streaming                      # brings everything up itself
    .venv/bin/python -m benchmarks.streaming --rounds 50 --pf-rounds 5 --json out.json
    .venv/bin/python -m benchmarks.streaming --registry 127.0.0.1:5000 \\
        --endpoint crictld=unix:///run/crictld/crictld.sock --endpoint containerd=unix:///...

The pod (and its containers) are removed at the end; with the runtimes brought up here, what is
still on the machine after their teardown is checked (`benchmarks.setup.leftovers`).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc

from benchmarks.containers import BUSYBOX, busybox_image
from benchmarks.cri_bench import (
    MAX_MESSAGES,
    BenchError,
    OpStats,
    Result,
    Runtime,
    kubelet_linux_config,
    kubelet_sandbox_linux_config,
    parse_endpoint,
    percentile,
)
from benchmarks.sandboxes import RUN_LABEL, SANDBOX_TIMEOUT, UID_LABEL
from benchmarks.setup import (
    Node,
    cri_tools_dir,
    leftovers,
    local_node,
    local_registry,
    pause_image,
    runtime_logs,
)
from crictl.gen.cri.runtime.v1 import api_pb2

PULL_TIMEOUT = 300.0
CONTAINER_TIMEOUT = 60.0
EXEC_TIMEOUT = 10  # ExecSync's own timeout, seconds
EXEC_DEADLINE = 30.0  # the gRPC deadline around it
CRICTL_TIMEOUT = 60.0  # one crictl exec process
DOWNLOAD_TIMEOUT = 300.0  # one curl of the big file
READY_TIMEOUT = 60.0  # the server container's file written, a port-forward answering
BENCH_LABEL = ("bench", "streaming")
SERVER_PORT = 8080
BIG_MIB = 100
BIG_BYTES = BIG_MIB * 1024 * 1024
SLEEPER = ["sleep", "3600"]
SERVER = [
    "sh",
    "-c",
    f"mkdir -p /www && dd if=/dev/zero of=/www/big bs=1M count={BIG_MIB} 2>/dev/null "
    f"&& echo ok > /www/ok && exec httpd -f -p {SERVER_PORT} -h /www",
]
EXEC_COMMAND = ["true"]
TRANSPORTS = ("spdy", "websocket")
MB = 1e6  # rates in MB/s, 10^6 bytes
REFUSED = "websocket: bad handshake"  # crictl's words when the upgrade is refused
CRICTL_TIME = re.compile(r'time="[^"]*"\s*')

# The operations, in table order ("crictl exec" rows are whole crictl processes).
OP_EXEC_SPDY = "crictl exec (SPDY)"
OP_EXEC_WS = "crictl exec -r websocket"
OP_EXEC_RPC = "Exec RPC (URL only)"
OP_EXEC_SYNC = "ExecSync RPC"
EXEC_OPS = (OP_EXEC_SPDY, OP_EXEC_WS, OP_EXEC_RPC, OP_EXEC_SYNC)


def pf_op(transport: str) -> str:
    return "crictl port-forward" + (" (SPDY)" if transport == "spdy" else f" -r {transport}")


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _clean(message: str, limit: int) -> str:
    """MESSAGE on one line, without crictl's `time="..."` (so repeats are seen as such)."""
    return " ".join(CRICTL_TIME.sub("", message).split())[:limit]


def _note(stats: OpStats, message: str) -> None:
    stats.errors += 1
    message = _clean(message, 300)
    if message not in stats.messages and len(stats.messages) < MAX_MESSAGES:
        stats.messages.append(message)


@dataclass
class Rates:
    """Downloads through one runtime's port-forward over one transport."""

    bytes: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    errors: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def mb_s(self) -> list[float]:
        return [b / s / MB for b, s in zip(self.bytes, self.seconds, strict=True) if s > 0]

    def summary(self) -> dict[str, object]:
        rates = self.mb_s
        return {
            "n": len(rates),
            "median_mb_s": percentile(rates, 0.5) if rates else None,
            "min_mb_s": min(rates) if rates else None,
            "max_mb_s": max(rates) if rates else None,
            "errors": self.errors,
            "messages": self.messages,
            "bytes": self.bytes,
            "seconds": self.seconds,
        }


@dataclass
class PodState:
    id: str = ""
    sleeper: str = ""
    server: str = ""
    containers: list[str] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


class StreamingWorkload:
    """One pod per runtime, a sleeper and an HTTP server in it; exec rounds, then downloads."""

    name = "streaming"

    def __init__(
        self, pause: str, busybox: str, crictl: Path, log_root: Path, pf_rounds: int
    ) -> None:
        self.pause = pause
        self.busybox = busybox
        self.crictl = crictl
        self.log_root = log_root
        self.pf_rounds = pf_rounds
        self.tag = secrets.token_hex(3)
        self.pods: dict[str, PodState] = {}
        self.rates: dict[str, dict[str, Rates]] = {}  # runtime -> transport -> Rates
        self.checks: list[str] = []  # answers that were wrong though the call succeeded
        # crictl reads a config file, warning when there is none: an empty one, in LOG_ROOT
        self.crictl_config = log_root / "crictl.yaml"
        self.crictl_config.parent.mkdir(parents=True, exist_ok=True)
        self.crictl_config.touch()

    def describe(self) -> str:
        return (
            f"per round in one busybox container: crictl exec true (SPDY, WebSocket), the Exec "
            f"RPC alone, ExecSync true; then {self.pf_rounds} downloads of {BIG_MIB} MiB through "
            f"crictl port-forward per transport; image {self.busybox}"
        )

    def _check(self, rt: Runtime, op: str, ok: bool, what: str) -> None:
        if not ok and len(self.checks) < 20:
            self.checks.append(f"{rt.name} {op}: {what}")

    def _crictl(self, rt: Runtime, *args: str) -> list[str]:
        return [
            str(self.crictl),
            "--config",
            str(self.crictl_config),
            "--runtime-endpoint",
            rt.endpoint,
            "--image-endpoint",
            rt.endpoint,
            "--timeout",
            "30s",
            *args,
        ]

    # -------------------------------------------------------------------- set-up

    def pod_config(self, rt: Runtime) -> api_pb2.PodSandboxConfig:
        name = f"bench-{self.tag}-stream"
        uid = f"{self.tag}-{rt.name}-stream"
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="default", uid=uid, attempt=0),
            hostname=name,
            labels={BENCH_LABEL[0]: BENCH_LABEL[1], RUN_LABEL: self.tag, UID_LABEL: uid},
            # kubelet's layout: /var/log/pods/<namespace>_<name>_<uid>/<container>/<attempt>.log
            log_directory=str(self.log_root / rt.name / f"default_{name}_{uid}"),
            linux=kubelet_sandbox_linux_config(),
        )

    def container_config(self, name: str, command: list[str]) -> api_pb2.ContainerConfig:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name, attempt=0),
            image=api_pb2.ImageSpec(image=self.busybox),
            command=command,
            log_path=f"{name}/0.log",
            labels={BENCH_LABEL[0]: BENCH_LABEL[1], RUN_LABEL: self.tag},
            linux=kubelet_linux_config(),
        )

    def _pull(self, rt: Runtime, image: str) -> None:
        pulled = rt.quietly(
            rt.image.PullImage,
            api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image)),
            timeout=PULL_TIMEOUT,
        )
        if pulled is None:
            raise BenchError(f"{rt.name}: cannot pull {image}")

    def _container(
        self,
        rt: Runtime,
        pod: PodState,
        config: api_pb2.PodSandboxConfig,
        name: str,
        cmd: list[str],
    ) -> str:
        try:
            resp = rt.runtime.CreateContainer(
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod.id,
                    config=self.container_config(name, cmd),
                    sandbox_config=config,
                ),
                timeout=CONTAINER_TIMEOUT,
            )
            pod.containers.append(resp.container_id)
            rt.runtime.StartContainer(
                api_pb2.StartContainerRequest(container_id=resp.container_id),
                timeout=CONTAINER_TIMEOUT,
            )
        except grpc.RpcError as e:
            raise BenchError(f"{rt.name}: cannot run the {name} container: {e}") from e
        return resp.container_id

    def setup(self, rt: Runtime) -> None:
        self._pull(rt, self.pause)
        self._pull(rt, self.busybox)
        config = self.pod_config(rt)
        try:
            resp = rt.runtime.RunPodSandbox(
                api_pb2.RunPodSandboxRequest(config=config), timeout=SANDBOX_TIMEOUT
            )
        except grpc.RpcError as e:
            raise BenchError(f"{rt.name}: cannot run the pod: {e}") from e
        pod = self.pods[rt.name] = PodState(resp.pod_sandbox_id)
        pod.sleeper = self._container(rt, pod, config, "sleeper", SLEEPER)
        pod.server = self._container(rt, pod, config, "server", SERVER)

    def wait_server(self, rt: Runtime) -> None:
        """Until the server container has written its file (httpd starts right after)."""
        pod = self.pods[rt.name]
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            resp = rt.quietly(
                rt.runtime.ExecSync,
                api_pb2.ExecSyncRequest(
                    container_id=pod.server, cmd=["cat", "/www/ok"], timeout=EXEC_TIMEOUT
                ),
                timeout=EXEC_DEADLINE,
            )
            if resp is not None and resp.exit_code == 0 and resp.stdout == b"ok\n":
                return
            time.sleep(0.5)
        raise BenchError(f"{rt.name}: the server container did not write /www/ok")

    def teardown(self, rt: Runtime) -> None:
        """Removes this run's containers and pods (untimed), also any a failed set-up left."""
        resp = rt.quietly(
            rt.runtime.ListContainers,
            api_pb2.ListContainersRequest(
                filter=api_pb2.ContainerFilter(label_selector={RUN_LABEL: self.tag})
            ),
        )
        for c in resp.containers if resp is not None else []:
            rt.quietly(
                rt.runtime.StopContainer,
                api_pb2.StopContainerRequest(container_id=c.id, timeout=0),
                timeout=CONTAINER_TIMEOUT,
            )
            rt.quietly(
                rt.runtime.RemoveContainer,
                api_pb2.RemoveContainerRequest(container_id=c.id),
                timeout=CONTAINER_TIMEOUT,
            )
        pods = rt.quietly(
            rt.runtime.ListPodSandbox,
            api_pb2.ListPodSandboxRequest(
                filter=api_pb2.PodSandboxFilter(label_selector={RUN_LABEL: self.tag})
            ),
        )
        for p in pods.items if pods is not None else []:
            rt.quietly(
                rt.runtime.StopPodSandbox,
                api_pb2.StopPodSandboxRequest(pod_sandbox_id=p.id),
                timeout=SANDBOX_TIMEOUT,
            )
            rt.quietly(
                rt.runtime.RemovePodSandbox,
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=p.id),
                timeout=SANDBOX_TIMEOUT,
            )
        left = rt.quietly(
            rt.runtime.ListPodSandbox,
            api_pb2.ListPodSandboxRequest(
                filter=api_pb2.PodSandboxFilter(label_selector={RUN_LABEL: self.tag})
            ),
        )
        if left is None or left.items:
            self.checks.append(
                f"{rt.name} teardown: pods of this run still listed: "
                + ("ListPodSandbox failed" if left is None else str([p.id for p in left.items]))
            )

    # -------------------------------------------------------------------- exec rounds

    def _crictl_exec(self, rt: Runtime, op: str, transport: str) -> None:
        stats = rt.ops.setdefault(op, OpStats())
        cid = self.pods[rt.name].sleeper
        command = self._crictl(rt, "exec", "-r", transport, cid, *EXEC_COMMAND)
        start = time.perf_counter()
        try:
            r = subprocess.run(command, capture_output=True, text=True, timeout=CRICTL_TIMEOUT)
        except subprocess.TimeoutExpired:
            _note(stats, f"crictl exec did not end within {CRICTL_TIMEOUT:.0f} s")
            return
        elapsed = time.perf_counter() - start
        if r.returncode != 0:
            _note(stats, f"exit {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
            return
        self._check(rt, op, r.stdout == "", f"stdout {r.stdout[:80]!r}")
        stats.samples.append(elapsed)
        stats.labels.append("")

    def run_round(self, rt: Runtime, index: int) -> None:
        cid = self.pods[rt.name].sleeper
        self._crictl_exec(rt, OP_EXEC_SPDY, "spdy")
        self._crictl_exec(rt, OP_EXEC_WS, "websocket")
        resp = rt.call(
            OP_EXEC_RPC,
            rt.runtime.Exec,
            api_pb2.ExecRequest(container_id=cid, cmd=EXEC_COMMAND, stdout=True, stderr=True),
        )
        if resp is not None:
            self._check(rt, OP_EXEC_RPC, resp.url.startswith("http"), f"url {resp.url!r}")
        sync = rt.call(
            OP_EXEC_SYNC,
            rt.runtime.ExecSync,
            api_pb2.ExecSyncRequest(container_id=cid, cmd=EXEC_COMMAND, timeout=EXEC_TIMEOUT),
            timeout=EXEC_DEADLINE,
        )
        if sync is not None:
            self._check(
                rt,
                OP_EXEC_SYNC,
                sync.exit_code == 0 and not sync.stdout,
                f"exit {sync.exit_code}, stdout {sync.stdout[:40]!r}, stderr {sync.stderr[:80]!r}",
            )

    # -------------------------------------------------------------------- port-forward

    def _curl(self, port: int, path: str, timeout: float) -> tuple[int, float] | str:
        """(bytes, seconds) of one download through the forward, or what went wrong."""
        try:
            r = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--fail",
                    "--max-time",
                    str(int(timeout)),
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download} %{time_total}",
                    f"http://127.0.0.1:{port}{path}",
                ],
                capture_output=True,
                text=True,
                timeout=timeout + 10,
            )
        except subprocess.TimeoutExpired:
            return f"curl did not end within {timeout:.0f} s"
        if r.returncode != 0:
            return f"curl exit {r.returncode}: {r.stderr.strip()}"
        size, seconds = r.stdout.split()
        return int(float(size)), float(seconds)

    def port_forward(self, rt: Runtime, transport: str) -> None:
        """One `crictl port-forward` session: wait until a small GET answers through it, then
        PF_ROUNDS timed downloads of the big file."""
        rates = self.rates.setdefault(rt.name, {}).setdefault(transport, Rates())
        with tempfile.TemporaryFile(mode="w+") as out:
            self._session(rt, transport, rates, out)

    def _session(self, rt: Runtime, transport: str, rates: Rates, out: IO[str]) -> None:
        port = free_port()
        pod = self.pods[rt.name]
        proc = subprocess.Popen(
            self._crictl(rt, "port-forward", "-r", transport, pod.id, f"{port}:{SERVER_PORT}"),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

        def failed(what: str) -> None:
            out.seek(0)
            said = " | ".join(line.strip() for line in out.read().splitlines() if line.strip())
            message = f"{what}; crictl said: {said[-400:]}" if said else what
            rates.errors += 1
            message = _clean(message, 500)
            if message not in rates.messages and len(rates.messages) < MAX_MESSAGES:
                rates.messages.append(message)

        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not port_open(port):
                if proc.poll() is not None:
                    failed(f"crictl port-forward exited {proc.returncode} before listening")
                    return
                if time.monotonic() > deadline:
                    failed(f"crictl port-forward not listening after {READY_TIMEOUT:.0f} s")
                    return
                time.sleep(0.1)
            last = ""
            while True:  # the forward answers (untimed); retried: httpd may still be starting
                got = self._curl(port, "/ok", 10)
                if not isinstance(got, str):
                    if got[0] != 3:
                        last = f"GET /ok: {got[0]} bytes"
                    else:
                        break
                else:
                    last = got
                if proc.poll() is not None or time.monotonic() > deadline:
                    failed(f"no answer through the forward ({last})")
                    return
                time.sleep(0.5)
            for i in range(self.pf_rounds):
                got = self._curl(port, "/big", DOWNLOAD_TIMEOUT)
                if isinstance(got, str):
                    failed(f"download {i + 1}: {got}")
                    if proc.poll() is not None:
                        return
                    continue
                size, seconds = got
                if size != BIG_BYTES:
                    failed(f"download {i + 1}: {size} bytes of {BIG_BYTES}")
                    continue
                rates.bytes.append(size)
                rates.seconds.append(seconds)
                _progress(
                    f"{rt.name} port-forward {transport}: {size / seconds / MB:.1f} MB/s "
                    f"({seconds:.2f} s)"
                )
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


# ------------------------------------------------------------------------------------------
# Run and report


def run(
    runtimes: Sequence[Runtime], workload: StreamingWorkload, rounds: int, wait_server: bool = True
) -> Result:
    """Connects, sets up every runtime, ROUNDS interleaved exec rounds, the port-forward
    sessions, and tears down (also after a failure)."""
    if rounds < 1:
        raise BenchError("rounds must be at least 1")
    names = [rt.name for rt in runtimes]
    if len(set(names)) != len(names):
        raise BenchError(f"runtime names must be unique: {names}")
    start = time.monotonic()
    connected: list[Runtime] = []
    try:
        for rt in runtimes:
            rt.connect()
            connected.append(rt)
        for rt in runtimes:
            workload.setup(rt)
        for index in range(rounds):
            order = list(runtimes) if index % 2 == 0 else list(reversed(runtimes))
            for rt in order:
                workload.run_round(rt, index)
            if (index + 1) % 10 == 0 or index + 1 == rounds:
                _progress(f"exec round {index + 1}/{rounds} done")
        if wait_server:
            for rt in runtimes:
                workload.wait_server(rt)
        for transport in TRANSPORTS:
            for rt in runtimes:
                workload.port_forward(rt, transport)
    finally:
        for rt in connected:
            workload.teardown(rt)
            rt.close()
    return Result(
        workload.name, workload.describe(), rounds, list(runtimes), time.monotonic() - start
    )


def _latency_cell(stats: OpStats | None, op: str) -> str:
    if stats is None:
        return "-"
    if stats.only_unimplemented:
        return "unimplemented"
    ms = [s * 1000.0 for s in stats.samples]
    if not ms:
        word = "refused" if "websocket" in op else "failed"
        return f"{word} (all {stats.errors + stats.unimplemented} failed)"
    errors = stats.errors + stats.unimplemented
    return f"{len(ms):>3}  {percentile(ms, 0.5):8.2f}  {percentile(ms, 0.95):8.2f}  {errors:>3}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def _p(stats: OpStats | None, q: float) -> float | None:
    if stats is None or not stats.samples:
        return None
    return percentile(stats.samples, q)


def _rate_cell(rates: Rates | None, transport: str) -> str:
    if rates is None:
        return "-"
    values = rates.mb_s
    if not values:
        word = "refused" if transport != "spdy" else "failed"
        return f"{word} (all {rates.errors} failed)"
    return (
        f"{len(values):>3}  {percentile(values, 0.5):8.1f}  {min(values):8.1f}"
        f"  {max(values):8.1f}  {rates.errors:>3}"
    )


def _median_rate(rates: Rates | None) -> float | None:
    if rates is None or not rates.mb_s:
        return None
    return percentile(rates.mb_s, 0.5)


def format_tables(result: Result, workload: StreamingWorkload) -> str:
    """Latency rows (p50/p95 ms and the p50 ratio of the first runtime to the second), then
    port-forward throughput rows (MB/s and the median ratio), then the error messages."""
    rts = result.runtimes
    first, second = (rts[0], rts[1]) if len(rts) > 1 else (rts[0], None)
    ratio_head = f"{first.name}/{second.name}" if second is not None else ""
    lat_cols = f"{'n':>3}  {'p50 ms':>8}  {'p95 ms':>8}  {'err':>3}"
    rate_cols = f"{'n':>3}  {'MB/s p50':>8}  {'min':>8}  {'max':>8}  {'err':>3}"
    ops = [op for op in EXEC_OPS if any(op in rt.ops for rt in rts)]
    pf_ops = [pf_op(t) for t in TRANSPORTS]
    op_w = max(len("call"), *(len(o) for o in [*ops, *pf_ops]))
    lat_cells = {(rt.name, op): _latency_cell(rt.ops.get(op), op) for rt in rts for op in ops}
    rate_cells = {
        (rt.name, t): _rate_cell(workload.rates.get(rt.name, {}).get(t), t)
        for rt in rts
        for t in TRANSPORTS
    }
    group = max(
        len(lat_cols),
        len(rate_cols),
        *(len(rt.name) for rt in rts),
        *(len(c) for c in [*lat_cells.values(), *rate_cells.values()]),
    )

    def line(first_col: str, cells: Sequence[str], last: str) -> str:
        parts = [first_col.ljust(op_w), *(c.ljust(group) for c in cells)]
        if second is not None:
            parts.append(last)
        return " | ".join(parts).rstrip()

    rule = "-+-".join(["-" * op_w, *("-" * group for _ in rts), *(["-" * 18] if second else [])])
    lines = [
        f"workload {result.workload}: {result.description}; {result.rounds} rounds, "
        f"{result.seconds:.1f} s",
        *(f"  {rt.name}: {rt.endpoint} ({rt.version})" for rt in rts),
        "",
        line("call", [rt.name for rt in rts], f"ratio {ratio_head}"),
        line("", [lat_cols for _ in rts], "p50     p95"),
        rule,
    ]
    for op in ops:
        ratio = ""
        if second is not None:
            a, b = first.ops.get(op), second.ops.get(op)
            ratio = f"{_ratio(_p(a, 0.5), _p(b, 0.5)):<7} {_ratio(_p(a, 0.95), _p(b, 0.95))}"
        lines.append(line(op, [lat_cells[(rt.name, op)] for rt in rts], ratio))
    lines += [
        "",
        line(f"port-forward, {BIG_MIB} MiB", [rt.name for rt in rts], f"ratio {ratio_head}"),
        line("", [rate_cols for _ in rts], "median MB/s"),
        rule,
    ]
    for t, op in zip(TRANSPORTS, pf_ops, strict=True):
        ratio = ""
        if second is not None:
            ratio = _ratio(
                _median_rate(workload.rates.get(first.name, {}).get(t)),
                _median_rate(workload.rates.get(second.name, {}).get(t)),
            )
        lines.append(line(op, [rate_cells[(rt.name, t)] for rt in rts], ratio))
    names = [rt.name for rt in rts]
    if "crictld" in names and "containerd" in names:
        got = _ratio(
            _median_rate(workload.rates.get("crictld", {}).get("spdy")),
            _median_rate(workload.rates.get("containerd", {}).get("spdy")),
        )
        verdict = "-" if got == "-" else ("met" if float(got) >= 0.5 else "NOT met")
        lines += [
            "",
            f"goal: crictld's SPDY port-forward at least half of containerd's: {verdict} "
            f"(ratio {got})",
        ]
    notes = [
        f"  {rt.name} {op}: {message}"
        for rt in rts
        for op, stats in rt.ops.items()
        for message in stats.messages
    ]
    notes += [
        f"  {name} {pf_op(t)}: {message}"
        for name, per in workload.rates.items()
        for t, rates in per.items()
        for message in rates.messages
    ]
    if notes:
        lines += ["", "errors:", *notes]
    if workload.checks:
        lines += ["", "wrong answers (the call succeeded):", *(f"  {c}" for c in workload.checks)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.streaming",
        description="Exec latency and port-forward throughput through crictl, crictld next to "
        "containerd's CRI plugin.",
    )
    parser.add_argument("--rounds", type=int, default=30, help="exec rounds (30)")
    parser.add_argument(
        "--pf-rounds", type=int, default=3, help=f"{BIG_MIB} MiB downloads per port-forward (3)"
    )
    parser.add_argument(
        "--endpoint",
        action="append",
        type=parse_endpoint,
        default=[],
        metavar="NAME=ADDR",
        help="benchmark this running CRI endpoint instead of starting crictld and containerd "
        "(repeatable); it must pull from --registry",
    )
    parser.add_argument(
        "--registry", help="HOST:PORT of a registry with the fixture images (default: start one)"
    )
    parser.add_argument(
        "--pause-image", help="pause image to pull before the first round (REGISTRY/pause:3.10)"
    )
    parser.add_argument(
        "--image",
        help=f"container image (default REGISTRY/{BUSYBOX}); needs sleep, true, sh, dd, cat, httpd",
    )
    parser.add_argument(
        "--crictl", type=Path, help="crictl binary (default: cri-tools v1.37.0 in the cache)"
    )
    parser.add_argument("--workdir", type=Path, help="image build dir (default .cache/rig-images)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs of a clean run")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw figures to OUT")
    args = parser.parse_args(argv)
    if args.pf_rounds < 1:
        parser.error("--pf-rounds must be at least 1")
    crictl = args.crictl or cri_tools_dir() / "crictl"
    if not crictl.is_file():
        print(f"error: {crictl} not found (make test builds it)", file=sys.stderr)
        return 1
    if shutil.which("curl") is None:
        print("error: curl not found", file=sys.stderr)
        return 1

    began = time.monotonic()
    node: Node | None = None
    left: dict[str, list[str]] | None = None
    pod_logs = Path(tempfile.mkdtemp(prefix="crd-bench-podlogs-", dir="/tmp"))
    try:
        with (
            runtime_logs(args.keep_logs, "streaming") as (logs_dir, failed),
            local_registry(args.registry, args.workdir) as registry,
        ):
            pause = args.pause_image or pause_image(registry)
            image = args.image or busybox_image(registry)
            workload = StreamingWorkload(pause, image, crictl, pod_logs, args.pf_rounds)
            if args.endpoint:
                result = run(args.endpoint, workload, args.rounds)
            else:
                with local_node(registry, logs_dir) as node:
                    result = run(node.runtimes, workload, args.rounds)
                left = leftovers(node)
            dirty = left is not None and any(left.values())
            # a runtime refusing WebSocket (containerd: 403 on the upgrade) is expected
            messages = [m for rt in result.runtimes for s in rt.ops.values() for m in s.messages]
            messages += [
                m for per in workload.rates.values() for r in per.values() for m in r.messages
            ]
            errors = any(REFUSED not in m for m in messages)
            failed[0] = failed[0] or dirty or errors or bool(workload.checks)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(pod_logs, ignore_errors=True)

    print(format_tables(result, workload))
    if left is not None:
        print(
            "\nwhat the runtimes' teardown left on the machine (bridges, mounts, processes, dirs):"
        )
        for name, found in left.items():
            print(f"  {name}: {', '.join(found) if found else 'nothing'}")
        print("=> LEAKS FOUND" if dirty else "=> nothing left on the node by either runtime")
    if logs_dir.is_dir():
        print(f"\nruntime logs (crictld, both containerds) kept in {logs_dir}")
    print(f"\nwhole run, bring-up and teardown included: {time.monotonic() - began:.0f} s")
    if args.json:
        data = result.as_json()
        data["checks"] = workload.checks
        data["port_forward"] = {
            name: {t: rates.summary() for t, rates in per.items()}
            for name, per in workload.rates.items()
        }
        data["port_forward_file_bytes"] = BIG_BYTES
        data["left_on_node"] = left
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())
