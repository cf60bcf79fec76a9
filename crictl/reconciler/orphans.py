"""The orphan sweep: what crictld made that no row owns, found and removed.

What the sweep relies on (the same assumptions as recovery):

* everything crictld makes is named by a row id (64 hex digits) or carries crictld's labels:
  containerd containers (`crictld.io/kind`) and their tasks and writable snapshots (key = the
  id; a container's image volumes are read-only views keyed `<id>-vol<N>`), leases
  (`crictld.io/create`, `crictld.io/pull`), netns files `<netns dir>/<sandbox id>`,
  state dirs `<state dir>/{sandboxes,containers}/<id>` and `<state dir>/exec/exec-*`,
  crictld-logger processes (`--pidfile <state dir>/containers/<id>/logger.pid`), host-local
  IPAM allocations (a file per IP whose first line is the sandbox id), task cgroups
  `crictld/<id>` and runc's state dirs `/run/containerd/runc/<namespace>/<id>`;
* a row is written before anything it names is made, and deleted only after its teardown
  removed all of it. So the world is read *first* and the rows *second*: an object seen before
  its row was read is either owned by that row or left by a teardown that already finished. A
  grace period (object age) covers clocks and the objects no row names (exec dirs, pulls);
* nothing of another runtime is touched: only crictld-labelled containerd objects in the
  daemon's own namespace, only 64-hex names in the netns and state dirs, and an IP whose owner
  is a container in another containerd namespace (containerd's CRI plugin sharing the network)
  is not ours.

`survey()` only looks (the doctor's view, which also reports rows whose objects are missing
and rows stuck in a phase); `sweep()` removes the orphan-* findings, one event per removal
(object_kind "orphan", action "swept", the finding's kind as reason). `OrphanSweeper` runs a
sweep at start and then periodically inside the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from crictl import errors
from crictl.containerd.client import NAMESPACE_HEADER, ContainerdClient, translate
from crictl.containerd.h2 import RpcError
from crictl.containerd.runc import RUNC_ROOT, init_alive
from crictl.gen.containerd.api.services.containers.v1 import containers_pb2
from crictl.gen.containerd.api.services.leases.v1 import leases_pb2
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2
from crictl.gen.containerd.api.services.tasks.v1 import tasks_pb2
from crictl.gen.containerd.api.types.task import task_pb2
from crictl.images.pull import PULL_LEASE_LABEL
from crictl.mounts import remove_dir
from crictl.network import cni, netns
from crictl.reconciler.containers import CREATE_LEASE_LABEL, KIND_LABEL
from crictl.store.common import Tx
from crictl.store.engine import Store
from crictl.store.events import record_event
from crictl.store.inventory import ContainerRow, Rows, SandboxRow, read_rows
from crictl.store.models import (
    ContainerDesired,
    ContainerPhase,
    SandboxDesired,
    SandboxPhase,
)

log = logging.getLogger(__name__)

DEFAULT_GRACE = 60.0
DEFAULT_INTERVAL = 300.0
DEFAULT_STUCK_AFTER = 120.0
# Exec sessions and pulls are named by no row, and a live daemon may hold one open for long:
# while a daemon runs, only much older ones are left over.
LONG_GRACE = 3600.0
DEFAULT_IPAM_DIR = Path("/var/lib/cni/networks")
TASK_KILL_WAIT = 10.0

ORPHAN_CONTAINER = "orphan-container"
ORPHAN_TASK = "orphan-task"
ORPHAN_SNAPSHOT = "orphan-snapshot"
ORPHAN_LEASE = "orphan-lease"
ORPHAN_NETNS = "orphan-netns"
ORPHAN_IP = "orphan-ip"
ORPHAN_STATE_DIR = "orphan-state-dir"
ORPHAN_LOGGER = "orphan-logger"
ORPHAN_CGROUP = "orphan-cgroup"
ORPHAN_SHIM = "orphan-shim"
ORPHAN_RUNC_STATE = "orphan-runc-state"
MISSING_TASK = "missing-task"
MISSING_NETNS = "missing-netns"
MISSING_CONTAINER = "missing-container"
STUCK = "stuck"

# The order removals run in: tasks before their containers, containers before their snapshots,
# snapshots before the leases that hold them (once its lease is gone, containerd's GC, which
# any deletion on the node may set off, can collect a snapshot before the sweep removes it,
# and the sweep would not record the removal), loggers before their state dirs, CNI DEL (with
# the netns still there) before the netns.
ORPHAN_KINDS = (
    ORPHAN_TASK,
    ORPHAN_CONTAINER,
    ORPHAN_SNAPSHOT,
    ORPHAN_LEASE,
    ORPHAN_LOGGER,
    ORPHAN_IP,
    ORPHAN_NETNS,
    ORPHAN_STATE_DIR,
    ORPHAN_CGROUP,
    ORPHAN_SHIM,
    ORPHAN_RUNC_STATE,
)
# Task cgroups under the default parent (crictl.oci.spec.cgroups_path) in every hierarchy.
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "crictld"

_ID = re.compile(r"^[0-9a-f]{64}$")
_VOLUME = re.compile(r"^([0-9a-f]{64})-vol[0-9]+$")  # a container's image volume view
_SINGULAR = {"sandboxes": "sandbox", "containers": "container"}
_NS = 1_000_000_000


@dataclass(frozen=True)
class Finding:
    kind: str
    name: str
    detail: str


@dataclass(frozen=True)
class SweepSettings:
    state_dir: Path
    netns_dir: Path
    cni_conf_dir: Path
    cni_bin_dirs: list[Path]
    snapshotter: str = "overlayfs"


# -- what exists -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CtrContainer:
    id: str
    kind: str | None  # crictld.io/kind; None: not crictld's
    snapshot_key: str
    created_at: int


@dataclass(frozen=True)
class CtrTask:
    id: str
    status: str  # CREATED | RUNNING | STOPPED | PAUSED | UNKNOWN
    pid: int


@dataclass(frozen=True)
class Snapshot:
    key: str
    kind: str  # ACTIVE | VIEW | COMMITTED
    created_at: int


@dataclass(frozen=True)
class Lease:
    id: str
    labels: dict[str, str]
    created_at: int


@dataclass(frozen=True)
class NetnsFile:
    name: str
    path: Path
    mounted: bool  # an nsfs bind mount, not just a left-over file
    mtime: int


@dataclass(frozen=True)
class IpAllocation:
    ip: str
    owner: str  # the CNI container id (first line of the file)
    path: Path
    mtime: int


@dataclass(frozen=True)
class StateDir:
    kind: str  # sandboxes | containers | exec
    name: str
    path: Path
    mtime: int


@dataclass(frozen=True)
class LoggerProcess:
    pid: int
    container_id: str
    pidfile: Path
    started_at: int


@dataclass(frozen=True)
class ShimProcess:
    """A runc shim of this containerd and namespace (its -id names the task it was started
    for; with pod grouping it also serves that pod's other containers)."""

    pid: int
    task_id: str
    children: int  # processes it is the parent of: runc, containers
    started_at: int
    socket: Path  # its ttrpc socket, which goes with it


@dataclass(frozen=True)
class CgroupDir:
    """One task cgroup, in each hierarchy that has it (cgroup v1) or the one (v2).

    Its dirs are made from `parents` when asked: at 400 tasks and cgroup v1's hierarchies, a
    Path for each (and for each hierarchy's listing) made the sweep's look keep 2.2 MiB more
    in the daemon (docs/performance.md, "Memory"), for paths only an orphan's removal uses."""

    name: str
    parents: tuple[Path, ...]  # the CGROUP_PARENT dir of each hierarchy that has it
    procs: int  # processes in it, summed over the hierarchies
    mtime: int

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(parent / self.name for parent in self.parents)


@dataclass(frozen=True)
class RuncState:
    """runc's state dir for a container id (its --root is containerd's default for the
    namespace): state.json once runc recorded the container, exec.fifo until it was started."""

    name: str
    path: Path
    init_alive: bool  # the init process state.json names still runs (same pid, same start)
    mtime: int


@dataclass(frozen=True)
class World:
    """What the node holds, as one look saw it (times in ns since the epoch)."""

    containers: tuple[CtrContainer, ...] = ()
    tasks: tuple[CtrTask, ...] = ()
    snapshots: tuple[Snapshot, ...] = ()
    leases: tuple[Lease, ...] = ()
    netns: tuple[NetnsFile, ...] = ()
    ips: tuple[IpAllocation, ...] = ()
    state_dirs: tuple[StateDir, ...] = ()
    loggers: tuple[LoggerProcess, ...] = ()
    cgroups: tuple[CgroupDir, ...] = ()
    shims: tuple[ShimProcess, ...] = ()
    runc_states: tuple[RuncState, ...] = ()
    # container ids of other containerd namespaces: an IP they hold is not ours
    foreign_ids: frozenset[str] = frozenset()
    network: str | None = None  # the CNI network whose IPAM was read
    ipam_dir: Path | None = None
    ipam_error: str | None = None  # why IPs could not be read
    observed_at: int = field(default_factory=time.time_ns)


# -- deciding (pure) ---------------------------------------------------------------------------


def _age(now: int, since: int) -> float:
    return (now - since) / _NS


def _old(now: int, since: int, grace: float) -> bool:
    return _age(now, since) >= grace


def sandbox_converged(row: SandboxRow) -> bool:
    """True when the sandbox is where its desired state says it should be."""
    if row.desired == SandboxDesired.READY:
        return row.phase in (SandboxPhase.READY, SandboxPhase.NOTREADY)  # NOTREADY: it died
    if row.desired == SandboxDesired.NOTREADY:
        return row.phase == SandboxPhase.NOTREADY and row.observed_generation >= row.generation
    return False  # REMOVED: the row goes when the teardown is done


def container_converged(row: ContainerRow) -> bool:
    if row.desired == ContainerDesired.CREATED:
        return row.phase in (ContainerPhase.CREATED, ContainerPhase.EXITED)
    if row.desired == ContainerDesired.RUNNING:
        return row.phase in (ContainerPhase.RUNNING, ContainerPhase.EXITED)
    if row.desired == ContainerDesired.EXITED:
        return row.phase == ContainerPhase.EXITED and row.observed_generation >= row.generation
    return False


def _stuck(kind: str, row: SandboxRow | ContainerRow, now: int) -> Finding:
    return Finding(
        STUCK,
        row.id,
        f"{kind} wants {row.desired} but is {row.phase} for {_age(now, row.updated_at):.0f} s "
        f"(generation {row.generation}, observed {row.observed_generation})",
    )


def classify(
    rows: Rows,
    world: World,
    *,
    grace: float,
    stuck_after: float,
    live: bool = True,
    long_grace: float = LONG_GRACE,
    daemon_started: int | None = None,
    now: int | None = None,
) -> list[Finding]:
    """Every mismatch between the rows and the world. `live`: a daemon is running, so exec
    dirs and pull leases (named by no row) may be in use and only much older ones count,
    except those made before `daemon_started` (when that daemon started, ns since the epoch):
    no daemon that held them is left."""
    now = world.observed_at if now is None else now

    def unnamed_left_over(made: int) -> bool:
        if not _old(now, made, grace):
            return False
        if not live or _old(now, made, long_grace):
            return True
        return daemon_started is not None and made < daemon_started

    sandbox_ids = rows.sandbox_ids
    container_ids = rows.container_ids
    row_ids = sandbox_ids | container_ids
    containers_by_id = {c.id: c for c in rows.containers}
    tasks = {t.id: t for t in world.tasks}
    ctr_ids = {c.id for c in world.containers}
    out: list[Finding] = []

    # containerd: containers (and their tasks), snapshots, leases
    for ctr in world.containers:
        if ctr.kind is None or ctr.id in row_ids or not _old(now, ctr.created_at, grace):
            continue
        out.append(
            Finding(
                ORPHAN_CONTAINER,
                ctr.id,
                f"containerd container ({KIND_LABEL}={ctr.kind}) that no row owns",
            )
        )
        task = tasks.get(ctr.id)
        if task is not None:
            out.append(Finding(ORPHAN_TASK, ctr.id, f"task {task.status}, pid {task.pid}"))
    held_keys = {x.snapshot_key for x in world.containers if x.snapshot_key}
    for snap in world.snapshots:
        if (
            snap.kind == "ACTIVE"
            and _ID.match(snap.key)
            and snap.key not in row_ids
            and snap.key not in held_keys
            and _old(now, snap.created_at, grace)
        ):
            out.append(Finding(ORPHAN_SNAPSHOT, snap.key, "writable snapshot that no row owns"))
        volume = _VOLUME.match(snap.key)
        if (
            volume is not None
            and volume.group(1) not in row_ids
            and volume.group(1) not in {x.id for x in world.containers}
            and _old(now, snap.created_at, grace)
        ):
            out.append(Finding(ORPHAN_SNAPSHOT, snap.key, "image volume snapshot that no row owns"))
    for lease in world.leases:
        creating = lease.labels.get(CREATE_LEASE_LABEL)
        if creating is not None:
            row = containers_by_id.get(creating)
            in_flight = row is not None and row.phase == ContainerPhase.PENDING
            if not in_flight and _old(now, lease.created_at, grace):
                out.append(
                    Finding(ORPHAN_LEASE, lease.id, f"lease of a create of {creating} that ended")
                )
        elif PULL_LEASE_LABEL in lease.labels and unnamed_left_over(lease.created_at):
            ref = lease.labels[PULL_LEASE_LABEL]
            out.append(Finding(ORPHAN_LEASE, lease.id, f"lease of a pull of {ref} that ended"))

    # the node: netns files, IPs, state dirs, loggers
    for n in world.netns:
        if _ID.match(n.name) and n.name not in sandbox_ids and _old(now, n.mtime, grace):
            what = "network namespace" if n.mounted else "unmounted netns file"
            out.append(Finding(ORPHAN_NETNS, str(n.path), f"{what} that no sandbox owns"))
    for ip in world.ips:
        if (
            ip.owner not in sandbox_ids
            and ip.owner not in world.foreign_ids
            and _old(now, ip.mtime, grace)
        ):
            out.append(
                Finding(
                    ORPHAN_IP,
                    ip.ip,
                    f"held by {ip.owner or '?'} in network {world.network} ({ip.path})",
                )
            )
    for d in world.state_dirs:
        if d.kind == "exec":
            if unnamed_left_over(d.mtime):
                out.append(Finding(ORPHAN_STATE_DIR, str(d.path), "exec session left over"))
            continue
        owners = sandbox_ids if d.kind == "sandboxes" else container_ids
        if _ID.match(d.name) and d.name not in owners and _old(now, d.mtime, grace):
            out.append(
                Finding(ORPHAN_STATE_DIR, str(d.path), f"{_SINGULAR[d.kind]} state dir with no row")
            )
    for p in world.loggers:
        crow = containers_by_id.get(p.container_id)
        if crow is None:
            if _old(now, p.started_at, grace):
                out.append(
                    Finding(
                        ORPHAN_LOGGER,
                        str(p.pid),
                        f"logger of container {p.container_id}, which has no row",
                    )
                )
        elif (
            crow.phase == ContainerPhase.EXITED
            and p.container_id not in tasks
            and _old(now, p.started_at, grace)
            and _old(now, crow.updated_at, grace)
        ):
            out.append(
                Finding(
                    ORPHAN_LOGGER,
                    str(p.pid),
                    f"logger of container {p.container_id}, which exited and has no task",
                )
            )

    # A shim of a task no row names and containerd does not list. containerd killed between a
    # task's delete and the shim's shutdown leaves an idle one; containerd killed during a
    # task's create leaves one whose runc create was cut short, maybe the parent still of the
    # `runc init` that create left waiting (the task cgroup's finding ends that one).
    for shim in world.shims:
        if (
            shim.task_id not in tasks
            and shim.task_id not in row_ids
            and _old(now, shim.started_at, grace)
        ):
            children = f", parent of {shim.children} processes" if shim.children else ""
            out.append(
                Finding(
                    ORPHAN_SHIM,
                    str(shim.pid),
                    f"shim of task {shim.task_id}, which is gone{children}",
                )
            )

    # A task cgroup no row names and no task of containerd's owns: runc leaves an empty one when
    # a create is cut short, or one holding the `runc init` that waits for a start that never
    # comes (runc create killed after its init was set up, before runc recorded the container).
    # Processes are only killed in a cgroup this daemon's database says it made: the cgroup
    # parent is shared by every crictld on the node, and another's containers are not ours.
    for cg in world.cgroups:
        if cg.name in row_ids or cg.name in tasks or not _old(now, cg.mtime, grace):
            continue
        if cg.procs == 0:
            out.append(Finding(ORPHAN_CGROUP, cg.name, f"empty cgroup {cg.paths[0]}"))
        elif cg.name in rows.made:
            out.append(
                Finding(
                    ORPHAN_CGROUP, cg.name, f"cgroup {cg.paths[0]} holding {cg.procs} processes"
                )
            )

    # runc's state dir of an id containerd has no task for: `runc create` killed (containerd
    # killed during a task's create cancels it) leaves it, with exec.fifo and maybe no
    # state.json, and containerd's cleanup of the shim then fails to `runc delete` it (the
    # bundle, whose log runc is pointed at, is gone). The dir is only removed where its init
    # runs no more and the id is one this daemon made: the runc root is per containerd
    # namespace, shared by every containerd on the node that uses the same one.
    for r in world.runc_states:
        if (
            r.name in row_ids
            or r.name in tasks
            or r.init_alive
            or r.name not in rows.made
            or not _old(now, r.mtime, grace)
        ):
            continue
        out.append(Finding(ORPHAN_RUNC_STATE, str(r.path), "runc state of a create cut short"))

    # Rows whose objects are missing, or that do not converge. A row that changed after the
    # world was looked at is judged by the next look (its task may have started meanwhile).
    netns_mounted = {n.name for n in world.netns if n.mounted}
    for s in rows.sandboxes:
        settled = s.updated_at <= world.observed_at
        if settled and s.phase == SandboxPhase.READY and s.desired == SandboxDesired.READY:
            task = tasks.get(s.id)
            if task is None or task.status != "RUNNING":
                status = "no task" if task is None else f"task {task.status}"
                out.append(Finding(MISSING_TASK, s.id, f"sandbox READY, containerd has {status}"))
            if s.netns_path is not None and not s.network_released and s.id not in netns_mounted:
                out.append(Finding(MISSING_NETNS, s.id, f"sandbox READY, no netns {s.netns_path}"))
        # (a sandbox stopped before its setup finished is NOTREADY without a container)
        if settled and s.phase == SandboxPhase.READY and s.id not in ctr_ids:
            out.append(
                Finding(MISSING_CONTAINER, s.id, f"sandbox {s.phase}, no containerd container")
            )
        if not sandbox_converged(s) and _old(now, s.updated_at, stuck_after):
            out.append(_stuck("sandbox", s, now))
    for c in rows.containers:
        settled = c.updated_at <= world.observed_at
        if settled and c.phase == ContainerPhase.RUNNING and c.desired == ContainerDesired.RUNNING:
            task = tasks.get(c.id)
            if task is None or task.status != "RUNNING":
                status = "no task" if task is None else f"task {task.status}"
                out.append(
                    Finding(MISSING_TASK, c.id, f"container RUNNING, containerd has {status}")
                )
        if (
            settled
            and c.phase in (ContainerPhase.CREATED, ContainerPhase.RUNNING)
            and c.desired != ContainerDesired.REMOVED
            and c.id not in ctr_ids
        ):
            out.append(
                Finding(MISSING_CONTAINER, c.id, f"container {c.phase}, no containerd container")
            )
        if not container_converged(c) and _old(now, c.updated_at, stuck_after):
            out.append(_stuck("container", c, now))
    return out


# -- looking -----------------------------------------------------------------------------------


def _ts(t: object) -> int:
    to_ns = getattr(t, "ToNanoseconds", None)
    return int(to_ns()) if to_ns is not None else 0


def _ctr_container(c: containers_pb2.Container) -> CtrContainer:
    return CtrContainer(c.id, c.labels.get(KIND_LABEL), c.snapshot_key, _ts(c.created_at))


async def _containerd_world(
    containerd: ContainerdClient, snapshotter: str
) -> tuple[
    tuple[CtrContainer, ...],
    tuple[CtrTask, ...],
    tuple[Snapshot, ...],
    tuple[Lease, ...],
    frozenset[str],
]:
    md = containerd.metadata
    containers = tuple(await containerd.scan_containers(_ctr_container))
    listed = await containerd.call(
        "list tasks", containerd.tasks.List(tasks_pb2.ListTasksRequest(), metadata=md)
    )
    tasks = tuple(
        CtrTask(t.id or t.container_id, task_pb2.Status.Name(t.status), t.pid) for t in listed.tasks
    )
    snapshots: list[Snapshot] = []
    try:
        async for resp in containerd.snapshots.List(
            snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter), metadata=md
        ):
            snapshots += [
                Snapshot(i.name, snapshots_pb2.Kind.Name(i.kind), _ts(i.created_at))
                for i in resp.info
            ]
    except RpcError as e:
        raise translate(e, "list snapshots") from e
    leases = await containerd.call(
        "list leases", containerd.leases.List(leases_pb2.ListRequest(), metadata=md)
    )
    foreign: set[str] = set()
    for ns in await containerd.list_namespaces():
        if ns == containerd.namespace:
            continue
        theirs = await containerd.call(
            "list containers",
            containerd.containers.List(
                containers_pb2.ListContainersRequest(), metadata=((NAMESPACE_HEADER, ns),)
            ),
        )
        foreign |= {x.id for x in theirs.containers}
    return (
        containers,
        tasks,
        tuple(snapshots),
        tuple(Lease(x.id, dict(x.labels), _ts(x.created_at)) for x in leases.leases),
        frozenset(foreign),
    )


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _netns_files(directory: Path) -> tuple[NetnsFile, ...]:
    out = []
    for path in netns.list_dir(directory):
        mtime = _mtime(path)
        if mtime is not None:
            out.append(NetnsFile(path.name, path, netns.is_netns(path), mtime))
    return tuple(out)


