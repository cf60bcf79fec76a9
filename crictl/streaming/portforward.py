"""Port-forward sessions: TCP connections to ports inside a pod, over SPDY stream pairs or
WebSocket channel pairs.

SPDY (`portforward.k8s.io`, also inside the WebSocket tunnel): each forwarded connection is a
pair of streams, `error` then `data`, carrying the same `requestid` and `port` headers; many
pairs share one session. WebSocket (legacy `?ports=`): one pair of channels per port, 2i data
and 2i+1 error, each opened by writing the port (2 bytes, little-endian).

A connection the pod side resets or closes is a normal end: it never writes to the error
stream, because kubectl and crictl drop the whole session on any error text
(kubernetes#74551). Only a dial that fails does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

from crictl import errors
from crictl.streaming import channels as ch
from crictl.streaming.session import SpdySession, SpdyStream
from crictl.streaming.transport import TransportClosed, WebSocket

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
PAIR_TIMEOUT = 30.0
LINGER = 1.0  # after one direction ends, how long the other may go on
READ_CHUNK = 65536

Dial = Callable[[int], Awaitable[socket.socket]]


async def _copy_to_pod(read: Callable[[], Awaitable[bytes]], sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(ConnectionError, OSError):
        while data := await read():
            await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)


async def _copy_from_pod(sock: socket.socket, write: Callable[[bytes], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(ConnectionError, OSError):
        while data := await loop.sock_recv(sock, READ_CHUNK):
            await write(data)


async def forward(
    sock: socket.socket,
    read: Callable[[], Awaitable[bytes]],
    write: Callable[[bytes], Awaitable[None]],
) -> None:
    """Copies both ways until both ends are done, or one is and the other lingers past
    LINGER (as containerd does), then closes the pod's socket."""
    up = asyncio.create_task(_copy_to_pod(read, sock))
    down = asyncio.create_task(_copy_from_pod(sock, write))
    try:
        _, pending = await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=LINGER)
    finally:
        # Also when forward() itself is cancelled (its session ended): a copy task left
        # running keeps a reader registered on the fd that sock.close() frees for reuse.
        up.cancel()
        down.cancel()
        try:
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            sock.close()


# -- SPDY -----------------------------------------------------------------------------------


class SpdyPortForward:
    def __init__(self, session: SpdySession, dial: Dial) -> None:
        self.session = session
        self.dial = dial
        self.pairs: dict[str, dict[str, SpdyStream]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        try:
            while (stream := await self.session.accept()) is not None:
                await self._add(stream)
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _add(self, stream: SpdyStream) -> None:
        kind = stream.header("streamtype")
        port = stream.header("port")
        if kind not in ("error", "data") or not _valid_port(port):
            await stream.reset(1)  # PROTOCOL_ERROR: as kubelet, a stream it cannot use
            return
        # Pairing by request id; old clients send none: they open the error stream first,
        # so its id is the data stream's id - 2 (kubelet's rule).
        request_id = stream.header("requestid") or str(
            stream.id if kind == "error" else stream.id - 2
        )
        pair = self.pairs.setdefault(request_id, {})
        if kind in pair:
            await stream.reset(1)
            return
        pair[kind] = stream
        if len(pair) == 2:
            del self.pairs[request_id]
            self._spawn(self._serve_pair(pair["error"], pair["data"], int(port)))
        elif len(pair) == 1:
            self._spawn(self._expire(request_id))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _expire(self, request_id: str) -> None:
        await asyncio.sleep(PAIR_TIMEOUT)
        pair = self.pairs.pop(request_id, None)
        if pair:
            with contextlib.suppress(TransportClosed):
                if "error" in pair:
                    await pair["error"].write(b"timed out waiting for streams")
                for stream in pair.values():
                    await stream.reset()

    async def _serve_pair(self, error: SpdyStream, data: SpdyStream, port: int) -> None:
        # The client ends the error stream at once; reading it keeps the session's read loop
        # from waiting on it.
        drain = asyncio.ensure_future(_drain(error))
        try:
            try:
                sock = await self.dial(port)
            except errors.CrictlError as e:
                with contextlib.suppress(TransportClosed):
                    await error.write(str(e).encode())
                    await error.close()
                    await data.reset()
                return
            await forward(sock, data.read, data.write)
            with contextlib.suppress(TransportClosed):
                if data.reset_by_peer:
                    await data.reset()
                else:
                    await data.close()
                await error.close()
        finally:
            drain.cancel()


def _valid_port(text: str) -> bool:
    """1-65535 in ASCII digits (str.isdigit() also accepts '²', which int() refuses)."""
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


async def _drain(stream: SpdyStream) -> None:
    while await stream.read():
        pass


# -- WebSocket (legacy, one pair of channels per port) -----------------------------------------


async def serve_websocket(
    ws: WebSocket, protocol: ch.Protocol, ports: list[int], dial: Dial
) -> None:
    inbound: dict[int, asyncio.Queue[bytes]] = {
        i: asyncio.Queue(maxsize=64) for i in range(len(ports))
    }

    async def pump() -> None:
        try:
            while (message := await ws.receive()) is not None:
                channel, payload = protocol.decode(message)
                if channel % 2 == 0 and channel // 2 in inbound and payload:
                    await inbound[channel // 2].put(payload)
        except ch.ChannelError as e:
            await ws.close(1002, str(e)[:100])
        finally:
            for q in inbound.values():
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait(b"")

    async def one(i: int, port: int) -> None:
        try:
            sock = await dial(port)
        except errors.CrictlError as e:
            await ws.send(protocol.encode(2 * i + 1, str(e).encode()))
            return

        async def write(data: bytes) -> None:
            await ws.send(protocol.encode(2 * i, data))

        await forward(sock, inbound[i].get, write)

    reader = asyncio.create_task(pump())
    try:
        prefix = [struct.pack("<H", p) for p in ports]
        for i, p in enumerate(prefix):
            await ws.send(protocol.encode(2 * i, p))
            await ws.send(protocol.encode(2 * i + 1, p))
        await asyncio.gather(*(one(i, p) for i, p in enumerate(ports)))
    except TransportClosed:
        pass
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await ws.close(1000)
