"""Bringing the benchmarked runtimes up, and down, for one run (shared by every workload).

    with local_registry(None, None) as registry:       # fixture images on a free port
        with local_node(registry) as node:              # crictld + containerd's CRI
            run_workload(workload, node.runtimes, rounds)
    print(leftovers(node))                              # what teardown left on the machine

- `local_registry`: a docker-registry on a free 127.0.0.1 port with the fixture images pushed
  (tests.rig.registry / tests.rig.images), or the registry given.
- `local_node`: containerd's CRI plugin as the reference (tests.rig.reference) and a crictld
  daemon owning a private managed containerd (tests.rig.daemon), each on its own CNI network
  (tests.rig.cni), both with the registry's `pause:3.10` as their pause image. Everything lives
  under temp dirs in /tmp that are removed on exit, after the logs were copied to LOGS_DIR if
  one is given. What a node keeps under /run is on a tmpfs for both: the reference's state dir
  and runc root, crictld's managed containerd's state dir and, where /run is not a tmpfs (this
  VM's is a disk's), its runc root (`/run/containerd/runc/crictld`, mounted for the run).
  The yielded `Node` names, for each runtime, its containerd (address and namespace), netns
  dir, CNI network and logs, so a workload can count what pods hold.
- `local_runtimes`: the same, yielding just the `Runtime`s (what benchmarks.images uses).
- `leftovers(node)`: after `local_node` exited, what is still on the machine from the run;
  `format_teardown` prints it, `write_figures` writes a run's raw figures with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.cri_bench import BenchError, Runtime

if TYPE_CHECKING:
    from tests.rig.cni import CniNetwork
    from tests.rig.images import FixtureImage

PAUSE_IMAGE = "pause:3.10"  # repository:tag in the registry
REFERENCE_NAMESPACE = "k8s.io"  # containerd's CRI plugin keeps everything there


def pause_image(registry: str) -> str:
    return f"{registry}/{PAUSE_IMAGE}"


def cri_tools_dir() -> Path:
    cache = os.environ.get("CRICTLD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "crictld"
    )
    return Path(cache) / "cri-tools-v1.37.0"


@contextlib.contextmanager
def local_registry(registry: str | None, workdir: Path | None) -> Iterator[str]:
    """REGISTRY as given, or a fresh local registry holding the fixture images."""
    if registry:
        yield registry
        return
    from tests.rig.images import DEFAULT_WORKDIR, build_images, default_busybox, push_images
    from tests.rig.registry import Registry

    with Registry() as reg:
        images = build_images(workdir or DEFAULT_WORKDIR)
        print(
            f"registry {reg.host}: pushing {fixtures_line(images, default_busybox())}",
            file=sys.stderr,
        )
        push_images(reg.host, images)
        yield reg.host


def fixtures_line(images: Sequence[FixtureImage], busybox: Path) -> str:
    """Which fixture images a run pulls: runs whose lines differ do not compare (a worktree
    without the checkout's `.cache/busybox` builds its images from /bin/busybox, a smaller
    layer: every pull of both runtimes is faster)."""
    layers = {
        layer.descriptor.digest: layer.descriptor.size
        for image in images
        for manifest in image.manifests
        for layer in manifest.layers
    }
    busybox_layer = next(
        (
            image.manifests[0].layers[0].descriptor
            for image in images
            if image.repository == "e2e-test-images/busybox"
        ),
        None,
    )
    first = f", busybox's {busybox_layer.digest[7:19]}" if busybox_layer else ""
    return (
        f"the fixture images (busybox from {busybox}; {len(layers)} layers, "
        f"{sum(layers.values()) / (1 << 20):.1f} MiB{first})"
    )


@dataclass
class Target:
    """One runtime brought up by `local_node`, and where what its pods hold lives."""

    runtime: Runtime
    containerd_address: str  # containerd's own gRPC socket (a path)
    namespace: str  # the containerd namespace its containers live in
    netns_dir: Path  # where it mounts pod network namespaces
    network: CniNetwork  # its private CNI network (bridge, subnet, IPAM dir)
    root: Path  # every file of this runtime lives under here (removed on exit)
    logs: dict[str, Path] = field(default_factory=dict)  # name in LOGS_DIR -> live path
    crictld_log: Path | None = None  # crictld's own log (one JSON line per CRI call)
    # kills its CRI server (SIGKILL) and starts it again, returning once the new process runs
    restart: Callable[[], None] | None = None


@dataclass
class Node:
    """What `local_node` brought up."""

    registry: str
    pause_image: str
    workdir: Path
    targets: list[Target] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # met while tearing down
    logs_dir: Path | None = None

    @property
    def runtimes(self) -> list[Runtime]:
        return [t.runtime for t in self.targets]

    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.runtime.name == name:
                return t
        raise KeyError(name)


def _copy_logs(target: Target, logs_dir: Path | None) -> None:
    if logs_dir is None:
        return
    logs_dir.mkdir(parents=True, exist_ok=True)
    for name, path in target.logs.items():
        with contextlib.suppress(OSError):
            shutil.copyfile(path, logs_dir / name)


def _cgroups_of_children(parents: list[int]) -> set[Path]:
    """The cgroup dirs (every hierarchy's) of the processes whose parent is in PARENTS and
    whose cgroup is named by a container id: a shim's containers, whose cgroups runc would
    have removed at their tasks' deletion (not its loggers, which stay in crictld's)."""
    dirs: set[Path] = set()
    for pid in all_pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) not in parents:
                continue
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except (OSError, ValueError):
            continue
        for line in lines:
            _, hierarchy, path = line.split(":", 2)
            name = hierarchy.removeprefix("name=") or "unified"
            if re.fullmatch(r"[0-9a-f]{64}", path.rsplit("/", 1)[-1]):
                dirs.add(Path("/sys/fs/cgroup", name, path.lstrip("/")))
    return dirs


def _remove_cgroups(dirs: set[Path], timeout: float = 5.0) -> None:
    """Removes DIRS once their killed processes have left them (rmdir fails until then)."""
    deadline = time.monotonic() + timeout
    while dirs and time.monotonic() < deadline:
        for d in list(dirs):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue
            dirs.discard(d)
        if dirs:
            time.sleep(0.05)


# ------------------------------------------------------------------------------------------
# A runtime's processes


@dataclass
class Processes:
    """One runtime's own processes, on which its memory and CPU are counted: its daemons by
    label, and its containerd's address (its shims carry `-address <it>`), if known."""

    daemons: dict[str, int] = field(default_factory=dict)  # label -> pid
    containerd_address: str | None = None


def cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def pids_with_args(*values: str) -> list[int]:
    """Processes holding every one of VALUES as a whole argument."""
    needles = [v.encode() for v in values]
    found = []
    for pid in all_pids():
        args = cmdline(pid)
        if pid != os.getpid() and all(n in args for n in needles):
            found.append(pid)
    return found


def local_processes(target: Target) -> Processes:
    """A `local_node` runtime's processes: its containerd (started with `--config <dir of its
    socket>/config.toml`) and, for crictld, the `serve` process given its socket."""
    out = Processes(containerd_address=target.containerd_address)
    config = str(Path(target.containerd_address).parent / "config.toml")
    if target.runtime.name == "crictld":
        socket = target.runtime.endpoint.removeprefix("unix://")
        for pid in pids_with_args("serve", socket):
            out.daemons["crictld daemon"] = pid
        for pid in pids_with_args("--config", config):
            out.daemons["managed containerd"] = pid
    else:
        for pid in pids_with_args("--config", config):
            out.daemons["containerd (CRI plugin)"] = pid
    return out


@contextlib.contextmanager
def local_node(
    registry: str, logs_dir: Path | None = None, mirrors: Sequence[str] = ()
) -> Iterator[Node]:
    """crictld (with a private managed containerd) and containerd's CRI plugin, both pulling
    from REGISTRY, each on its own CNI network; everything is removed on exit, the runtimes'
    logs first copied to LOGS_DIR if given. Pulls from the upstream hosts in MIRRORS
    (`registry.k8s.io`...) go to REGISTRY too, on both runtimes."""
    from crictl.containerd.managed import ManagedContainerd
    from crictl.containerd.runc import RUNC_ROOT
    from tests.rig.cni import make_network
    from tests.rig.daemon import Daemon
    from tests.rig.reference import ReferenceContainerd, mount_tmpfs, remove_tree
    from tests.rig.shims import kill_shims

    if os.geteuid() != 0:
        raise BenchError("starting the runtimes needs root (containerd, runc, CNI)")
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="crd-bench-", dir="/tmp"))
        stack.callback(remove_tree, tmp)
        node = Node(registry, pause_image(registry), tmp, logs_dir=logs_dir)

        ref_net = make_network(tmp / "cni-ref")
        stack.callback(ref_net.remove)
        reference = ReferenceContainerd(ref_net, registry, mirrors=mirrors)
        try:
            reference.start()
        except BaseException:
            reference.stop()
            raise
        ref_dir = reference.directory
        assert ref_dir is not None
        ref_target = Target(
            runtime=Runtime("containerd", reference.endpoint),
            containerd_address=reference.address,
            namespace=REFERENCE_NAMESPACE,
            # netns_mounts_under_state_dir: <state>/<CRI plugin>/netns
            netns_dir=ref_dir / "state" / "io.containerd.grpc.v1.cri" / "netns",
            network=ref_net,
            root=ref_dir,
            logs={"containerd-reference.log": reference.log_path},
        )

        def stop_reference() -> None:
            _copy_logs(ref_target, logs_dir)
            problems = reference.stop()
            if problems:
                node.problems += [f"containerd: {p}" for p in problems]
                print("reference containerd teardown: " + "; ".join(problems), file=sys.stderr)

        stack.callback(stop_reference)
        ref_target.restart = lambda: reference.restart(wait=False)
        print(f"containerd CRI at {reference.endpoint}", file=sys.stderr)

        net = make_network(tmp / "cni-crictld")
        stack.callback(net.remove)
        # What a node keeps under /run, a tmpfs, as the reference's are: the managed
        # containerd's state dir (crictld's default puts it under /run) and runc's root for
        # crictld's namespace (the runc shim's default, /run/containerd/runc), where this
        # machine's /run may be a disk's.
        run_dir = tmp / "run"
        run_dir.mkdir(mode=0o711)
        mount_tmpfs(run_dir)  # unmounted with tmp
        daemon = Daemon(
            state_dir=tmp / "state",
            socket=tmp / "crictld.sock",
            crictl_bin=cri_tools_dir() / "crictl",
            cni_conf_dir=net.conf_dir,
            cni_bin_dirs=net.bin_dirs,
            containerd="managed",
            extra_args=[
                "--containerd-state-dir",
                str(run_dir / "containerd"),
                "--insecure-registry",
                registry,
                "--pause-image",
                node.pause_image,
                "--log-level",
                "INFO",  # the default: one line per CRI call, as operators run it
                *(a for m in mirrors for a in ("--registry-mirror", f"{m}=http://{registry}")),
            ],
        )
        runc_root = RUNC_ROOT / daemon.namespace
        if _fs_type(runc_root) != "tmpfs":
            if runc_root.is_dir() and any(runc_root.iterdir()):  # another crictld's
                print(f"crictld's runc root: {runc_root}, in use: left on disk", file=sys.stderr)
            else:
                runc_root.mkdir(parents=True, exist_ok=True, mode=0o711)
                mount_tmpfs(runc_root)
                stack.callback(_unmount_tmpfs, runc_root)  # after the daemon and its shims
                print(f"crictld's runc root: a tmpfs at {runc_root} for the run", file=sys.stderr)
        managed = ManagedContainerd(daemon.state_dir / "containerd")
        crictld_target = Target(
            runtime=Runtime("crictld", daemon.endpoint),
            containerd_address=managed.address,
            namespace=daemon.namespace,
            netns_dir=daemon.state_dir.parent / "netns",  # Daemon's --netns-dir
            network=net,
            root=tmp,
            logs={"containerd-managed.log": managed.log_path},
        )

        def stop_daemon() -> None:
            code = daemon.stop()
            asyncio.run(ManagedContainerd(daemon.state_dir / "containerd").stop_recorded())
            _copy_logs(crictld_target, logs_dir)
            if code not in (None, 0):
                node.problems.append(f"crictld exited with {code} on SIGTERM")
            # Shims outlive their containerd: pods a failed run did not remove keep theirs
            # (and their containers). Said, then ended, as the reference's teardown does.
            shims = pids_with_args(managed.address)
            if shims:
                node.problems.append(f"crictld: shims left behind: {shims}: killed")
                print(f"crictld teardown: shims left behind: {shims}: killed", file=sys.stderr)
                cgroups = _cgroups_of_children(shims)
                kill_shims(managed.address)
                _remove_cgroups(cgroups)

        stack.callback(stop_daemon)
        daemon.start()
        assert daemon.log_path is not None
        crictld_target.crictld_log = daemon.log_path

        def restart_daemon() -> None:
            daemon.signal(signal.SIGKILL)
            daemon.start(wait=False)  # a new log file: copied at teardown too
            assert daemon.log_path is not None
            crictld_target.logs[daemon.log_path.name] = daemon.log_path
            crictld_target.runtime.processes = {}  # the new process is not watched

        crictld_target.restart = restart_daemon
        crictld_target.logs[daemon.log_path.name] = daemon.log_path
        print(f"crictld at {daemon.endpoint} (log {daemon.log_path})", file=sys.stderr)
        node.targets = [crictld_target, ref_target]
        for target in node.targets:
            target.runtime.processes = dict(local_processes(target).daemons)
        yield node


