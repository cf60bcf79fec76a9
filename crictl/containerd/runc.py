"""A runc start cut short, recognised from runc's own state.

`runc start` releases a created container by opening its `exec.fifo` for reading (the container's
`runc init` waits on the write side), then removes the fifo; runc calls a container "created"
while that fifo exists. containerd killed in between (its shim's `runc start` dies with its
request) leaves the process released and running but the fifo in place, so the next `runc start`
blocks forever opening a fifo nobody will write to, holding the shim's lock on the task: every
later call on the task (state, kill, delete) then hangs too. Seen in the 1000-kill chaos run.

`release_stale_start` finds that state (the fifo exists, and the init process runs but is no
longer `runc init`: it is the container's own program) and ends it: a blocked reader is
released by opening the fifo for writing and closing it at once (that `runc start` then fails
"cannot start an already running container", which the start step takes as started), and the
fifo is removed, so runc sees the container running, which it is.

containerd killed while its shim runs `runc create` cancels that create: runc dies and leaves
its state dir (the fifo, maybe no state.json, maybe a `runc init` still waiting), containerd
keeps no task, and every later create of the task fails "container with given ID already
exists". `remove_stale_state` removes it (seen in a 1000-kill chaos run), as the orphan sweep
removes such a dir of an id no row holds.

The same cut can come a moment earlier: `runc start` opened the fifo but died before reading
it, so the `runc init` waiting on the write side gets EPIPE and exits before it ever ran the
container's program. The shim then holds a task whose process is stopped, and every start
answers "cannot start a stopped process". `died_before_start` recognises it (the fifo still
there, its init gone): the program never ran, so the task is made again (seen in a 1000-kill
chaos run).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
from pathlib import Path

from crictl import trace
from crictl.mounts import remove_dir

log = logging.getLogger(__name__)

# Where containerd's runc shim keeps runc's state (runc's --root) when the runtime options set
# none: <root>/<containerd namespace>/<container id>/{state.json,exec.fifo}.
RUNC_ROOT = Path("/run/containerd/runc")
RUNC_INIT_COMM = "runc:[2:INIT]"


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


# runc's refusal to create a container whose state dir exists (libcontainer's ErrExist)
STATE_EXISTS = "container with given ID already exists"


def init_alive(state: Path) -> bool:
    """True if the init process runc recorded in `state` (its state.json) runs still: its pid,
    with the start time (clock ticks since boot, /proc/<pid>/stat's 22nd field) runc recorded
    with it."""
    return _recorded_init(state) is not None


def _recorded_init(state: Path) -> int | None:
    """The pid of the init runc recorded in `state`, if that process runs still."""
    try:
        recorded = json.loads(state.read_text())
        pid, start = int(recorded["init_process_pid"]), int(recorded["init_process_start"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return pid if fields[0] not in ("Z", "X") and int(fields[19]) == start else None


def remove_stale_state(namespace: str, container_id: str, root: Path = RUNC_ROOT) -> bool:
    """Removes runc's state dir of a create cut short, for an id containerd holds no live task
    of (the caller asked containerd): the `runc init` it recorded, if it still waits, is
    killed first. True if there was a dir."""
    d = root / namespace / container_id
    if not d.is_dir():
        return False
    pid = _recorded_init(d / "state.json")
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    remove_dir(d)
    log.warning(
        "removed runc's state of a create cut short",
        extra={"container": container_id, "killed_init": pid},
    )
    return True


def start_pending(namespace: str, container_id: str, root: Path = RUNC_ROOT) -> bool:
    """True while runc's exec.fifo is there: a task made and not started, or a start cut
    short. One stat in runc's state dir (a tmpfs)."""
    return (root / namespace / container_id / "exec.fifo").exists()


async def release_if_stale(namespace: str, container_id: str, root: Path = RUNC_ROOT) -> None:
    """`release_stale_start` from the event loop, in a thread only when a start is pending:
    for a task never made, or started as usual, it is one stat."""
    if start_pending(namespace, container_id, root):
        await trace.to_thread(
            "runc stale start", release_stale_start, namespace, container_id, root
        )


def release_stale_start(namespace: str, container_id: str, root: Path = RUNC_ROOT) -> bool:
    """True if the container's process had been released by a start cut short and runc's
    state is now made to say so (see the module's docstring); False when there is nothing to
    do (no such container, a start never run, or one that finished)."""
    d = root / namespace / container_id
    fifo = d / "exec.fifo"
    if not start_pending(namespace, container_id, root):
        return False
    try:
        pid = int(json.loads((d / "state.json").read_text())["init_process_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    comm = _comm(pid)
    if comm is None or comm == RUNC_INIT_COMM:
        return False  # not started yet (or gone): a start is still to be made
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.close(fd)  # a `runc start` blocked opening the fifo gets EOF and gives up
    except OSError as e:
        if e.errno != errno.ENXIO:  # ENXIO: no reader is blocked on it
            raise
    fifo.unlink(missing_ok=True)
    log.warning(
        "a start cut short had released the container's process; runc's state now says so",
        extra={"container": container_id, "pid": pid, "comm": comm},
    )
    return True


def died_before_start(namespace: str, container_id: str, root: Path = RUNC_ROOT) -> bool:
    """True if the container's init died waiting to be started: runc's exec.fifo is still
    there (no start ever got through it) and the init process is gone (see the module's
    docstring). Its program never ran."""
    d = root / namespace / container_id
    if not (d / "exec.fifo").exists():
        return False
    try:
        pid = int(json.loads((d / "state.json").read_text())["init_process_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return pid > 0 and _comm(pid) is None
