"""containerd's own CRI plugin as the reference runtime: a second, private containerd.

    net = make_network(tmp / "cni")
    with Registry() as reg:
        push_images(reg.host, build_images(workdir))
        with ReferenceContainerd(net, reg.host) as ref:
            ...  # any CRI client on ref.endpoint

Everything it owns (root, state, sockets, config, log, the CRI plugin's netns and runc state)
lives under one short temp dir in /tmp (unix socket paths must stay under 108 bytes); its state
dir and runc's root are tmpfs mounts there, as /run is on a node. The CRI plugin is configured
for this machine and the test fixtures:

- `sandbox_image` is the local registry's `pause:3.10`;
- `restrict_oom_score_adj = true`: the daemons lack CAP_SYS_RESOURCE, so runc cannot lower a
  pod's oom_score_adj below containerd's own;
- CNI `bin_dir`/`conf_dir` come from the given `CniNetwork` (so NetworkReady is true);
- registry hosts come from `config_path` (hosts.toml per host): the local registry over plain
  HTTP, and optionally upstream hosts (`registry.k8s.io`...) mirrored to it.

On exit every pod it ran is stopped and removed through CRI, containerd gets SIGTERM (SIGKILL
after STOP_TIMEOUT), shims still serving it are killed, mounts left under the temp dir are
unmounted, the temp dir is deleted, and the network's bridge is deleted when no interface is
attached to it any more.

CLI (for poking at it by hand): `python -m tests.rig.reference --registry HOST:PORT` serves in
the foreground on a private CNI network until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType, TracebackType

import grpc

from crictl.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.rig.cni import CniNetwork, make_network

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
PAUSE_IMAGE = "pause:3.10"  # repository:tag in the local registry


class ReferenceError(Exception):
    """The reference containerd could not be started."""


def hosts_toml(server: str, mirror: str | None = None) -> str:
    """A containerd hosts.toml: pulls go to MIRROR (plain HTTP) if given, else to SERVER."""
    target = mirror or server
    return f"""server = "{server}"

[host."{target}"]
  capabilities = ["pull", "resolve"]
"""


def reference_config(
    directory: Path,
    network: CniNetwork,
    registry_host: str,
    *,
    cni_bin_dir: Path,
) -> str:
    """containerd config (version 2) with the CRI plugin enabled, everything under DIRECTORY.

    Keys checked against containerd v1.6.20's pkg/cri/config/config.go and config_unix.go.
    """
    return f"""version = 2
root = "{directory / "root"}"
state = "{directory / "state"}"
oom_score = 0

[grpc]
  address = "{directory / "containerd.sock"}"

[ttrpc]
  address = "{directory / "containerd.sock.ttrpc"}"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{directory / "opt"}"

[plugins."{CRI_PLUGIN}"]
  sandbox_image = "{registry_host}/{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  max_concurrent_downloads = 3

  [plugins."{CRI_PLUGIN}".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."{CRI_PLUGIN}".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."{CRI_PLUGIN}".containerd.runtimes.runc.options]
        Root = "{directory / "runc"}"
        SystemdCgroup = false

  [plugins."{CRI_PLUGIN}".cni]
    bin_dir = "{cni_bin_dir}"
    conf_dir = "{network.conf_dir}"
    max_conf_num = 1

  [plugins."{CRI_PLUGIN}".registry]
    config_path = "{directory / "certs.d"}"
"""


# containerd's state dir and runc's root, which a node keeps under /run (containerd's defaults:
# /run/containerd, /run/containerd/runc), each a tmpfs here as there; crictld's runc root is
# /run/containerd/runc too.
EPHEMERAL_DIRS = ("state", "runc")


def _host_dir(host: str) -> str:
    """containerd's directory name for HOST under config_path ("h:5000" -> "h_5000_")."""
    name, sep, port = host.rpartition(":")
    return f"{name}_{port}_" if sep and name else host


def mount_tmpfs(path: Path) -> None:
    """A tmpfs at PATH (a dir), private to root as /run's dirs are."""
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=0711", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )


def _mountpoints_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].replace("\\040", " ")
        if mountpoint.startswith(prefix):
            found.append(mountpoint)
    return found


