"""Pod sandboxes: from the row CRI wrote to a running pod (netns + CNI + pause task) and back.

Level-triggered and idempotent: each pass reads the row, looks at what exists, and takes the
steps still missing. Every name is deterministic (netns file = sandbox id, CNI container id =
sandbox id, containerd container, snapshot and task = sandbox id), so a step interrupted by a
crash is found, finished or undone by the next pass without any intent having to be written
first. Results are written right after the side effect that produced them (the CNI result, the
pause pid), so that DEL gets the same prevResult and the pid survives a restart.

Setup that fails is undone whole (CNI DEL, netns, containerd objects, files) and the row is
removed with an event saying why: a retry of RunPodSandbox then starts afresh, as with
containerd. Teardown (stop, remove) is retried until it succeeds: CNI DEL always runs, with the
netns gone or no result stored, because the IP must be released.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclasses_field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from crictl import errors, metrics, trace
from crictl.containerd import runc
from crictl.containerd.client import GC_ROOT_LABEL, ContainerdClient, TaskState
from crictl.gen.containerd.api.types import mount_pb2
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.network import cni, netns
from crictl.oci.spec import (
    DEFAULT_SHM_SIZE,
    SANDBOX_OOM_SCORE_ADJ,
    SandboxFiles,
    cgroups_path,
    hosts_file,
    pod_hostname,
    resolv_conf,
    sandbox_spec,
)
from crictl.reconciler import cgroups, faults
from crictl.reconciler.configs import ConfigCache
from crictl.reconciler.events import TaskExit
from crictl.reconciler.images import ImageManager
from crictl.reconciler.queue import KeyedQueue
from crictl.store.common import Tx
from crictl.store.engine import Store
from crictl.store.events import record_event
from crictl.store.models import SandboxDesired, SandboxPhase
from crictl.store.readmodel import SandboxView, Snapshot
from crictl.store.sandboxes import (
    SETUP_FAILED,
    delete_sandbox,
    mark_sandbox_observed,
    record_network_released,
    record_sandbox_error,
    record_sandbox_lost,
    record_sandbox_network,
    record_sandbox_not_ready,
    record_sandbox_started,
    record_setup_failed,
    update_sandbox_config,
)

log = logging.getLogger(__name__)

SNAPSHOTTER = "overlayfs"
# hostname, hosts, resolv.conf are bind-mounted into containers that may run as any user:
# readable by all whatever the daemon's umask (a systemd UMask=0077 included).
POD_FILE_MODE = 0o644
# In the pod's dir: the network configuration its CNI ADD was started with.
ADDED_WITH = "cni-config.json"
STOP_WAIT = 10.0
# Pods checked at once after a restart (each check runs the CNI chain's CHECK plugins).
RECOVERY_CONCURRENCY = 8
KIND_LABEL = "crictld.io/kind"
SANDBOX_LABEL = "crictld.io/sandbox-id"
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@dataclass(frozen=True)
class SandboxSettings:
    state_dir: Path
    netns_dir: Path
    cni_conf_dir: Path
    cni_bin_dirs: list[Path]
    pause_image: str
    systemd_cgroup: bool = False
    runtime_handlers: Mapping[str, str] = dataclasses_field(default_factory=dict)


async def read_tasks(
    store: Store, containerd: ContainerdClient
) -> tuple[Snapshot, dict[str, TaskState]]:
    """The rows, then every task's state: in this order (see `SandboxReconciler.resync`)."""
    snap = store.snapshot
    return snap, await containerd.task_states()


