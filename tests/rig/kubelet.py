"""A real kubelet (v1.34, built by hack/install-kubelet.sh) run standalone against a crictld.

No API server: pods are static pods, manifests written into a directory kubelet watches, and
their status is read from kubelet's own HTTPS server (`/pods` carries static pods' statuses in
standalone mode). Everything kubelet keeps is under one directory (config, manifests, root dir,
certificates, pod logs); ports are free ones on 127.0.0.1. What kubelet changes on the host
besides is undone by cleanup(): the sysctls it sets at start (saved before), the iptables chains
and rules it adds (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY, KUBE-FIREWALL with INPUT and OUTPUT
jumps to it), its device plugin socket under /var/lib/kubelet and its /var/log/containers links.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crictl.streaming import spdy
from tests.rig.daemon import REPO

Json = dict[str, Any]

# What kubelet's setupKernelTunables writes (pkg/kubelet/cm/container_manager_linux.go).
KERNEL_TUNABLES = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)


def kubelet_bin() -> Path:
    """kubelet built from the Go module proxy, cached between runs (hack/install-kubelet.sh)."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "install-kubelet.sh")],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/local/go/bin"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"hack/install-kubelet.sh failed:\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip()) / "kubelet"


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls(names: Iterable[str] = KERNEL_TUNABLES) -> dict[str, str]:
    return {n: _sysctl_path(n).read_text().strip() for n in names if _sysctl_path(n).exists()}


def write_sysctls(values: Mapping[str, str]) -> None:
    for name, value in values.items():
        path = _sysctl_path(name)
        if path.read_text().strip() != value:
            path.write_text(value + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _iptables_rules() -> set[tuple[str, str, str]]:
    """(tool, table, rule) for every chain and rule iptables and ip6tables hold that names a
    KUBE-* chain (`iptables -S` form: "-N KUBE-X", "-A INPUT -j KUBE-X")."""
    found = set()
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("mangle", "filter", "nat"):
            out = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True)
            for line in out.stdout.splitlines():
                if "KUBE-" in line and line.startswith(("-N ", "-A ")):
                    found.add((tool, table, line))
    return found


def _undo_iptables(added: set[tuple[str, str, str]]) -> None:
    """Deletes the rules, then the chains, that kubelet added."""
    for tool, table, line in sorted(added):
        if line.startswith("-A "):
            args = shlex.split(line)
            subprocess.run([tool, "-t", table, "-D", *args[1:]], capture_output=True, check=False)
    for tool, table, line in sorted(added):
        if line.startswith("-N "):
            chain = line.split()[1]
            subprocess.run([tool, "-t", table, "-F", chain], capture_output=True, check=False)
            subprocess.run([tool, "-t", table, "-X", chain], capture_output=True, check=False)


# Host paths kubelet writes whatever its --root-dir: the device plugin socket's directory
# (v1beta1.DevicePluginPath) and the /var/log/containers symlinks to its pods' logs.
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
CONTAINER_LOG_LINKS = Path("/var/log/containers")


def unmount_below(path: Path) -> None:
    """Lazily unmounts every mount point below `path`, deepest first."""
    prefix = str(path) + "/"
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]
    for mountpoint in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)


