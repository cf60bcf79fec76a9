"""How crictld ends a managed containerd it replaces or stops: a stopped one (SIGSTOP, a
debugger's stop) still gets its SIGTERM, not the SIGKILL that follows STOP_TIMEOUT later."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest

from crictl.containerd import managed
from crictl.containerd.managed import _terminate


def test_a_stopped_process_ends_on_its_sigterm() -> None:
    process = subprocess.Popen(["sleep", "1000"])
    try:
        os.kill(process.pid, signal.SIGSTOP)
        asyncio.run(_terminate(process.pid, process))
        assert process.returncode == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_one_that_ignores_sigterm_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(managed, "STOP_TIMEOUT", 0.3)
    process = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"],
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        asyncio.run(_terminate(process.pid, process))
        assert process.returncode == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