def _unmount_tmpfs(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def _fs_type(path: Path) -> str:
    """The file system PATH (or the nearest dir above it that exists) is on, as `stat -f`
    names it: `tmpfs`, `ext2/ext3` (ext4 too)..."""
    while not path.exists():
        path = path.parent
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return out.stdout.strip()


@contextlib.contextmanager
def local_runtimes(registry: str) -> Iterator[list[Runtime]]:
    """crictld (with a private managed containerd) and containerd's CRI plugin, both pulling
    from REGISTRY, each on its own CNI network; everything is removed on exit."""
    with local_node(registry) as node:
        yield node.runtimes


# ------------------------------------------------------------------------------------------
# What a run left behind


def _mountpoints_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].replace("\\040", " ")
        if mountpoint == str(path) or mountpoint.startswith(prefix):
            found.append(mountpoint)
    return found


def _processes_mentioning(text: str) -> list[str]:
    """'pid name' of every process with TEXT in its command line (shims name their socket)."""
    needle = text.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            program = cmdline.split(b"\0")[0].decode(errors="replace")
            found.append(f"{entry.name} {program}")
    return found


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def leftovers(node: Node) -> dict[str, list[str]]:
    """After `local_node` exited: per runtime name, what is still on the machine (its bridge,
    mounts such as netns under its dirs, processes naming its dirs such as shims, the dirs),
    plus the teardown problems met. Empty lists everywhere: nothing was left."""
    out: dict[str, list[str]] = {}
    for t in node.targets:
        found: list[str] = []
        if link_exists(t.network.bridge):
            found.append(f"bridge {t.network.bridge} still exists")
        found += [f"mount {m}" for m in _mountpoints_under(t.root)]
        found += [f"process {p}" for p in _processes_mentioning(str(t.root) + "/")]
        if t.root.exists():
            found.append(f"dir {t.root} still exists")
        out[t.runtime.name] = found
    if node.problems:
        out["teardown"] = list(node.problems)
    return out


