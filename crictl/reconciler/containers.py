"""Containers: from the row CRI wrote to a created, running, exited and removed container.

Level-triggered like sandboxes, with the container id as every name (containerd container,
snapshot, task), so a step cut short by a crash is found by name and finished. Create makes the
containerd container and its writable snapshot (under a short lease, so garbage collection
cannot take the snapshot before the container record holds it); Start creates the task with
its output going to `crictld-logger` (started by the shim, so logs do not depend on crictld
being up) and starts it; an exit seen on containerd's event stream, or found at restart,
records the real exit code; Stop sends the image's stop signal, then SIGKILL at the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, cast

from google.protobuf import json_format

from crictl import errors, trace
from crictl.containerd import runc
from crictl.containerd.client import GC_ROOT_LABEL, ContainerdClient, TaskState
from crictl.containerd.rootfs import read_text
from crictl.gen.containerd.api.services.leases.v1 import leases_pb2
from crictl.gen.containerd.api.types import mount_pb2
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.oci.spec import (
    SandboxRef,
    cgroups_path,
    container_spec,
    image_process,
    image_volume_mount,
    linux_resources,
    resolve_user,
    with_updated_resources,
)
from crictl.reconciler import cgroups, faults
from crictl.reconciler.configs import ConfigCache
from crictl.reconciler.events import TaskExit
from crictl.reconciler.images import ImageManager
from crictl.reconciler.queue import KeyedGate, KeyedQueue
from crictl.reconciler.sandboxes import (
    SNAPSHOTTER,
    SandboxReconciler,
    clamp_oom_score_adj,
    config_of,
    host_network,
    read_tasks,
    remove_files,
)
from crictl.reconciler.stdio import ExecProcess
from crictl.store.common import Tx
from crictl.store.containers import (
    delete_container,
    desired_reached,
    mark_container_observed,
    record_container_created,
    record_container_exited,
    record_container_started,
    removal_asked,
    set_container_desired,
    set_containers_desired,
    update_container_config,
)
from crictl.store.engine import Store
from crictl.store.events import record_event
from crictl.store.models import ContainerDesired, ContainerPhase, SandboxPhase
from crictl.store.readmodel import ContainerView, Snapshot
from crictl.store.specs import set_runtime_spec, stored_spec
from crictl.streaming.backend import STDERR, STDOUT

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 2  # seconds; when a stop's own timeout was lost to a restart
# A pod's stop or removal takes its containers down this many at once (kill, exit, delete).
# containerd 1.6's runc shim (one per pod) stopped reporting exits when many of its tasks
# were killed at once (20 did it here; why: _signal), and the pod could not be stopped.
POD_TEARDOWN_AT_ONCE = 4
# Signals sent at once to the tasks of one pod (its shim), whoever asks: each is a `runc kill`
# whose exit the shim must see while it also processes the exits it causes (see _signal).
POD_SIGNALS_AT_ONCE = 4
# Seconds a signal keeps its place for the exit it causes: a SIGKILL's always comes; another
# signal's may never (a task that handles or ignores it, as a namespace's PID 1 without a
# handler does), so it waits less, but where the task is not its PID namespace's PID 1 (it
# shares the pod's, or the node's) a SIGTERM without a handler kills as a SIGKILL does, and
# the shim runs `runc kill --all` on each such exit: there it waits as a SIGKILL's (see
# _signal).
KILL_EXIT_WAIT = 0.5
SIGNAL_EXIT_WAIT = 0.1
EXEC_OUTPUT_CAP = 16 << 20
ACCOUNTS_KEPT = 256  # images whose /etc/passwd and /etc/group are kept in memory
KIND_LABEL = "crictld.io/kind"
CREATE_LEASE_LABEL = "crictld.io/create"  # the create leases of earlier crictlds
SANDBOX_LABEL = "crictld.io/sandbox-id"


def container_config_of(row: ContainerView) -> api_pb2.ContainerConfig:
    """The container's config (shared and kept while the row is: do not modify it)."""
    return CONTAINER_CONFIGS.get(row.id, row.config)


def _parse_container_config(text: str) -> api_pb2.ContainerConfig:
    return json_format.Parse(text, api_pb2.ContainerConfig())


CONTAINER_CONFIGS = ConfigCache(_parse_container_config)


LOGGER_PLACES = (
    Path(__file__).resolve().parent.parent / "_bin" / "crictld-logger",  # in a built wheel
    Path(sys.executable).with_name("crictld-logger"),  # hack/install-deps.sh's
)


def find_logger() -> str:
    """crictld-logger (logger/crictld-logger.c): the one a wheel ships inside the package, or
    the one hack/install-deps.sh builds next to the interpreter, or one on PATH."""
    for path in LOGGER_PLACES:
        if os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("crictld-logger")
    if found is None:
        places = ", ".join(str(p) for p in LOGGER_PLACES)
        raise errors.FailedPrecondition(
            f"crictld-logger is missing (looked in {places} and PATH): install crictld from "
            "a wheel, or build it with hack/install-deps.sh (make deps)"
        )
    return found


def exit_reason(code: int, oom: bool) -> str:
    if oom:
        return "OOMKilled"
    return "Completed" if code == 0 else "Error"


@dataclass(frozen=True)
class TaskIO:
    stdin: str
    stdout: str
    stderr: str