def ipam_dir_of(net: cni.NetworkConfig) -> Path | None:
    """Where host-local keeps this network's allocations (None: the network uses another
    IPAM plugin, whose store crictld cannot read)."""
    for plugin in net.plugins:
        ipam = plugin.get("ipam") if isinstance(plugin, dict) else None
        if isinstance(ipam, dict) and ipam.get("type") == "host-local":
            data_dir = ipam.get("dataDir")
            base = Path(data_dir) if isinstance(data_dir, str) and data_dir else DEFAULT_IPAM_DIR
            return base / net.name
    return None


def read_ipam(directory: Path) -> tuple[IpAllocation, ...]:
    """host-local's allocations: one file per IP, named by it, holding the container id (and,
    since CNI 0.4, the interface name on a second line)."""
    out = []
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return ()
    for path in entries:
        try:
            ipaddress.ip_address(path.name)
            text = path.read_text(errors="replace")
            mtime = path.stat().st_mtime_ns
        except (ValueError, OSError):
            continue  # last_reserved_ip.0, lock, or removed meanwhile
        owner = text.splitlines()[0].strip() if text.strip() else ""
        out.append(IpAllocation(path.name, owner, path, mtime))
    return tuple(out)


def _ipam(
    settings: SweepSettings,
) -> tuple[tuple[IpAllocation, ...], str | None, Path | None, str | None]:
    try:
        net = cni.load_network_config(settings.cni_conf_dir, settings.cni_bin_dirs)
    except errors.CrictlError as e:
        return (), None, None, str(e)
    directory = ipam_dir_of(net)
    if directory is None:
        return (), net.name, None, f"network {net.name} does not use host-local IPAM"
    return read_ipam(directory), net.name, directory, None


