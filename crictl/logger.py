"""`crictld-logger`: the container log writer, started by containerd's shim (a `binary://` log
URI), not by crictld. It therefore keeps writing while crictld is down or restarting: nothing
a container prints is lost to a daemon restart.

The shim hands it the container's stdout on fd 3 and stderr on fd 4, and waits for fd 5 to be
closed as the "ready" signal. Each line goes to the CRI log file as

    <RFC3339Nano time> <stdout|stderr> <F|P> <content>\\n

where P marks a partial line: a line longer than 16 KiB is cut into P chunks ended by an F
chunk, and output that ends without a newline is written with P. SIGUSR1 reopens the log path
(kubelet renamed the file and called ReopenContainerLog).

Standard library only: it starts for every container.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import sys
import time

MAX_LINE = 16 * 1024
STREAMS = {3: b"stdout", 4: b"stderr"}


def timestamp(ns: int | None = None) -> bytes:
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z").encode()


def format_records(stream: bytes, buffer: bytearray, final: bool) -> bytes:
    """Takes complete lines (and, if `final`, the rest) out of `buffer` as CRI log records."""
    out = bytearray()
    while True:
        nl = buffer.find(b"\n")
        if nl < 0 or nl > MAX_LINE:
            if len(buffer) >= MAX_LINE:
                chunk = bytes(buffer[:MAX_LINE])
                del buffer[:MAX_LINE]
                out += b"%s %s P %s\n" % (timestamp(), stream, chunk)
                continue
            break
        line = bytes(buffer[:nl])
        del buffer[: nl + 1]
        out += b"%s %s F %s\n" % (timestamp(), stream, line)
    if final and buffer:
        out += b"%s %s P %s\n" % (timestamp(), stream, bytes(buffer))
        buffer.clear()
    return bytes(out)


class LogFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = self._open()

    def _open(self) -> int:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        old, self.fd = self.fd, self._open()
        os.close(old)

    def write(self, data: bytes) -> None:
        while data:
            n = os.write(self.fd, data)
            data = data[n:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crictld-logger")
    parser.add_argument("--log", required=True)
    parser.add_argument("--pidfile")
    args = parser.parse_args(argv)

    log = LogFile(args.log)
    reopen = False

    def on_usr1(_sig: int, _frame: object) -> None:
        nonlocal reopen
        reopen = True

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # keep draining until the container exits
    if args.pidfile:
        tmp = args.pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, args.pidfile)
    with contextlib.suppress(OSError):
        os.close(5)  # ready

    sel = selectors.DefaultSelector()
    buffers: dict[int, bytearray] = {}
    for fd in STREAMS:
        try:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
            buffers[fd] = bytearray()
        except (OSError, ValueError):
            continue
    while buffers:
        if reopen:
            reopen = False
            log.reopen()
        try:
            ready = sel.select(timeout=1.0)
        except InterruptedError:
            continue
        for key, _ in ready:
            fd = key.fd
            assert isinstance(fd, int)
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            buf = buffers[fd]
            if data:
                buf += data
                records = format_records(STREAMS[fd], buf, final=False)
            else:
                records = format_records(STREAMS[fd], buf, final=True)
                sel.unregister(fd)
                os.close(fd)
                del buffers[fd]
            if records:
                log.write(records)
    if args.pidfile:
        with contextlib.suppress(OSError):
            os.unlink(args.pidfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
