"""crictld-logger's attach socket, FIFO mode and --daemonize, driven directly: no containerd.

The test plays the shim (it holds the write ends of the output FIFOs, or the pipes on fds 3/4,
and the read end of the stdin FIFO) and crictld (it connects to the attach socket)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LOGGER = Path(sys.executable).with_name("crictld-logger")

pytestmark = pytest.mark.skipif(
    not LOGGER.exists(),
    reason=f"{LOGGER} is not built (hack/install-deps.sh compiles logger/crictld-logger.c)",
)

STDOUT, STDERR = 2, 3


def logger_argv(**options: str) -> list[str]:
    """The command line: `--name value` pairs, in the (arbitrary) order given, like the shim."""
    return [str(LOGGER), *(a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", v))]


def alive(pid: int) -> bool:
    """True while `pid` runs; a daemonized logger's zombie (nobody may reap it) counts as gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cpu_ticks(pid: int) -> int:
    """User plus system time the process has used, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def connect(directory: Path) -> socket.socket:
    """Connects the way crictld does: through /proc/self/fd, whatever the directory's length."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{dfd}/attach")
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(dfd)
    return sock


def collect(sock: socket.socket, want: dict[int, bytes], timeout: float = 5.0) -> dict[int, bytes]:
    """Reassembles output per stream type until each has `want`'s length (or EOF, or timeout)."""
    got = {t: b"" for t in want}
    deadline = time.monotonic() + timeout
    while any(len(got[t]) < len(w) for t, w in want.items()):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            msg = sock.recv(65536)
        except TimeoutError:
            break
        if not msg:
            break
        assert msg[0] in (STDOUT, STDERR), msg[:16]
        assert 1 <= len(msg) - 1 <= 8192
        got[msg[0]] = got.get(msg[0], b"") + msg[1:]
    return got


def recv_eof(sock: socket.socket, timeout: float = 5.0) -> int:
    """Reads until EOF; returns how many payload bytes came first. Fails on timeout."""
    total = 0
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "no EOF on the attach socket"
        sock.settimeout(remaining)
        msg = sock.recv(65536)
        if not msg:
            return total
        total += len(msg) - 1


def read_fifo(fd: int, want: int, timeout: float = 5.0) -> bytes:
    """Reads from a non-blocking fd until `want` bytes arrived, EOF, or timeout."""
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < want:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def write_within(fd: int, data: bytes, timeout: float) -> None:
    """Writes all of `data` as a shim would, failing instead of hanging if the reader stalls."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the writer was blocked for {timeout}s"
        _, writable, _ = select.select([], [fd], [], remaining)
        if writable:
            view = view[os.write(fd, view) :]


def log_records(path: Path) -> list[tuple[bytes, bytes, bytes]]:
    """(stream, tag, content) of each CRI log line."""
    records = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        _ts, stream, tag, content = line.split(b" ", 3)
        records.append((stream, tag, content))
    return records


@dataclass
class FifoLogger:
    """A daemonized logger in FIFO mode, and the shim's ends of its FIFOs."""

    pid: int
    attach_dir: Path
    log: Path
    pidfile: Path
    stdout_w: int
    stderr_w: int
    stdin_r: int
    fds: list[int] = field(default_factory=list)

    def close_output(self) -> None:
        for fd in (self.stdout_w, self.stderr_w):
            os.close(fd)
            self.fds.remove(fd)


