"""Shims outlive their containerd by design; tests end them, with their containers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from crictl.containerd.runc import RUNC_ROOT, init_alive
from crictl.mounts import remove_dir
from crictl.reconciler.orphans import shim_socket


def kill_shims(address: str) -> None:
    """Shims outlive their containerd by design; a test that failed halfway can leave some,
    with their containers and loggers. End every shim still serving `address`, and its
    children first (a shim is its containers' subreaper)."""
    shims: set[int] = set()
    sockets: list[Path] = []
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        if b"-address" in argv and address.encode() in argv:
            shims.add(int(proc.name))
            flags = dict(zip(argv[1::2], argv[2::2], strict=False))
            namespace, task = flags.get(b"-namespace"), flags.get(b"-id")
            if namespace and task:  # the socket a killed shim cannot remove itself
                sockets.append(shim_socket(address, namespace.decode(), task.decode()))
    for pid in [p for p, parent in parents.items() if parent in shims] + sorted(shims):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for socket in sockets:
        socket.unlink(missing_ok=True)


def remove_runc_states(namespace: str) -> list[str]:
    """What runc still records in the namespace's root for containers whose process is gone
    (their shims killed, as a test that failed halfway leaves them): `runc delete --force`
    for each, which removes their cgroups and the state dir (the dir itself when runc refuses
    it). A container whose process runs is left alone: it is not a leftover (another daemon
    on this machine may use the namespace). The names removed, for the caller to report."""
    root = RUNC_ROOT / namespace
    states = sorted(root.iterdir()) if root.is_dir() else []
    deadline = time.monotonic() + 5  # processes just killed take a moment to be gone
    while any(init_alive(p / "state.json") for p in states) and time.monotonic() < deadline:
        time.sleep(0.05)
    found = [p.name for p in states if not init_alive(p / "state.json")]
    for name in found:
        subprocess.run(
            ["runc", "--root", str(root), "delete", "--force", name],
            check=False,
            capture_output=True,
            timeout=30,
        )
        remove_dir(root / name)
    return found