@dataclass
class Kubelet:
    """One standalone kubelet; start() and stop() may be called more than once."""

    binary: Path
    root: Path  # everything kubelet writes lives below it
    runtime_endpoint: str  # unix://... of the crictld it drives
    node_name: str = "crictld-node"
    verbosity: int = 2
    feature_gates: dict[str, bool] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    healthz_port: int = 0
    _saved_sysctls: dict[str, str] | None = None
    _iptables_before: set[tuple[str, str, str]] = field(default_factory=set)
    _dirs_before: set[Path] = field(default_factory=set)
    _log_paths: list[Path] = field(default_factory=list)

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def root_dir(self) -> Path:
        return self.root / "root"

    @property
    def pod_logs_dir(self) -> Path:
        return self.root / "pod-logs"

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def config(self) -> Json:
        """The KubeletConfiguration (kubelet.config.k8s.io/v1beta1), as JSON (YAML's subset)."""
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "staticPodPath": str(self.manifests),
            "syncFrequency": "1s",
            "fileCheckFrequency": "1s",
            "address": "127.0.0.1",
            "port": self.port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "protectKernelDefaults": False,
            "containerRuntimeEndpoint": self.runtime_endpoint,
            "imageServiceEndpoint": self.runtime_endpoint,
            "serializeImagePulls": False,
            "podLogsDir": str(self.pod_logs_dir),
            # A small test disk must neither evict pods nor collect the run's shared images.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
                "imagefs.inodesFree": "1%",
            },
            # Small enough for a test to see kubelet rotate a log (and call ReopenContainerLog)
            # within seconds; the long-lived pods' few bytes a second never reach it.
            "containerLogMaxSize": "64Ki",
            "containerLogMaxFiles": 3,
            "containerLogMonitorInterval": "3s",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "/etc/resolv.conf",
            **({"featureGates": self.feature_gates} if self.feature_gates else {}),
        }

    def command(self) -> list[str]:
        return [
            str(self.binary),
            f"--config={self.config_path}",
            f"--root-dir={self.root_dir}",
            f"--cert-dir={self.root / 'pki'}",
            f"--hostname-override={self.node_name}",
            f"--v={self.verbosity}",
        ]

    # ---------------------------------------------------------------------------------------
    # Lifecycle

    def start(self, timeout: float = 60.0) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        for d in (self.manifests, self.root_dir, self.pod_logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self._saved_sysctls is None:
            self._saved_sysctls = read_sysctls()
            self._iptables_before = _iptables_rules()
            self._dirs_before = {
                p
                for p in (DEVICE_PLUGINS.parent, DEVICE_PLUGINS, CONTAINER_LOG_LINKS)
                if p.exists()
            }
        if not self.port:
            self.port, self.healthz_port = free_port(), free_port()
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        log_path = self.root / f"kubelet{len(self._log_paths)}.log"
        self._log_paths.append(log_path)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"kubelet exited with {self.process.returncode}:\n{self.log()[-6000:]}"
                )
            if self.healthy() and self._serves():
                return
            time.sleep(0.2)
        raise TimeoutError(f"kubelet not healthy in {timeout}s:\n{self.log()[-6000:]}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=2
            ) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _serves(self) -> bool:
        try:
            self.get("/pods", timeout=2)
            return True
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (SIGKILL after `timeout`); the pods it ran are left to the runtime."""
        code = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait(timeout=10)
        return code

    def cleanup(self) -> None:
        """Stops kubelet, restores the host's sysctls, removes the iptables rules and chains
        kubelet added, its device plugin socket, its /var/log/containers links (and those
        directories if it made them), and its mounts and root dir."""
        self.stop()
        if self._saved_sysctls is not None:
            write_sysctls(self._saved_sysctls)
        _undo_iptables(_iptables_rules() - self._iptables_before)
        with contextlib.suppress(FileNotFoundError):
            (DEVICE_PLUGINS / "kubelet.sock").unlink()
        if CONTAINER_LOG_LINKS.is_dir():
            for link in CONTAINER_LOG_LINKS.iterdir():
                if link.is_symlink() and os.readlink(link).startswith(str(self.root) + "/"):
                    link.unlink()
        for d in (DEVICE_PLUGINS, DEVICE_PLUGINS.parent, CONTAINER_LOG_LINKS):
            if d not in self._dirs_before:
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if kubelet made it and left it empty
        unmount_below(self.root)
        shutil.rmtree(self.root_dir, ignore_errors=True)

    # ---------------------------------------------------------------------------------------
    # Static pods

    def pod_name(self, name: str) -> str:
        """The name kubelet gives a static pod: its manifest's name and the node's."""
        return f"{name}-{self.node_name}"

    def write_manifest(self, pod: Json) -> Path:
        """Writes a pod manifest atomically (kubelet ignores dot files while it is written)."""
        name = pod["metadata"]["name"]
        pod = {"apiVersion": "v1", "kind": "Pod", **pod}
        pod["metadata"] = {"namespace": "default", **pod["metadata"]}
        tmp = self.manifests / f".{name}.json.tmp"
        tmp.write_text(json.dumps(pod, indent=2))
        path = self.manifests / f"{name}.json"
        tmp.rename(path)
        return path

    def remove_manifest(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.manifests / f"{name}.json").unlink()

    def manifest_names(self) -> list[str]:
        return sorted(p.name.removesuffix(".json") for p in self.manifests.glob("*.json"))

    # ---------------------------------------------------------------------------------------
    # kubelet's server (HTTPS, self-signed; anonymous with AlwaysAllow)

    @staticmethod
    def tls() -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def get(self, path: str, timeout: float = 10.0) -> bytes:
        with urllib.request.urlopen(self.base_url + path, timeout=timeout, context=self.tls()) as r:
            body: bytes = r.read()
            return body

    def pods(self) -> list[Json]:
        items: list[Json] = json.loads(self.get("/pods"))["items"] or []
        return items

    def pod(self, name: str, namespace: str = "default") -> Json | None:
        full = self.pod_name(name)
        for p in self.pods():
            if p["metadata"]["name"] == full and p["metadata"]["namespace"] == namespace:
                return p
        return None

    def wait_pod(
        self,
        name: str,
        what: str,
        predicate: Callable[[Json], bool],
        timeout: float = 60.0,
        namespace: str = "default",
    ) -> Json:
        """Polls /pods until the static pod `name` satisfies `predicate`; fails saying `what`
        was awaited, with the pod's last status and the tail of kubelet's log."""
        deadline = time.monotonic() + timeout
        last: Json | None = None
        while True:
            last = self.pod(name, namespace)
            if last is not None:
                with contextlib.suppress(KeyError, IndexError, TypeError):
                    if predicate(last):
                        return last
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        status = json.dumps(last.get("status") if last else None, indent=1)[-4000:]
        raise AssertionError(
            f"pod {name}: {what} not seen in {timeout}s; last status:\n{status}\n"
            f"kubelet log (errors):\n" + "\n".join(self.errors()[-30:])
        )

    def wait_gone(self, name: str, timeout: float = 60.0, namespace: str = "default") -> None:
        deadline = time.monotonic() + timeout
        while self.pod(name, namespace) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"pod {name} still known to kubelet after {timeout}s")
            time.sleep(0.25)

    def wait_phase(self, name: str, phase: str, timeout: float = 60.0) -> Json:
        return self.wait_pod(
            name, f"phase {phase}", lambda p: p["status"].get("phase") == phase, timeout
        )

    def wait_running(self, name: str, timeout: float = 60.0) -> Json:
        """Phase Running with every container running."""

        def running(p: Json) -> bool:
            statuses = p["status"].get("containerStatuses") or []
            return (
                p["status"].get("phase") == "Running"
                and bool(statuses)
                and all("running" in c["state"] for c in statuses)
            )

        return self.wait_pod(name, "phase Running with every container running", running, timeout)

    def container_logs(
        self, name: str, container: str, namespace: str = "default", **params: str
    ) -> str:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        path = f"/containerLogs/{namespace}/{self.pod_name(name)}/{container}{query}"
        return self.get(path).decode(errors="replace")

    def stats_summary(self) -> Json:
        summary: Json = json.loads(self.get("/stats/summary"))
        return summary

    # ---------------------------------------------------------------------------------------
    # Streaming through kubelet (it proxies the upgrade to the runtime's streaming server)

    def stream(self, path: str, protocol: str) -> KubeletStream:
        return KubeletStream(self.port, path, protocol)

    def exec(
        self, name: str, container: str, command: list[str], namespace: str = "default"
    ) -> ExecResult:
        query = urllib.parse.urlencode(
            [("command", c) for c in command] + [("output", "1"), ("error", "1")]
        )
        s = self.stream(
            f"/exec/{namespace}/{self.pod_name(name)}/{container}?{query}", "v4.channel.k8s.io"
        )
        try:
            if s.status != 101:
                return ExecResult(s.status, b"", b"", s.head.decode(errors="replace"))
            error = s.open(streamtype="error")
            stdout = s.open(streamtype="stdout")
            stderr = s.open(streamtype="stderr")
            got = s.collect({error, stdout, stderr}, until_closed={error})
            return ExecResult(101, got[stdout], got[stderr], got[error].decode(errors="replace"))
        finally:
            s.close()

    # ---------------------------------------------------------------------------------------
    # kubelet's log

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self._log_paths if p.exists())

    def errors(self) -> list[str]:
        """klog's error lines (`E0102 15:04:05.000000 ...`)."""
        return [line for line in self.log().splitlines() if re.match(r"E\d{4} ", line)]