def format_teardown(after: dict[str, list[str]], dirty: bool) -> str:
    """`leftovers`' findings, a line per runtime, and the verdict (DIRTY also counts what the
    workload found with the runtimes still up)."""
    lines = [
        f"{name}, after teardown: " + ("LEFT: " + "; ".join(found[:5]) if found else "nothing")
        for name, found in after.items()
    ]
    lines.append("=> LEAKS FOUND" if dirty else "=> nothing left on the node by either runtime")
    return "\n".join(lines)


def write_figures(
    path: Path, run: dict[str, object], figures: Mapping[str, object], after: dict[str, list[str]]
) -> None:
    """A run's raw figures as JSON: its parameters, each runtime's figures (a dataclass per
    runtime name) and `leftovers`' findings."""
    body = {**run, **{name: vars(f) for name, f in figures.items()}, "after_teardown": after}
    path.write_text(json.dumps(body, indent=2) + "\n")


@contextlib.contextmanager
def runtime_logs(keep: bool, workload: str) -> Iterator[tuple[Path, list[bool]]]:
    """A temp dir for the runtimes' logs (copied there at teardown): kept, if anything was
    copied, when KEEP or when the caller flags a failure (or an exception leaves)."""
    path = Path(tempfile.mkdtemp(prefix=f"crd-bench-{workload}-logs-", dir="/tmp"))
    failed = [keep]
    try:
        yield path, failed
    except BaseException:
        failed[0] = True
        raise
    finally:
        if failed[0] and any(path.iterdir()):
            print(f"runtime logs kept in {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)