@pytest.fixture
def start_logger(tmp_path: Path) -> Iterator[Callable[..., FifoLogger]]:
    started: list[FifoLogger] = []

    def start(stdin_once: bool = False) -> FifoLogger:
        base = tmp_path / f"c{len(started)}"
        # a directory deeper than sun_path's 108 bytes: the socket is bound through /proc
        attach_dir = base / ("d" * 60) / ("e" * 60)
        attach_dir.mkdir(parents=True)
        fifos = {name: base / name for name in ("stdout", "stderr", "stdin")}
        for path in fifos.values():
            os.mkfifo(path)
        log, pidfile = base / "logs" / "0.log", base / "logger.pid"
        t0 = time.monotonic()
        done = subprocess.run(
            logger_argv(
                stdin_once="1" if stdin_once else "0",
                stderr_fifo=str(fifos["stderr"]),
                log=str(log),
                attach=str(attach_dir),
                daemonize="1",
                stdin_fifo=str(fifos["stdin"]),
                pidfile=str(pidfile),
                stdout_fifo=str(fifos["stdout"]),
            ),
            capture_output=True,
            timeout=10,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - t0 < 3
        pid = int(pidfile.read_text())
        # the shim's side: output FIFOs' write ends (the logger already holds the read ends,
        # so these opens do not block), stdin FIFO's read end
        logger = FifoLogger(
            pid=pid,
            attach_dir=attach_dir,
            log=log,
            pidfile=pidfile,
            stdout_w=os.open(fifos["stdout"], os.O_WRONLY),
            stderr_w=os.open(fifos["stderr"], os.O_WRONLY),
            stdin_r=os.open(fifos["stdin"], os.O_RDONLY | os.O_NONBLOCK),
        )
        logger.fds += [logger.stdout_w, logger.stderr_w, logger.stdin_r]
        started.append(logger)
        assert alive(pid)
        return logger

    yield start
    for logger in started:
        for fd in logger.fds:
            os.close(fd)
        if alive(logger.pid):
            os.kill(logger.pid, signal.SIGKILL)


@pytest.fixture
def clients() -> Iterator[Callable[[Path], socket.socket]]:
    opened: list[socket.socket] = []

    def attach(directory: Path) -> socket.socket:
        sock = connect(directory)
        opened.append(sock)
        return sock

    yield attach
    for sock in opened:
        sock.close()


def test_fifo_daemonize_fans_out_and_logs(
    start_logger: Callable[..., FifoLogger], clients: Callable[[Path], socket.socket]
) -> None:
    lg = start_logger()
    sock_path = lg.attach_dir / "attach"
    assert stat.S_ISSOCK(sock_path.stat().st_mode)
    assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
    client = clients(lg.attach_dir)
    os.write(lg.stdout_w, b"hello\n")
    os.write(lg.stderr_w, b"oops\n")
    got = collect(client, {STDOUT: b"hello\n", STDERR: b"oops\n"})
    assert got == {STDOUT: b"hello\n", STDERR: b"oops\n"}
    # the log is written before the output is sent
    assert sorted(log_records(lg.log)) == [
        (b"stderr", b"F", b"oops"),
        (b"stdout", b"F", b"hello"),
    ]


def test_stdin_forwarding_and_two_clients(
    start_logger: Callable[..., FifoLogger], clients: Callable[[Path], socket.socket]
) -> None:
    lg = start_logger()
    first, second = clients(lg.attach_dir), clients(lg.attach_dir)
    first.send(b"abc")
    assert read_fifo(lg.stdin_r, 3) == b"abc"
    second.send(b"def")
    assert read_fifo(lg.stdin_r, 3) == b"def"
    os.write(lg.stdout_w, b"to both\n")
    for client in (first, second):
        assert collect(client, {STDOUT: b"to both\n"}) == {STDOUT: b"to both\n"}


def test_stdin_once_closes_stdin(
    start_logger: Callable[..., FifoLogger], clients: Callable[[Path], socket.socket]
) -> None:
    lg = start_logger(stdin_once=True)
    client = clients(lg.attach_dir)
    client.send(b"last words")
    client.shutdown(socket.SHUT_WR)
    # data first, then EOF: the logger closed its end of the stdin FIFO
    assert read_fifo(lg.stdin_r, 1 << 20) == b"last words"
    assert os.read(lg.stdin_r, 100) == b""
    # the client still gets output after ending its stdin
    os.write(lg.stdout_w, b"still here\n")
    assert collect(client, {STDOUT: b"still here\n"}) == {STDOUT: b"still here\n"}


def test_stdin_stays_open_without_stdin_once(
    start_logger: Callable[..., FifoLogger], clients: Callable[[Path], socket.socket]
) -> None:
    lg = start_logger(stdin_once=False)
    first = clients(lg.attach_dir)
    first.send(b"one")
    assert read_fifo(lg.stdin_r, 3) == b"one"
    first.shutdown(socket.SHUT_WR)
    first.close()
    time.sleep(0.3)  # let the logger see that end of stream
    with pytest.raises(BlockingIOError):
        os.read(lg.stdin_r, 100)
    second = clients(lg.attach_dir)
    second.send(b"two")
    assert read_fifo(lg.stdin_r, 3) == b"two"
    with pytest.raises(BlockingIOError):
        os.read(lg.stdin_r, 100)


def test_container_exit_closes_clients_and_cleans_up(
    start_logger: Callable[..., FifoLogger], clients: Callable[[Path], socket.socket]
) -> None:
    lg = start_logger()
    first, second = clients(lg.attach_dir), clients(lg.attach_dir)
    second.shutdown(socket.SHUT_WR)  # ended its stdin, still listening
    os.write(lg.stdout_w, b"bye")  # no newline: logged as P when the stream ends
    lg.close_output()
    assert recv_eof(first) == 3
    assert recv_eof(second) == 3
    assert wait_gone(lg.pid)
    assert not (lg.attach_dir / "attach").exists()
    assert not lg.pidfile.exists()
    assert log_records(lg.log) == [(b"stdout", b"P", b"bye")]


def test_stuck_client_is_dropped_and_the_log_keeps_up(
    start_logger: Callable[..., FifoLogger], clients: Callable[[Path], socket.socket]
) -> None:
    lg = start_logger()
    stuck = clients(lg.attach_dir)  # never reads while the output flows
    line = b"x" * 1023 + b"\n"
    block = line * 1024  # 1 MiB
    blocks = 20
    t0 = time.monotonic()
    for _ in range(blocks):
        write_within(lg.stdout_w, block, 3)  # stalls if the logger waits for `stuck`
    assert time.monotonic() - t0 < 10
    # dropped while the container still runs: what was queued, then EOF
    received = recv_eof(stuck)
    assert 0 < received < blocks * len(block)
    assert alive(lg.pid)
    lg.close_output()
    assert wait_gone(lg.pid)
    records = log_records(lg.log)
    assert len(records) == blocks * 1024
    assert all(r == (b"stdout", b"F", line[:-1]) for r in records)


def test_too_many_clients(
    start_logger: Callable[..., FifoLogger], clients: Callable[[Path], socket.socket]
) -> None:
    lg = start_logger()
    kept = [clients(lg.attach_dir) for _ in range(64)]
    extra = clients(lg.attach_dir)
    assert recv_eof(extra) == 0
    os.write(lg.stdout_w, b"all 64\n")
    for client in kept:
        assert collect(client, {STDOUT: b"all 64\n"}) == {STDOUT: b"all 64\n"}


@contextlib.contextmanager
def shim_logger(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int, int]]:
    """The logger as the shim starts it: stdout on fd 3, stderr on fd 4, fd 5 closed when ready.
    Yields (process, stdout write end, stderr write end, ready read end)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def plumb() -> None:  # in the child: move the three ends to 3, 4, 5 without clobbering
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in (out_r, err_r, ready_w)]
        for target, fd in zip((3, 4, 5), high, strict=True):
            os.dup2(fd, target)

    proc = subprocess.Popen(
        logger_argv(
            attach=str(tmp_path),
            pidfile=str(tmp_path / "logger.pid"),
            log=str(tmp_path / "0.log"),
        ),
        preexec_fn=plumb,
        close_fds=False,
    )
    for fd in (out_r, err_r, ready_w):
        os.close(fd)
    try:
        yield proc, out_w, err_w, ready_r
    finally:
        for fd in (out_w, err_w, ready_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_shim_mode_with_attach(tmp_path: Path) -> None:
    with shim_logger(tmp_path) as (proc, out_w, err_w, ready_r):
        ready, _, _ = select.select([ready_r], [], [], 5)
        assert ready and os.read(ready_r, 1) == b"", "fd 5 was not closed"
        assert int((tmp_path / "logger.pid").read_text()) == proc.pid
        client = connect(tmp_path)
        try:
            long_line = b"y" * 20000
            os.write(out_w, b"hi\n" + long_line + b"\n")
            os.write(err_w, b"err\n")
            got = collect(client, {STDOUT: b"hi\n" + long_line + b"\n", STDERR: b"err\n"})
            assert got == {STDOUT: b"hi\n" + long_line + b"\n", STDERR: b"err\n"}
            os.close(out_w)
            os.close(err_w)
            assert recv_eof(client) == 0
        finally:
            client.close()
        assert proc.wait(timeout=5) == 0
    records = log_records(tmp_path / "0.log")
    assert [r for r in records if r[0] == b"stdout"] == [
        (b"stdout", b"F", b"hi"),
        (b"stdout", b"P", long_line[:16384]),
        (b"stdout", b"F", long_line[16384:]),
    ]
    assert [r for r in records if r[0] == b"stderr"] == [(b"stderr", b"F", b"err")]
    assert not (tmp_path / "attach").exists()
    assert not (tmp_path / "logger.pid").exists()


def test_bad_fifo_fails_the_launcher(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-fifo"
    pidfile = tmp_path / "logger.pid"
    done = subprocess.run(
        logger_argv(
            log=str(tmp_path / "0.log"),
            stdout_fifo=str(missing),
            daemonize="1",
            attach=str(tmp_path),
            pidfile=str(pidfile),
        ),
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert done.returncode != 0
    assert str(missing).encode() in done.stderr
    assert b"No such file" in done.stderr
    assert not pidfile.exists()


def test_stdin_backpressure_holds_and_delivers_everything(
    start_logger: Callable[..., FifoLogger], clients: Callable[[Path], socket.socket]
) -> None:
    """More stdin than the FIFO holds: nothing is lost, and output still flows meanwhile."""
    lg = start_logger()
    client = clients(lg.attach_dir)
    payload = bytes(range(256)) * 1024  # 256 KiB, four times a pipe's default capacity
    received = bytearray()

    writer = client.dup()  # its own timeout: collect() sets one on `client`

    def sender() -> None:
        with writer:
            for i in range(0, len(payload), 16384):
                writer.sendall(payload[i : i + 16384])

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    time.sleep(0.2)  # the FIFO is full now and nobody reads it
    before = cpu_ticks(lg.pid)
    time.sleep(0.3)
    assert cpu_ticks(lg.pid) - before < 10, "the logger spins while stdin is blocked"
    os.write(lg.stdout_w, b"not blocked\n")
    assert collect(client, {STDOUT: b"not blocked\n"}) == {STDOUT: b"not blocked\n"}
    received += read_fifo(lg.stdin_r, len(payload))
    thread.join(timeout=5)
    assert not thread.is_alive()
    received += read_fifo(lg.stdin_r, len(payload) - len(received), timeout=0.5)
    assert bytes(received) == payload
