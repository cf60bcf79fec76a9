"""`crictld serve`: wires the store, containerd, the reconciler and the CRI servicers together.

Start-up order, each step safe to repeat after a crash at any point:
  1. take the state dir's lock (and the socket's): one daemon per state dir, and a stale socket
     left by a SIGKILLed daemon can then be removed safely;
  2. migrate the database to head (each migration is one transaction);
  3. reach containerd: the one configured, or the standard socket if it answers, or a managed
     private one (re-used if an earlier crictld left it running);
  4. serve CRI on the unix socket (mode 0660).
SIGTERM and SIGINT stop serving, stop a managed containerd (its shims and tasks live on), and
release everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import logging
import os
import shutil
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from crictl import __version__, errors, metrics
from crictl.api.container_events import ContainerEvents, EventHub, hub_for
from crictl.api.containers import Containers
from crictl.api.front import FrontLoop
from crictl.api.images import Images
from crictl.api.runtime_info import RuntimeInfo
from crictl.api.sandboxes import PodSandboxes
from crictl.api.server import Server, bind_unix
from crictl.api.service import IMAGE_SERVICE, RUNTIME_SERVICE, generic_handler
from crictl.api.stats import Stats
from crictl.api.streaming import Streaming
from crictl.config import DEFAULT_CONTAINERD_SOCKET, MANAGED, Config
from crictl.containerd.client import ContainerdClient
from crictl.containerd.managed import ManagedContainerd
from crictl.images.registry import Credentials, RegistryClient
from crictl.oci import apparmor
from crictl.reconciler import faults
from crictl.reconciler.containers import ContainerReconciler, find_logger
from crictl.reconciler.events import ContainerdEvents, EventHandlers, Supervisor
from crictl.reconciler.health import Health
from crictl.reconciler.images import ImageManager
from crictl.reconciler.netconf import PodCidr
from crictl.reconciler.orphans import OrphanSweeper, SweepSettings
from crictl.reconciler.sandboxes import SandboxReconciler, SandboxSettings, read_tasks
from crictl.reconciler.stats import StatsCollector
from crictl.reconciler.streams import StreamBackend
from crictl.store.engine import Store, make_engine
from crictl.store.events import record_event
from crictl.store.inventory import count_by_phase
from crictl.store.migrate import upgrade_in_child
from crictl.store.retention import EventLogRetention
from crictl.streaming.server import StreamServer

T = TypeVar("T")
log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0
RECOVERY_WAIT = 30.0  # serve anyway after this: containerd may be away; resync follows it


class Lock:
    """An exclusive flock on a file; the kernel drops it when the process dies, even by SIGKILL."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise errors.FailedPrecondition(
                f"another crictld (pid {holder}) is using {self.what}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class ContainerdConnection:
    client: ContainerdClient
    managed: ManagedContainerd | None
    how: str  # "configured" | "standard" | "started" | "adopted"


async def connect_containerd(config: Config) -> ContainerdConnection:
    if config.containerd not in ("", MANAGED):
        client = ContainerdClient(
            config.containerd, config.containerd_namespace, config.systemd_cgroup
        )
        return ContainerdConnection(client, None, "configured")
    if config.containerd == "" and DEFAULT_CONTAINERD_SOCKET.exists():
        client = ContainerdClient(
            str(DEFAULT_CONTAINERD_SOCKET), config.containerd_namespace, config.systemd_cgroup
        )
        try:
            await client.version(timeout=2.0)
            return ContainerdConnection(client, None, "standard")
        except errors.CrictlError as e:
            log.info("standard containerd socket does not answer", extra={"error": str(e)})
            await client.close()
    managed = ManagedContainerd(
        config.managed_containerd_dir,
        config.containerd_bin,
        config.managed_containerd_state_dir,
        config.containerd_start_timeout,
    )
    how = await managed.ensure_running()
    client = ContainerdClient(managed.address, config.containerd_namespace, config.systemd_cgroup)
    return ContainerdConnection(client, managed, how)


