"""Exec and attach sessions ("remotecommand"): a process's stdin, stdout, stderr and terminal
size joined to a client's channels, over SPDY streams or WebSocket channels, ending with the
status the client reads for the exit code.

The session ends when the process does (its exit code is the status), or when the client goes
away (then the process is closed: an exec'd process is killed, an attach just detaches). It
never waits for the client to close stdin: critest keeps it open for 20 s after `exit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from crictl import errors
from crictl.streaming import channels as ch
from crictl.streaming.backend import STDOUT, Process
from crictl.streaming.session import SpdySession, SpdyStream
from crictl.streaming.transport import TransportClosed, WebSocket

log = logging.getLogger(__name__)

STREAM_CREATION_TIMEOUT = 30.0

# SPDY protocol versions, in the server's preference order (kubelet's).
SPDY_V4 = "v4.channel.k8s.io"
SPDY_PROTOCOLS = (SPDY_V4, "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")


# -- the status on the error channel ---------------------------------------------------------


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_status(code: int, what: str) -> dict[str, Any]:
    if code == 0:
        return success_status()
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: {what} exited with {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def error_status(message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


def status_bytes(status: dict[str, Any], structured: bool) -> bytes:
    """What goes on the error channel: the JSON Status (protocol v4 and later), or for older
    protocols a plain-text message, and nothing at all on success."""
    if structured:
        return json.dumps(status, separators=(",", ":")).encode()
    if status["status"] == "Success":
        return b""
    return str(status["message"]).encode()


class ResizeDecoder:
    """`{"Width":w,"Height":h}` objects, one after another, split anywhere."""

    def __init__(self) -> None:
        self.buffer = ""
        self._json = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        buffer = self.buffer + data.decode(errors="replace")
        sizes: list[tuple[int, int]] = []
        pos = 0
        while True:
            space = _SPACE.match(buffer, pos)
            assert space is not None  # \s* always matches
            pos = space.end()
            if pos == len(buffer):
                self.buffer = ""
                return sizes
            try:
                obj, pos = self._json.raw_decode(buffer, pos)
            except RecursionError:
                raise ValueError("bad resize message: nested too deeply") from None
            except json.JSONDecodeError:
                self.buffer = buffer[pos:]
                if "}" in self.buffer:  # a whole object that is no JSON
                    raise ValueError(f"bad resize message {self.buffer[:80]!r}") from None
                if len(self.buffer) > 4096:
                    raise ValueError("resize message too long") from None
                return sizes
            if not isinstance(obj, dict):
                raise ValueError(f"bad resize message {obj!r}")
            # encoding/json (kubelet) matches field names case-insensitively.
            fields = {str(k).lower(): v for k, v in obj.items()}
            w, h = fields.get("width"), fields.get("height")
            if type(w) is int and type(h) is int and 0 <= w < 1 << 16 and 0 <= h < 1 << 16:
                sizes.append((w, h))
            else:
                raise ValueError(f"bad terminal size {obj!r}")


_SPACE = re.compile(r"\s*")


# -- channels: what the session runner reads and writes ---------------------------------------


class Channels(Protocol):
    gone: asyncio.Event  # the client went away

    async def read_stdin(self) -> bytes: ...

    async def read_resize(self) -> bytes: ...

    async def write(self, stream: int, data: bytes) -> None: ...

    async def finish(self, status: dict[str, Any]) -> None: ...


class SpdyChannels:
    """One SPDY stream per channel, named by its `streamtype` header."""

    def __init__(self, session: SpdySession, streams: dict[str, SpdyStream], version: str) -> None:
        self.session = session
        self.streams = streams
        self.structured = version == SPDY_V4
        self.gone = asyncio.Event()
        for name in ("error", "stdout", "stderr"):  # written only: never read
            if name in streams:
                streams[name].discard_input()

    @classmethod
    async def accept(
        cls, session: SpdySession, version: str, stdin: bool, stdout: bool, stderr: bool, tty: bool
    ) -> SpdyChannels | None:
        """Waits for the client's streams; None if they did not all come in time."""
        wanted = {"error"}
        wanted |= {"stdin"} if stdin else set()
        wanted |= {"stdout"} if stdout else set()
        wanted |= {"stderr"} if stderr and not tty else set()
        if tty and version in (SPDY_V4, "v3.channel.k8s.io"):
            wanted.add("resize")
        streams: dict[str, SpdyStream] = {}
        try:
            async with asyncio.timeout(STREAM_CREATION_TIMEOUT):
                while not wanted <= streams.keys():
                    stream = await session.accept()
                    if stream is None:
                        return None
                    kind = stream.header("streamtype")
                    if kind not in wanted or kind in streams:
                        await stream.reset(3)  # REFUSED_STREAM
                        continue
                    streams[kind] = stream
        except TimeoutError:
            log.info("client did not create its streams in time", extra={"have": sorted(streams)})
            return None
        return cls(session, streams, version)

    async def read_stdin(self) -> bytes:
        stream = self.streams.get("stdin")
        return await stream.read() if stream is not None else b""

    async def read_resize(self) -> bytes:
        stream = self.streams.get("resize")
        return await stream.read() if stream is not None else b""

    async def write(self, stream: int, data: bytes) -> None:
        target = self.streams.get("stdout" if stream == STDOUT else "stderr")
        if target is not None and not target.local_closed:
            await target.write(data)

    async def finish(self, status: dict[str, Any]) -> None:
        with contextlib.suppress(TransportClosed):
            for name in ("stdout", "stderr"):
                if name in self.streams:
                    await self.streams[name].close()
            error = self.streams["error"]
            payload = status_bytes(status, self.structured)
            if payload:
                await error.write(payload)
            await error.close()
        await self.session.close()