def remove_tree(path: Path) -> None:
    """rm -rf PATH after unmounting, deepest first, whatever is still mounted below it."""
    for _ in range(3):
        mounts = _mountpoints_under(path)
        if not mounts:
            break
        for mountpoint in sorted(set(mounts), key=len, reverse=True):
            subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def _pids_with_arg(value: str) -> list[int]:
    """Processes whose command line holds VALUE as one argument (shims name their containerd)."""
    needle = value.encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in args:
            pids.append(int(entry.name))
    return pids


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    remaining = list(pids)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        remaining = [p for p in remaining if _alive(p)]
        if remaining:
            time.sleep(0.05)
    return remaining


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class ReferenceContainerd:
    """A private containerd with its CRI plugin enabled; a context manager.

    NETWORK supplies the CNI config (the caller owns its dirs); REGISTRY_HOST ("127.0.0.1:PORT")
    is the plain-HTTP registry holding the fixture images. MIRRORS are upstream hosts (e.g.
    "registry.k8s.io") whose pulls go to the local registry instead.
    """

    def __init__(
        self,
        network: CniNetwork,
        registry_host: str,
        *,
        mirrors: Sequence[str] = (),
        binary: str = "containerd",
        keep_dir_on_failure: bool = False,
    ) -> None:
        self.network = network
        self.registry_host = registry_host
        self.mirrors = tuple(mirrors)
        self.binary = binary
        self.keep_dir_on_failure = keep_dir_on_failure
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------------------- paths

    def _dir(self) -> Path:
        if self.directory is None:
            raise ReferenceError("reference containerd not started")
        return self.directory

    @property
    def socket(self) -> Path:
        return self._dir() / "containerd.sock"

    @property
    def address(self) -> str:
        """containerd's own gRPC address (a path), for containerd API clients and `ctr -a`."""
        return str(self.socket)

    @property
    def endpoint(self) -> str:
        """The CRI endpoint, for crictl's --runtime-endpoint/--image-endpoint."""
        return f"unix://{self.socket}"

    @property
    def config_path(self) -> Path:
        return self._dir() / "config.toml"

    @property
    def log_path(self) -> Path:
        return self._dir() / "containerd.log"

    @property
    def sandbox_image(self) -> str:
        return f"{self.registry_host}/{PAUSE_IMAGE}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, ReferenceError):
            return ""

    # ---------------------------------------------------------------------------- start

    def _cni_bin_dir(self) -> Path:
        # containerd 1.6 takes a single bin_dir: the first one holding the plugins we use.
        for d in self.network.bin_dirs:
            if all((d / p).exists() for p in ("bridge", "host-local", "loopback", "portmap")):
                return d
        raise ReferenceError(f"no CNI plugin dir with bridge/host-local in {self.network.bin_dirs}")

    def _write_config(self, directory: Path) -> None:
        config = reference_config(
            directory, self.network, self.registry_host, cni_bin_dir=self._cni_bin_dir()
        )
        (directory / "config.toml").write_text(config)
        certs = directory / "certs.d"
        local = f"http://{self.registry_host}"
        (certs / _host_dir(self.registry_host)).mkdir(parents=True)
        (certs / _host_dir(self.registry_host) / "hosts.toml").write_text(hosts_toml(local))
        for upstream in self.mirrors:
            (certs / _host_dir(upstream)).mkdir(parents=True, exist_ok=True)
            (certs / _host_dir(upstream) / "hosts.toml").write_text(
                hosts_toml(f"https://{upstream}", local)
            )

    def start(self) -> ReferenceContainerd:
        if self.process is not None:
            raise ReferenceError("already started")
        directory = Path(tempfile.mkdtemp(prefix="crd-ref-", dir="/tmp"))
        directory.chmod(0o711)
        self.directory = directory
        if len(str(self.socket) + ".ttrpc") >= 108:
            raise ReferenceError(f"socket path too long: {self.socket}")
        for ephemeral in EPHEMERAL_DIRS:
            (directory / ephemeral).mkdir(mode=0o711)
            mount_tmpfs(directory / ephemeral)
        self._write_config(directory)
        self._spawn()
        self._wait_ready()
        return self

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )

    def restart(self, wait: bool = True) -> None:
        """Kills containerd (SIGKILL: a crash) and starts it again on the same directories; its
        shims, and so its pods' tasks, keep running. WAIT: until its CRI is ready."""
        proc = self.process
        if proc is None:
            raise ReferenceError("reference containerd not started")
        proc.kill()
        proc.wait()
        self._spawn()
        if wait:
            self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ReferenceError(
                    f"containerd exited with {self.process.returncode} at start:\n"
                    + self.log_tail()
                )
            if self.socket.exists():
                try:
                    status = self.status(timeout=2.0)
                    conditions = {c.type: c.status for c in status.status.conditions}
                    if conditions.get("RuntimeReady") and conditions.get("NetworkReady"):
                        return
                    last = f"not ready: {conditions}"
                except grpc.RpcError as e:
                    last = f"{e.code()}: {e.details()}"
            time.sleep(0.1)
        raise ReferenceError(
            f"containerd's CRI did not become ready in {START_TIMEOUT}s ({last}):\n"
            + self.log_tail()
        )

    # ---------------------------------------------------------------------------- CRI

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.endpoint)

    def status(self, timeout: float = 5.0) -> api_pb2.StatusResponse:
        with self.channel() as channel:
            stub = api_pb2_grpc.RuntimeServiceStub(channel)
            return stub.Status(api_pb2.StatusRequest(verbose=False), timeout=timeout)

    def remove_all_pods(self, timeout: float = 60.0) -> list[str]:
        """Stops and removes every pod sandbox (and so its containers); returns problems seen."""
        problems: list[str] = []
        with self.channel() as channel:
            rt = api_pb2_grpc.RuntimeServiceStub(channel)
            try:
                containers = rt.ListContainers(
                    api_pb2.ListContainersRequest(), timeout=10
                ).containers
                for c in containers:
                    with contextlib.suppress(grpc.RpcError):
                        rt.StopContainer(
                            api_pb2.StopContainerRequest(container_id=c.id, timeout=0),
                            timeout=timeout,
                        )
                pods = rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items
            except grpc.RpcError as e:
                return [f"list: {e.code()}: {e.details()}"]
            for pod in pods:
                try:
                    rt.StopPodSandbox(
                        api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=timeout
                    )
                    rt.RemovePodSandbox(
                        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=timeout
                    )
                except grpc.RpcError as e:
                    problems.append(f"{pod.id[:12]}: {e.code()}: {e.details()}")
            # Containers whose pod is already gone, if any.
            with contextlib.suppress(grpc.RpcError):
                for c in rt.ListContainers(api_pb2.ListContainersRequest(), timeout=10).containers:
                    rt.RemoveContainer(
                        api_pb2.RemoveContainerRequest(container_id=c.id), timeout=timeout
                    )
        return problems

    def crictl(
        self, crictl_bin: Path, *args: str, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Runs cri-tools' crictl against this runtime (both endpoints)."""
        return subprocess.run(
            [
                str(crictl_bin),
                "--runtime-endpoint",
                self.endpoint,
                "--image-endpoint",
                self.endpoint,
                "--timeout",
                "60s",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # ---------------------------------------------------------------------------- stop

    def stop(self) -> list[str]:
        """Tears everything down; returns the problems met (cleaned up as far as possible)."""
        problems: list[str] = []
        directory = self.directory
        if directory is None:
            return problems
        proc = self.process
        if proc is not None and proc.poll() is None and self.socket.exists():
            try:
                problems += self.remove_all_pods()
            except Exception as e:  # cleanup goes on whatever happens
                problems.append(f"remove pods: {e}")
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append("containerd ignored SIGTERM: killed")
                proc.kill()
                proc.wait()
        self.process = None
        # Shims of containers that could not be removed still serve this containerd.
        shims = _pids_with_arg(str(self.socket))
        if shims:
            problems.append(f"shims left behind: {shims}: killed")
            for pid in shims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_gone(shims, STOP_TIMEOUT)
        if self.keep_dir_on_failure and problems:
            for mountpoint in sorted(_mountpoints_under(directory), key=len, reverse=True):
                subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
        else:
            remove_tree(directory)
            self.directory = None
        self._remove_idle_bridge()
        return problems

    def _remove_idle_bridge(self) -> None:
        brif = Path("/sys/class/net") / self.network.bridge / "brif"
        with contextlib.suppress(OSError):
            if brif.is_dir() and not any(brif.iterdir()):
                self.network.remove()

    def __enter__(self) -> ReferenceContainerd:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        problems = self.stop()
        if problems:
            print("reference containerd teardown: " + "; ".join(problems), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.rig.reference",
        description="Run containerd's CRI plugin privately in the foreground until Ctrl-C.",
    )
    parser.add_argument("--registry", required=True, help="HOST:PORT of the fixture registry")
    parser.add_argument(
        "--mirror", action="append", default=[], help="upstream host to mirror (repeatable)"
    )
    args = parser.parse_args(argv)
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cni_root = Path(tempfile.mkdtemp(prefix="crd-refnet-", dir="/tmp"))
    network = make_network(cni_root / "cni")
    try:
        with ReferenceContainerd(network, args.registry, mirrors=args.mirror) as ref:
            print(f"CRI endpoint {ref.endpoint} (log {ref.log_path}); Ctrl-C stops it", flush=True)
            while not stop:
                if ref.process is None or ref.process.poll() is not None:
                    print(f"containerd exited:\n{ref.log_tail()}", file=sys.stderr)
                    return 1
                time.sleep(0.5)
    except ReferenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        network.remove()
        shutil.rmtree(cni_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
