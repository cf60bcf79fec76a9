"""containerd's unary gRPC calls over crictld's own HTTP/2 connection (RFC 9113, gRPC's wire
protocol), on the daemon's event loop; server streams (the event subscription, content reads,
snapshot lists) and client streams (content writes) stay on grpc's asyncio channel.

Why: a profile of the daemon under `benchmarks.containers` put ~40 % of the daemon loop's CPU
in grpc's Cython unary call, and a `Version` through `ContainerdClient` took 336 us of the
process's CPU (grpc's threads included) and 390 us of wall time with grpc's channel against
177 and 235 framed here, on the loop's own socket with no other thread woken
(docs/performance.md, "The containerd client").

What it does:

- One connection at a time, made at the first call and made again at the next call after it
  was lost (containerd restarted) or went away (GOAWAY): a call that finds containerd not
  listening fails at once with UNAVAILABLE, as grpc's channel fails a call while it cannot
  connect; the calls in flight on a lost connection fail UNAVAILABLE too.
- HTTP/2: the preface and SETTINGS (no push; the peer's initial window, frame size and stream
  limit applied), PING answered, GOAWAY (streams above its last id fail UNAVAILABLE; the
  others finish, then the connection closes), RST_STREAM, CONTINUATION. Header blocks are
  decoded by hpack (containerd's encoder uses the dynamic table, so every block is decoded,
  those of streams given up on included); what is sent uses no dynamic table.
- Flow control both ways: a request waits for the peer's windows (stream and connection)
  and is sent in frames of at most the peer's frame size; what is received is granted back
  once half a window was read.
- gRPC: one request and one response message, uncompressed, of at most `max_send` /
  `max_receive` bytes (RESOURCE_EXHAUSTED above, as grpc's channel options); `timeout` sent
  as `grpc-timeout` and kept here too (DEADLINE_EXCEEDED, the stream reset); a call whose
  awaiting task is cancelled resets its stream (containerd then cancels what it asked of the
  shim); a status other than OK is raised as grpc's own `AioRpcError`, with the details
  percent-decoded, so callers catch one kind whichever channel served them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
import urllib.parse
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio
import hpack

from crictl.http2 import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Http2Error,
    frame,
    frames,
    indexed_name,
    literal,
    unpad,
)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_DEFAULT_WINDOW = 65535
_RECEIVE_WINDOW = 1 << 22  # what each stream may send before it is granted more
_CONNECTION_WINDOW = 1 << 26
_MAX_HEADER_LIST = 64 << 10
_FRAME_SIZE = 16384  # what containerd may send: HTTP/2's default, we advertise no other
_LAST_STREAM_ID = (1 << 31) - 1


# :method POST (static 3), :scheme http (static 6); :path (4), :authority (1), content-type (31)
_FIXED = b"\x83\x86" + indexed_name(1, b"localhost") + indexed_name(31, b"application/grpc")
_FIXED += literal(b"te", b"trailers")


def _timeout_header(seconds: float) -> bytes:
    """grpc-timeout: at most 8 digits, in the finest unit that holds them."""
    for unit, scale in ((b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60)):
        value = max(0, math.ceil(seconds * scale))
        if value < 100_000_000:
            return literal(b"grpc-timeout", str(value).encode() + unit)
    return literal(b"grpc-timeout", b"99999999H")


# grpc's own mapping of an HTTP status without grpc-status to a code
_HTTP_CODES = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}
_CODES = {c.value[0]: c for c in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class _Stream:
    __slots__ = (
        "answered",
        "body",
        "headers",
        "id",
        "limit",
        "received",
        "send_window",
        "trailers",
        "unacked",
    )

    def __init__(self, stream_id: int, send_window: int, limit: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.limit = limit
        self.body = bytearray()
        self.headers: list[tuple[str, str]] | None = None
        self.trailers: list[tuple[str, str]] | None = None
        self.unacked = 0
        self.received = 0
        # the call's end: its response message, or the error it ends with
        self.answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()


class Connection(asyncio.Protocol):
    """One HTTP/2 connection to containerd: its frames read, its streams' answers handed back."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = _MAX_HEADER_LIST
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._header_block: tuple[int, int, bytearray] | None = None
        self._send_window = _DEFAULT_WINDOW  # the connection's, for what is sent
        self._peer_window = _DEFAULT_WINDOW  # the peer's initial window for a stream
        self._peer_frame = 16384
        self._peer_streams = math.inf
        self._unacked = 0  # received on the connection and not yet granted back
        self._window_opened = asyncio.Event()  # a send window grew, or a stream ended
        self.usable = True  # False once it was lost or went away: new calls open another
        self._going_away_at: int | None = None

    # -- the transport's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        settings = struct.pack(
            ">HIHIHI",
            ENABLE_PUSH,
            0,
            INITIAL_WINDOW_SIZE,
            _RECEIVE_WINDOW,
            MAX_HEADER_LIST_SIZE,
            _MAX_HEADER_LIST,
        )
        grant = struct.pack(">I", _CONNECTION_WINDOW - _DEFAULT_WINDOW)
        transport.write(
            PREFACE + frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, grant)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.usable = False
        why = f"the connection to containerd was lost ({exc})" if exc else "containerd closed it"
        for stream in list(self._streams.values()):
            self._fail(stream, rpc_error(grpc.StatusCode.UNAVAILABLE, why))
        self._window_opened.set()

    def close(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except (Http2Error, hpack.HPACKError, ValueError) as e:
            # the connection's state is lost with the header table: it is given up
            if self._transport is not None:
                self._transport.write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 1)))
                self._transport.abort()
            self.connection_lost(e)

    # -- a call

    async def unary(self, path_field: bytes, extra: bytes, message: bytes, limit: int) -> bytes:
        """Sends one request message on a new stream and returns the response's; raises
        AioRpcError. The caller's cancellation resets the stream."""
        while len(self._streams) >= self._peer_streams and self.usable:
            self._window_opened.clear()
            await self._window_opened.wait()
        if not self.usable or self._transport is None:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "the connection to containerd went away")
        stream = _Stream(self._next_id, self._peer_window, limit)
        self._next_id += 2
        if self._next_id > _LAST_STREAM_ID:
            self.usable = False  # this one ends with its streams; the next call opens another
        self._streams[stream.id] = stream
        try:
            block = path_field + _FIXED + extra
            self._transport.write(frame(HEADERS, END_HEADERS, stream.id, block))
            await self._send_data(stream, len(message).to_bytes(5, "big") + message)
            return await stream.answered
        except asyncio.CancelledError:
            if self._streams.pop(stream.id, None) is not None and self._transport is not None:
                self._transport.write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", CANCEL)))
            raise
        finally:
            self._ended(stream)

    async def _send_data(self, stream: _Stream, data: bytes) -> None:
        pos, end = 0, len(data)
        while True:
            if stream.answered.done():
                return  # answered (an error) before it was all sent
            n = min(end - pos, stream.send_window, self._send_window, self._peer_frame)
            if n > 0 or pos == end:
                last = pos + n == end
                chunk = data[pos : pos + n]
                stream.send_window -= n
                self._send_window -= n
                pos += n
                assert self._transport is not None
                self._transport.write(frame(DATA, END_STREAM if last else 0, stream.id, chunk))
                if last:
                    return
                continue
            self._window_opened.clear()
            await self._window_opened.wait()
            if self._transport is None:
                return  # lost: the stream was failed with it

    def _ended(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        self._window_opened.set()  # a caller waiting for a stream slot
        if self._going_away_at is not None and not self._streams:
            self.close()

    # -- reading frames

    def _receive(self, data: bytes) -> None:
        self._buffer += data
        for kind, flags, stream_id, payload in frames(self._buffer, _FRAME_SIZE):
            self._frame(kind, flags, stream_id, payload)
        self._grant()

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            payload = unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._header_block_done(stream_id, flags, payload)
            else:
                self._header_block = (stream_id, flags, bytearray(payload))
        elif kind == CONTINUATION:
            if self._header_block is None or self._header_block[0] != stream_id:
                raise ValueError("CONTINUATION out of a header block")
            self._header_block[2].extend(payload)
            if flags & END_HEADERS:
                sid, first, block = self._header_block
                self._header_block = None
                self._header_block_done(sid, first, bytes(block))
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream_id == 0:
                self._send_window += increment
            elif (stream := self._streams.get(stream_id)) is not None:
                stream.send_window += increment
            self._window_opened.set()
        elif kind == PING:
            if not flags & ACK and self._transport is not None:
                self._transport.write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            stream = self._streams.get(stream_id)
            if stream is not None:
                code = int.from_bytes(payload[:4], "big")
                status = (
                    grpc.StatusCode.UNAVAILABLE
                    if code == REFUSED_STREAM
                    else grpc.StatusCode.CANCELLED
                    if code == CANCEL
                    else grpc.StatusCode.INTERNAL
                )
                self._fail(stream, rpc_error(status, f"containerd reset the stream (code {code})"))
        elif kind == GOAWAY:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            self.usable = False
            self._going_away_at = last
            for stream in list(self._streams.values()):
                if stream.id > last:
                    self._fail(
                        stream, rpc_error(grpc.StatusCode.UNAVAILABLE, "containerd went away")
                    )
            if not self._streams:
                self.close()
        # PRIORITY, PUSH_PROMISE (refused by our SETTINGS) and unknown types are ignored

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - len(payload) % 6, 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == INITIAL_WINDOW_SIZE:
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif key == MAX_FRAME_SIZE:
                self._peer_frame = value
            elif key == MAX_CONCURRENT:
                self._peer_streams = value
        if self._transport is not None:
            self._transport.write(frame(SETTINGS, ACK, 0))
        self._window_opened.set()

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._unacked += len(payload)
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # given up on: its data is only counted
        payload = unpad(flags, payload)
        stream.received += len(payload)
        stream.unacked += len(payload)
        stream.body += payload
        if len(stream.body) > stream.limit + 5:
            self._reset(stream, CANCEL)
            self._fail(
                stream,
                rpc_error(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"containerd's answer is over {stream.limit} bytes",
                ),
            )
            return
        if flags & END_STREAM:
            self._finish(stream)

    def _header_block_done(self, stream_id: int, flags: int, block: bytes) -> None:
        headers = self._decoder.decode(block)  # always: the dynamic table must stay in step
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        fields = [(str(k), str(v)) for k, v in headers]
        if stream.headers is None:
            stream.headers = fields
        else:
            stream.trailers = fields
        if flags & END_STREAM:
            self._finish(stream)

    def _grant(self) -> None:
        out = []
        if self._unacked >= _CONNECTION_WINDOW // 2:
            out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._unacked)))
            self._unacked = 0
        for stream in self._streams.values():
            if stream.unacked >= _RECEIVE_WINDOW // 2:
                out.append(frame(WINDOW_UPDATE, 0, stream.id, struct.pack(">I", stream.unacked)))
                stream.unacked = 0
        if out and self._transport is not None:
            self._transport.write(b"".join(out))

    # -- a stream's end

    def _finish(self, stream: _Stream) -> None:
        """The stream ended (END_STREAM): its answer or its error, from its headers."""
        self._streams.pop(stream.id, None)
        trailers = stream.trailers if stream.trailers is not None else stream.headers or []
        found = dict(trailers)
        status = found.get("grpc-status")
        if status is None:
            http = dict(stream.headers or []).get(":status", "")
            code = _HTTP_CODES.get(int(http), grpc.StatusCode.UNKNOWN) if http.isdigit() else None
            self._fail(
                stream,
                rpc_error(
                    code or grpc.StatusCode.INTERNAL,
                    f"containerd answered without a gRPC status (HTTP status {http or 'none'})",
                ),
            )
            return
        code = _CODES.get(int(status) if status.isdigit() else -1, grpc.StatusCode.UNKNOWN)
        if code is not grpc.StatusCode.OK:
            details = urllib.parse.unquote(found.get("grpc-message", ""))
            self._fail(stream, rpc_error(code, details))
            return
        body = stream.body
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._fail(
                stream,
                rpc_error(
                    grpc.StatusCode.INTERNAL,
                    "containerd's answer is not one uncompressed message",
                ),
            )
            return
        if not stream.answered.done():
            stream.answered.set_result(bytes(body[5:]))

    def _fail(self, stream: _Stream, error: grpc.aio.AioRpcError) -> None:
        self._streams.pop(stream.id, None)
        if not stream.answered.done():
            stream.answered.set_exception(error)
            # read by the caller unless its task was cancelled meanwhile
            stream.answered.add_done_callback(_consume)
        self._window_opened.set()

    def _reset(self, stream: _Stream, code: int) -> None:
        if self._transport is not None:
            self._transport.write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", code)))


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Channel(grpc.aio.Channel):
    """A grpc.aio channel whose unary-unary calls go over `Connection`, the rest over grpc's
    channel `streams` (to the same address)."""

    def __init__(
        self, path: str, streams: grpc.aio.Channel, max_send: int, max_receive: int
    ) -> None:
        self._path = path
        self._streams = streams
        self.max_send = max_send
        self.max_receive = max_receive
        self._connection: Connection | None = None
        self._connecting: asyncio.Lock | None = None

    async def connection(self) -> Connection:
        conn = self._connection
        if conn is not None and conn.usable:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            conn = self._connection
            if conn is not None and conn.usable:
                return conn
            try:
                _, conn = await asyncio.get_running_loop().create_unix_connection(
                    Connection, self._path
                )
            except OSError as e:
                raise rpc_error(
                    grpc.StatusCode.UNAVAILABLE, f"cannot connect to {self._path}: {e}"
                ) from None
            self._connection = conn
            return conn

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        return _Unary(self, method, request_serializer, response_deserializer)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._streams.unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self._streams.stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._streams.stream_stream(*args, **kwargs)

    async def close(self, grace: float | None = None) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        await self._streams.close(grace)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._streams.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._streams.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._streams.channel_ready()


