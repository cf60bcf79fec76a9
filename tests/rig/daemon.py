"""Real crictld daemons for integration tests: a subprocess per daemon, own state dir and socket.

`crictl` (cri-tools) is the client, exactly as operators and CI use it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from crictl.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


@dataclass
class CrictlResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Daemon:
    """One `crictld serve` process; start() and stop() may be called repeatedly."""

    state_dir: Path
    socket: Path
    crictl_bin: Path
    cni_conf_dir: Path
    cni_bin_dirs: list[Path]
    containerd: str  # an address, or "managed"
    namespace: str = "crictld"
    extra_args: list[str] = field(default_factory=list)
    # How crictld is started: the repo's code by default; a command such as an installed
    # wheel's `crictld` (then run outside the repo, so the repo's package is not imported).
    program: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def containerd_address(self) -> str:
        """The socket the daemon talks to (a managed containerd's lives in the state dir)."""
        if self.containerd == "managed":
            return str(self.state_dir / "containerd" / "containerd.sock")
        return self.containerd

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        cmd = [
            *(self.program or [sys.executable, "-m", "crictl.cli"]),
            "serve",
            "--state-dir",
            str(self.state_dir),
            "--socket",
            str(self.socket),
            "--containerd",
            self.containerd,
            "--containerd-namespace",
            self.namespace,
            "--cni-conf-dir",
            str(self.cni_conf_dir),
            "--netns-dir",
            str(self.state_dir.parent / "netns"),
            "--log-level",
            "DEBUG",
        ]
        for d in self.cni_bin_dirs:
            cmd += ["--cni-bin-dir", str(d)]
        return cmd + self.extra_args

    def start(self, wait: bool = True) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        n = len(list(self.state_dir.parent.glob("crictld*.log")))
        self.log_path = self.state_dir.parent / f"crictld{n}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO if self.program is None else self.state_dir.parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"crictld exited with {self.process.returncode}:\n{self.log()}")
            if self.socket.exists():
                try:
                    self.version()
                    return
                except grpc.RpcError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"crictld did not answer in {timeout}s:\n{self.log()}")

    def version(self, timeout: float = 2.0) -> api_pb2.VersionResponse:
        with grpc.insecure_channel(self.endpoint) as channel:
            stub = api_pb2_grpc.RuntimeServiceStub(channel)
            return stub.Version(api_pb2.VersionRequest(), timeout=timeout)

    def status(self, timeout: float = 5.0) -> api_pb2.StatusResponse:
        with grpc.insecure_channel(self.endpoint) as channel:
            stub = api_pb2_grpc.RuntimeServiceStub(channel)
            return stub.Status(api_pb2.StatusRequest(verbose=True), timeout=timeout)

    def image_call(self, method: str, request: Any, timeout: float = 120.0) -> Any:
        """One ImageService RPC, e.g. image_call("PullImage", api_pb2.PullImageRequest(...))."""
        with grpc.insecure_channel(self.endpoint) as channel:
            stub = api_pb2_grpc.ImageServiceStub(channel)
            return getattr(stub, method)(request, timeout=timeout)

    def runtime_call(self, method: str, request: Any, timeout: float = 120.0) -> Any:
        with grpc.insecure_channel(self.endpoint) as channel:
            stub = api_pb2_grpc.RuntimeServiceStub(channel)
            return getattr(stub, method)(request, timeout=timeout)

    def runtime_stream(self, method: str, request: Any, timeout: float = 120.0) -> list[Any]:
        """Every message of a server-streaming RuntimeService RPC."""
        with grpc.insecure_channel(self.endpoint) as channel:
            stub = api_pb2_grpc.RuntimeServiceStub(channel)
            return list(getattr(stub, method)(request, timeout=timeout))

    def crictl(self, *args: str, timeout: float = 60.0) -> CrictlResult:
        proc = subprocess.run(
            [
                str(self.crictl_bin),
                "--runtime-endpoint",
                self.endpoint,
                "--image-endpoint",
                self.endpoint,
                "--timeout",
                "30s",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CrictlResult(proc.returncode, proc.stdout, proc.stderr)

    def signal(self, sig: signal.Signals) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        return self.signal(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def call_lines(self, rpc: str, timeout: float = 10) -> list[dict[str, Any]]:
        """The daemon's "cri call" lines for method `rpc` (e.g. "RemovePodSandbox"), in file
        order, once there is one: a call's line is written on the loop's turn after its answer
        went to grpc, so it can land a moment after the client has the answer."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            whole = text[: text.rfind("\n") + 1]  # not a line being written as we read
            lines = [json.loads(line) for line in whole.splitlines() if '"cri call"' in line]
            found = [c for c in lines if c["rpc"].rsplit("/", 1)[-1] == rpc]
            if found or time.monotonic() > deadline:
                assert found, f"no {rpc} line in the log: {self.log()[-2000:]}"
                return found
            time.sleep(0.02)

    def sql(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crictl.cli", "sql", "--state-dir", str(self.state_dir), *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )


def crictl_bin() -> Path:
    """crictl built from the Go module proxy, cached between runs (hack/install-cri-tools.sh)."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "install-cri-tools.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
        env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/local/go/bin"},
    )
    return Path(out.stdout.strip())


def which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: run hack/install-deps.sh")
    return path
