"""Shims outlive their containerd by design; tests end them, with their containers."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def kill_shims(address: str) -> None:
    """Shims outlive their containerd by design; a test that failed halfway can leave some,
    with their containers and loggers. End every shim still serving `address`, and its
    children first (a shim is its containers' subreaper)."""
    shims: set[int] = set()
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
    for pid in [p for p, parent in parents.items() if parent in shims] + sorted(shims):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