async def _bounded(limit: int, work: list[Coroutine[Any, Any, None]]) -> None:
    """Runs `work` with at most `limit` at a time; every item runs, the first error is
    raised after all ended."""
    gate = asyncio.Semaphore(limit)

    async def one(item: Coroutine[Any, Any, None]) -> None:
        async with gate:
            await item

    results = await asyncio.gather(*(one(w) for w in work), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


def config_of(row: SandboxView) -> api_pb2.PodSandboxConfig:
    """The sandbox's config (shared and kept while the row is: do not modify it)."""
    return SANDBOX_CONFIGS.get(row.id, row.config)


def _parse_sandbox_config(text: str) -> api_pb2.PodSandboxConfig:
    return json_format.Parse(text, api_pb2.PodSandboxConfig())


SANDBOX_CONFIGS = ConfigCache(_parse_sandbox_config)


def host_network(config: api_pb2.PodSandboxConfig) -> bool:
    return config.linux.security_context.namespace_options.network == api_pb2.NODE


def host_ipc(config: api_pb2.PodSandboxConfig) -> bool:
    return config.linux.security_context.namespace_options.ipc == api_pb2.NODE


def cni_args(sandbox_id: str, config: api_pb2.PodSandboxConfig) -> str:
    m = config.metadata
    return (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE={m.namespace};K8S_POD_NAME={m.name};"
        f"K8S_POD_INFRA_CONTAINER_ID={sandbox_id};K8S_POD_UID={m.uid}"
    )


def capability_args(config: api_pb2.PodSandboxConfig) -> dict[str, Any]:
    protocols = {api_pb2.TCP: "tcp", api_pb2.UDP: "udp", api_pb2.SCTP: "sctp"}
    ports = [
        {
            "hostPort": p.host_port,
            "containerPort": p.container_port,
            "protocol": protocols.get(p.protocol, "tcp"),
            "hostIP": p.host_ip,
        }
        for p in config.port_mappings
        if p.host_port > 0
    ]
    args: dict[str, Any] = {}
    if ports:
        args["portMappings"] = ports
    bandwidth = _bandwidth(config.annotations)
    if bandwidth:
        args["bandwidth"] = bandwidth
    dns = config.dns_config
    if dns.servers or dns.searches or dns.options:
        args["dns"] = {
            "servers": list(dns.servers),
            "searches": list(dns.searches),
            "options": list(dns.options),
        }
    return args


_QUANTITY = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _bandwidth(annotations: Mapping[str, str]) -> dict[str, int]:
    """The bandwidth plugin's capability args from kubelet's pod annotations
    (kubernetes.io/ingress-bandwidth, kubernetes.io/egress-bandwidth: quantities in bits/s),
    with the burst the bandwidth plugin's authors suggest (effectively unlimited)."""
    out: dict[str, int] = {}
    for direction in ("ingress", "egress"):
        text = annotations.get(f"kubernetes.io/{direction}-bandwidth", "").strip()
        if not text:
            continue
        number = text.rstrip("kMGTi")
        suffix = text[len(number) :]
        if suffix not in _QUANTITY or not number.replace(".", "", 1).isdigit():
            raise errors.InvalidArgument(
                f"annotation kubernetes.io/{direction}-bandwidth: bad quantity {text!r}"
            )
        out[f"{direction}Rate"] = int(float(number) * _QUANTITY[suffix])
        out[f"{direction}Burst"] = 2**31 - 1
    return out


def _node_resolv_conf() -> str:
    """The node's /etc/resolv.conf, for a pod that gives no DNS config (none: empty, which
    resolvers read as the local name server)."""
    try:
        return Path("/etc/resolv.conf").read_text()
    except FileNotFoundError:
        return ""


def remove_files(directory: Path, task_cgroup: str, what: Mapping[str, str]) -> None:
    """A removed object's directory, and the cgroup of its task if a create cut short left it
    (`cgroups.remove_left_empty`; runc's delete took it otherwise): one thread hop for both.
    `what` names the object in the log line."""
    shutil.rmtree(directory, True)
    left = cgroups.remove_left_empty(task_cgroup)
    if left:
        log.warning(
            "removed the empty cgroup a task's create cut short left",
            extra={**what, "cgroups": left},
        )


def clamp_oom_score_adj(wanted: int) -> int:
    """Without CAP_SYS_RESOURCE nothing may go below the daemon's own score (runc would fail
    with "can't get final child's PID from pipe"): as containerd's restrict_oom_score_adj."""
    try:
        own = int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError):
        return wanted
    return max(wanted, own)


