"""A private containerd that crictld starts and owns when no containerd is reachable.

It lives under `<state dir>/containerd/` (root, socket, config, log, pid file), with containerd's
CRI plugin disabled; its state dir (what it writes for each task it starts: bundles, FIFOs) is
`/run/crictld/containerd` by default, as containerd's own is /run/containerd: a tmpfs on a node,
gone at a reboot, as the tasks are. It runs in its own session, so a Ctrl-C to crictld's
terminal does not reach it, and it outlives a crictld that is SIGKILLed: the next crictld on the
same state dir finds it through the pid file (or, if a kill came before the pid file was
written, by its command line) and re-uses it if it answers, or replaces it if it does not. There
is never more than one: crictld holds the state dir's lock while it decides, and stops any
second one it finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import subprocess
import time
import tomllib
from pathlib import Path

from crictl import errors
from crictl.config import DEFAULT_CONTAINERD_START_TIMEOUT
from crictl.containerd.client import ContainerdClient

log = logging.getLogger(__name__)

_TASK_BUNDLES = "io.containerd.runtime.v2.task"  # <state>/<this>/<namespace>/<task id>
STOP_TIMEOUT = 10.0


def containerd_config(directory: Path, state: Path) -> str:
    """The managed containerd's config.toml.

    Its GC scheduler: containerd's default `pause_threshold` (0.02) re-arms the scheduler's
    timer at 49 times the average collection's duration, a few milliseconds on a node's small
    database, so an idle containerd woke ~150 times a second to find nothing to collect (57 %
    of its CPU at rest, perf; docs/performance.md, "At rest"). At 0 the check is once a
    second; `deletion_threshold = 1` collects at once after a deletion, as the short timer
    did. A synchronous collection (RemoveImage's) runs at once either way.

    Its restart monitor (`io.containerd.internal.v1.restart`) is off: every 10 s it lists
    every container record of every namespace, each read whole (its spec) before the filter
    on its restart label drops it, to restart the containers that carry that label. crictld
    sets no such label and restarts nothing behind kubelet. At 400 containers each listing
    allocated ~2.5 MB in containerd (pprof's sampled figure) with nothing asked of it: heap
    that grew toward Go's next collection goal (docs/performance.md, "At rest")."""
    return f"""version = 2
root = "{directory / "root"}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.restart"]

[grpc]
  address = "{directory / "containerd.sock"}"

[ttrpc]
  address = "{directory / "containerd.sock.ttrpc"}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{directory / "opt"}"

[plugins."io.containerd.gc.v1.scheduler"]
  pause_threshold = 0.0
  deletion_threshold = 1
"""


class ManagedContainerd:
    def __init__(
        self,
        directory: Path,
        binary: str = "containerd",
        state: Path | None = None,
        start_timeout: float = DEFAULT_CONTAINERD_START_TIMEOUT,
    ) -> None:
        self.directory = directory
        self.start_timeout = start_timeout
        self.binary = binary
        self.state = state if state is not None else directory / "state"
        self.config_path = directory / "config.toml"
        self.pid_path = directory / "containerd.pid"
        self.log_path = directory / "containerd.log"
        self.address = str(directory / "containerd.sock")
        self.pid: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    async def ensure_running(self) -> str:
        """Adopts the containerd left by an earlier crictld if it answers, else starts one.

        Returns "adopted" or "started".
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o711)
        recorded = self._recorded_pid()
        # A crictld killed between starting containerd and writing the pid file leaves one
        # the pid file does not name; starting another beside it would wait forever on the
        # lock of their shared metadata. Whatever runs with this config is ours to judge.
        running = self._running_pids()
        old = recorded if recorded is not None else (running[0] if running else None)
        for stray in (pid for pid in running if pid != old):
            log.warning("stopping a second managed containerd", extra={"pid": stray})
            await _terminate(stray, None)
        if old is not None:
            if await self._answers_while_alive(old, self.start_timeout):
                self.pid = old
                if old != recorded:
                    self._record_pid(old)
                log.info("re-using managed containerd", extra={"pid": old})
                return "adopted"
            log.warning("managed containerd does not answer: replacing it", extra={"pid": old})
            await _terminate(old, None)
        self._start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise errors.Unavailable(
                    f"managed containerd exited with {self._process.returncode} at start; "
                    f"see {self.log_path}"
                )
            if await self._answers(timeout=1.0):
                log.info("started managed containerd", extra={"pid": self.pid})
                return "started"
            await asyncio.sleep(0.1)
        raise errors.Unavailable(
            f"managed containerd did not answer in {self.start_timeout:g}s; see {self.log_path}"
        )

    def alive(self) -> bool:
        """Whether the containerd we run (or adopted) is still a live process."""
        if self._process is not None:
            return self._process.poll() is None  # also reaps it once it died
        pid = self.pid
        return pid is not None and self._recorded_pid() == pid and not _is_zombie(pid)

    def _state_dir(self) -> Path:
        """The state dir for a containerd about to start: the configured one, unless the one
        the containerd before had (its config.toml's; `<directory>/state` for a crictld that
        had no other) holds a task's bundle. That task's shim may still run, and only a
        containerd with the same state dir finds it again; after a reboot there is no such
        shim, containerd removes the bundles it finds dead, and the next start moves."""
        previous = self.directory / "state"
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
            previous = Path(tomllib.loads(self.config_path.read_text())["state"])
        if previous != self.state and any(previous.glob(f"{_TASK_BUNDLES}/*/*")):
            log.warning(
                "the managed containerd keeps its state dir where it had it: it holds tasks",
                extra={"state": str(previous), "configured": str(self.state)},
            )
            return previous
        return self.state

    def _start(self) -> None:
        state = self._state_dir()
        state.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.config_path.write_text(containerd_config(self.directory, state))
        with contextlib.suppress(FileNotFoundError):
            Path(self.address).unlink()
        # The state dir is private; the log is too (0600), as the daemon's other files.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "ab") as logfile:
            self._process = subprocess.Popen(
                [self.binary, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=logfile,
                start_new_session=True,
                close_fds=True,
            )
        self.pid = self._process.pid
        self._record_pid(self.pid)

    def _record_pid(self, pid: int) -> None:
        tmp = self.pid_path.with_suffix(".tmp")
        tmp.write_text(f"{pid}\n")
        os.replace(tmp, self.pid_path)

    def _recorded_pid(self) -> int | None:
        """The pid in the pid file, if that process is alive and is our containerd."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None  # else the pid was reused

    def _is_ours(self, pid: int) -> bool:
        """Whether `pid` is a live containerd started with this config."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        config = str(self.config_path).encode()
        flagged = any(a == b"--config" and b == config for a, b in itertools.pairwise(argv))
        return flagged and not _is_zombie(pid)

    def _running_pids(self) -> list[int]:
        """Every live containerd started with this config, oldest first."""
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
        return sorted(pid for pid in pids if self._is_ours(pid))

    async def _answers_while_alive(self, pid: int, timeout: float) -> bool:
        """Whether containerd `pid` answers within `timeout`, as long as it lives: one that a
        crictld started just before it died may still be booting (re-loading every shim takes
        seconds on a busy node; its socket appears last), and killing it then cuts its shim
        clean-ups short. Only one still silent after a fresh start's patience is replaced."""
        deadline = time.monotonic() + timeout
        while self._is_ours(pid):
            if await self._answers(timeout=1.0):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return False

    async def _answers(self, timeout: float) -> bool:
        if not os.path.exists(self.address):
            return False
        client = ContainerdClient(self.address)
        try:
            await client.version(timeout=timeout)
            return True
        except errors.CrictlError:
            return False
        finally:
            await client.close()

    async def stop_recorded(self) -> None:
        """Stops the managed containerd named by the pid file, even if another process started
        it (a crictld that was SIGKILLed)."""
        if self.pid is None:
            self.pid = self._recorded_pid()
        await self.stop()

    async def stop(self) -> None:
        if self.pid is None:
            return
        await _terminate(self.pid, self._process)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()
        log.info("stopped managed containerd", extra={"pid": self.pid})
        self.pid = None
        self._process = None


async def _terminate(pid: int, process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT; reaps it if it is our child.

    A SIGCONT follows the SIGTERM (as systemd sends it): a stopped containerd (SIGSTOP, a
    debugger's stop) would keep the SIGTERM pending and only the SIGKILL, STOP_TIMEOUT later,
    would end it, without the clean shutdown that closes its shims' connections."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        try:
            os.kill(pid, sig)
            if sig == signal.SIGTERM:
                os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process is not None:
                if process.poll() is not None:
                    return
            elif not os.path.exists(f"/proc/{pid}") or _is_zombie(pid):
                return
            await asyncio.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
