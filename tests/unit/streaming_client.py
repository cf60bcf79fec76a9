"""Test clients for crictl.streaming's server: raw HTTP, a small SPDY/3.1 client (the codec of
crictl.streaming.spdy over asyncio streams, speaking the way moby/spdystream does), a WebSocket
client (wsproto), and a fake Backend whose processes and dials the tests drive and inspect.

Nothing here imports the server's session code: the client only shares the pure frame codec,
which tests/unit/test_spdy.py checks against the bytes spdystream writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from crictl import errors
from crictl.streaming import spdy
from crictl.streaming.backend import STDERR, STDOUT
from crictl.streaming.requests import AttachRequest, ExecRequest

TIMEOUT = 5.0
CLOSED_PORT = 1  # FakeBackend.dial refuses this port


async def until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Polls `predicate` until it holds (TimeoutError otherwise)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (state changes in other tasks, no event to wait on)
            await asyncio.sleep(0.005)


_LIVE: set[asyncio.StreamWriter] = set()


async def connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio.open_connection, remembered so that close_all() can hang up whatever a failed
    test left open."""
    reader, writer = await asyncio.open_connection(host, port)
    _LIVE.add(writer)
    return reader, writer


async def close_all() -> None:
    while _LIVE:
        writer = _LIVE.pop()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def abort(writer: asyncio.StreamWriter) -> None:
    """Hangs up with a TCP reset (SO_LINGER 0), as a killed client's kernel may."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def split_url(url: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port, target


# -- HTTP --------------------------------------------------------------------------------------


@dataclass
class HttpResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def parse_head(head: bytes) -> HttpResponse:
    lines = head.decode("latin-1").split("\r\n")
    _version, status, *reason = lines[0].split(" ", 2)
    headers = [
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)
    ]
    return HttpResponse(int(status), reason[0] if reason else "", headers)


async def read_response(reader: asyncio.StreamReader) -> HttpResponse:
    """The response head, plus its body unless it is a 101 (then the reader is left at the
    first byte of the upgraded protocol)."""
    head = await reader.readuntil(b"\r\n\r\n")
    response = parse_head(head[:-4])
    if response.status == 101:
        return response
    length = response.header("content-length")
    if length is not None:
        response.body = await reader.readexactly(int(length))
    else:
        response.body = await reader.read()
    return response


def upgrade_request(
    url: str,
    *,
    method: str = "POST",
    upgrade: str | None = "SPDY/3.1",
    protocols: list[str] | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> bytes:
    host, port, target = split_url(url)
    headers = [("Host", f"{host}:{port}"), ("Content-Length", "0")]
    if upgrade is not None:
        headers += [("Connection", "Upgrade"), ("Upgrade", upgrade)]
    headers += [("X-Stream-Protocol-Version", p) for p in protocols or []]
    headers += extra or []
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


async def http_request(url: str, raw: bytes | None = None, **kwargs: object) -> HttpResponse:
    """Sends one request (by default an upgrade request built from kwargs) and reads the
    response; for a 101 the connection is closed right after the head."""
    host, port, _ = split_url(url)
    reader, writer = await connect(host, port)
    try:
        writer.write(raw if raw is not None else upgrade_request(url, **kwargs))  # type: ignore[arg-type]
        await writer.drain()
        response = await read_response(reader)
        return response
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# -- SPDY --------------------------------------------------------------------------------------


@dataclass
class ClientStream:
    id: int
    headers: dict[str, str]
    data: bytearray = field(default_factory=bytearray)
    replied: bool = False
    fin: bool = False  # the server ended its side (FIN)
    reset: int | None = None  # the server reset it (RST_STREAM status)

    @property
    def ended(self) -> bool:
        return self.fin or self.reset is not None


class SpdyClient:
    """One upgraded connection: frames go out through an Encoder, a reader task decodes
    everything the server sends and keeps per-stream state."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = spdy.Encoder()
        self.decoder = spdy.Decoder()
        self.frames: list[spdy.Frame] = []
        self.streams: dict[int, ClientStream] = {}
        self.next_id = 1
        self.eof = False
        self.error: Exception | None = None
        self._changed = asyncio.Event()
        self._reading: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, url: str, protocols: list[str] | None = None, **kwargs: object
    ) -> tuple[HttpResponse, SpdyClient]:
        host, port, _ = split_url(url)
        reader, writer = await connect(host, port)
        offer = protocols if protocols is not None else ["v4.channel.k8s.io"]
        writer.write(upgrade_request(url, protocols=offer, **kwargs))  # type: ignore[arg-type]
        await writer.drain()
        response = await read_response(reader)
        client = cls(reader, writer)
        if response.status == 101:
            client._reading = asyncio.create_task(client._read())
        else:
            client.eof = True
        return response, client

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for frame in self.decoder.feed(data):
                    self._on(frame)
                self._changed.set()
        except (ConnectionError, spdy.ProtocolError) as e:
            self.error = e
        finally:
            self.eof = True
            self._changed.set()

    def _on(self, frame: spdy.Frame) -> None:
        self.frames.append(frame)
        match frame:
            case spdy.SynReply(sid, _, fin):
                stream = self.streams.setdefault(sid, ClientStream(sid, {}))
                stream.replied = True
                stream.fin = stream.fin or fin
            case spdy.DataFrame(sid, data, fin):
                stream = self.streams.setdefault(sid, ClientStream(sid, {}))
                stream.data += data
                stream.fin = stream.fin or fin
            case spdy.RstStream(sid, status):
                if sid in self.streams:
                    self.streams[sid].reset = status

    async def wait(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                if self.eof and not predicate():
                    raise ConnectionError(f"connection ended while waiting ({self.error})")
                await self._changed.wait()

    async def send(self, frame: spdy.Frame) -> None:
        self.writer.write(self.encoder.encode(frame))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def open(self, headers: dict[str, str], fin: bool = False) -> int:
        sid = self.next_id
        self.next_id += 2
        self.streams[sid] = ClientStream(sid, headers)
        await self.send(spdy.SynStream(sid, headers, fin=fin))
        return sid

    async def open_streams(self, *kinds: str) -> dict[str, int]:
        """Opens one stream per kind, in order (as client-go: error, stdin, stdout, ...), and
        waits for every SYN_REPLY."""
        ids = {kind: await self.open({"streamtype": kind}) for kind in kinds}
        await self.wait(lambda: all(self.streams[i].replied for i in ids.values()))
        return ids

    async def write(self, sid: int, data: bytes, fin: bool = False) -> None:
        await self.send(spdy.DataFrame(sid, data, fin))

    async def read_to_end(self, sid: int, timeout: float = TIMEOUT) -> bytes:
        await self.wait(lambda: self.streams[sid].ended, timeout)
        return bytes(self.streams[sid].data)

    async def wait_eof(self, timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while not self.eof:
                self._changed.clear()
                await self._changed.wait()

    def goaways(self) -> list[spdy.GoAway]:
        return [f for f in self.frames if isinstance(f, spdy.GoAway)]

    async def close(self, reset: bool = False) -> None:
        if reset:
            abort(self.writer)
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading


# -- WebSocket ---------------------------------------------------------------------------------


class WsClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.accepted: AcceptConnection | None = None
        self.rejected: RejectConnection | None = None
        self.messages: list[bytes | str] = []
        self.close_code: int | None = None
        self.eof = False
        self._partial_bytes = bytearray()
        self._partial_text: list[str] = []

    @classmethod
    async def connect(
        cls, url: str, subprotocols: list[str], extra: list[tuple[bytes, bytes]] | None = None
    ) -> WsClient:
        host, port, target = split_url(url)
        reader, writer = await connect(host, port)
        client = cls(reader, writer)
        request = Request(
            host=f"{host}:{port}",
            target=target,
            subprotocols=subprotocols,
            extra_headers=extra or [],
        )
        await client._write(client.ws.send(request))
        async with asyncio.timeout(TIMEOUT):
            while client.accepted is None and client.rejected is None and not client.eof:
                await client._pump()
        return client

    async def _write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _pump(self) -> None:
        """Reads once and handles the events."""
        try:
            data = await self.reader.read(65536)
        except ConnectionError:
            data = b""
        if not data:
            self.eof = True
            if self.ws.state != ConnectionState.CLOSED:
                self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = event
            elif isinstance(event, RejectConnection):
                self.rejected = event
            elif isinstance(event, RejectData):
                pass
            elif isinstance(event, BytesMessage):
                self._partial_bytes += event.data
                if event.message_finished:
                    self.messages.append(bytes(self._partial_bytes))
                    self._partial_bytes.clear()
            elif isinstance(event, TextMessage):
                self._partial_text.append(event.data)
                if event.message_finished:
                    self.messages.append("".join(self._partial_text))
                    self._partial_text.clear()
            elif isinstance(event, CloseConnection):
                if self.close_code is None:
                    self.close_code = event.code
                with contextlib.suppress(Exception):
                    await self._write(self.ws.send(event.response()))
            elif isinstance(event, Ping):
                with contextlib.suppress(Exception):
                    await self._write(self.ws.send(event.response()))
            elif isinstance(event, Pong):
                pass

    async def send(self, message: bytes | str) -> None:
        if isinstance(message, bytes):
            await self._write(self.ws.send(BytesMessage(data=message)))
        else:
            await self._write(self.ws.send(TextMessage(data=message)))

    async def send_raw(self, data: bytes) -> None:
        await self._write(data)

    async def run_until_closed(self, timeout: float = TIMEOUT) -> None:
        """Reads messages until the server's Close frame (answered) or EOF."""
        async with asyncio.timeout(timeout):
            while self.close_code is None and not self.eof:
                await self._pump()

    async def wait_messages(self, count: int, timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count and not self.eof and self.close_code is None:
                await self._pump()

    async def close(self, reset: bool = False) -> None:
        if reset:
            abort(self.writer)
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


# -- the fake backend --------------------------------------------------------------------------


class FakeProcess:
    """What Backend.exec/attach return. The mode comes from the command (exec) or the container
    id (attach):
    - ("echo", [code]): stdin is copied to stdout; exits with `code` once stdin is closed;
    - ("print", out, err, code): writes out and err, exits with code;
    - ("sleep",): neither ends nor exits until closed (a process the client abandons).
    """

    def __init__(self, argv: tuple[str, ...], tty: bool) -> None:
        self.argv = argv
        self.tty = tty
        self.stdin = bytearray()
        self.stdin_closed = False
        self.resizes: list[tuple[int, int]] = []
        self.close_calls = 0
        self.killed = False
        self._output: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        mode = argv[0] if argv else "sleep"
        if mode == "print":
            out, err, code = argv[1], argv[2], int(argv[3])
            if out:
                self._output.put_nowait((STDOUT, out.encode()))
            if err:
                self._output.put_nowait((STDERR, err.encode()))
            self._end(code)

    @property
    def mode(self) -> str:
        return self.argv[0] if self.argv else "sleep"

    def _end(self, code: int) -> None:
        if not self._exit.done():
            self._output.put_nowait(None)
            self._exit.set_result(code)

    async def write_stdin(self, data: bytes) -> None:
        self.stdin += data
        if self.mode == "echo":
            await self._output.put((STDOUT, data))

    async def close_stdin(self) -> None:
        self.stdin_closed = True
        if self.mode == "echo":
            self._end(int(self.argv[1]) if len(self.argv) > 1 else 0)

    async def resize(self, width: int, height: int) -> None:
        self.resizes.append((width, height))

    async def read_output(self) -> tuple[int, bytes] | None:
        return await self._output.get()

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def close(self) -> None:
        self.close_calls += 1
        if not self._exit.done():
            self.killed = True
            self._end(-9)

    @property
    def closed(self) -> bool:
        return self.close_calls > 0


class FakeBackend:
    def __init__(self, echo_port: int) -> None:
        self.echo_port = echo_port
        self.processes: list[FakeProcess] = []
        self.dials: list[tuple[str, int]] = []

    async def exec(self, request: ExecRequest) -> FakeProcess:
        if request.cmd and request.cmd[0] == "missing":
            raise errors.NotFound(f"executable {request.cmd[1]!r} not found")
        process = FakeProcess(request.cmd, request.tty)
        self.processes.append(process)
        return process

    async def attach(self, request: AttachRequest) -> FakeProcess:
        process = FakeProcess(tuple(request.container_id.split(":")), request.tty)
        self.processes.append(process)
        return process

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        self.dials.append((sandbox_id, port))
        if port == CLOSED_PORT:
            raise errors.Unavailable(f"nothing listens on port {port} in sandbox {sandbox_id}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.echo_port))
        except BaseException:
            sock.close()
            raise
        return sock


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echoes until EOF, then half-closes back (a pod's TCP echo server)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