class _Unary(grpc.aio.UnaryUnaryMultiCallable[Req, Resp], Generic[Req, Resp]):
    def __init__(
        self,
        channel: Channel,
        method: str,
        serialize: Callable[[Req], bytes] | None,
        deserialize: Callable[[bytes], Resp] | None,
    ) -> None:
        self.channel = channel
        self._path = indexed_name(4, method.encode())
        self._method = method
        self._serialize = serialize
        self._deserialize = deserialize
        self._metadata_fields: dict[tuple[tuple[str, str], ...], bytes] = {}

    def __call__(
        self,
        request: Req,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> grpc.aio.UnaryUnaryCall[Req, Resp]:
        if credentials is not None or wait_for_ready or compression:
            raise ValueError("credentials, wait_for_ready and compression are not supported")
        pairs = tuple((str(k), str(v)) for k, v in metadata or ())
        extra = self._metadata_fields.get(pairs)
        if extra is None:
            extra = b"".join(literal(k.encode(), v.encode()) for k, v in pairs)
            self._metadata_fields[pairs] = extra
        return _Call(self, request, extra, timeout)

    async def invoke(self, request: Req, extra: bytes, timeout: float | None) -> Resp:
        message = self._serialize(request) if self._serialize else bytes(request)  # type: ignore[call-overload]
        channel = self.channel
        if len(message) > channel.max_send:
            raise rpc_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"a request of {len(message)} bytes to {self._method} is over {channel.max_send}",
            )
        if timeout is None:
            conn = await channel.connection()
            body = await conn.unary(self._path, extra, message, channel.max_receive)
        else:
            try:
                async with asyncio.timeout(timeout):
                    conn = await channel.connection()
                    body = await conn.unary(
                        self._path,
                        extra + _timeout_header(timeout),
                        message,
                        channel.max_receive,
                    )
            except TimeoutError:
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        return self._deserialize(body) if self._deserialize else body  # type: ignore[return-value]


