"""The benchmarks' CPU per round (benchmarks/cri_bench.py): each watched process's CPU clock,
every thread's time, those that ended included, printed per round, per call and as a ratio of
the totals."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

from benchmarks.cri_bench import Result, Runtime, format_cpu, process_cpu_ns


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_every_thread_of_the_process_is_counted() -> None:
    stop = threading.Event()

    def hash_until_stopped() -> None:  # CPU without the GIL (hashlib releases it)
        data = bytes(1 << 20)
        while not stop.is_set():
            hashlib.sha256(data).digest()

    worker = threading.Thread(target=hash_until_stopped)
    worker.start()
    try:
        mine = time.thread_time_ns()
        before = process_cpu_ns(os.getpid())
        time.sleep(0.2)  # this thread idles; the worker runs
        others = process_cpu_ns(os.getpid()) - before - (time.thread_time_ns() - mine)
    finally:
        stop.set()
        worker.join()
    assert others > 20_000_000, f"the worker thread's CPU was not counted: {others} ns"


def test_threads_that_ended_are_counted() -> None:
    """containerd's CRI ends a thread per pod network namespace, with all the CPU that thread
    had run before: a sum over the live threads lost it."""
    before = process_cpu_ns(os.getpid())
    for _ in range(3):
        t = threading.Thread(target=_burn, args=(0.05,))
        t.start()
        t.join()
    assert process_cpu_ns(os.getpid()) - before >= 150_000_000


def test_another_process_is_read_whole() -> None:
    code = (
        "import threading, time\n"
        "def burn():\n"
        "    end = time.thread_time() + 0.1\n"
        "    while time.thread_time() < end: pass\n"
        "for _ in range(2):\n"
        "    t = threading.Thread(target=burn); t.start(); t.join()\n"
        "print('done', flush=True)\n"
        "import sys; sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "done\n"
        assert process_cpu_ns(child.pid) >= 200_000_000  # both threads ended by now
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


def test_a_process_gone_counts_nothing() -> None:
    assert process_cpu_ns(2**22 + 1) == 0  # above pid_max's default: no such process


def test_rounds_are_summed_per_process_and_printed_per_call() -> None:
    a, b = Runtime("crictld", "unix:///a"), Runtime("containerd", "unix:///b")
    a.processes = {"daemon": os.getpid()}
    before = a.round_cpu()
    _burn(0.02)
    a.count_cpu(before)
    assert a.cpu_rounds == 1 and a.cpu_ns["daemon"] >= 20_000_000
    b.processes = {"containerd": os.getpid()}
    b.count_cpu({})  # nothing read before: not a round
    assert b.cpu_rounds == 0 and not b.cpu_ns

    a.cpu_ns, a.cpu_rounds = {"daemon": 8_000_000, "managed containerd": 2_000_000}, 10
    b.cpu_ns, b.cpu_rounds = {"containerd": 4_000_000}, 10
    text = format_cpu(Result("w", "", 10, [a, b], 1.0), calls_per_round=4)
    rows = {
        tuple(cell.strip() for cell in line.split("|")[:2]): line.split("|")[2:]
        for line in text.splitlines()
        if line.count("|") == 3
    }
    assert [c.strip() for c in rows[("crictld", "daemon")]] == ["800", "200"]
    assert [c.strip() for c in rows[("crictld", "(total)")]] == ["1000", "250"]
    assert [c.strip() for c in rows[("containerd", "(total)")]] == ["400", "100"]
    assert text.endswith("total ratio crictld / containerd: 2.50")
    assert format_cpu(Result("w", "", 1, [Runtime("x", "unix:///x")], 1.0)) == ""