def _state_dirs(state_dir: Path) -> tuple[StateDir, ...]:
    out = []
    for kind in ("sandboxes", "containers", "exec"):
        try:
            entries = sorted((state_dir / kind).iterdir())
        except OSError:
            continue
        for path in entries:
            if kind == "exec" and not path.name.startswith("exec-"):
                continue
            mtime = _mtime(path)
            if mtime is not None and path.is_dir():
                out.append(StateDir(kind, path.name, path, mtime))
    return tuple(out)


def task_cgroups(root: Path = CGROUP_ROOT) -> tuple[CgroupDir, ...]:
    """Every task cgroup under CGROUP_PARENT. Names and strings, not a Path per dir: see
    CgroupDir (cgroups present in the same hierarchies share one tuple of parents)."""
    found: dict[str, list[Path]] = {}
    hierarchies = [root] if (root / "cgroup.controllers").exists() else sorted(root.iterdir())
    for hierarchy in hierarchies:
        parent = hierarchy / CGROUP_PARENT
        try:
            with os.scandir(parent) as entries:
                names = [e.name for e in entries if _ID.match(e.name) and e.is_dir()]
        except OSError:
            continue
        for name in names:
            found.setdefault(name, []).append(parent)
    shared: dict[tuple[Path, ...], tuple[Path, ...]] = {}
    out = []
    for name, found_in in sorted(found.items()):
        parents = shared.setdefault(tuple(found_in), tuple(found_in))
        procs = 0
        for parent in parents:
            with contextlib.suppress(OSError), open(f"{parent}/{name}/cgroup.procs", "rb") as f:
                procs += len(f.read().split())
        mtime = _mtime(parents[0] / name)
        if mtime is not None:
            out.append(CgroupDir(name, parents, procs, mtime))
    return tuple(out)