class SandboxReconciler:
    def __init__(
        self,
        store: Store,
        containerd: ContainerdClient,
        images: ImageManager,
        settings: SandboxSettings,
    ) -> None:
        self.store = store
        self.containerd = containerd
        self.images = images
        self.settings = settings
        # Pods whose CNI CHECK after a restart is still to come (resync leaves them to it).
        self._checking: set[str] = set()
        self._recovering: set[str] = set()  # ready at start, re-adopted by the first resync
        # Pods whose pause task a stop of this daemon's deleted: nothing makes it again (a pod
        # is never started twice), so their removal asks containerd for it no more. Not kept
        # across a restart: there the first pass of a stopped pod asks as before.
        self._task_deleted: set[str] = set()
        self._to_check: list[SandboxView] = []
        self._network_checks: set[asyncio.Task[None]] = set()
        self._serving = False
        self.queue: KeyedQueue[str] = KeyedQueue(
            self.reconcile, self._record_failure, kind="sandbox"
        )
        # Set by the container reconciler: stops (False) or removes (True) every container of
        # a sandbox; a sandbox's teardown runs it first.
        self.containers_hook: Callable[[str, bool], Awaitable[None]] | None = None
        # Set by the container reconciler: waits for the removals CRI already answered (of a
        # dead container, RemoveContainer answers before its teardown ends), so a pod's
        # events never say it stopped before a container removed ahead of it was deleted.
        self.removals_hook: Callable[[str], Awaitable[None]] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.recover()

    async def update_resources(
        self,
        sandbox_id: str,
        overhead: api_pb2.LinuxContainerResources,
        resources: api_pb2.LinuxContainerResources,
    ) -> list[str]:
        """UpdatePodSandboxResources: `resources` written to the pod's cgroup (kubelet's
        cgroup_parent; none without one) and both recorded in the stored config; returns the
        cgroup files written."""
        row = self.store.snapshot.sandboxes.get(sandbox_id)
        if row is None:
            raise errors.NotFound(f"pod sandbox {sandbox_id} not found")
        if row.phase != SandboxPhase.READY:
            raise errors.FailedPrecondition(
                f"pod sandbox {sandbox_id} is {row.phase}, not READY: its resources cannot change"
            )
        config = api_pb2.PodSandboxConfig()
        config.CopyFrom(config_of(row))
        parent = config.linux.cgroup_parent
        written = await asyncio.to_thread(cgroups.apply, parent, resources) if parent else []
        config.linux.overhead.CopyFrom(overhead)
        config.linux.resources.CopyFrom(resources)
        text = json_format.MessageToJson(
            config, preserving_proto_field_name=True, sort_keys=True, indent=None
        )
        detail = ", ".join(written) if written else "no pod cgroup: recorded only"
        await self.store.write(lambda s: update_sandbox_config(s, sandbox_id, text, detail))
        return written

    async def stop(self) -> None:
        for task in self._network_checks:
            task.cancel()
        await asyncio.gather(*self._network_checks, return_exceptions=True)
        await self.queue.drain()

    async def _record_failure(self, sandbox_id: str, error: Exception) -> None:
        """A failed pass, where operators look: the event log (and the row's message while it
        is being stopped or removed, so a failed StopPodSandbox shows why)."""

        def record(tx: Tx) -> None:
            record_event(tx, "sandbox", sandbox_id, "pass-failed", message=str(error))
            record_sandbox_error(tx, sandbox_id, str(error))

        await self.store.write(record)

    # -- paths -----------------------------------------------------------------------------

    def netns_path(self, sandbox_id: str) -> Path:
        return self.settings.netns_dir / sandbox_id

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return self.settings.state_dir / "sandboxes" / sandbox_id

    def _network_to_add(self, sandbox_id: str) -> tuple[cni.NetworkConfig, str | None]:
        """The config dir's network, also written to the pod's dir before its ADD runs (the
        row keeps it only with the ADD's result, so a crash inside the ADD leaves the DEL that
        undoes it this file), and what the file held before: the configuration of an ADD a
        crash cut short, if any."""
        net = cni.load_network_config(self.settings.cni_conf_dir, self.settings.cni_bin_dirs)
        d = self.sandbox_dir(sandbox_id)
        d.mkdir(parents=True, exist_ok=True, mode=0o711)
        before = None
        with contextlib.suppress(FileNotFoundError):
            before = (d / ADDED_WITH).read_text()
        (d / ADDED_WITH).write_text(net.stored())
        return net, before

    def _pod_network(self, sandbox_id: str, stored: str | None) -> tuple[cni.NetworkConfig, str]:
        """`cni.pod_network_config` for the pod: its row's configuration, else the one its
        ADD was started with (`_network_to_add`), else the config dir's."""
        if stored is None:
            with contextlib.suppress(FileNotFoundError):
                stored = (self.sandbox_dir(sandbox_id) / ADDED_WITH).read_text()
        return cni.pod_network_config(
            stored, self.settings.cni_conf_dir, self.settings.cni_bin_dirs
        )

    # -- the reconcile function ------------------------------------------------------------

    async def reconcile(self, sandbox_id: str) -> None:
        row = self.store.snapshot.sandboxes.get(sandbox_id)
        if row is None:
            return
        if row.desired == SandboxDesired.REMOVED:
            await self._teardown(row, remove=True)
        elif row.desired == SandboxDesired.NOTREADY:
            await self._teardown(row, remove=False)
        elif row.phase == SandboxPhase.PENDING:
            try:
                await self._setup(row)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                await self._undo_failed_setup(row, e)
                raise

    async def _setup(self, row: SandboxView) -> None:
        """The network (netns, CNI ADD) and the pause container (files, spec, containerd
        container, snapshot, task) are made concurrently: the pause task needs the netns to
        exist, not to be wired, so it is created and started while CNI ADD runs (runc create
        and the CNI chain each take ~30 ms here; done one after the other, as containerd's
        CRI does, they add up). The pod is READY once both are done."""
        sid = row.id
        config = config_of(row)
        pause = await self.images.ensure(self.settings.pause_image)
        network = None if host_network(config) else self.netns_path(sid)
        ip = row.ip
        pid = 0
        stored: str | None = None  # the pause container's spec, where this pass made its record
        netns_made = asyncio.Event()
        files_made = asyncio.Event()

        async def setup_network() -> None:
            nonlocal ip
            if network is None or row.cni_result is not None:
                netns_made.set()
                return
            net, before = await trace.to_thread("cni config", self._network_to_add, sid)
            created = await trace.to_thread("netns create", netns.create, network)
            netns_made.set()
            faults.point("sandbox-run:after-netns")
            args = (sid, str(network), cni_args(sid, config), capability_args(config))
            if not created:
                # A previous daemon got this far and may have died inside CNI ADD: release
                # whatever it added (with the configuration it was adding with) before adding
                # again (DEL of nothing succeeds).
                added, _ = await asyncio.to_thread(
                    cni.pod_network_config,
                    before,
                    self.settings.cni_conf_dir,
                    self.settings.cni_bin_dirs,
                )
                await cni.delete(added, *args, None, self.settings.cni_bin_dirs)
            result = await cni.add(net, *args, self.settings.cni_bin_dirs)
            faults.point("sandbox-run:after-cni-add")
            raw, used = json.dumps(result.raw), net.stored()
            await self.store.write(
                lambda s: record_sandbox_network(
                    s, sid, raw, result.ip, result.additional_ips, used
                )
            )
            faults.point("sandbox-run:after-cni-recorded")
            ip = result.ip
            # /etc/hosts with the pod's IP, while the pause task is made (the pod's files
            # were written before the IP was known)
            await files_made.wait()
            await trace.to_thread("sandbox hosts", self._write_hosts, sid, config, ip)

        async def setup_container() -> None:
            nonlocal pid
            # The spec names the pod's files by path: the container record and the snapshot
            # are made while the files are written, the task (which mounts them) after.
            files = self.files_for(sid, config, new=True)
            spec = sandbox_spec(
                sid,
                config,
                json.loads(pause.config),
                str(network) if network else None,
                files,
                clamp_oom_score_adj(SANDBOX_OOM_SCORE_ADJ),
                systemd_cgroup=self.settings.systemd_cgroup,
            )
            labels = {
                KIND_LABEL: "sandbox",
                SANDBOX_LABEL: sid,
                "io.cri-containerd.kind": "sandbox",
            }
            image_name = pause.repo_tags[0] if pause.repo_tags else pause.id

            async def create() -> None:
                nonlocal stored
                text = json.dumps(spec)
                if await self.containerd.create_container(
                    sid,
                    image_name,
                    text,
                    SNAPSHOTTER,
                    labels,
                    self.settings.runtime_handlers.get(row.runtime_handler, ""),
                ):
                    # what the row keeps (crictl/store/specs.py): only a record this pass made
                    stored = text
                faults.point("sandbox-run:after-container-create")

            mounts: list[mount_pb2.Mount] = []

            async def prepare() -> None:
                # A GC root until the container record names it: the two are made at once
                # (containerd does not check the snapshot at the record's creation); the
                # setup's undo removes whichever was made.
                root = {GC_ROOT_LABEL: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
                made = await self.containerd.prepare_snapshot(
                    SNAPSHOTTER, sid, pause.chain_id or "", labels=root
                )
                faults.point("sandbox-run:after-snapshot")
                mounts.extend(made)

            async def write_files() -> None:
                await trace.to_thread("sandbox files", self._write_files, sid, config, ip)
                files_made.set()

            # all three end before a failure is raised: the setup's undo races none of them
            await _bounded(3, [create(), prepare(), write_files()])
            await netns_made.wait()
            # a start a crash cut short may have left runc blocking the task (containerd/runc.py)
            await runc.release_if_stale(self.containerd.namespace, sid)
            await self.containerd.create_task(sid, mounts)
            faults.point("sandbox-run:after-task-create")
            pid = await self.containerd.start_task(sid)
            faults.point("sandbox-run:after-task-started")

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(setup_network())
                group.create_task(setup_container())
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None  # the first failure, with its own message
        await self.store.write(lambda s: record_sandbox_started(s, sid, sid, pid, stored))
        faults.point("sandbox-run:after-task-start")

    def files_for(
        self, sandbox_id: str, config: api_pb2.PodSandboxConfig, new: bool = False
    ) -> SandboxFiles:
        """The pod's files, as `_write_files` makes them (for its containers to mount); `new`:
        for the pod's setup, which writes them. A pod without a DNS config an older crictld
        made has no resolv.conf of its own: its containers get the node's, as before."""
        d = self.sandbox_dir(sandbox_id)
        resolv = d / "resolv.conf"
        own_resolv = new or resolv_conf(config.dns_config) is not None or resolv.exists()
        return SandboxFiles(
            d / "hostname",
            d / "hosts",
            resolv if own_resolv else None,
            None if host_ipc(config) else d / "shm",
        )

    def _write_hosts(
        self, sandbox_id: str, config: api_pb2.PodSandboxConfig, ip: str | None
    ) -> None:
        """In place (same inode): the file is bind-mounted into the pod's containers."""
        hostname = config.hostname or os.uname().nodename
        text = Path("/etc/hosts").read_text() if host_network(config) else hosts_file(hostname, ip)
        with (self.sandbox_dir(sandbox_id) / "hosts").open("w") as f:
            f.write(text)
            os.fchmod(f.fileno(), POD_FILE_MODE)

    def _write_files(
        self, sandbox_id: str, config: api_pb2.PodSandboxConfig, ip: str | None
    ) -> None:
        """Writes (and mounts) the files `files_for` names."""
        files = self.files_for(sandbox_id, config, new=True)
        files.hostname.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        files.hostname.write_text(pod_hostname(config) + "\n")
        files.hostname.chmod(POD_FILE_MODE)
        self._write_hosts(sandbox_id, config, ip)
        # From the pod's DNS config, else a copy of the node's (as containerd's CRI makes it):
        # the pod's containers may write theirs, never the node's.
        resolv = files.hostname.parent / "resolv.conf"
        resolv.write_text(resolv_conf(config.dns_config) or _node_resolv_conf())
        resolv.chmod(POD_FILE_MODE)
        shm = files.shm
        if shm is not None:
            shm.mkdir(exist_ok=True)
            if not os.path.ismount(shm):
                opts = f"mode=1777,size={DEFAULT_SHM_SIZE}".encode()
                if (
                    _libc.mount(b"shm", os.fsencode(shm), b"tmpfs", 0x2 | 0x4 | 0x8, opts) != 0
                ):  # nosuid, nodev, noexec
                    err = ctypes.get_errno()
                    raise errors.Unavailable(
                        f"cannot mount the pod's /dev/shm at {shm}: {os.strerror(err)}"
                    )

    async def _undo_failed_setup(self, row: SandboxView, error: Exception) -> None:
        log.warning(
            "sandbox setup failed; undoing it", extra={"sandbox": row.id, "error": str(error)}
        )
        try:
            # Recorded before it starts: a crash mid-undo leaves a row whose desired state
            # (REMOVED) makes the next pass finish the undo, never redo the setup.
            fresh = await self.store.write(lambda s: record_setup_failed(s, row.id, str(error)))
            faults.point("sandbox-undo:after-desired")
            await self._teardown(fresh, remove=True)
        except Exception as e:  # the next start's recovery finishes the teardown
            log.error(
                "undoing a failed sandbox setup failed", extra={"sandbox": row.id, "error": str(e)}
            )

    async def _teardown(self, row: SandboxView, remove: bool) -> None:
        sid = row.id
        await runc.release_if_stale(self.containerd.namespace, sid)
        config = config_of(row)
        if self.removals_hook is not None:
            await self.removals_hook(sid)
        if row.phase == SandboxPhase.READY:
            # Not ready from the first step of a stop on: a stop that fails halfway leaves a
            # NOTREADY pod (with the error recorded) that the retry finishes.
            await self.store.write(
                lambda s: record_sandbox_not_ready(s, sid, "Stopped", "StopPodSandbox")
            )
        if self.containers_hook is not None:
            await self.containers_hook(sid, remove)

        async def release_network() -> None:
            if host_network(config) or row.network_released:
                return
            net, unusable = await trace.to_thread(
                "cni config", self._pod_network, sid, row.cni_config
            )
            if unusable:
                log.warning(
                    "pod network released with the config dir's network",
                    extra={"sandbox": sid, "error": unusable},
                )
            path = self.netns_path(sid)
            netns_arg = str(path) if await asyncio.to_thread(netns.is_netns, path) else ""
            prev = json.loads(row.cni_result) if row.cni_result else None
            await cni.delete(
                net,
                sid,
                netns_arg,
                cni_args(sid, config),
                capability_args(config),
                prev,
                self.settings.cni_bin_dirs,
            )
            faults.point("sandbox-stop:after-cni-del")
            await trace.to_thread("netns remove", netns.remove, path)
            faults.point("sandbox-stop:after-netns-remove")
            await self.store.write(lambda s: record_network_released(s, sid))

        # The pause task and the network are independent (the netns is a bind mount: it
        # outlives the task; CNI DEL needs neither the task alive nor dead): torn down at once,
        # where containerd's CRI does one after the other. Each step finds "already done"
        # fine, so a pass a crash cut short in either is finished by the next.
        ready = row.phase == SandboxPhase.READY
        try:
            async with asyncio.TaskGroup() as group:
                if ready or sid not in self._task_deleted:
                    group.create_task(self._stop_task(sid, ready=ready))
                group.create_task(release_network())
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None  # the first failure, with its own message
        await asyncio.to_thread(self._unmount_shm, sid)
        if not remove:
            gen = row.generation

            def stopped(tx: Tx) -> None:
                record_sandbox_not_ready(tx, sid, "Stopped", "StopPodSandbox")
                mark_sandbox_observed(tx, sid, gen)

            await self.store.write(stopped)
            return
        await self.containerd.delete_container(sid)
        faults.point("sandbox-remove:after-container-delete")
        await self.containerd.remove_snapshot(SNAPSHOTTER, sid)
        faults.point("sandbox-remove:after-snapshot-remove")
        task_cgroup = cgroups_path(config.linux.cgroup_parent, sid, self.settings.systemd_cgroup)
        await asyncio.to_thread(remove_files, self.sandbox_dir(sid), task_cgroup, {"sandbox": sid})
        faults.point("sandbox-remove:after-files-remove")
        reason, message = "Removed", "RemovePodSandbox"
        if row.reason == SETUP_FAILED:  # an undo, maybe resumed after a crash
            reason, message = SETUP_FAILED, row.message
        await self.store.write(lambda s: delete_sandbox(s, sid, reason, message))
        SANDBOX_CONFIGS.forget(sid)
        self._task_deleted.discard(sid)

    async def _stop_task(self, sid: str, ready: bool) -> None:
        """Kills the pause task, waits for it and deletes it. A pod that was READY has its
        task running, so it is killed without asking first: a task that stopped or is gone
        meanwhile answers the kill "not found", and the wait and the delete then find it so."""
        if ready:
            try:
                await self._kill_and_wait(sid)
            except errors.CrictlError:
                # refused for the task's state: it is read, and the stop goes on from there
                ready = False
        if not ready:
            await self._stop_task_as_it_is(sid)
        else:
            await self.containerd.delete_task(sid)
            faults.point("sandbox-stop:after-task-delete")
        self._task_deleted.add(sid)

    async def _kill_and_wait(self, sid: str) -> None:
        await self.containerd.kill_task(sid, signal.SIGKILL)
        faults.point("sandbox-stop:after-task-kill")
        with contextlib.suppress(errors.DeadlineExceeded):
            await self.containerd.wait_task(sid, timeout=STOP_WAIT)

    async def _stop_task_as_it_is(self, sid: str) -> None:
        state = await self.containerd.task_state(sid)
        if state is None:
            # containerd killed during the task's create, then restarted, holds a shim it lists
            # no task for (it holds no runc container); only a delete drops that shim.
            await self.containerd.delete_task(sid)
            return
        running = state.status in ("RUNNING", "CREATED", "PAUSED", "UNKNOWN")
        if running and not state.half_created:  # a half-created one can only be deleted
            await self._kill_and_wait(sid)
        await self.containerd.delete_task(sid)
        faults.point("sandbox-stop:after-task-delete")

    def _unmount_shm(self, sid: str) -> None:
        shm = self.sandbox_dir(sid) / "shm"
        if os.path.ismount(shm) and _libc.umount2(os.fsencode(shm), 2) != 0:
            err = ctypes.get_errno()
            raise errors.Unavailable(f"cannot unmount {shm}: {os.strerror(err)}")

    # -- observed changes ------------------------------------------------------------------

    async def on_task_exit(self, event: TaskExit) -> None:
        row = self.store.snapshot.sandboxes.get(event.container_id)
        if row is None or row.phase != SandboxPhase.READY or row.desired != SandboxDesired.READY:
            return  # not ours to report: a stop or remove in progress killed it
        message = f"the pause task exited with {event.exit_status}"
        await self._record_lost([(event.container_id, "PauseExited", message)])

    async def resync(self, tasks: tuple[Snapshot, dict[str, TaskState]] | None = None) -> None:
        """After every (re)subscription to containerd's events: a ready pod whose pause task
        stopped or vanished while nobody listened is NOTREADY; rows in flight get a pass. The
        first one after a start is the pods' recovery: a pod whose task runs and whose netns
        is there is re-adopted as is, its network checked by CNI CHECK once the daemon serves
        (`check_networks`).

        `tasks`: the rows, then every task's state read after them (shared with the
        containers' resync; read here if not given). The order matters: a pod READY in rows
        read first had its task started before the tasks were listed, so a task missing
        from the list is gone; rows read after the list could name a pod started since."""
        snap, states = tasks if tasks is not None else await read_tasks(self.store, self.containerd)
        rows = list(snap.sandboxes.values())
        ready = [
            r for r in rows if r.desired == SandboxDesired.READY and r.phase == SandboxPhase.READY
        ]
        for row in rows:
            if row.desired != SandboxDesired.READY or row.phase == SandboxPhase.PENDING:
                self.queue.wake(row.id)
        recovering, self._recovering = self._recovering, set()
        down = " while crictld was down" if recovering else ""
        gone: list[tuple[str, str, str]] = []
        kept: list[tuple[SandboxView, int]] = []

        async def check(row: SandboxView) -> None:
            state = states.get(row.id)
            if state is None:
                gone.append((row.id, "TaskVanished", "the pause task is gone"))
            elif state.status == "STOPPED":
                message = f"the pause task exited with {state.exit_status}{down}"
                gone.append((row.id, "PauseExited", message))
            elif row.id in recovering:
                if not host_network(config_of(row)) and not await asyncio.to_thread(
                    netns.is_netns, self.netns_path(row.id)
                ):
                    gone.append((row.id, "NetnsVanished", "the pod's network namespace is gone"))
                else:
                    kept.append((row, state.pid))
            elif row.id not in self._checking:  # else its CNI CHECK after the start is to come
                problem = await self._network_problem(row)
                if problem is not None:
                    gone.append((row.id, *problem))

        await _bounded(RECOVERY_CONCURRENCY, [check(r) for r in ready])

        def record(tx: Tx) -> list[tuple[str, str, str]]:
            for row, pid in kept:
                record_event(tx, "sandbox", row.id, "readopted", message=f"pid {pid}")
            return [lost for lost in gone if record_sandbox_lost(tx, *lost)]

        marked = await self.store.write(record) if gone or kept else []
        _report_lost(marked)
        if recovering:
            log.info("re-adopted pods", extra={"readopted": len(kept), "not_ready": len(marked)})
            to_check = [r for r, _ in kept if not host_network(config_of(r)) and r.cni_result]
            self._to_check += to_check
            self._checking.update(r.id for r in to_check)
            if self._serving:  # the first resync came late (containerd was away at start)
                self.check_networks()

    async def _record_lost(self, lost: list[tuple[str, str, str]]) -> None:
        """Marks ready pods NOTREADY for what the loop saw go (sandbox id, reason, message),
        says so in the log and counts it (`crictld_pods_lost_total`): kubelet answers a
        NOTREADY pod with a new sandbox, so an operator must find why crictld reported it."""
        marked = await self.store.write(
            lambda s: [item for item in lost if record_sandbox_lost(s, *item)]
        )
        _report_lost(marked)

    async def _network_problem(self, row: SandboxView) -> tuple[str, str] | None:
        """What is wrong with a ready pod's network as the kernel holds it (netlink, inside
        its netns): the netns gone, or the pod's IP on no interface any more."""
        if host_network(config_of(row)):
            return None
        path = self.netns_path(row.id)
        if not await asyncio.to_thread(netns.is_netns, path):
            return "NetnsVanished", "the pod's network namespace is gone"
        try:
            interfaces = await asyncio.to_thread(netns.addresses, path)
        except errors.CrictlError as e:
            return "NetworkCheckFailed", str(e)
        if row.ip and not any(row.ip in addrs for addrs in interfaces.values()):
            held = {name: addrs for name, addrs in interfaces.items() if name != "lo"}
            return "NetworkLost", f"the pod's IP {row.ip} is on no interface (found {held})"
        return None

    # -- restart recovery ------------------------------------------------------------------

    async def recover(self) -> None:
        """After a restart. What recovery relies on:

        * containerd is the truth for tasks: a task it still runs is re-adopted as is (never
          restarted because crictld restarted); one that stopped, or that containerd no longer
          knows (it restarted, the node rebooted), makes the sandbox NOTREADY, never PENDING;
        * every name is the sandbox id, so a half-made step is found by name;
        * rows in flight (PENDING, or a stop or remove not yet observed) get a pass, which
          finishes the setup or the teardown; nothing is resurrected.
        """
        rows = list(self.store.snapshot.sandboxes.values())
        for row in rows:
            if row.desired != SandboxDesired.READY or row.phase == SandboxPhase.PENDING:
                self.queue.wake(row.id)  # finish or undo what was in flight
        # The ready ones are re-adopted by the first resync, once the event subscription is
        # live: the task states are read once, after it, for recovery and resync alike.
        self._recovering = {
            r.id
            for r in rows
            if r.desired == SandboxDesired.READY and r.phase == SandboxPhase.READY
        }

    def check_networks(self) -> None:
        """Starts the CNI CHECK of the pods re-adopted at start (the daemon calls it once it
        serves: the checks execute plugins, which would slow the rest of the start-up)."""
        self._serving = True
        rows, self._to_check = self._to_check, []
        if rows:
            task = asyncio.create_task(self._check_networks(rows), name="pod network checks")
            self._network_checks.add(task)
            task.add_done_callback(self._network_checks.discard)

    async def _check_networks(self, rows: list[SandboxView]) -> None:
        """CNI CHECK of each re-adopted pod (interfaces, addresses, routes as CNI set them up),
        a few at a time; a pod whose check fails is NOTREADY, as if its network broke just
        after the restart. Run in the background: each check executes the chain's plugins.

        Each pod is checked with the configuration its ADD ran with (kept in its row): the
        config dir's network may have been renamed or changed while crictld was down, which
        says nothing of the pods already wired. A pod whose configuration can no longer run (a
        plugin gone) is not checked: that is no evidence its network broke. Its result goes to
        the CHECK with the host-side interfaces' MACs as they are now (`with_host_macs_now`):
        a bridge's MAC is the host's, and the bridge plugin can record a stale one."""
        groups: dict[str | None, list[SandboxView]] = {}
        for row in rows:
            groups.setdefault(row.cni_config, []).append(row)
        checks: list[Coroutine[Any, Any, bool | None]] = []
        skipped = 0
        for stored, group in groups.items():
            try:
                net, unusable = await asyncio.to_thread(
                    cni.pod_network_config,
                    stored,
                    self.settings.cni_conf_dir,
                    self.settings.cni_bin_dirs,
                )
            except cni.NetworkNotReady as e:
                unusable = str(e)
            if unusable:
                ids = [r.id for r in group]
                log.warning(
                    "pod network checks skipped", extra={"sandboxes": ids, "error": unusable}
                )
                self._checking.difference_update(ids)
                skipped += len(ids)
                continue
            checks += [self._check_network(net, row) for row in group]
        outcomes: list[bool | None] = []

        async def run(check: Coroutine[Any, Any, bool | None]) -> None:
            outcomes.append(await check)

        await _bounded(RECOVERY_CONCURRENCY, [run(c) for c in checks])
        log.info(
            "pod networks checked",
            extra={
                "passed": outcomes.count(True),
                "failed": outcomes.count(False),
                "not_checked": skipped + outcomes.count(None),
            },
        )

    async def _check_network(self, net: cni.NetworkConfig, row: SandboxView) -> bool | None:
        """Whether the pod's network passed its CHECK (None: the network runs none)."""
        config = config_of(row)
        prev, moved = cni.with_host_macs_now(json.loads(row.cni_result or "{}"))
        for m in moved:
            log.info(
                "host interface MAC moved since the pod's ADD; checked with the one it has now",
                extra={"sandbox": row.id, "interface": m.interface, "added": m.added, "now": m.now},
            )
        try:
            checked = await cni.check(
                net,
                row.id,
                str(self.netns_path(row.id)),
                cni_args(row.id, config),
                capability_args(config),
                prev,
                self.settings.cni_bin_dirs,
            )
            return True if checked else None
        except errors.CrictlError as e:
            await self._record_lost([(row.id, "NetworkCheckFailed", str(e))])
            return False
        finally:
            self._checking.discard(row.id)


def _report_lost(marked: list[tuple[str, str, str]]) -> None:
    for sid, reason, message in marked:
        log.warning("pod not ready", extra={"sandbox": sid, "reason": reason, "error": message})
        metrics.PODS_LOST.labels(reason).inc()