@dataclass
class ExecResult:
    status: int  # the HTTP status of the upgrade (101)
    stdout: bytes
    stderr: bytes
    error: str  # v4's JSON Status on the error stream ('' or Success on exit 0)

    @property
    def exit_code(self) -> int | None:
        if not self.error:
            return 0
        status = json.loads(self.error)
        if status.get("status") == "Success":
            return 0
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
        return None


class KubeletStream:
    """A blocking SPDY/3.1 client on TLS to kubelet's server: what kubectl's exec, attach and
    port-forward speak (kubelet hands the upgraded connection through to the runtime)."""

    def __init__(self, port: int, path: str, protocol: str, timeout: float = 20.0) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = Kubelet.tls().wrap_socket(raw, server_hostname="127.0.0.1")
        self.sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
                f"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
        self.status = int(status_line[1]) if len(status_line) > 1 else 0
        self.head, _, self.pending = head.partition(b"\r\n\r\n")
        self.encoder = spdy.Encoder()
        self.decoder = spdy.Decoder()
        self.next_id = 1

    def open(self, **headers: str) -> int:
        sid = self.next_id
        self.next_id += 2
        self.sock.sendall(self.encoder.encode(spdy.SynStream(sid, headers)))
        return sid

    def send(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        self.sock.sendall(self.encoder.encode(spdy.DataFrame(stream_id, data, fin)))

    def frames(self) -> list[spdy.Frame]:
        """The next frames the server sends ([] once it closed)."""
        data, self.pending = self.pending, b""
        while True:
            frames = self.decoder.feed(data) if data else []
            if frames:
                return frames
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLError, ConnectionError):
                return []
            if not data:
                return []

    def collect(
        self,
        streams: set[int],
        until_closed: set[int] | None = None,
        until: Callable[[dict[int, bytes]], bool] | None = None,
    ) -> dict[int, bytes]:
        """Data received on `streams` until each of `until_closed` was closed by the server
        (FIN or reset), `until` holds, or the connection ends."""
        got = {s: b"" for s in streams}
        waiting = set(until_closed or ())
        while waiting or until is not None:
            frames = self.frames()
            if not frames:
                break
            for f in frames:
                if isinstance(f, spdy.DataFrame) and f.stream_id in got:
                    got[f.stream_id] += f.data
                if isinstance(f, (spdy.DataFrame, spdy.SynReply, spdy.Headers)) and f.fin:
                    waiting.discard(f.stream_id)
                if isinstance(f, spdy.RstStream):
                    waiting.discard(f.stream_id)
            if until is not None and until(got):
                break
            if until is None and not waiting:
                break
        return got

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