def _cgroup_pids(paths: tuple[Path, ...]) -> set[int]:
    pids: set[int] = set()
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(x) for x in (path / "cgroup.procs").read_text().split()}
    return pids


def _remove_cgroup(cg: CgroupDir) -> bool:
    """Removes the cgroup everywhere. One that held processes when looked at has them killed
    first (thawed first: a frozen process cannot take the SIGKILL, and a `runc kill` cut short
    leaves the freezer FROZEN); one that was empty is left if a process entered it since."""
    paths = cg.paths
    if cg.procs:
        _kill_cgroup(paths)
    removed = False
    for path in paths:
        try:
            path.rmdir()
            removed = True
        except FileNotFoundError:
            pass
        except OSError:  # EBUSY: a process entered it since the look: it is in use, keep it
            pass
    return removed


def _kill_cgroup(paths: tuple[Path, ...]) -> None:
    for path in paths:
        state = path / "freezer.state"
        with contextlib.suppress(OSError):
            if state.exists():
                state.write_text("THAWED")
    deadline = time.monotonic() + 2.0
    while pids := _cgroup_pids(paths):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"cgroup {paths[0]}: {sorted(pids)} outlived SIGKILL")
        time.sleep(0.01)


def runc_states(namespace: str, root: Path = RUNC_ROOT) -> tuple[RuncState, ...]:
    try:
        entries = sorted((root / namespace).iterdir())
    except OSError:
        return ()
    out = []
    for path in entries:
        mtime = _mtime(path)
        if not _ID.match(path.name) or mtime is None or not path.is_dir():
            continue
        out.append(RuncState(path.name, path, init_alive(path / "state.json"), mtime))
    return tuple(out)


