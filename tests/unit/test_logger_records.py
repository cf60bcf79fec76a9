"""crictld-logger never tears a CRI log record: a line is in the file whole or not at all, also
when a write fails part-way or the logger is killed mid-write; a torn tail left by an earlier
logger is dropped when the log is (re)opened, never glued to the next record. No containerd:
the test plays the shim, holding the write ends of the output FIFOs."""

from __future__ import annotations

import contextlib
import os
import random
import re
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.test_logger_attach import LOGGER, alive, logger_argv, wait_gone

pytestmark = pytest.mark.skipif(
    not LOGGER.exists(),
    reason=f"{LOGGER} is not built (hack/install-deps.sh compiles logger/crictld-logger.c)",
)

TIMESTAMP = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"
RECORD = re.compile(rb"(" + TIMESTAMP + rb") (stdout|stderr) ([FP]) (.*)", re.DOTALL)


def parse(line: bytes) -> tuple[bytes, bytes, bytes]:
    """(stream, tag, content) of one whole CRI record; fails on a torn or glued one."""
    m = RECORD.fullmatch(line)
    assert m, f"not a CRI record: {line[:120]!r}"
    assert not re.search(TIMESTAMP, m[4]), f"two records glued: {line[:120]!r}"
    return m[2], m[3], m[4]