def _live_logger(pidfile: Path) -> int | None:
    """The pid of the crictld-logger named by `pidfile`, if it still runs."""
    try:
        pid = int(pidfile.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"crictld-logger" in cmdline.split(b"\0", 1)[0] else None


async def _end_logger(pidfile: Path, grace: float = 0.0) -> None:
    """Ends a logger crictld started whose task is gone or never came to be (it would wait
    for a FIFO writer forever), after `grace` seconds to finish writing on its own."""
    deadline = time.monotonic() + grace
    while (pid := _live_logger(pidfile)) is not None:
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


def volume_key(container_id: str, index: int) -> str:
    """The view snapshot of a container's image volume (its mount's index)."""
    return f"{container_id}-vol{index}"


class ContainerReconciler:
    def __init__(
        self,
        store: Store,
        containerd: ContainerdClient,
        images: ImageManager,
        sandboxes: SandboxReconciler,
        state_dir: Path,
        logger: str | None = None,
    ) -> None:
        self.store = store
        self.containerd = containerd
        self.images = images
        self.sandboxes = sandboxes
        self.state_dir = state_dir
        self.logger = logger or find_logger()
        self.queue: KeyedQueue[str] = KeyedQueue(
            self.reconcile, self._record_failure, kind="container"
        )
        # When a stop escalates to SIGKILL (monotonic time): the earliest deadline any
        # StopContainer asked for wins, also while a stop with a longer one already waits.
        self._kill_at: dict[str, float] = {}
        self._kill_at_changed: dict[str, asyncio.Event] = {}
        self._oom: set[str] = set()
        self._processes: dict[str, dict[str, object]] = {}  # spec.process by container id
        # Exits seen while the start that caused them had not yet recorded RUNNING.
        self._early_exits: dict[str, tuple[int, int]] = {}
        # The rootfs mounts each create's Prepare answered, for its start (one round trip
        # fewer); a restart forgets them and the start asks containerd.
        self._mounts: dict[str, list[mount_pb2.Mount]] = {}
        # /etc/passwd and /etc/group of an image's rootfs, by its layers' chain id.
        self._accounts: dict[str, tuple[str, str]] = {}
        # ExecSync processes whose record in the shim and FIFOs go after the answer.
        self._closing: set[asyncio.Task[None]] = set()
        # One harvest per exit: a stop's pass and the exit event see the same exit, and the
        # second waits for the first (a lock and its users, by container id). `_harvested`:
        # containers whose exit this process recorded and whose task it deleted, so nothing
        # of their task is left to ask containerd about (a container never runs again).
        self._harvest_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._signal_gates = KeyedGate(POD_SIGNALS_AT_ONCE)
        # Containers signalled: the event their exit sets, and the signals waiting on it.
        self._exit_seen: dict[str, tuple[asyncio.Event, int]] = {}
        self._gate_releases: set[asyncio.Task[None]] = set()
        self._harvested: set[str] = set()
        sandboxes.containers_hook = self.teardown_sandbox_containers
        sandboxes.removals_hook = self.settle_removals

    async def start(self) -> None:
        await self.recover()

    async def stop(self) -> None:
        await self.queue.drain()
        await asyncio.gather(*self._closing, *self._gate_releases, return_exceptions=True)

    async def _record_failure(self, container_id: str, error: Exception) -> None:
        await self.store.write(
            lambda s: record_event(s, "container", container_id, "pass-failed", message=str(error))
        )

    def request_stop(self, container_id: str, timeout: float) -> None:
        """StopContainer's grace period: SIGKILL at now + timeout, or sooner if an earlier
        request asked for sooner; a pass already waiting on a longer one is woken."""
        deadline = time.monotonic() + max(0.0, timeout)
        current = self._kill_at.get(container_id)
        if current is None or deadline < current:
            self._kill_at[container_id] = deadline
            event = self._kill_at_changed.get(container_id)
            if event is not None:
                event.set()

    def container_dir(self, container_id: str) -> Path:
        return self.state_dir / "containers" / container_id

    # -- the reconcile function ------------------------------------------------------------

    async def reconcile(self, container_id: str) -> None:
        row = self.store.snapshot.containers.get(container_id)
        if row is None:
            return
        if row.desired == ContainerDesired.REMOVED:
            await self._remove(row)
        elif row.desired == ContainerDesired.EXITED:
            await self._stop(row)
        elif row.phase == ContainerPhase.PENDING:
            try:
                await self._create(row)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The undo is recorded before it starts: a crash in it is finished by the
                # next pass (desired REMOVED), never turned into a second create.
                undo = await self.store.write(
                    lambda s: set_container_desired(s, container_id, ContainerDesired.REMOVED)
                )
                await self._remove(undo, reason="CreateFailed")
                raise
        elif row.desired == ContainerDesired.RUNNING and row.phase == ContainerPhase.CREATED:
            await self._start(row)

    async def _sandbox(self, sandbox_id: str) -> tuple[Any, api_pb2.PodSandboxConfig]:
        sandbox = self.store.snapshot.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise errors.NotFound(f"pod sandbox {sandbox_id} not found")
        if sandbox.phase != SandboxPhase.READY:
            raise errors.FailedPrecondition(
                f"pod sandbox {sandbox_id} is not ready ({sandbox.phase})"
            )
        return sandbox, config_of(sandbox)

    async def _create(self, row: ContainerView) -> None:
        cid = row.id
        config = container_config_of(row)
        sandbox, sandbox_config = await self._sandbox(row.sandbox_id)
        image = self.images.status(config.image.image)
        if image is None:
            raise errors.NotFound(f"image {config.image.image!r} not found: pull it first")
        # A GC root until the container record names it (a lease would cost a round trip to
        # make and one to drop); one a crash leaves unowned is the orphan sweep's, as is any
        # writable snapshot keyed by an id no row or container owns.
        root = {GC_ROOT_LABEL: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}

        async def prepare() -> list[mount_pb2.Mount]:
            prepared = await self.containerd.prepare_snapshot(
                SNAPSHOTTER, cid, image.chain_id or "", labels=root
            )
            faults.point("container-create:after-snapshot")
            return prepared

        # The user is resolved with the image's /etc/passwd and /etc/group, read from the new
        # snapshot (the image's layers as they are). A chain of layers never changes, so
        # after the first container of an image they are known, and the snapshot and the
        # container record (containerd does not check that its snapshot exists yet) are
        # made at once.
        accounts = self._accounts.get(image.chain_id) if image.chain_id else None
        mounts: list[mount_pb2.Mount] | None = None
        if accounts is None:
            mounts = await prepare()
            accounts = (read_text(mounts, "/etc/passwd"), read_text(mounts, "/etc/group"))
            if image.chain_id:
                self._remember_accounts(image.chain_id, accounts)
        image_config = json.loads(image.config)
        _, _, _, image_user = image_process(image_config)
        try:
            user = resolve_user(config, image_user, *accounts)
        except ValueError as e:
            raise errors.InvalidArgument(f"container {config.metadata.name}: {e}") from e
        ref = SandboxRef(
            sandbox.id,
            sandbox_config,
            sandbox.task_pid or 0,
            None if host_network(sandbox_config) else str(self.sandboxes.netns_path(sandbox.id)),
            self.sandboxes.files_for(sandbox.id, sandbox_config),
        )
        volumes = await self._image_volumes(cid, config, root)
        target_pid = None
        if config.linux.security_context.namespace_options.target_id:
            target = self.store.snapshot.containers.get(
                config.linux.security_context.namespace_options.target_id
            )
            target_pid = target.task_pid if target is not None else None
        name = image.repo_tags[0] if image.repo_tags else image.id
        spec = container_spec(
            cid,
            config,
            ref,
            image_config,
            user,
            clamp_oom_score_adj(config.linux.resources.oom_score_adj),
            target_pid,
            systemd_cgroup=self.sandboxes.settings.systemd_cgroup,
            image_volumes={i: mount for i, (_, mount) in volumes.items()},
            swap_controller=cgroups.swap_controller(),
            image_name=name,
        )
        labels = {
            KIND_LABEL: "container",
            SANDBOX_LABEL: row.sandbox_id,
            "io.cri-containerd.kind": "container",
            # the container holds its image volumes' snapshots against containerd's GC
            **{
                f"containerd.io/gc.ref.snapshot.{SNAPSHOTTER}/vol{i}": key
                for i, (key, _) in volumes.items()
            },
        }
        binary = self.sandboxes.settings.runtime_handlers.get(sandbox.runtime_handler, "")

        # The spec the row keeps (crictl/store/specs.py): only where this pass made the record.
        stored: str | None = None

        async def create() -> None:
            nonlocal stored
            text = json.dumps(spec)
            if await self.containerd.create_container(cid, name, text, SNAPSHOTTER, labels, binary):
                # the record holds this spec: an exec starts from its process, unasked
                self._processes[cid] = dict(spec["process"])
                stored = text
            faults.point("container-create:after-container-create")

        if mounts is None:
            # Both are made; else, once both ended, the snapshot's error is raised if it
            # failed, the record's if not. The create's undo removes whichever was made.
            made = await asyncio.gather(prepare(), create(), return_exceptions=True)
            for outcome in made:
                if isinstance(outcome, BaseException):
                    raise outcome
            mounts = cast(list[mount_pb2.Mount], made[0])
        else:
            await create()
        self._mounts[cid] = list(mounts)
        await self.store.write(
            lambda s: record_container_created(
                s, cid, user.uid, user.gid, user.additional_gids, stored
            )
        )

    def _remember_accounts(self, chain_id: str, accounts: tuple[str, str]) -> None:
        if len(self._accounts) >= ACCOUNTS_KEPT:
            del self._accounts[next(iter(self._accounts))]  # the oldest
        self._accounts[chain_id] = accounts

    def _logger_args(self, row: ContainerView) -> dict[str, str]:
        d = self.container_dir(row.id)
        d.mkdir(parents=True, exist_ok=True)
        return {
            # Without a log path the logger still runs: it serves attach.
            "--log": row.log_path or os.devnull,
            "--pidfile": str(d / "logger.pid"),
            "--attach": str(d),
        }

    async def _container_io(self, row: ContainerView, config: api_pb2.ContainerConfig) -> TaskIO:
        """Where the task's stdio goes. Without stdin: a `binary://` URI, so the shim starts
        crictld-logger with the output pipes. With stdin: FIFOs, because the shim gives a
        `binary://` container no stdin; crictld starts the logger on them (once: a logger
        left by an interrupted start is reused), and it holds stdin open between attaches."""
        args = self._logger_args(row)  # one mkdir: on the loop, as the FIFOs below
        if not config.stdin:
            uri = f"binary://{self.logger}?{urllib.parse.urlencode(args)}"
            # With a tty the shim copies the console to stdout; stderr is the same stream.
            return TaskIO("", uri, "" if config.tty else uri)
        d = self.container_dir(row.id)
        paths = {n: d / n for n in ("stdin", "stdout", "stderr") if n != "stderr" or not config.tty}
        for path in paths.values():
            if not path.exists():
                os.mkfifo(path, 0o600)
        if _live_logger(d / "logger.pid") is None:
            args |= {f"--{n}-fifo": str(p) for n, p in paths.items()}
            args |= {"--stdin-once": "1" if config.stdin_once else "0", "--daemonize": "1"}
            proc = await asyncio.create_subprocess_exec(
                self.logger,
                *(x for kv in args.items() for x in kv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise errors.Unavailable(
                    f"crictld-logger did not start: {err.decode(errors='replace').strip()}"
                )
        return TaskIO(*(str(paths[n]) if n in paths else "" for n in ("stdin", "stdout", "stderr")))

    async def _release_stale_start(self, cid: str) -> None:
        """A start a crash cut short may have left runc blocking the task (crictl/containerd/
        runc.py): cleared before anything else is asked of the task."""
        await runc.release_if_stale(self.containerd.namespace, cid)

    async def _start(self, row: ContainerView) -> None:
        cid = row.id
        config = container_config_of(row)
        try:
            await self._sandbox(row.sandbox_id)
            # Independent steps, so at once: a start a crash cut short released, the rootfs
            # mounts (made by CreateContainer, as its Prepare answered them, else asked for:
            # never prepared here, it would lack the image's layers), and the stdio.
            _, mounts, io = await asyncio.gather(
                self._release_stale_start(cid),
                self._rootfs_mounts(cid),
                self._container_io(row, config),
            )
            await self.containerd.create_task(
                cid, mounts, stdin=io.stdin, stdout=io.stdout, stderr=io.stderr, terminal=config.tty
            )
            faults.point("container-start:after-task-create")
            try:
                pid = await self.containerd.start_task(cid)
            except errors.CrictlError:
                ns = self.containerd.namespace
                if not await asyncio.to_thread(runc.died_before_start, ns, cid):
                    raise
                # A start cut short killed the init before the program ran (containerd/
                # runc.py): the task is made again and started, once.
                log.warning(
                    "a start cut short left a dead task; making it again", extra={"task": cid}
                )
                await self.containerd.delete_task(cid)
                await self.containerd.create_task(
                    cid,
                    mounts,
                    stdin=io.stdin,
                    stdout=io.stdout,
                    stderr=io.stderr,
                    terminal=config.tty,
                )
                pid = await self.containerd.start_task(cid)
            faults.point("container-start:after-task-started")
        except (asyncio.CancelledError, errors.Unavailable):
            # containerd is away: not the container's failure. The pass is retried (and so
            # is kubelet's StartContainer); every step of it is safe to repeat.
            raise
        except Exception as e:
            # StartError, as kubelet expects: exit code 128 and the reason in the message.
            with contextlib.suppress(errors.CrictlError):
                await self.containerd.delete_task(cid)
            await _end_logger(self.container_dir(cid) / "logger.pid")
            message = str(e)
            await self.store.write(
                lambda s: record_container_exited(s, cid, 128, "StartError", message)
            )
            raise
        await self.store.write(lambda s: record_container_started(s, cid, pid))
        faults.point("container-start:after-task-start")
        early = self._early_exits.pop(cid, None)
        if early is not None and not await self._stale_exit(cid):
            await self._harvest(cid, *early)  # it exited before RUNNING was recorded

    async def _rootfs_mounts(self, cid: str) -> list[mount_pb2.Mount]:
        mounts = self._mounts.pop(cid, None)
        if mounts is None:
            mounts = await self.containerd.snapshot_mounts(SNAPSHOTTER, cid)
        return mounts

    async def _stop(self, row: ContainerView) -> None:
        cid = row.id
        await self._release_stale_start(cid)
        deadline = self._kill_at.get(cid)
        if deadline is None:  # the stop's own timeout was lost to a restart
            deadline = time.monotonic() + DEFAULT_STOP_TIMEOUT
            self._kill_at[cid] = deadline
        try:
            if cid not in self._harvested:  # else its exit is recorded, its task deleted
                await self._stop_task(row)
        finally:
            self._kill_at.pop(cid, None)
            self._kill_at_changed.pop(cid, None)
        gen = row.generation

        def observed(tx: Tx) -> None:
            mark_container_observed(tx, cid, gen)

        await self.store.write(observed)

    async def _stop_task(self, row: ContainerView) -> None:
        """Signals the task, SIGKILLs it at the deadline, records its exit and deletes it. A
        container recorded RUNNING is taken to run: its task is not asked for first (if it
        has exited or is gone meanwhile, the signal says so and its state is read then)."""
        cid = row.id
        if row.phase == ContainerPhase.RUNNING:
            state: TaskState | None = TaskState("RUNNING", row.task_pid or 0, 0, 0)
        else:
            state = await self.containerd.task_state(cid)
        if (
            state is not None
            and state.status in ("RUNNING", "PAUSED", "CREATED", "UNKNOWN")
            and not state.half_created
        ):
            sig = await self._stop_signal(row)
            if sig != signal.SIGKILL and self._kill_at[cid] > time.monotonic():
                await self._signal(cid, sig, all_processes=False)
                exited = await self._wait_until_kill_deadline(cid)
                state = exited or await self.containerd.task_state(cid)
            state = await self._kill_and_wait(cid, state, 30)
        await self._harvest_or_vanished(row, state)

    async def _wait_until_kill_deadline(self, cid: str) -> TaskState | None:
        """Waits for the task to stop, or for the SIGKILL deadline, which a later
        StopContainer may bring forward while this waits. Returns the stopped task's state
        (as the wait answered it), or None: at the deadline, or if there is no task."""
        changed = self._kill_at_changed.setdefault(cid, asyncio.Event())
        exited = asyncio.create_task(self.containerd.wait_exit(cid))
        try:
            while not exited.done():
                remaining = self._kill_at[cid] - time.monotonic()
                if remaining <= 0:
                    return None
                changed.clear()
                woken = asyncio.create_task(changed.wait())
                await asyncio.wait(
                    [exited, woken], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
            return exited.result() if exited.exception() is None else None
        finally:
            exited.cancel()
            await asyncio.gather(exited, return_exceptions=True)

    async def _signal(self, cid: str, sig: int, all_processes: bool = True) -> None:
        """Signals the task, at most POD_SIGNALS_AT_ONCE of one pod's at once, each keeping
        its place until the task's exit event comes or a bound passes (KILL_EXIT_WAIT,
        SIGNAL_EXIT_WAIT), in the background: the caller goes on at once.

        containerd 1.6's runc shim (one per pod) takes the exits of its children through one
        channel, 32 deep, read by one goroutine that may wait: for a process's lock, which a
        `runc kill` of that process holds until the shim sees runc exit (through the same
        channel), or, in a pod that shares its PID namespace, for the `runc kill --all` it
        runs on each exit. With many signals in flight the channel fills and the shim takes in
        one exit a second: 100 containers of a pod stopped at once, as kubelet stops a pod's
        containers, took 19-44 s here, and 40 sharing the pod's PID namespace 31-77 s, with
        errors (docs/architecture.md, "Per-pod ordering").

        A signal other than SIGKILL to a task that is not its PID namespace's PID 1 keeps its
        place as long as a SIGKILL's: with 0.1 s, 40 containers sharing their pod's PID
        namespace, stopped at once, jammed the shim in 4 of 7 runs on a slower VM (calls
        failing at their 20 s deadline); with 0.5 s, 11 of 11 runs answered every call."""
        row = self.store.snapshot.containers.get(cid)
        key = row.sandbox_id if row is not None else cid
        await self._signal_gates.acquire(key)
        exited, users = self._exit_seen.get(cid) or (asyncio.Event(), 0)
        self._exit_seen[cid] = (exited, users + 1)
        kills = sig == signal.SIGKILL or (row is not None and not _own_pid_namespace(row))
        wait = KILL_EXIT_WAIT if kills else SIGNAL_EXIT_WAIT
        release = asyncio.create_task(self._release_on_exit(key, cid, exited, wait))
        self._gate_releases.add(release)
        release.add_done_callback(self._gate_releases.discard)
        try:
            await self.containerd.kill_task(cid, sig, all_processes=all_processes)
        except errors.CrictlError:
            exited.set()  # nothing signalled: no exit of ours to wait for
            state = await self.containerd.task_state(cid)
            if state is not None and state.status != "STOPPED":
                raise
        except BaseException:
            exited.set()
            raise
        if sig != signal.SIGKILL:
            faults.point("container-stop:after-signal")

    async def _release_on_exit(
        self, key: str, cid: str, exited: asyncio.Event, wait: float
    ) -> None:
        """Gives the signal's place back once the task's exit event came (the shim took the
        exit in), or after `wait` seconds."""
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), wait)
        finally:
            self._signal_gates.release(key)
            event, users = self._exit_seen[cid]
            if users == 1:
                del self._exit_seen[cid]
            else:
                self._exit_seen[cid] = (event, users - 1)

    async def _kill_and_wait(
        self, cid: str, state: TaskState | None, timeout: float
    ) -> TaskState | None:
        """SIGKILLs the task unless it already stopped (`state`: read just before) and waits up
        to `timeout` for it to stop. Returns its state then: what the wait answered (STOPPED,
        with the exit), None if it is gone, else read again. The exit-event watcher may harvest
        and delete the task meanwhile (its shim then answers "ttrpc: closed"): a task that is
        gone or stopped is what was wanted."""
        if state is None or state.status == "STOPPED" or state.half_created:
            return state  # a half-created task cannot be signalled: it is only deleted
        await self._signal(cid, signal.SIGKILL)
        try:
            return await self.containerd.wait_exit(cid, timeout=timeout)
        except errors.DeadlineExceeded:
            return await self.containerd.task_state(cid)
        except errors.CrictlError:
            state = await self.containerd.task_state(cid)
            if state is not None and state.status != "STOPPED":
                raise
            return state

    async def _harvest_or_vanished(self, row: ContainerView, state: TaskState | None) -> None:
        """Records the exit of a stopped task (`state`: read after it stopped) and deletes it;
        a task that is gone without its exit having been recorded is EXITED 255 Unknown, never
        a made-up 0."""
        if state is not None and not state.half_created:
            await self._harvest(row.id, state.exit_status, state.exited_at_ns)
            return
        async with self._harvesting(row.id) as done:
            if not done:
                await self._record_vanished(row, state)

    async def _record_vanished(self, row: ContainerView, state: TaskState | None) -> None:
        if row.phase == ContainerPhase.RUNNING:
            message = (
                "its task never ran (a create cut short)"  # half-created: nothing to harvest
                if state is not None
                else "the task vanished without an exit being seen"
            )
            await self.store.write(
                partial(
                    record_container_exited,
                    container_id=row.id,
                    exit_code=255,
                    reason="Unknown",
                    message=message,
                )
            )
            self.queue.settle(row.id)
        # A half-created task is only deleted. With none shown the delete is still asked for:
        # containerd killed during the task's create, then restarted, holds a shim it lists no
        # task for (it holds no runc container), and only a delete drops that shim.
        await delete_stopped_task(self.containerd, row.id)
        self._harvested.add(row.id)

    @contextlib.asynccontextmanager
    async def _harvesting(self, cid: str) -> AsyncIterator[bool]:
        """Held while an exit of `cid` is recorded and its task deleted: a second harvester
        (the exit event and the stop's pass see the same exit) waits for the first, then is
        told whether that one finished (True: nothing is left to do; if it failed, the second
        does the work itself)."""
        lock, users = self._harvest_locks.get(cid, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._harvest_locks[cid] = (lock, users + 1)
        try:
            async with lock:
                yield cid in self._harvested
        finally:
            lock, users = self._harvest_locks[cid]
            if users > 1:
                self._harvest_locks[cid] = (lock, users - 1)
            else:
                del self._harvest_locks[cid]

    async def _task_deleted(self, cid: str) -> bool:
        """Deletes the task of a container whose exit is recorded (or that never ran): it is
        almost always gone already (the stop deleted it), and then containerd's "not found" is
        the one round trip a removal needs for it (that delete also drops a shim containerd
        re-adopted without a task). False if containerd refuses (a task still running): the
        caller stops it first."""
        try:
            await self.containerd.delete_task(cid)
        except errors.CrictlError:
            return False
        return True

    async def _stop_signal(self, row: ContainerView) -> int:
        config = container_config_of(row)
        image = self.images.status(config.image.image) if config.image.image else None
        name = ""
        if image is not None:
            name = (json.loads(image.config).get("config") or {}).get("StopSignal") or ""
        try:
            if name.isdigit():
                return int(name)
            return int(signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
        except KeyError:
            return int(signal.SIGTERM)

    async def _harvest(self, cid: str, exit_status: int, exited_at_ns: int) -> None:
        """Records an exit and deletes the task (its shim and logger then end). A stop waits
        for the record, not the delete (`KeyedQueue.settle`). Once per exit (`_harvesting`)."""
        async with self._harvesting(cid) as done:
            if done:
                self.queue.settle(cid)  # a stop that waits for this exit is answered
                return
            reason = exit_reason(exit_status, cid in self._oom)
            self._oom.discard(cid)
            await self.store.write(
                lambda s: record_container_exited(
                    s, cid, exit_status, reason, finished_at=exited_at_ns or None
                )
            )
            self.queue.settle(cid)
            await delete_stopped_task(self.containerd, cid)
            self._harvested.add(cid)

    async def _image_volumes(
        self, cid: str, config: api_pb2.ContainerConfig, root: dict[str, str]
    ) -> dict[int, tuple[str, dict[str, Any]]]:
        """For each image volume (by mount index): its read-only view snapshot of the image,
        a GC root as the create's (or found, after a crash), and the spec mount for it."""
        out: dict[int, tuple[str, dict[str, Any]]] = {}
        for i, m in enumerate(config.mounts):
            if not m.image.image:
                continue
            image = self.images.status(m.image.image)
            if image is None:
                raise errors.NotFound(f"image volume {m.image.image!r} not found: pull it first")
            key = volume_key(cid, i)
            mounts = await self.containerd.prepare_snapshot(
                SNAPSHOTTER, key, image.chain_id or "", view=True, labels=root
            )
            out[i] = (
                key,
                image_volume_mount(
                    [
                        {"type": x.type, "source": x.source, "options": list(x.options)}
                        for x in mounts
                    ]
                ),
            )
        return out

    async def _remove(self, row: ContainerView, reason: str = "Removed") -> None:
        cid = row.id
        await self._release_stale_start(cid)
        live = row.phase in (ContainerPhase.RUNNING, ContainerPhase.UNKNOWN)
        # A task this process harvested is deleted: nothing to ask containerd about it.
        if cid not in self._harvested and (live or not await self._task_deleted(cid)):
            state = await self._kill_and_wait(cid, await self.containerd.task_state(cid), 30)
            await self._harvest_or_vanished(row, state)
        faults.point("container-remove:after-task-delete")
        if container_config_of(row).stdin:
            # A logger crictld started for a task that never came to be waits for its FIFO
            # writers forever (one the shim started ends with the task's pipes).
            await _end_logger(self.container_dir(cid) / "logger.pid", grace=1.0)
        # The record, the snapshots and the directory are independent (each removal finds
        # "already gone" fine on a later pass): removed at once, one round trip of time.
        keys = [cid] + [
            volume_key(cid, i)
            for i, m in enumerate(container_config_of(row).mounts)
            if m.image.image
        ]

        async def delete_record() -> None:
            await self.containerd.delete_container(cid)
            faults.point("container-remove:after-container-delete")

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(delete_record())
                for key in keys:
                    group.create_task(self.containerd.remove_snapshot(SNAPSHOTTER, key))
                group.create_task(
                    trace.to_thread(
                        "container dir",
                        remove_files,
                        self.container_dir(cid),
                        self._task_cgroup(row),
                        {"container": cid},
                    )
                )
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None  # the first failure, with its own message
        self._processes.pop(cid, None)
        self._mounts.pop(cid, None)
        await self.store.write(lambda s: delete_container(s, cid, reason))
        self._harvested.discard(cid)
        CONTAINER_CONFIGS.forget(cid)

    def _task_cgroup(self, row: ContainerView) -> str:
        """The cgroups path the container's spec names: under its pod's parent (the pod's row
        outlives its containers' removals), as `container_spec` wrote it."""
        sandbox = self.store.snapshot.sandboxes.get(row.sandbox_id)
        parent = config_of(sandbox).linux.cgroup_parent if sandbox is not None else ""
        return cgroups_path(parent, row.id, self.sandboxes.settings.systemd_cgroup)

    # -- the sandbox's containers ----------------------------------------------------------

    async def settle_removals(self, sandbox_id: str) -> None:
        """Waits for the teardowns of the sandbox's containers whose removal CRI answered. A
        failure is left to the sandbox's own teardown, which waits for them again and fails."""
        ids = [r.id for r in self.store.snapshot.containers_of(sandbox_id) if removal_asked(r)]
        await asyncio.gather(*(self.queue.wait(cid) for cid in ids), return_exceptions=True)

    async def teardown_sandbox_containers(self, sandbox_id: str, remove: bool) -> None:
        """A sandbox's stop (or removal) stops (or removes) its containers through their own
        queue, so it never runs at once with another pass on the same container; a pod stop
        gives them no grace period, as containerd's StopPodSandbox. Every desired state is
        written in one transaction first (none if all are recorded already: kubelet stops a
        pod's containers before the pod). Both wait for each container's whole pass, its
        task's delete included, before the pause task is touched: the pod's tasks share one
        shim, which exits once its last task is deleted. With the pause's teardown beside the
        containers' deletes, a 1000-kill chaos run once had a delete fail with "ttrpc:
        closed" (likely the shim's exit; docs/architecture.md, "Per-pod ordering")."""
        desired = ContainerDesired.REMOVED if remove else ContainerDesired.EXITED
        rows = list(self.store.snapshot.containers_of(sandbox_id))
        if not all(desired_reached(row, desired) for row in rows):
            rows = await self.store.write(
                partial(set_containers_desired, container_ids=[r.id for r in rows], desired=desired)
            )
        if not remove:
            for row in rows:
                self.request_stop(row.id, 0)
        gate = asyncio.Semaphore(POD_TEARDOWN_AT_ONCE)

        async def one(cid: str) -> None:
            async with gate:
                await self.queue.wait(cid)

        results = await asyncio.gather(*(one(row.id) for row in rows), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]

    # -- resources -------------------------------------------------------------------------

    async def update_resources(
        self, container_id: str, resources: api_pb2.LinuxContainerResources
    ) -> None:
        row = self.store.snapshot.containers.get(container_id)
        if row is None:
            raise errors.NotFound(f"container {container_id} not found")
        if row.phase not in (ContainerPhase.CREATED, ContainerPhase.RUNNING):
            raise errors.FailedPrecondition(
                f"container {container_id} is {row.phase}: its resources cannot change"
            )
        config = api_pb2.ContainerConfig()
        config.CopyFrom(container_config_of(row))
        config.linux.resources.CopyFrom(resources)
        oci = linux_resources(resources, cgroups.swap_controller())
        # As containerd's CRI: the container record's spec first, which a task not made yet
        # (a created container) starts from and inspect shows, then the task's cgroups.
        spec = await self.runtime_spec(container_id)
        updated = with_updated_resources(spec, oci)
        # The row's copy of the spec is cleared before the record changes: a crash or an
        # error from here on leaves readers asking containerd (crictl/store/specs.py).
        await self.store.write(lambda s: set_runtime_spec(s, "container", container_id, None))
        await self.containerd.update_container_spec(container_id, updated)
        faults.point("resources-update:after-record")
        try:
            # Whatever the phase said: a start under way may have made the task since.
            await self.containerd.update_task_resources(container_id, oci)
        except errors.NotFound:
            pass  # no task yet: it is made from the spec just written
        except errors.FailedPrecondition as e:
            # runc refuses what the container's state rules out (a memory limit under
            # what it uses now): the request's conflict with the container. The record's
            # spec is put back: nothing changed.
            await self.containerd.update_container_spec(container_id, spec)
            before = json.dumps(spec)
            await self.store.write(lambda s: set_runtime_spec(s, "container", container_id, before))
            raise errors.FailedPrecondition(
                f"container {container_id}: the resources cannot be applied: {e}"
            ) from None
        text = json_format.MessageToJson(
            config, preserving_proto_field_name=True, sort_keys=True, indent=None
        )
        spec_text = json.dumps(updated)
        await self.store.write(lambda s: update_container_config(s, container_id, text, spec_text))

    async def runtime_spec(self, container_id: str) -> dict[str, Any]:
        """The spec of containerd's record of the container: the row's copy, else containerd's
        (crictl/store/specs.py)."""
        stored = await self.store.read(lambda s: stored_spec(s, "container", container_id))
        if stored is not None:
            spec: dict[str, Any] = json.loads(stored)
            return spec
        return dict(await self.containerd.container_spec(container_id))

    # -- exec ------------------------------------------------------------------------------

    async def start_exec(
        self,
        container_id: str,
        cmd: list[str],
        tty: bool = False,
        stdin: bool = False,
        stdout: bool = True,
        stderr: bool = True,
    ) -> ExecProcess:
        """Starts `cmd` in the running container with the container's own process settings."""
        if not cmd:
            raise errors.InvalidArgument("cmd is empty")
        base = self._processes.get(container_id)
        if base is None:
            # The container's process settings never change (UpdateContainerResources
            # touches only cgroups): read once per container (the row's copy of the spec,
            # else containerd's), not per exec.
            spec = await self.runtime_spec(container_id)
            process_spec: dict[str, object] = spec.get("process") or {}
            base = self._processes[container_id] = dict(process_spec)
        process = dict(base)
        process["args"] = cmd
        process["terminal"] = tty
        if tty:
            given = process.get("env")
            env = list(given) if isinstance(given, list) else []
            if not any(str(e).startswith("TERM=") for e in env):
                process["env"] = [*env, "TERM=xterm"]
        return await ExecProcess.start(
            self.containerd,
            container_id,
            process,
            self.state_dir / "exec",
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: int) -> ExecResult:
        row = self.store.snapshot.containers.get(container_id)
        if row is None:
            raise errors.NotFound(f"container {container_id} not found")
        if row.phase != ContainerPhase.RUNNING:
            raise errors.FailedPrecondition(f"container {container_id} is not running")
        process = await self.start_exec(container_id, cmd)
        out = {STDOUT: bytearray(), STDERR: bytearray()}
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                while (chunk := await process.read_output()) is not None:
                    kind, data = chunk
                    out[kind] += data[: EXEC_OUTPUT_CAP - len(out[kind])]
                code = await process.wait()
        except TimeoutError:
            try:
                await process.kill()
            finally:
                await process.close()
            raise errors.DeadlineExceeded(
                f"ExecSync {cmd!r} in {container_id}: timed out after {timeout}s; "
                "the process was killed"
            ) from None
        except BaseException:
            await process.close()
            raise
        # The answer is whole once the process exited and its output ended: its record in
        # the shim and its FIFOs are removed after it (a daemon killed first leaves the exec
        # dir to the orphan sweep, the record to the task's deletion).
        closing = asyncio.create_task(process.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closed)
        return ExecResult(bytes(out[STDOUT]), bytes(out[STDERR]), code)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("closing an exec failed", extra={"error": str(task.exception())})

    # -- logs ------------------------------------------------------------------------------

    async def reopen_log(self, container_id: str) -> None:
        row = self.store.snapshot.containers.get(container_id)
        if row is None:
            raise errors.NotFound(f"container {container_id} not found")
        if row.phase != ContainerPhase.RUNNING or not row.log_path:
            raise errors.FailedPrecondition(f"container {container_id} is not running")
        # Only a pid that is still a crictld-logger is signalled: a logger that died leaves a
        # pidfile whose pid another process may have by now.
        pid = _live_logger(self.container_dir(container_id) / "logger.pid")
        if pid is None:
            raise errors.FailedPrecondition(f"container {container_id}: its log writer is gone")
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError as e:
            raise errors.FailedPrecondition(
                f"container {container_id}: its log writer is gone ({e})"
            ) from e
        deadline = time.monotonic() + 5
        while not os.path.exists(row.log_path):
            if time.monotonic() > deadline:
                raise errors.Unavailable(f"container {container_id}: log not reopened")
            await asyncio.sleep(0.005)

    # -- observed changes ------------------------------------------------------------------

    async def on_oom(self, container_id: str) -> None:
        self._oom.add(container_id)

    async def on_exit(self, event: TaskExit) -> None:
        cid, exit_status, exited_at_ns = event.container_id, event.exit_status, event.exited_at_ns
        signalled = self._exit_seen.get(cid)
        if signalled is not None:
            signalled[0].set()
        row = self.store.snapshot.containers.get(cid)
        if row is None:
            return
        if row.phase == ContainerPhase.CREATED and row.desired == ContainerDesired.RUNNING:
            # A process that exits at once can beat its own start's write of RUNNING: leave the
            # exit for that start to harvest, unless it finished meanwhile (whoever pops it,
            # harvests it).
            self._early_exits[cid] = (exit_status, exited_at_ns)
            again = self.store.snapshot.containers.get(cid)
            if (
                again is not None
                and again.phase == ContainerPhase.RUNNING
                and (self._early_exits.pop(cid, None) is not None)
            ):
                await self._harvest(cid, exit_status, exited_at_ns)
            return
        if row.phase != ContainerPhase.RUNNING:
            return
        if not _exit_of_started_task(event, row) and await self._stale_exit(cid):
            return
        await self._harvest(cid, exit_status, exited_at_ns)

    async def _stale_exit(self, cid: str) -> bool:
        """An exit event can belong to an earlier task of the same id (one a create cut short
        left, deleted and made again): the task containerd runs now is the truth."""
        state = await self.containerd.task_state(cid)
        if state is not None and state.status == "RUNNING":
            log.info("ignoring the exit of an earlier task", extra={"container": cid})
            return True
        return False

    # -- restart recovery ------------------------------------------------------------------

    async def recover(self) -> None:
        """Once per start: what a fresh process must clean up. The task truth comes from
        `resync`, which runs after every subscription to containerd's events, the first one
        included (crictl/reconciler/events.py says what recovery relies on)."""
        # Leases of creates an earlier crictld cut short (creates hold their snapshot with a
        # GC root label now; the sweep would also remove these, after its grace).
        leases = await self.containerd.call(
            "list leases",
            self.containerd.leases.List(
                leases_pb2.ListRequest(filters=[f'labels."{CREATE_LEASE_LABEL}"']),
                metadata=self.containerd.metadata,
            ),
        )
        for lease in leases.leases:
            with contextlib.suppress(errors.NotFound):
                await self.containerd.call(
                    "delete lease",
                    self.containerd.leases.Delete(
                        leases_pb2.DeleteRequest(id=lease.id), metadata=self.containerd.metadata
                    ),
                )

    async def resync(self, tasks: tuple[Snapshot, dict[str, TaskState]] | None = None) -> None:
        """Running containers keep running (re-adopted, same pid); exits that happened while
        nobody listened are harvested with their real codes and times; a task containerd no
        longer knows is EXITED 255, Unknown; work in flight gets a pass. `tasks`: the rows,
        then every task's state read after them (`read_tasks`: a container RUNNING in rows
        read first had its task before the list; rows read after it could name a container
        started since, whose task the list lacks)."""
        snap, states = tasks if tasks is not None else await read_tasks(self.store, self.containerd)
        rows = list(snap.containers.values())
        for row in rows:
            in_flight = row.observed_generation < row.generation and (
                row.desired != ContainerDesired.CREATED or row.phase == ContainerPhase.PENDING
            )
            if row.phase == ContainerPhase.RUNNING:
                state = states.get(row.id)
                if state is None:
                    await self.store.write(
                        partial(
                            record_container_exited,
                            container_id=row.id,
                            exit_code=255,
                            reason="Unknown",
                            message="the task vanished while nobody watched",
                        )
                    )
                elif state.status == "STOPPED":
                    await self._harvest(row.id, state.exit_status, state.exited_at_ns)
            if in_flight or row.desired == ContainerDesired.REMOVED:
                self.queue.wake(row.id)


def _own_pid_namespace(row: ContainerView) -> bool:
    """The container's process is PID 1 of a PID namespace of its own (kubelet's default), so
    the kernel drops a signal it has no handler for."""
    opts = container_config_of(row).linux.security_context.namespace_options
    return opts.pid == api_pb2.CONTAINER


def _exit_of_started_task(event: TaskExit, row: ContainerView) -> bool:
    """The exit is that of the task whose start the row recorded: same pid, and it exited
    after that start was recorded. An earlier task of the same id (one a start cut short
    left) exited before it was deleted, so before the task that replaced it was made: such an
    exit, or any this cannot tell, is checked against containerd (`_stale_exit`)."""
    return (
        event.pid != 0
        and event.pid == row.task_pid
        and row.started_at is not None
        and event.exited_at_ns >= row.started_at
    )


async def delete_stopped_task(containerd: ContainerdClient, cid: str) -> None:
    """Deletes a stopped task. The exit-event watcher and a Stop or Remove may both get here
    at once; the loser sees the shim already gone ("ttrpc: closed"), which is success."""
    try:
        await containerd.delete_task(cid)
    except errors.CrictlError:
        if await containerd.task_state(cid) is not None:
            raise
