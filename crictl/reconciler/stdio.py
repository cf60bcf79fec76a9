"""The stdio of exec'd processes and of attach sessions, for the streaming server
(`crictl.streaming`) and for ExecSync.

Exec runs the process in the container's task (containerd Exec) with FIFOs under the state
dir that crictld holds itself: an exec session ends with the daemon, as on containerd and
CRI-O. Attach goes to the container's log writer (crictld-logger), which owns the container's
stdio and outlives the daemon, through its attach socket: so attach works for containers
started before a restart, and a session cut by a restart costs the container nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
from collections import deque
from pathlib import Path

from crictl import errors
from crictl.containerd.client import ContainerdClient
from crictl.streaming.backend import STDERR, STDOUT

log = logging.getLogger(__name__)

# After an exec'd process exits, how long its output may take to reach end-of-file before the
# session ends anyway: a background child may hold the pipes forever (kubernetes#44371).
EXEC_DRAIN = 2.0
OUTPUT_BUFFER = 1 << 20
READ_CHUNK = 65536
ATTACH_SOCKET = "attach"
ATTACH_STDOUT, ATTACH_STDERR = 2, 3  # the logger's message types
ATTACH_MESSAGE = 8192


class _Output:
    """Reads a process's stdout and stderr FIFOs without blocking the loop, into one ordered
    queue of (STDOUT | STDERR, data). A reader that fills the buffer is paused until the
    consumer catches up. A writer end is held until the shim has opened its own, so an early
    read does not see end-of-file."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.chunks: deque[tuple[int, bytes]] = deque()
        self.buffered = 0
        self.readable = asyncio.Event()
        self.fds: dict[int, int] = {}  # reading fd -> STDOUT | STDERR
        self.paused: set[int] = set()
        self.writers: list[int] = []
        self.cut = False

    def add(self, path: Path, kind: int) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.writers.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        self.fds[fd] = kind
        self.loop.add_reader(fd, self._readable, fd)

    def release_writers(self) -> None:
        for fd in self.writers:
            os.close(fd)
        self.writers.clear()

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.chunks.append((self.fds[fd], data))
            self.buffered += len(data)
            if self.buffered > OUTPUT_BUFFER:
                self.loop.remove_reader(fd)
                self.paused.add(fd)
        else:
            self._close(fd)
        self.readable.set()

    def _close(self, fd: int) -> None:
        if self.fds.pop(fd, None) is not None:
            if fd not in self.paused:
                self.loop.remove_reader(fd)
            self.paused.discard(fd)
            os.close(fd)

    async def read(self) -> tuple[int, bytes] | None:
        while not self.chunks:
            if not self.fds or self.cut:
                return None
            self.readable.clear()
            await self.readable.wait()
        kind, data = self.chunks.popleft()
        self.buffered -= len(data)
        if self.paused and self.buffered <= OUTPUT_BUFFER // 2:
            for fd in self.paused:
                self.loop.add_reader(fd, self._readable, fd)
            self.paused.clear()
        return kind, data

    def stop(self) -> None:
        """No more output: what is queued is still read, then end-of-output."""
        self.cut = True
        self.readable.set()

    def close(self) -> None:
        self.release_writers()
        for fd in list(self.fds):
            self._close(fd)
        self.stop()