def _boot_time_ns() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return int(line.split()[1]) * _NS
    return 0


def process_start_ns(pid: int, boot_ns: int | None = None) -> int | None:
    """When `pid` started (ns since the epoch), or None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    ticks = int(fields[19])
    boot = _boot_time_ns() if boot_ns is None else boot_ns
    return boot + ticks * _NS // os.sysconf("SC_CLK_TCK")


def logger_pidfile(argv: list[str]) -> str | None:
    """The --pidfile of a crictld-logger command line (options are NAME VALUE pairs)."""
    if not argv or os.path.basename(argv[0]) != "crictld-logger":
        return None
    for i in range(1, len(argv) - 1, 2):
        if argv[i] == "--pidfile":
            return argv[i + 1]
    return None


def find_loggers(state_dir: Path) -> tuple[LoggerProcess, ...]:
    """crictld-logger processes whose pidfile lies in this state dir's container dirs."""
    containers_dir = Path(os.path.realpath(state_dir / "containers"))
    boot = _boot_time_ns()
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = [
                a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")
            ]
        except OSError:
            continue
        pidfile = logger_pidfile(argv)
        if pidfile is None:
            continue
        path = Path(os.path.realpath(pidfile))
        if path.parent.parent != containers_dir or not _ID.match(path.parent.name):
            continue
        started = process_start_ns(int(proc.name), boot)
        if started is not None:
            out.append(LoggerProcess(int(proc.name), path.parent.name, path, started))
    return tuple(sorted(out, key=lambda p: p.pid))


