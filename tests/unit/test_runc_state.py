"""crictl/containerd/runc.py on a runc root made here: a start cut short is recognised from the
fifo and the init process, a blocked `runc start` is released, nothing else is touched."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from crictl import trace
from crictl.containerd import runc

NAMED = (
    "import ctypes, sys, time; ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0);"
    "print('ok', flush=True); time.sleep(60)"
)


def process(comm: str) -> subprocess.Popen[str]:
    """A process whose comm is `comm` (as runc init's is `runc:[2:INIT]`)."""
    p = subprocess.Popen([sys.executable, "-c", NAMED, comm], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "ok\n"
    return p


def runc_dir(root: Path, pid: int) -> Path:
    d = root / "ns" / "c1"
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps({"init_process_pid": pid}))
    os.mkfifo(d / "exec.fifo")
    return d


def wait_blocked(tid: list[int], timeout: float = 5.0) -> None:
    """Until the thread whose native id lands in `tid` sleeps: blocked in its open of the fifo
    (the check under test only sees a reader that is waiting; a busy machine may not have run
    the thread that far yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tid:
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/self/task/{tid[0]}/stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] == "S":
                    return
        time.sleep(0.01)
    raise AssertionError("the reader thread never blocked on the fifo")


def test_a_released_process_with_the_fifo_left_is_recognised_and_the_reader_freed(
    tmp_path: Path,
) -> None:
    p = process("sleep")
    try:
        d = runc_dir(tmp_path, p.pid)
        read: list[bytes] = []
        tid: list[int] = []

        def blocked_start() -> None:  # `runc start` opening the fifo for reading
            tid.append(threading.get_native_id())
            with open(d / "exec.fifo", "rb") as f:
                read.append(f.read())

        t = threading.Thread(target=blocked_start)
        t.start()
        wait_blocked(tid)
        assert runc.release_stale_start("ns", "c1", tmp_path)
        t.join(5)
        assert not t.is_alive() and read == [b""]  # EOF: runc says "already running"
        assert not (d / "exec.fifo").exists()
        assert not runc.release_stale_start("ns", "c1", tmp_path)  # done once
    finally:
        p.kill()
        p.wait()


def test_the_event_loop_check_asks_a_thread_only_when_a_start_is_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    real = trace.to_thread

    async def counted(name: str, fn: Any, *args: Any) -> Any:
        asked.append(name)
        return await real(name, fn, *args)

    monkeypatch.setattr(trace, "to_thread", counted)
    asyncio.run(runc.release_if_stale("ns", "c1", tmp_path))  # no task: one stat
    assert asked == []
    p = process("sleep")
    try:
        d = runc_dir(tmp_path, p.pid)  # released, the fifo left: a start cut short
        asyncio.run(runc.release_if_stale("ns", "c1", tmp_path))
        assert asked == ["runc stale start"] and not (d / "exec.fifo").exists()
        asyncio.run(runc.release_if_stale("ns", "c1", tmp_path))  # started: one stat again
        assert asked == ["runc stale start"]
    finally:
        p.kill()
        p.wait()


def test_a_container_still_in_runc_init_is_left_alone(tmp_path: Path) -> None:
    p = process(runc.RUNC_INIT_COMM)
    try:
        d = runc_dir(tmp_path, p.pid)
        assert not runc.release_stale_start("ns", "c1", tmp_path)
        assert (d / "exec.fifo").exists()
    finally:
        p.kill()
        p.wait()


def test_nothing_to_do_without_state(tmp_path: Path) -> None:
    assert not runc.release_stale_start("ns", "missing", tmp_path)
    d = tmp_path / "ns" / "c2"
    d.mkdir(parents=True)
    os.mkfifo(d / "exec.fifo")
    assert not runc.release_stale_start("ns", "c2", tmp_path)  # no state.json


def test_an_init_that_died_waiting_to_be_started_is_recognised(tmp_path: Path) -> None:
    """`runc start` opened the fifo and died before reading: runc init got EPIPE and exited
    before the program ran; the fifo is still there."""
    p = process(runc.RUNC_INIT_COMM)
    d = runc_dir(tmp_path, p.pid)
    assert not runc.died_before_start("ns", "c1", tmp_path)  # still waiting: alive
    p.kill()
    p.wait()
    assert runc.died_before_start("ns", "c1", tmp_path)
    (d / "exec.fifo").unlink()  # a start got through: whatever ran, it ran
    assert not runc.died_before_start("ns", "c1", tmp_path)
    assert not runc.died_before_start("ns", "missing", tmp_path)


def _start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_the_state_of_a_create_cut_short_is_removed_its_waiting_init_killed(
    tmp_path: Path,
) -> None:
    """runc's state dir that containerd killed mid-create left: the init it recorded (pid and
    start time) is killed, the dir removed; a recorded pid whose start time differs (reused) is
    not some other process to kill."""
    p = process(runc.RUNC_INIT_COMM)
    other = process("sleep")
    try:
        d = runc_dir(tmp_path, p.pid)
        state = {"init_process_pid": p.pid, "init_process_start": _start_ticks(p.pid)}
        (d / "state.json").write_text(json.dumps(state))
        assert runc.init_alive(d / "state.json")
        assert runc.remove_stale_state("ns", "c1", tmp_path)
        assert p.wait(timeout=5) == -9 and not d.exists()
        assert not runc.remove_stale_state("ns", "c1", tmp_path)  # nothing left

        d = runc_dir(tmp_path, other.pid)  # the pid recorded, another start time: reused
        state = {"init_process_pid": other.pid, "init_process_start": _start_ticks(other.pid) + 1}
        (d / "state.json").write_text(json.dumps(state))
        assert not runc.init_alive(d / "state.json")
        assert runc.remove_stale_state("ns", "c1", tmp_path)
        assert other.poll() is None and not d.exists()

        d = tmp_path / "ns" / "c1"  # as the chaos run left one: the fifo, no state.json
        d.mkdir()
        os.mkfifo(d / "exec.fifo")
        assert runc.remove_stale_state("ns", "c1", tmp_path) and not d.exists()
    finally:
        for q in (p, other):
            q.kill()
            q.wait()