async def _write_nonblocking(fd: int, data: bytes) -> None:
    """Writes all of `data` to a non-blocking FIFO, waiting for room without blocking the loop."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_writer(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(fd)


class ExecProcess:
    """A process exec'd in a container's task, its stdio on FIFOs that crictld holds."""

    def __init__(
        self, containerd: ContainerdClient, container_id: str, exec_dir: Path, tty: bool
    ) -> None:
        self.containerd = containerd
        self.container_id = container_id
        self.exec_id = exec_dir.name
        self.dir = exec_dir
        self.tty = tty
        self.output = _Output()
        self.stdin_fd: int | None = None
        self.exit_code: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def start(
        cls,
        containerd: ContainerdClient,
        container_id: str,
        process: dict[str, object],
        exec_root: Path,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> ExecProcess:
        tty = bool(process.get("terminal"))
        d = exec_root / f"exec-{secrets.token_hex(8)}"
        d.mkdir(parents=True)  # as the FIFOs below: metadata calls, no thread hop
        self = cls(containerd, container_id, d, tty)
        try:
            paths = {name: d / name for name in ("stdin", "stdout", "stderr")}
            wanted = {"stdin": stdin, "stdout": stdout, "stderr": stderr and not tty}
            for name, path in paths.items():
                if wanted[name]:
                    os.mkfifo(path, 0o600)
            if stdin:
                self.stdin_fd = os.open(paths["stdin"], os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            if stdout:
                self.output.add(paths["stdout"], STDOUT)
            if wanted["stderr"]:
                self.output.add(paths["stderr"], STDERR)
            try:
                await containerd.exec_process(
                    container_id,
                    self.exec_id,
                    process,
                    stdout=str(paths["stdout"]) if stdout else "",
                    stderr=str(paths["stderr"]) if wanted["stderr"] else "",
                    stdin=str(paths["stdin"]) if stdin else "",
                    terminal=tty,
                )
            except errors.FailedPrecondition as e:
                # The container stopped (or was paused) after the caller saw it running: the
                # shim refuses (a probe racing the pod's stop; containerd.client.STATE_REFUSALS).
                raise errors.FailedPrecondition(
                    f"container {container_id} is not running: {e}"
                ) from None
            # Waited on before it starts, as containerd's CRI does: the exit status comes back
            # as the process ends, not a round trip after the start's answer.
            waiter = asyncio.create_task(self._wait())
            try:
                await containerd.start_process(container_id, self.exec_id)
            except errors.FailedPrecondition as e:
                waiter.cancel()
                # runc could not start the command (not found, not executable, no such
                # working dir): the request's fault as the container stands.
                raise errors.FailedPrecondition(
                    f"cannot start {process.get('args')!r:.200} in container {container_id}: {e}"
                ) from None
            except BaseException:
                waiter.cancel()
                raise
            self.output.release_writers()  # the shim holds the write ends now
            self._waiter = waiter
        except BaseException:
            await self.close()
            raise
        return self

    async def _wait(self) -> None:
        try:
            code = await self.containerd.wait_process(self.container_id, self.exec_id)
        except errors.CrictlError as e:
            log.info("exec wait failed", extra={"exec": self.exec_id, "error": str(e)})
            code = 255
        self.exit_code.set_result(code)
        asyncio.get_running_loop().call_later(EXEC_DRAIN, self.output.stop)

    async def write_stdin(self, data: bytes) -> None:
        if self.stdin_fd is not None:
            try:
                await _write_nonblocking(self.stdin_fd, data)
            except OSError as e:
                raise errors.Unavailable(f"exec stdin: {e}") from None

    async def close_stdin(self) -> None:
        if self.stdin_fd is not None:
            os.close(self.stdin_fd)
            self.stdin_fd = None
            if not self.tty and not self.exit_code.done():
                with contextlib.suppress(errors.CrictlError):
                    await self.containerd.close_stdin(self.container_id, self.exec_id)

    async def resize(self, width: int, height: int) -> None:
        if self.tty and not self.exit_code.done():
            await self.containerd.resize_pty(self.container_id, self.exec_id, width, height)

    async def read_output(self) -> tuple[int, bytes] | None:
        return await self.output.read()

    async def wait(self) -> int:
        return await asyncio.shield(self.exit_code)

    async def kill(self) -> None:
        await self.containerd.kill_process(self.container_id, self.exec_id, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.exit_code), 10)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._waiter is not None and not self.exit_code.done():
                await self.kill()  # the client went away: the process goes with it
        finally:
            if self._waiter is not None:
                self._waiter.cancel()
            await self.close_stdin()
            self.output.close()
            with contextlib.suppress(errors.CrictlError):
                await self.containerd.delete_process(self.container_id, self.exec_id)
            await asyncio.to_thread(shutil.rmtree, self.dir, True)


class AttachProcess:
    """A session on a container's log writer's attach socket (SOCK_SEQPACKET): messages from
    it are a type byte (2 stdout, 3 stderr) and output; messages to it are stdin; shutting
    down our side ends stdin (the logger closes the container's stdin if StdinOnce)."""

    def __init__(
        self,
        containerd: ContainerdClient,
        container_id: str,
        sock: socket.socket,
        tty: bool,
        stdin_once: bool,
    ) -> None:
        self.containerd = containerd
        self.container_id = container_id
        self.sock = sock
        self.tty = tty
        self.stdin_once = stdin_once
        self.loop = asyncio.get_running_loop()
        self.ended = asyncio.Event()
        self.stdin_open = True

    @classmethod
    async def connect(
        cls,
        containerd: ContainerdClient,
        container_id: str,
        directory: Path,
        tty: bool,
        stdin_once: bool,
    ) -> AttachProcess:
        # The socket path may be longer than a sockaddr_un holds: go through the directory's fd.
        try:
            dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            raise errors.FailedPrecondition(
                f"container {container_id} has no attach endpoint (started before crictld "
                "served attach, or its log writer is gone)"
            ) from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(
                sock, f"/proc/self/fd/{dfd}/{ATTACH_SOCKET}"
            )
        except OSError as e:
            sock.close()
            raise errors.FailedPrecondition(
                f"container {container_id}: its log writer does not answer attach ({e.strerror})"
            ) from None
        finally:
            os.close(dfd)
        return cls(containerd, container_id, sock, tty, stdin_once)

    async def write_stdin(self, data: bytes) -> None:
        if not self.stdin_open:
            return
        view = memoryview(data)
        try:
            for start in range(0, len(view), ATTACH_MESSAGE):
                await self.loop.sock_sendall(self.sock, view[start : start + ATTACH_MESSAGE])
        except OSError:
            self.stdin_open = False

    async def close_stdin(self) -> None:
        if self.stdin_open:
            self.stdin_open = False
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
            # StdinOnce: the container's stdin ends with the first attach that ends it
            # (as containerd's CRI does, for non-TTY containers).
            if self.stdin_once and not self.tty:
                with contextlib.suppress(errors.CrictlError):
                    await self.containerd.close_stdin(self.container_id)

    async def resize(self, width: int, height: int) -> None:
        if self.tty:
            await self.containerd.resize_pty(self.container_id, "", width, height)

    async def read_output(self) -> tuple[int, bytes] | None:
        while not self.ended.is_set():
            try:
                message = await self.loop.sock_recv(self.sock, ATTACH_MESSAGE + 1)
            except OSError:
                message = b""
            if not message:
                self.ended.set()
                break
            kind = {ATTACH_STDOUT: STDOUT, ATTACH_STDERR: STDERR}.get(message[0])
            if kind is not None and len(message) > 1:
                return kind, message[1:]
        return None

    async def wait(self) -> int:
        await self.ended.wait()
        return 0

    async def close(self) -> None:
        self.ended.set()
        self.sock.close()
