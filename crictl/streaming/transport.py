"""Byte transports the sessions run over: a TCP connection, a WebSocket connection (wsproto),
and the SPDY-in-WebSocket tunnel that crictl's and kubectl's WebSocket port-forward use.

A transport never blocks its reader on its writer: reads, pings and writes are independent, so
a session can always keep reading its socket (spdystream's head-of-line stalls came from not
doing so).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

READ_CHUNK = 65536
MAX_WS_MESSAGE = 4 << 20


class TransportClosed(Exception):
    """The peer went away (or broke the protocol) while we were writing."""


class Transport(Protocol):
    async def read(self) -> bytes:
        """The next bytes from the peer; b"" once it closed."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class TcpTransport:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: bytes = b""
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._pending = pending
        self._drain_lock = asyncio.Lock()
        self._reading = False
        self._eof = asyncio.Event()

    async def read(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        if self._eof.is_set():
            return b""
        self._reading = True
        try:
            data = await self.reader.read(READ_CHUNK)
        except (ConnectionError, OSError):
            data = b""
        finally:
            self._reading = False
        if not data:
            self._eof.set()
        return data

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise TransportClosed("connection closed")
        self.writer.write(data)
        async with self._drain_lock:
            try:
                await self.writer.drain()
            except (ConnectionError, OSError) as e:
                raise TransportClosed(str(e)) from None

    async def close(self) -> None:
        """Half-closes, lets the peer read what was sent and hang up (closing with unread
        input would reset the connection, which can discard what the peer has not read
        yet), then closes."""
        if self.writer.is_closing():
            return
        with contextlib.suppress(ConnectionError, OSError, RuntimeError, TimeoutError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            async with asyncio.timeout(5):
                await self.writer.drain()
                while not self._eof.is_set():
                    if self._reading:
                        # A session's read loop may see the end, or stop reading first (it
                        # got what it wanted): look again shortly.
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._eof.wait(), 0.05)
                    else:
                        await self.read()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class WebSocket:
    """A server-side WebSocket over an accepted TCP connection whose handshake is done."""

    def __init__(self, tcp: TcpTransport, connection: Connection) -> None:
        self.tcp = tcp
        self.ws = connection
        self._messages: list[bytes | str] = []
        self._partial_bytes = bytearray()
        self._partial_text: list[str] = []
        self._closed = False

    async def _send(self, event: Message[Any] | CloseConnection | Ping) -> None:
        try:
            data = self.ws.send(event)
        except LocalProtocolError as e:
            raise TransportClosed(str(e)) from None
        await self.tcp.write(data)

    async def receive(self) -> bytes | str | None:
        """The next whole message (binary as bytes, text as str); None once closed."""
        while not self._messages:
            if self._closed:
                return None
            data = await self.tcp.read()
            if not data:
                self._closed = True
                return None
            try:
                self.ws.receive_data(data)
                await self._handle_events()
            except RemoteProtocolError as e:
                if e.event_hint is not None:
                    with contextlib.suppress(TransportClosed, LocalProtocolError):
                        await self.tcp.write(self.ws.send(e.event_hint))
                self._closed = True
                return None
        return self._messages.pop(0)

    async def _handle_events(self) -> None:
        for event in self.ws.events():
            if isinstance(event, BytesMessage):
                self._partial_bytes += event.data
                if len(self._partial_bytes) > MAX_WS_MESSAGE:
                    raise RemoteProtocolError("message too large", event_hint=CloseConnection(1009))
                if event.message_finished:
                    self._messages.append(bytes(self._partial_bytes))
                    self._partial_bytes.clear()
            elif isinstance(event, TextMessage):
                self._partial_text.append(event.data)
                if sum(map(len, self._partial_text)) > MAX_WS_MESSAGE:
                    raise RemoteProtocolError("message too large", event_hint=CloseConnection(1009))
                if event.message_finished:
                    self._messages.append("".join(self._partial_text))
                    self._partial_text.clear()
            elif isinstance(event, Ping):
                with contextlib.suppress(TransportClosed):
                    await self.tcp.write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.ws.state == ConnectionState.REMOTE_CLOSING:
                    with contextlib.suppress(TransportClosed, LocalProtocolError):
                        await self.tcp.write(self.ws.send(event.response()))
                self._closed = True

    async def send(self, message: bytes | str) -> None:
        if isinstance(message, bytes):
            await self._send(BytesMessage(data=message))
        else:
            await self._send(TextMessage(data=message))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.ws.state == ConnectionState.OPEN:
            with contextlib.suppress(TransportClosed):
                await self._send(CloseConnection(code=code, reason=reason))
        await self.tcp.close()


class TunnelTransport:
    """SPDY bytes carried in WebSocket binary messages (`SPDY/3.1+portforward.k8s.io`)."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def read(self) -> bytes:
        while True:
            message = await self.ws.receive()
            if message is None:
                return b""
            if isinstance(message, bytes) and message:
                return message

    async def write(self, data: bytes) -> None:
        await self.ws.send(data)

    async def close(self) -> None:
        await self.ws.close()