def shim_socket(address: str, namespace: str, task_id: str) -> Path:
    """Where containerd 1.6 puts a shim's ttrpc socket (its runtime/v2/shim SocketAddress)."""
    digest = hashlib.sha256(os.path.join(address, namespace, task_id).encode()).hexdigest()
    return Path("/run/containerd/s") / digest


def find_shims(address: str, namespace: str) -> tuple[ShimProcess, ...]:
    """containerd-shim-runc-v2 processes of the containerd at `address`, in `namespace`."""
    address = address.removeprefix("unix://")
    boot = _boot_time_ns()
    parents: dict[int, int] = {}
    shims: list[tuple[int, str]] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(stat[1])] = parents.get(int(stat[1]), 0) + 1
            argv = [
                a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")
            ]
        except (OSError, IndexError, ValueError):
            continue
        if not argv or not argv[0].endswith("containerd-shim-runc-v2"):
            continue
        flags = dict(zip(argv[1::2], argv[2::2], strict=False))
        if flags.get("-address") == address and flags.get("-namespace") == namespace:
            shims.append((int(proc.name), flags.get("-id", "")))
    out = []
    for pid, task_id in shims:
        started = process_start_ns(pid, boot)
        if started is not None and task_id:
            socket = shim_socket(address, namespace, task_id)
            out.append(ShimProcess(pid, task_id, parents.get(pid, 0), started, socket))
    return tuple(sorted(out, key=lambda p: p.pid))


def _node_world(
    settings: SweepSettings,
) -> tuple[
    tuple[NetnsFile, ...],
    tuple[IpAllocation, ...],
    str | None,
    Path | None,
    str | None,
    tuple[StateDir, ...],
    tuple[LoggerProcess, ...],
    tuple[CgroupDir, ...],
]:
    ips, network, ipam_dir, ipam_error = _ipam(settings)
    return (
        _netns_files(settings.netns_dir),
        ips,
        network,
        ipam_dir,
        ipam_error,
        _state_dirs(settings.state_dir),
        find_loggers(settings.state_dir),
        task_cgroups(),
    )


async def observe(containerd: ContainerdClient, settings: SweepSettings) -> World:
    """One look at everything crictld may have made."""
    at = time.time_ns()
    containers, tasks, snapshots, leases, foreign = await _containerd_world(
        containerd, settings.snapshotter
    )
    (
        netns_files,
        ips,
        network,
        ipam_dir,
        ipam_error,
        dirs,
        loggers,
        cgroups,
    ) = await asyncio.to_thread(_node_world, settings)
    shims = await asyncio.to_thread(find_shims, containerd.address, containerd.namespace)
    runc = await asyncio.to_thread(runc_states, containerd.namespace)
    return World(
        shims=shims,
        runc_states=runc,
        containers=containers,
        tasks=tasks,
        snapshots=snapshots,
        leases=leases,
        netns=netns_files,
        ips=ips,
        state_dirs=dirs,
        loggers=loggers,
        cgroups=cgroups,
        foreign_ids=foreign,
        network=network,
        ipam_dir=ipam_dir,
        ipam_error=ipam_error,
        observed_at=at,
    )