def whole_records(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """Every record in a log that must end on a record boundary."""
    assert not data or data.endswith(b"\n"), f"torn tail: {data[-120:]!r}"
    return [parse(line) for line in data.split(b"\n")[:-1]]


def record(stream: str, tag: str, content: str) -> bytes:
    return f"2024-05-01T10:00:00.123456789Z {stream} {tag} {content}\n".encode()


@dataclass
class Logger:
    pid: int
    stdout_w: int


@pytest.fixture
def start_logger(tmp_path: Path) -> Iterator[Callable[..., Logger]]:
    """Starts a daemonized FIFO-mode logger on `log`: once the launcher returns, the log is
    open (and repaired). `fsize` caps the file size the logger may write (RLIMIT_FSIZE)."""
    started: list[Logger] = []

    def start(log: Path, fsize: int | None = None) -> Logger:
        base = tmp_path / f"l{len(started)}"
        base.mkdir()
        fifo = base / "stdout"
        os.mkfifo(fifo)

        def limit() -> None:  # in the child: a write past `fsize` fails (EFBIG), not kills
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

        done = subprocess.run(
            logger_argv(
                log=str(log),
                stdout_fifo=str(fifo),
                daemonize="1",
                pidfile=str(base / "logger.pid"),
            ),
            capture_output=True,
            timeout=10,
            check=False,
            preexec_fn=limit,
            restore_signals=False,  # else SIGXFSZ is back to its default (kill) before exec
        )
        assert done.returncode == 0, done.stderr
        lg = Logger(int((base / "logger.pid").read_text()), os.open(fifo, os.O_WRONLY))
        started.append(lg)
        return lg

    yield start
    for lg in started:
        os.close(lg.stdout_w)
        if alive(lg.pid):
            os.kill(lg.pid, signal.SIGKILL)


def finish(lg: Logger) -> None:
    """Ends the container's output and waits for the logger to exit (all of it is logged)."""
    os.close(lg.stdout_w)
    lg.stdout_w = os.open("/dev/null", os.O_WRONLY)  # for the fixture to close
    assert wait_gone(lg.pid)


OLD = record("stdout", "F", "old one") + record("stderr", "P", "old two")


@pytest.mark.parametrize(
    ("before", "kept"),
    [
        # killed mid-record: the torn third record is dropped
        (OLD + record("stdout", "F", "abc")[:-1], OLD),
        (OLD + b"2024-05-01T10:00:00.1", OLD),
        # the only record was torn
        (record("stdout", "F", "abc")[:-1], b""),
        # whole: left alone
        (OLD, OLD),
        (b"", b""),
        # no newline within 64 KiB: not a record of ours; kept, and its line ended
        (b"z" * 70000, b"z" * 70000 + b"\n"),
    ],
    ids=["torn", "torn-in-header", "only-torn", "whole", "empty", "foreign"],
)
def test_start_drops_a_torn_tail(
    start_logger: Callable[..., Logger], tmp_path: Path, before: bytes, kept: bytes
) -> None:
    log = tmp_path / "0.log"
    log.write_bytes(before)
    lg = start_logger(log)
    assert log.read_bytes() == kept  # repaired at open, before any output
    os.write(lg.stdout_w, b"new\n")
    finish(lg)
    data = log.read_bytes()
    assert data.startswith(kept)
    assert whole_records(data[len(kept) :]) == [(b"stdout", b"F", b"new")]


def open_files(pid: int) -> set[str]:
    """What the process's fds point at (an fd closed meanwhile is skipped)."""
    paths = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            paths.add(os.readlink(fd))
    return paths


def test_reopen_drops_a_torn_tail(start_logger: Callable[..., Logger], tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    lg = start_logger(log)
    os.write(lg.stdout_w, b"before rotation\n")
    deadline = time.monotonic() + 5
    while not log.read_bytes().endswith(b" before rotation\n"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # kubelet rotates: renames the file; here a torn file waits at the path
    log.rename(tmp_path / "0.log.1")
    log.write_bytes(OLD + record("stdout", "F", "abc")[:-1])
    os.kill(lg.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5  # output written before the reopen goes to the old file
    while str(log) not in open_files(lg.pid):
        assert time.monotonic() < deadline, "the logger did not reopen its log"
        time.sleep(0.01)
    os.write(lg.stdout_w, b"after rotation\n")
    finish(lg)
    assert whole_records((tmp_path / "0.log.1").read_bytes()) == [
        (b"stdout", b"F", b"before rotation")
    ]
    assert whole_records(log.read_bytes()) == [
        *whole_records(OLD),
        (b"stdout", b"F", b"after rotation"),
    ]


def test_a_write_failing_part_way_is_taken_back(
    start_logger: Callable[..., Logger], tmp_path: Path
) -> None:
    """RLIMIT_FSIZE makes the 4th 16 KiB record's write short, then fail (EFBIG): it is
    truncated away, and a record that still fits is written after the 3rd, not glued on."""
    log = tmp_path / "0.log"
    lg = start_logger(log, fsize=64 * 1024)
    big = b"x" * 16384
    for _ in range(4):
        os.write(lg.stdout_w, big + b"\n")
    os.write(lg.stdout_w, b"small\n")
    finish(lg)
    data = log.read_bytes()
    assert len(data) < 64 * 1024
    assert whole_records(data) == [(b"stdout", b"F", big)] * 3 + [(b"stdout", b"F", b"small")]


def test_kill_9_mid_flood_never_leaves_a_torn_record(
    start_logger: Callable[..., Logger], tmp_path: Path
) -> None:
    """A container restarted 20 times onto the same log, its logger SIGKILLed each time while
    output floods in: between loggers the file may end in a torn record; once the next logger
    has started it is gone (and nothing else), and every line is one whole record."""
    log = tmp_path / "0.log"
    rng = random.Random(1234)
    # lines over 16 KiB (P chunks: multi-page writes a kill can cut short) and short ones
    burst = (b"x" * 40000 + b"\n" + b"y" * 100 + b"\n") * 25  # 1 MiB
    whole = torn = 0  # bytes of whole records so far; torn tails seen
    for _ in range(20):
        lg = start_logger(log)
        assert log.stat().st_size == whole  # the torn tail, and only it, was dropped
        view = memoryview(burst)[: rng.randrange(200_000, len(burst))]
        while view:  # blocks while the logger drains the 64 KiB pipe
            view = view[os.write(lg.stdout_w, view) :]
        os.kill(lg.pid, signal.SIGKILL)  # while it still works through the pipe's contents
        assert wait_gone(lg.pid)
        with log.open("rb") as f:
            f.seek(whole)
            new = f.read()
        if new and not new.endswith(b"\n"):
            torn += 1
            new = new[: new.rfind(b"\n") + 1]  # only the very end may be torn
        whole_records(new)
        whole += len(new)
    lg = start_logger(log)
    os.write(lg.stdout_w, b"the end\n")
    finish(lg)
    records = whole_records(log.read_bytes())
    assert records[-1] == (b"stdout", b"F", b"the end")
    print(f"{torn} of 20 kills left a torn record; {len(records)} records")