class _Call(grpc.aio.UnaryUnaryCall[Req, Resp], Generic[Req, Resp]):
    """One call, sent when it is first awaited, from the awaiting task itself (grpc's call
    makes a task of its own, a turn of the loop before the request goes), or when one of the
    other methods needs it to run (then in a task)."""

    def __init__(
        self, unary: _Unary[Req, Resp], request: Req, extra: bytes, timeout: float | None
    ) -> None:
        self._unary = unary
        self._request = request
        self._extra = extra
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._running: asyncio.Future[Resp] | None = None
        self._awaiting: asyncio.Task[Any] | None = None  # the task that sends it inline
        self._code: grpc.StatusCode | None = None
        self._details = ""

    def _run(self) -> asyncio.Future[Resp]:
        if self._running is None:
            self._running = asyncio.ensure_future(self._invoke())
        return self._running

    async def _invoke(self) -> Resp:
        try:
            result = await self._unary.invoke(self._request, self._extra, self._timeout)
        except grpc.aio.AioRpcError as e:
            self._code, self._details = e.code(), e.details() or ""
            raise
        except asyncio.CancelledError:
            self._code, self._details = grpc.StatusCode.CANCELLED, "Locally cancelled"
            raise
        self._code = grpc.StatusCode.OK
        return result

    def __await__(self) -> Generator[Any, None, Resp]:
        if self._running is None:
            # the usual case: awaited at once, so sent from the awaiting task
            self._running = asyncio.get_running_loop().create_future()
            return self._inline().__await__()
        return self._running.__await__()

    async def _inline(self) -> Resp:
        running = self._running
        assert running is not None
        self._awaiting = asyncio.current_task()
        try:
            result = await self._invoke()
        except BaseException as e:
            if not running.done():
                if isinstance(e, asyncio.CancelledError):
                    running.cancel()
                else:
                    running.set_exception(e)
                    running.add_done_callback(_consume)
            raise
        running.set_result(result)
        return result

    def cancel(self) -> bool:
        """As grpc's: the await of the call raises CancelledError (sent inline, the awaiting
        task is cancelled, which lands in that await) and the stream is reset."""
        if self._code is not None:
            return False
        if self._awaiting is not None:
            return self._awaiting.cancel()
        return self._run().cancel()

    def cancelled(self) -> bool:
        return self._code is grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self._code is not None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._run().add_done_callback(lambda _: callback(self))

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    async def _settled(self) -> None:
        if self._code is None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(self._run())

    async def initial_metadata(self) -> grpc.aio.Metadata:
        await self._settled()
        return grpc.aio.Metadata()  # not kept: crictld reads none

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await self._settled()
        return grpc.aio.Metadata()  # not kept: crictld reads none

    async def code(self) -> grpc.StatusCode:
        await self._settled()
        return self._code or grpc.StatusCode.UNKNOWN

    async def details(self) -> str:
        await self._settled()
        return self._details

    async def wait_for_connection(self) -> None:
        await self._unary.channel.connection()