@dataclass(frozen=True)
class Survey:
    world: World
    rows: Rows
    findings: list[Finding]


async def inspect_node(
    store: Store,
    containerd: ContainerdClient,
    settings: SweepSettings,
    grace: float = DEFAULT_GRACE,
    stuck_after: float = DEFAULT_STUCK_AFTER,
    *,
    live: bool = True,
    long_grace: float = LONG_GRACE,
    daemon_started: int | None = None,
) -> Survey:
    world = await observe(containerd, settings)  # the world first, then the rows: see above
    asked = [cg.name for cg in world.cgroups if cg.procs] + [r.name for r in world.runc_states]
    rows = await store.read(lambda s: read_rows(s, asked))
    findings = classify(
        rows,
        world,
        grace=grace,
        stuck_after=stuck_after,
        live=live,
        long_grace=long_grace,
        daemon_started=daemon_started,
    )
    return Survey(world, rows, findings)


async def survey(
    store: Store,
    containerd: ContainerdClient,
    settings: SweepSettings,
    grace: float = DEFAULT_GRACE,
    stuck_after: float = DEFAULT_STUCK_AFTER,
    *,
    live: bool = True,
    long_grace: float = LONG_GRACE,
    daemon_started: int | None = None,
) -> list[Finding]:
    found = await inspect_node(
        store,
        containerd,
        settings,
        grace,
        stuck_after,
        live=live,
        long_grace=long_grace,
        daemon_started=daemon_started,
    )
    return found.findings


# -- removing ----------------------------------------------------------------------------------


async def _end_task(containerd: ContainerdClient, task_id: str) -> bool:
    """Kills and deletes the task; False if there was none. With none to show, the delete is
    still asked for: containerd may hold a shim whose create was cut short (it lists no task
    for it), and its delete is what drops that shim."""
    state = await containerd.task_state(task_id)
    if state is None:
        await containerd.delete_task(task_id)
        return False
    if state.status != "STOPPED":
        await containerd.kill_task(task_id, signal.SIGKILL)
        with contextlib.suppress(errors.DeadlineExceeded):
            await containerd.wait_task(task_id, timeout=TASK_KILL_WAIT)
    try:
        await containerd.delete_task(task_id)
    except errors.CrictlError:
        # the shim may answer "ttrpc: closed" while it goes away: gone is what was wanted
        if await containerd.task_state(task_id) is not None:
            raise
    return True


def _kill(pid: int, started_at: int, what: str) -> bool:
    """SIGKILLs `pid` if it is still the process that started at `started_at`, and waits for
    it to die; False if it was gone (or the pid reused)."""
    if process_start_ns(pid) != started_at:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while process_start_ns(pid) == started_at:
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"{what} {pid} outlived SIGKILL")
        time.sleep(0.01)
    return True


def _kill_logger(p: LoggerProcess) -> bool:
    """A logger ignores SIGTERM on purpose (it drains a container's output to the end)."""
    return _kill(p.pid, p.started_at, "logger")


def _end_shim(p: ShimProcess) -> bool:
    """An idle shim goes with its socket."""
    if not _kill(p.pid, p.started_at, "shim"):
        return False
    p.socket.unlink(missing_ok=True)
    return True


def _cni_args(container_id: str) -> str:
    return f"IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID={container_id}"


class _Remover:
    def __init__(self, containerd: ContainerdClient, settings: SweepSettings, world: World) -> None:
        self.containerd = containerd
        self.settings = settings
        self.world = world
        self._net: cni.NetworkConfig | None = None
        self._released: set[str] = set()  # ids CNI DEL ran for

    async def network(self) -> cni.NetworkConfig:
        if self._net is None:
            self._net = await asyncio.to_thread(
                cni.load_network_config, self.settings.cni_conf_dir, self.settings.cni_bin_dirs
            )
        return self._net

    async def cni_del(self, container_id: str) -> None:
        """CNI DEL for an id no sandbox owns (the IP, the bridge port, portmap's rules), with
        its netns when that is there still, so the plugins can also clean inside it."""
        if container_id in self._released:
            return
        path = self.settings.netns_dir / container_id
        netns_arg = str(path) if await asyncio.to_thread(netns.is_netns, path) else ""
        await cni.delete(
            await self.network(),
            container_id,
            netns_arg,
            _cni_args(container_id),
            {},
            None,
            self.settings.cni_bin_dirs,
        )
        self._released.add(container_id)

    async def remove(self, f: Finding) -> bool:
        """Removes what `f` names; False if it was gone already (a teardown that ran between
        the look and now: nothing to log)."""
        c = self.containerd
        if f.kind == ORPHAN_TASK:
            return await _end_task(c, f.name)
        if f.kind == ORPHAN_CONTAINER:
            await _end_task(c, f.name)
            removed = await c.delete_container(f.name)
            # its writable snapshot is keyed by its id (one keyed otherwise is not ours)
            if any(x.id == f.name and x.snapshot_key == f.name for x in self.world.containers):
                await c.remove_snapshot(self.settings.snapshotter, f.name)
            return removed
        if f.kind == ORPHAN_LEASE:
            try:
                await c.call(
                    "delete lease",
                    c.leases.Delete(leases_pb2.DeleteRequest(id=f.name), metadata=c.metadata),
                )
            except errors.NotFound:
                return False
            return True
        if f.kind == ORPHAN_SNAPSHOT:
            return await c.remove_snapshot(self.settings.snapshotter, f.name)
        if f.kind == ORPHAN_LOGGER:
            loggers = [p for p in self.world.loggers if str(p.pid) == f.name]
            return any([await asyncio.to_thread(_kill_logger, p) for p in loggers])
        if f.kind == ORPHAN_SHIM:
            shims = [p for p in self.world.shims if str(p.pid) == f.name]
            return any([await asyncio.to_thread(_end_shim, p) for p in shims])
        if f.kind == ORPHAN_IP:
            removed = False
            for ip in self.world.ips:
                if ip.ip == f.name and await asyncio.to_thread(ip.path.exists):
                    await self.cni_del(ip.owner)
                    if await asyncio.to_thread(ip.path.exists):
                        raise errors.Unavailable(
                            f"CNI DEL {ip.owner} did not release {ip.ip} ({ip.path})"
                        )
                    removed = True
            return removed
        if f.kind == ORPHAN_NETNS:
            path = Path(f.name)
            with contextlib.suppress(errors.CrictlError):  # no CNI config: nothing to DEL
                await self.cni_del(path.name)
            return await asyncio.to_thread(netns.remove, path)
        if f.kind == ORPHAN_STATE_DIR:
            return await asyncio.to_thread(remove_dir, Path(f.name))
        if f.kind == ORPHAN_CGROUP:
            found = [cg for cg in self.world.cgroups if cg.name == f.name]
            return any([await asyncio.to_thread(_remove_cgroup, cg) for cg in found])
        if f.kind == ORPHAN_RUNC_STATE:
            return await asyncio.to_thread(remove_dir, Path(f.name))
        raise errors.InvalidArgument(f"{f.kind} is not something the sweep removes")