class WebSocketChannels:
    """The channel protocols of `crictl.streaming.channels` over one WebSocket."""

    def __init__(
        self, ws: WebSocket, protocol: ch.Protocol, stdin: bool, stdout: bool, stderr: bool
    ) -> None:
        self.ws = ws
        self.protocol = protocol
        self.gone = asyncio.Event()
        self.stdin: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        self.resize: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        self.enabled = {ch.STDOUT: stdout, ch.STDERR: stderr}
        self._opened = stdin, stdout, stderr

    async def open(self) -> None:
        # The Go client waits for a first message to know the streams are up: an empty one on
        # the lowest channel the server writes.
        _, stdout, stderr = self._opened
        first = ch.STDOUT if stdout else ch.STDERR if stderr else ch.ERROR
        await self.ws.send(self.protocol.encode(first, b""))

    async def pump(self) -> None:
        """Reads the client's messages until it goes away."""
        stdin_open = self._opened[0]  # without stdin its messages are dropped
        try:
            while (message := await self.ws.receive()) is not None:
                channel, payload = self.protocol.decode(message)
                closed = self.protocol.close_of(channel, payload)
                if closed == ch.STDIN and stdin_open:
                    stdin_open = False
                    await self.stdin.put(b"")
                elif channel == ch.STDIN and stdin_open and payload:
                    await self.stdin.put(payload)
                elif channel == ch.RESIZE and payload:
                    # Nobody reads them without a TTY (or after a bad one): drop, never block.
                    with contextlib.suppress(asyncio.QueueFull):
                        self.resize.put_nowait(payload)
        except ch.ChannelError as e:
            log.info("closing WebSocket stream", extra={"error": str(e)})
            await self.ws.close(1002, str(e)[:100])
        finally:
            self.gone.set()
            with contextlib.suppress(asyncio.QueueFull):
                self.stdin.put_nowait(b"")
                self.resize.put_nowait(b"")

    async def read_stdin(self) -> bytes:
        return await self.stdin.get()

    async def read_resize(self) -> bytes:
        return await self.resize.get()

    async def write(self, stream: int, data: bytes) -> None:
        if self.enabled.get(stream):
            await self.ws.send(self.protocol.encode(stream, data))

    async def finish(self, status: dict[str, Any]) -> None:
        with contextlib.suppress(TransportClosed):
            payload = status_bytes(status, self.protocol.version >= 4)
            if payload or self.protocol.version >= 4:
                await self.ws.send(self.protocol.encode(ch.ERROR, payload))
        await self.ws.close(1000)


# -- the session ------------------------------------------------------------------------------


async def run(
    channels: Channels,
    start: Callable[[], Awaitable[Process]],
    what: str,
    stdin: bool,
    tty: bool,
) -> None:
    """Starts the process once the client's channels are there, joins them, and ends with the
    status."""
    try:
        process = await start()
    except errors.CrictlError as e:
        with contextlib.suppress(TransportClosed):
            await channels.finish(error_status(str(e)))
        return
    pumps: list[asyncio.Task[None]] = []
    try:
        pumps.append(asyncio.create_task(_pump_output(process, channels)))
        if stdin:
            pumps.append(asyncio.create_task(_pump_stdin(process, channels)))
        if tty:
            pumps.append(asyncio.create_task(_pump_resize(process, channels)))
        exited = asyncio.create_task(process.wait())
        gone = asyncio.create_task(channels.gone.wait())
        await asyncio.wait([exited, gone], return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not exited.done():
            exited.cancel()
            return  # the client left: the finally clause ends the process
        code = exited.result()
        await pumps[0]  # the rest of the output: it ends a short drain after the exit
        with contextlib.suppress(TransportClosed):
            await channels.finish(exit_status(code, what))
    except TransportClosed:
        pass
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await process.close()


async def _pump_output(process: Process, channels: Channels) -> None:
    while (chunk := await process.read_output()) is not None:
        await channels.write(*chunk)


async def _pump_stdin(process: Process, channels: Channels) -> None:
    while data := await channels.read_stdin():
        await process.write_stdin(data)
    await process.close_stdin()


async def _pump_resize(process: Process, channels: Channels) -> None:
    decoder = ResizeDecoder()
    while data := await channels.read_resize():
        try:
            sizes = decoder.feed(data)
        except ValueError as e:
            log.info("ignoring the rest of a resize stream", extra={"error": str(e)})
            while await channels.read_resize():  # drained, so it never stalls the session
                pass
            return
        for width, height in sizes:
            with contextlib.suppress(errors.CrictlError):
                await process.resize(width, height)
