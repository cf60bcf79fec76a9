"""What the streaming handlers need from the rest of the daemon, as small interfaces.

The streaming package speaks HTTP, SPDY and WebSocket only; running a process in a container,
reaching a container's attach endpoint and dialling a port inside a pod's network namespace
are the reconciler's (it owns the containerd client and the netns). The daemon hands an
implementation of `Backend` to the server.
"""

from __future__ import annotations

import socket
from typing import Protocol

from crictl.streaming.requests import AttachRequest, ExecRequest

STDOUT = 1
STDERR = 2


class Process(Protocol):
    """A process a session is joined to: an exec'd process, or a running container (attach)."""

    async def write_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None:
        """The client ended its stdin: the process sees end-of-file (for attach, only where
        the container asked for StdinOnce)."""

    async def resize(self, width: int, height: int) -> None: ...

    async def read_output(self) -> tuple[int, bytes] | None:
        """The next chunk of output as (STDOUT | STDERR, data); None once the output ended.
        The output ends at most a short drain time after the process exits, even if a child
        it left behind still holds its pipes (kubernetes#44371)."""

    async def wait(self) -> int:
        """The exit code (exec); 0 once the container's output ended (attach)."""

    async def close(self) -> None:
        """Releases everything; an exec'd process that still runs is killed (the client went
        away). Safe to call more than once."""


class Backend(Protocol):
    async def exec(self, request: ExecRequest) -> Process:
        """Starts the process (raises a CrictlError when it cannot)."""

    async def attach(self, request: AttachRequest) -> Process: ...

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        """A connected, non-blocking TCP socket to `port` inside the pod's network namespace
        (127.0.0.1 first, then ::1); raises a CrictlError naming the port when neither
        answers."""