def _in_removal_order(findings: Iterable[Finding]) -> list[Finding]:
    rank = {kind: i for i, kind in enumerate(ORPHAN_KINDS)}
    return sorted((f for f in findings if f.kind in rank), key=lambda f: rank[f.kind])


async def remove_orphans(
    store: Store, containerd: ContainerdClient, settings: SweepSettings, found: Survey
) -> list[Finding]:
    """Removes the orphan-* findings of `found`; returns those removed (one event each). A
    removal that fails is logged and left for the next sweep; what is gone already is skipped."""
    remover = _Remover(containerd, settings, found.world)
    removed: list[Finding] = []
    for f in _in_removal_order(found.findings):
        try:
            if not await remover.remove(f):
                continue
        except (errors.CrictlError, OSError) as e:
            log.warning(
                "could not remove an orphan",
                extra={"kind": f.kind, "orphan": f.name, "error": str(e)},
            )
            continue

        def swept(tx: Tx, f: Finding = f) -> None:
            record_event(tx, "orphan", f.name, "swept", reason=f.kind, message=f.detail)

        await store.write(swept)
        log.info("swept an orphan", extra={"kind": f.kind, "orphan": f.name, "detail": f.detail})
        removed.append(f)
    return removed


async def sweep(
    store: Store,
    containerd: ContainerdClient,
    settings: SweepSettings,
    grace: float = DEFAULT_GRACE,
    *,
    live: bool = True,
    long_grace: float = LONG_GRACE,
    daemon_started: int | None = None,
) -> list[Finding]:
    """Finds what no row owns and removes it; returns what was removed."""
    found = await inspect_node(
        store,
        containerd,
        settings,
        grace,
        DEFAULT_STUCK_AFTER,
        live=live,
        long_grace=long_grace,
        daemon_started=daemon_started,
    )
    return await remove_orphans(store, containerd, settings, found)


class OrphanSweeper:
    """The daemon's sweep: once as soon as the CRI server serves, then every `interval` seconds.

    Every sweep runs beside the live daemon, so exec dirs and pull leases, which no row names,
    count as left over when they are older than `LONG_GRACE` or were made before
    `daemon_started` (this daemon's start, ns since the epoch): the daemon that held those is
    gone. Everything else has the rows to go by (see the module's docstring).
    """

    def __init__(
        self,
        store: Store,
        containerd: ContainerdClient,
        settings: SweepSettings,
        grace: float = DEFAULT_GRACE,
        interval: float = DEFAULT_INTERVAL,
        daemon_started: int | None = None,
    ) -> None:
        self.store = store
        self.containerd = containerd
        self.settings = settings
        self.grace = grace
        self.interval = interval
        self.daemon_started = daemon_started
        self.first_done = asyncio.Event()  # set once the first sweep ended (failed or not)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._every_interval(), name="orphan-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sweep_once(self) -> list[Finding]:
        try:
            return await sweep(
                self.store,
                self.containerd,
                self.settings,
                self.grace,
                daemon_started=self.daemon_started,
            )
        except errors.CrictlError as e:  # containerd away: the next sweep tries again
            log.warning("orphan sweep failed", extra={"error": str(e)})
        except Exception:  # a bug must not end the periodic sweep for good
            log.exception("orphan sweep failed")
        return []

    async def _every_interval(self) -> None:
        started = time.perf_counter()
        removed = await self.sweep_once()
        self.first_done.set()
        log.info(
            "first orphan sweep done",
            extra={"removed": len(removed), "ms": round((time.perf_counter() - started) * 1000, 1)},
        )
        while True:
            await asyncio.sleep(self.interval)
            await self.sweep_once()
