"""How crictld ends a managed containerd it replaces or stops: a stopped one (SIGSTOP, a
debugger's stop) still gets its SIGTERM, not the SIGKILL that follows STOP_TIMEOUT later."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from crictl.containerd import managed
from crictl.containerd.managed import _terminate


@contextlib.contextmanager
def _child(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` running, its stdout a pipe; killed and reaped whatever the test did."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_a_stopped_process_ends_on_its_sigterm() -> None:
    with _child(["sleep", "1000"]) as process:
        os.kill(process.pid, signal.SIGSTOP)
        asyncio.run(_terminate(process.pid, process))
        assert process.returncode == -signal.SIGTERM


def test_one_that_ignores_sigterm_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(managed, "STOP_TIMEOUT", 0.3)
    with _child(["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"]) as process:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        asyncio.run(_terminate(process.pid, process))
        assert process.returncode == -signal.SIGKILL