def sd_notify(state: str) -> bool:
    """Tells systemd (Type=notify) about the daemon's state through $NOTIFY_SOCKET, when
    started by it: READY=1 once the CRI socket serves. No libsystemd needed: it is one
    datagram. False when there is no one to tell."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        log.warning("sd_notify failed", extra={"socket": address, "error": str(e)})
        return False
    return True


def check_dependencies(config: Config) -> None:
    """What crictld cannot run containers without, checked before anything starts, each
    named when missing. (CNI plugins are the network's: Status reports them, since kubelet's
    network add-on may install them after crictld starts.)"""
    missing = []
    try:
        find_logger()
    except errors.FailedPrecondition as e:
        missing.append(str(e))
    # The runc shim runs runc from PATH (ours is containerd's: the same environment).
    for binary, why in (
        ("runc", "the OCI runtime containerd's runc shim runs"),
        ("containerd-shim-runc-v2", "containerd's runc shim"),
    ):
        if shutil.which(binary) is None:
            missing.append(f"{binary} ({why}) is not on PATH")
    if config.containerd == MANAGED and shutil.which(config.containerd_bin) is None:
        missing.append(f"{config.containerd_bin} (to run a managed containerd) is not on PATH")
    if missing:
        raise errors.FailedPrecondition("cannot start: " + "; ".join(missing))


@contextlib.contextmanager
def children_watched_by_pidfd(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Python 3.11's default child watcher starts a thread per child to wait for it; every CNI
    plugin run is a child, 3 per pod setup and teardown. A pidfd watcher (Linux 5.3+) waits
    for them on the event loop instead (Python 3.12 chooses it on its own). The watcher is
    process-wide: the previous one is put back when serving ends."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        yield
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel without pidfd_open, or a seccomp filter refusing it
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        previous = asyncio.get_child_watcher()
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(previous)
        watcher.close()


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    with children_watched_by_pidfd(asyncio.get_running_loop()):
        await _serve(config, stop)


async def _serve(config: Config, stop: asyncio.Event | None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Private state (the database holds every container's config, env values included): the
    # state dir is 0700 from its first moment, and one left wider (by hand, or 0711 by an older
    # crictld) is tightened before anything is written in it. Containers need no way through
    # it: runc, as root, resolves the sources of their bind mounts.
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config.state_dir, 0o700)
    socket_gid = resolve_group(config.socket_group)
    state_lock = Lock(config.state_dir / "crictld.lock", f"state dir {config.state_dir}")
    socket_lock = Lock(
        config.socket.with_name(config.socket.name + ".lock"), f"socket {config.socket}"
    )
    faults.arm(config.fault_point)
    check_dependencies(config)
    state_lock.acquire()
    # Any daemon before this one let go of the state dir by now: its exec sessions and pulls
    # ended with it (see OrphanSweeper).
    started_at = time.time_ns()
    try:
        socket_lock.acquire()
    except BaseException:
        state_lock.release()
        raise
    store: Store | None = None
    images: ImageManager | None = None
    sandboxes: SandboxReconciler | None = None
    containers: ContainerReconciler | None = None
    stats: StatsCollector | None = None
    conn: ContainerdConnection | None = None
    server: Server | None = None
    streams: StreamServer | None = None
    events: ContainerdEvents | None = None
    supervisor: Supervisor | None = None
    sweeper: OrphanSweeper | None = None
    retention: EventLogRetention | None = None
    metrics_server: Any = None
    hub: EventHub | None = None
    probe: ContainerdClient | None = None
    front = FrontLoop()  # the CRI server's loop (crictl/api/front.py)
    try:
        before, after = await upgrade_in_child(config.db_path)
        if before != after:
            log.info(
                "migrated database", extra={"db": str(config.db_path), "from": before, "to": after}
            )
        store = Store(make_engine(config.db_path))
        steps = Steps()
        built = time.perf_counter()
        snap = await asyncio.to_thread(store.build_model)
        log.info(
            "read model built",
            extra={
                "sandboxes": len(snap.sandboxes),
                "containers": len(snap.containers),
                "ms": round((time.perf_counter() - built) * 1000, 1),
            },
        )
        log.info(
            "apparmor",
            extra={"state": await asyncio.to_thread(apparmor.load_default, config.state_dir)},
        )
        steps.done("database and read model")
        conn = await connect_containerd(config)
        await conn.client.ensure_namespace({"crictld.io/owner": "crictld"})
        await store.write(
            lambda s: record_event(
                s,
                "daemon",
                str(os.getpid()),
                "started",
                message=f"crictld {__version__}; containerd {conn.client.address} ({conn.how})",
            )
        )

        images = ImageManager(
            store,
            conn.client,
            registry_client(config),
            pause_image=config.pause_image,
            spool=config.state_dir / "pulls",
        )
        steps.done("containerd connected")
        await images.start()
        steps.done("image cache")
        sandboxes = SandboxReconciler(
            store,
            conn.client,
            images,
            SandboxSettings(
                state_dir=config.state_dir,
                netns_dir=config.netns_dir,
                cni_conf_dir=config.cni_conf_dir,
                cni_bin_dirs=config.cni_bin_dirs,
                pause_image=config.pause_image,
                systemd_cgroup=config.systemd_cgroup,
                runtime_handlers=config.runtime_handlers,
            ),
        )
        containers = ContainerReconciler(store, conn.client, images, sandboxes, config.state_dir)
        await sandboxes.start()
        steps.done("pods re-adopted")
        await containers.start()
        steps.done("container leftovers")
        # Subscribe, then resync: the first resync is start-up recovery; later ones follow
        # every reconnection to containerd.
        events = ContainerdEvents(
            conn.client,
            EventHandlers(
                on_exit=[sandboxes.on_task_exit, containers.on_exit],
                on_oom=[containers.on_oom],
                on_image=[images.on_containerd_event],
                resync=[
                    partial(resync_tasks, store, conn.client, sandboxes, containers),
                    images.resync,
                ],
            ),
        )
        events.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(events.synced.wait(), RECOVERY_WAIT)
        steps.done("subscribed and resynced")
        supervisor = Supervisor(conn.client, conn.managed, on_back=events.retry_now)
        supervisor.start()
        stats = StatsCollector(store, conn.client, systemd_cgroup=config.systemd_cgroup)
        await stats.start()
        streams = StreamServer(
            StreamBackend(store, containers),
            config.stream_server_address,
            config.stream_server_port,
        )
        await streams.start()
        # Status runs on the front loop: its probe has a client (a connection) of its own there.
        probe = ContainerdClient(conn.client.address, config.containerd_namespace)
        health = Health(probe, config.cni_conf_dir, config.cni_bin_dirs)
        pod_api, container_api = PodSandboxes(store, sandboxes), Containers(store, containers)
        hub = await front.run(_on_loop(partial(hub_for, store, pod_api, container_api)))
        runtime_info = RuntimeInfo(
            health,
            live_info=partial(live_info, supervisor, events, sandboxes, containers, hub),
            systemd_cgroup=config.systemd_cgroup,
            pod_cidr=PodCidr(store, config.cni_conf_dir, config.cni_conf_template),
            runtime_handlers=config.runtime_handlers,
            verbose_info={
                "stateDir": str(config.state_dir),
                "containerd": conn.client.address,
                "containerdMode": conn.how,
                "containerdNamespace": config.containerd_namespace,
                "cniConfDir": str(config.cni_conf_dir),
                "cniBinDirs": ":".join(str(d) for d in config.cni_bin_dirs),
                "netnsDir": str(config.netns_dir),
                "pauseImage": config.pause_image,
                "streamServer": streams.base_url,
                "cgroupDriver": config.cgroup_driver,
            },
        )
        server = Server()
        server.add_generic_rpc_handlers(
            (
                generic_handler(
                    RUNTIME_SERVICE,
                    runtime_info,
                    pod_api,
                    container_api,
                    Stats(store, stats),
                    Streaming(store, streams),
                    ContainerEvents(hub),
                    daemon=loop,
                ),
                generic_handler(IMAGE_SERVICE, Images(images), daemon=loop),
            )
        )
        # Bound here, not on the front loop: the socket is made under a umask, which is the
        # process's, so nothing on this loop may run meanwhile.
        await front.run(server.start(_bind(config.socket, socket_gid)))
        steps.done("serving")
        # What no row owns (left by crashes) is removed beside the serving daemon, at once and
        # every few minutes after: it holds nothing a request needs.
        sweeper = OrphanSweeper(
            store,
            conn.client,
            SweepSettings(
                state_dir=config.state_dir,
                netns_dir=config.netns_dir,
                cni_conf_dir=config.cni_conf_dir,
                cni_bin_dirs=config.cni_bin_dirs,
            ),
            grace=config.orphan_grace,
            daemon_started=started_at,
        )
        sweeper.start()
        # The event log keeps its newest rows (crictl/store/retention.py).
        retention = EventLogRetention(store, config.event_log_rows)
        retention.start()
        sandboxes.check_networks()
        if config.metrics_address:
            register_gauges(store, supervisor, events, sandboxes, containers)
            metrics_server = metrics.serve(config.metrics_address)
        log.info(
            "serving CRI",
            extra={
                "socket": str(config.socket),
                "containerd": conn.client.address,
                "containerd_mode": conn.how,
                "stream_server": streams.base_url,
                "pid": os.getpid(),
                "startup_ms": steps.ms,
                "since_exec_ms": round(_process_age() * 1000),
            },
        )
        sd_notify("READY=1\nSTATUS=serving CRI")
        await stop.wait()
        log.info("shutting down")
        sd_notify("STOPPING=1")
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        if server is not None:
            await front.run(server.stop(SHUTDOWN_GRACE))
        with contextlib.suppress(FileNotFoundError):
            config.socket.unlink()
        if hub is not None:
            await front.run(hub.close())
        if probe is not None:
            await front.run(probe.close())
        front.close()
        if streams is not None:
            await streams.stop()
        if sweeper is not None:
            await sweeper.stop()
        if retention is not None:
            await retention.stop()
        if supervisor is not None:
            await supervisor.stop()
        if events is not None:
            await events.stop()
        if stats is not None:
            await stats.stop()
        if containers is not None:
            await containers.stop()
        if sandboxes is not None:
            await sandboxes.stop()
        if images is not None:
            await images.stop()
        if conn is not None:
            await conn.client.close()
            if conn.managed is not None:
                await conn.managed.stop()
        if store is not None:
            store.close()
        socket_lock.release()
        state_lock.release()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def live_info(
    supervisor: Supervisor,
    events: ContainerdEvents,
    sandboxes: SandboxReconciler,
    containers: ContainerReconciler,
    hub: EventHub,
) -> dict[str, object]:
    """What verbose Status shows of the daemon's own state: containerd's connection, the
    event stream, GetContainerEvents subscribers, and every reconcile pass that keeps
    failing, with its last error."""
    # Called on the CRI server's loop while the daemon's changes these: each dict is copied
    # in one step (`list` of its items runs without giving up the GIL), then read.
    failing = [
        {"kind": kind, "id": key, "attempts": f.attempts, "error": f.error, "since": f.since}
        for kind, queue in (("sandbox", sandboxes.queue), ("container", containers.queue))
        for key, f in list(queue.failures.items())
    ]
    return {
        "containerdConnected": supervisor.connected,
        "containerdOutages": supervisor.outages,
        "containerdRestarts": supervisor.restarts,
        "containerdLastError": supervisor.last_error,
        "eventSubscriptions": events.subscriptions,
        "lastResyncAt": events.last_resync_at,
        "containerEventSubscribers": hub.subscribers,
        "failingPasses": failing,
    }


def register_gauges(
    store: Store,
    supervisor: Supervisor,
    events: ContainerdEvents,
    sandboxes: SandboxReconciler,
    containers: ContainerReconciler,
) -> None:
    """The gauges /metrics computes when scraped (from the scrape's thread: plain reads)."""
    queues = {"sandbox": sandboxes.queue, "container": containers.queue}
    metrics.GAUGES.add(
        "crictld_reconcile_queue_depth",
        "Objects with a reconcile pass running or a retry pending.",
        ("kind",),
        lambda: {(k,): q.depth() for k, q in queues.items()},
    )
    metrics.GAUGES.add(
        "crictld_reconcile_failing_since_seconds",
        "Age of the oldest run of failures of a pass still being retried (0: none).",
        ("kind",),
        lambda: {
            (k,): max((time.time() - f.since for f in q.failures.values()), default=0.0)
            for k, q in queues.items()
        },
    )
    metrics.GAUGES.add(
        "crictld_containerd_up",
        "1 while containerd answers, 0 while it is unreachable.",
        (),
        lambda: {(): float(supervisor.connected)},
    )
    metrics.GAUGES.add(
        "crictld_containerd_outages",
        "Times containerd became unreachable since the daemon started.",
        (),
        lambda: {(): float(supervisor.outages)},
    )
    metrics.GAUGES.add(
        "crictld_containerd_restarts",
        "Times the daemon restarted its managed containerd.",
        (),
        lambda: {(): float(supervisor.restarts)},
    )
    metrics.GAUGES.add(
        "crictld_containerd_event_subscriptions",
        "Subscriptions to containerd's events (each followed by a resync); 1 + reconnects.",
        (),
        lambda: {(): float(events.subscriptions)},
    )
    metrics.GAUGES.add(
        "crictld_objects",
        "Pods and containers in the store, by phase.",
        ("kind", "phase"),
        lambda: {k: float(n) for k, n in store.read_sync(count_by_phase).items()},
    )


def registry_client(config: Config) -> RegistryClient:
    auths = {}
    for host, entry in config.registry_auths.items():
        creds = Credentials.from_auth_config(**entry)
        if creds is not None:
            auths[host] = creds
    return RegistryClient(
        mirrors=config.registry_mirrors,
        insecure=config.insecure_registries,
        auths=auths,
        progress_timeout=config.image_pull_progress_timeout,
    )


def resolve_group(group: str) -> int:
    """The gid of `socket_group`: a group name or a number; "" = the daemon's own group."""
    if not group:
        return os.getegid()
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise errors.InvalidArgument(f"socket_group {group!r}: no such group") from None


async def resync_tasks(
    store: Store,
    client: ContainerdClient,
    sandboxes: SandboxReconciler,
    containers: ContainerReconciler,
) -> None:
    """Pods and containers against containerd's tasks, listed once for both (listing asks
    each shim for its state: at 400 tasks, ~0.2 s), after the rows were read."""
    tasks = await read_tasks(store, client)
    await asyncio.gather(sandboxes.resync(tasks), containers.resync(tasks))


class Steps:
    """How long each start-up step took (logged with "serving CRI"). The first is everything
    from the exec to the database opened: the interpreter, the imports, the migration check
    (to the kernel's clock tick, 10 ms)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {"exec to database open": round(_process_age() * 1000, 1)}
        self._last = time.perf_counter()

    def done(self, step: str) -> None:
        now = time.perf_counter()
        self.ms[step] = round((now - self._last) * 1000, 1)
        self._last = now


def _process_age() -> float:
    """Seconds since this process was started (its imports included), from /proc."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


async def _on_loop(make: Callable[[], T]) -> T:
    """`make()` called on the running loop (for what takes its loop when made)."""
    return make()


def _bind(path: Path, gid: int) -> socket.socket:
    """The CRI socket at PATH, bound (not yet listened on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # We hold the socket's lock, so a file here was left by a dead crictld.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old_umask = os.umask(0o117)  # the socket is born 0660: no window where others may connect
    try:
        sock = bind_unix(path)
    finally:
        os.umask(old_umask)
    # Born root:<our group> 0660; then handed to socket_group (only ever what was asked).
    os.chown(path, -1, gid)
    os.chmod(path, 0o660)
    return sock
