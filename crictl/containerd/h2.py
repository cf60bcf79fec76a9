"""containerd's gRPC API over crictld's own HTTP/2 connection (RFC 9113, gRPC's wire
protocol), on the daemon's event loop: unary calls, server streams (the event subscription,
content reads, snapshot lists) and bidirectional ones (content writes). The daemon imports no
grpc.

Why: a profile of the daemon under `benchmarks.containers` put ~40 % of the daemon loop's CPU
in grpc's Cython unary call, and a `Version` through `ContainerdClient` took 336 us of the
process's CPU (grpc's threads included) and 390 us of wall time with grpc's channel against
177 and 235 framed here, on the loop's own socket with no other thread woken; and grpc's
package and its channel's threads cost the daemon ~13 MiB (docs/performance.md, "The
containerd client").

What it does:

- One connection at a time, made at the first call and made again at the next call after it
  was lost (containerd restarted) or went away (GOAWAY): a call that finds containerd not
  listening fails at once with UNAVAILABLE, as grpc's channel fails a call while it cannot
  connect; the calls and streams in flight on a lost connection fail UNAVAILABLE too.
- HTTP/2: the preface and SETTINGS (no push; the peer's initial window, frame size and stream
  limit applied), PING answered, GOAWAY (streams above its last id fail UNAVAILABLE; the
  others finish, then the connection closes), RST_STREAM, CONTINUATION. Header blocks are
  decoded by hpack (containerd's encoder uses the dynamic table, so every block is decoded,
  those of streams given up on included; a block that left the table as it was is kept with
  its fields until the table changes, `crictl.http2.Decoder`); what is sent uses no dynamic
  table.
- Flow control both ways: a request waits for the peer's windows (stream and connection)
  and is sent in frames of at most the peer's frame size; the connection's window is granted
  back once half of it was received, a unary answer's stream likewise, a stream's as its
  messages are read (so a reader that falls behind holds at most a window of it).
- gRPC: messages uncompressed, of at most `max_send` / `max_receive` bytes
  (RESOURCE_EXHAUSTED above, as grpc's channel options); `timeout` sent as `grpc-timeout` and
  kept here too (DEADLINE_EXCEEDED, the stream reset); a unary call whose awaiting task is
  cancelled resets its stream, as does a stream's `cancel()` (containerd then cancels what it
  asked of the shim); a status other than OK is raised as `RpcError`, with the details
  percent-decoded.
- A stream ended by containerd with an error while messages are still being written to it
  (a disk full under a content write) raises that error from the next `write` or `read`.
- Stubs (`stub`) are made from the services' descriptors: the grpc-generated modules import
  grpc, so they are read by the type checker only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, Generic, TypeVar

import hpack
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

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
    Decoder,
    Http2Error,
    StatusCode,
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
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}


class RpcError(Exception):
    """A call that did not end OK: containerd's status and its details, or the status this
    side gave it (UNAVAILABLE for a lost connection, DEADLINE_EXCEEDED, CANCELLED)."""

    def __init__(self, code: StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _status(value: str) -> StatusCode:
    try:
        return StatusCode(int(value))
    except ValueError:
        return StatusCode.UNKNOWN


class _Stream:
    __slots__ = (
        "ahead",
        "answered",
        "body",
        "headers",
        "id",
        "limit",
        "messages",
        "readable",
        "send_window",
        "streaming",
        "trailers",
        "unacked",
    )

    def __init__(self, stream_id: int, send_window: int, limit: int, streaming: bool) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.limit = limit
        self.streaming = streaming  # its messages are read one by one (`Connection.read`)
        self.body = bytearray()
        self.headers: tuple[tuple[str, str], ...] | None = None
        self.trailers: tuple[tuple[str, str], ...] | None = None
        self.unacked = 0
        # the call's end: a unary call's response message (a stream's: b""), or the error it
        # ends with
        self.answered: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        # a stream's messages received and not yet read, each with the bytes of it still to
        # be granted once it is read; how many bytes of the message not yet whole in `body`
        # were granted as they came (`Connection._ahead`)
        self.messages: deque[tuple[bytes, int]] = deque()
        self.ahead = 0
        self.readable: asyncio.Event | None = None


class Connection(asyncio.Protocol):
    """One HTTP/2 connection to containerd: its frames read, its streams' answers handed back."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._decoder = Decoder(_MAX_HEADER_LIST)
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
            self._fail(stream, RpcError(StatusCode.UNAVAILABLE, why))
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
        RpcError. The caller's cancellation resets the stream."""
        stream, headers = await self._open(path_field, extra, limit, streaming=False)
        try:
            # the headers and the message in one write: containerd reads the call whole
            # (written apart, its reader woke for each)
            body = len(message).to_bytes(5, "big") + message
            await self._send_data(stream, body, True, headers)
            return await stream.answered
        except asyncio.CancelledError:
            self.cancel(stream)
            raise
        finally:
            self._ended(stream)

    async def open(self, path_field: bytes, extra: bytes, limit: int, streaming: bool) -> _Stream:
        """A new stream, its request headers sent."""
        stream, headers = await self._open(path_field, extra, limit, streaming)
        assert self._transport is not None
        self._transport.write(headers)
        return stream

    async def _open(
        self, path_field: bytes, extra: bytes, limit: int, streaming: bool
    ) -> tuple[_Stream, bytes]:
        """A new stream and its request headers' frame, to be sent next (before any frame
        of a stream opened after it)."""
        while len(self._streams) >= self._peer_streams and self.usable:
            self._window_opened.clear()
            await self._window_opened.wait()
        if not self.usable or self._transport is None:
            raise RpcError(StatusCode.UNAVAILABLE, "the connection to containerd went away")
        stream = _Stream(self._next_id, self._peer_window, limit, streaming)
        self._next_id += 2
        if self._next_id > _LAST_STREAM_ID:
            self.usable = False  # this one ends with its streams; the next call opens another
        self._streams[stream.id] = stream
        block = path_field + _FIXED + extra
        return stream, frame(HEADERS, END_HEADERS, stream.id, block)

    async def send(self, stream: _Stream, message: bytes | None, last: bool = False) -> None:
        """One message on an open stream, the last this side sends if `last` (None: no
        message, the end of what this side sends); raises the stream's error if it ended with
        one (before or while this was sent)."""
        if not stream.answered.done():
            if message is None:
                await self._send_data(stream, b"", True)
            else:
                await self._send_data(stream, len(message).to_bytes(5, "big") + message, last)
        if stream.answered.done() and (error := stream.answered.exception()) is not None:
            raise error

    async def read(self, stream: _Stream) -> bytes | None:
        """A stream's next message; None once it ended OK; raises the error it ended with."""
        while True:
            if stream.messages:
                message, owed = stream.messages.popleft()
                stream.unacked += owed
                if stream.unacked >= _RECEIVE_WINDOW // 2 and stream.id in self._streams:
                    self._grant()
                return message
            if stream.answered.done():
                error = stream.answered.exception()
                if error is not None:
                    raise error
                return None
            self._ahead(stream)
            if stream.unacked >= _RECEIVE_WINDOW // 2 and stream.id in self._streams:
                self._grant()
            if stream.readable is None:
                stream.readable = asyncio.Event()
            stream.readable.clear()
            await stream.readable.wait()

    def cancel(self, stream: _Stream, why: str = "Locally cancelled") -> None:
        """Gives a stream up: reset (containerd cancels its side), its end CANCELLED."""
        if self._streams.get(stream.id) is stream:
            self._reset(stream, CANCEL)
        self._fail(stream, RpcError(StatusCode.CANCELLED, why))

    def expire(self, stream: _Stream) -> None:
        """A stream's deadline passed: reset, DEADLINE_EXCEEDED."""
        if self._streams.get(stream.id) is stream:
            self._reset(stream, CANCEL)
        self._fail(stream, RpcError(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    async def _send_data(
        self, stream: _Stream, data: bytes, end_stream: bool, head: bytes = b""
    ) -> None:
        """DATA frames of `data` as the windows allow; `head` (a new stream's headers) goes
        in the first write, before anything else is awaited."""
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
                flags = END_STREAM if last and end_stream else 0
                self._transport.write(head + frame(DATA, flags, stream.id, chunk))
                head = b""
                if last:
                    return
                continue
            if head:  # no window yet: the headers go now, the data once it opens
                assert self._transport is not None
                self._transport.write(head)
                head = b""
            self._window_opened.clear()
            await self._window_opened.wait()
            if self._transport is None:
                return  # lost: the stream was failed with it

    def _ended(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        if stream.readable is not None:
            stream.readable.set()
        self._window_opened.set()  # a caller waiting for a stream slot or a window
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
                    StatusCode.UNAVAILABLE
                    if code == REFUSED_STREAM
                    else StatusCode.CANCELLED
                    if code == CANCEL
                    else StatusCode.INTERNAL
                )
                self._fail(stream, RpcError(status, f"containerd reset the stream (code {code})"))
        elif kind == GOAWAY:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            self.usable = False
            self._going_away_at = last
            for stream in list(self._streams.values()):
                if stream.id > last:
                    self._fail(stream, RpcError(StatusCode.UNAVAILABLE, "containerd went away"))
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
        stream.body += payload
        if stream.streaming:
            self._messages(stream)
        else:
            stream.unacked += len(payload)
        if len(stream.body) > stream.limit + 5:
            self._reset(stream, CANCEL)
            self._fail(
                stream,
                RpcError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"containerd's answer is over {stream.limit} bytes",
                ),
            )
            return
        if flags & END_STREAM:
            self._finish(stream)

    def _messages(self, stream: _Stream) -> None:
        """A stream's whole messages out of its body, for its reader."""
        body = stream.body
        taken = False
        while len(body) >= 5 and body[0] == 0:  # compressed: refused at its end (`_finish`)
            size = int.from_bytes(body[1:5], "big")
            if len(body) < size + 5:
                break
            granted = min(stream.ahead, size + 5)
            stream.ahead -= granted
            stream.messages.append((bytes(body[5 : size + 5]), size + 5 - granted))
            del body[: size + 5]
            taken = True
        if not stream.messages:
            self._ahead(stream)
        if taken and stream.readable is not None:
            stream.readable.set()

    @staticmethod
    def _ahead(stream: _Stream) -> None:
        """With nothing whole left to read, the start of the next message is granted as it
        comes: a message over the window could not arrive otherwise."""
        if len(stream.body) > stream.ahead:
            stream.unacked += len(stream.body) - stream.ahead
            stream.ahead = len(stream.body)

    def _header_block_done(self, stream_id: int, flags: int, block: bytes) -> None:
        fields = self._decoder.decode(block)  # always: the dynamic table must stay in step
        stream = self._streams.get(stream_id)
        if stream is None:
            return
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
        trailers = stream.trailers if stream.trailers is not None else stream.headers or ()
        found = dict(trailers)
        status = found.get("grpc-status")
        if status is None:
            http = dict(stream.headers or ()).get(":status", "")
            code = _HTTP_CODES.get(int(http), StatusCode.UNKNOWN) if http.isdigit() else None
            self._fail(
                stream,
                RpcError(
                    code or StatusCode.INTERNAL,
                    f"containerd answered without a gRPC status (HTTP status {http or 'none'})",
                ),
            )
            return
        code = _status(status)
        if code is not StatusCode.OK:
            details = urllib.parse.unquote(found.get("grpc-message", ""))
            self._fail(stream, RpcError(code, details))
            return
        body = stream.body
        if stream.streaming:
            if body:
                self._fail(
                    stream,
                    RpcError(
                        StatusCode.INTERNAL,
                        "containerd's stream ended in a partial or compressed message",
                    ),
                )
                return
            if not stream.answered.done():
                stream.answered.set_result(b"")
            self._ended(stream)
            return
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._fail(
                stream,
                RpcError(
                    StatusCode.INTERNAL,
                    "containerd's answer is not one uncompressed message",
                ),
            )
            return
        if not stream.answered.done():
            stream.answered.set_result(bytes(body[5:]))

    def _fail(self, stream: _Stream, error: RpcError) -> None:
        if not stream.answered.done():
            stream.answered.set_exception(error)
            # read by the caller unless its task was cancelled meanwhile
            stream.answered.add_done_callback(_consume)
        self._ended(stream)

    def _reset(self, stream: _Stream, code: int) -> None:
        if self._transport is not None:
            self._transport.write(frame(RST_STREAM, 0, stream.id, struct.pack(">I", code)))


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Channel:
    """containerd's gRPC API at the unix socket `path`: calls made as grpc's generated stubs
    make them (`unary_unary`, `unary_stream`, `stream_stream`), over one `Connection`."""

    def __init__(self, path: str, max_send: int, max_receive: int) -> None:
        self._path = path
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
                raise RpcError(
                    StatusCode.UNAVAILABLE, f"cannot connect to {self._path}: {e}"
                ) from None
            self._connection = conn
            return conn

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
    ) -> _Unary[Any, Any]:
        return _Unary(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
    ) -> _Streaming[Any, Any]:
        return _Streaming(self, method, request_serializer, response_deserializer, True)

    def stream_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
    ) -> _Streaming[Any, Any]:
        return _Streaming(self, method, request_serializer, response_deserializer, False)

    def check_size(self, method: str, message: bytes) -> None:
        if len(message) > self.max_send:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"a request of {len(message)} bytes to {method} is over {self.max_send}",
            )

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def stub(channel: Channel, service: ServiceDescriptor) -> Any:
    """An object with one attribute per method of `service`, as the stub grpc generates for
    it (`TasksStub`...) has: its calls go over `channel`."""
    methods: dict[str, Any] = {}
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        request = GetMessageClass(method.input_type)
        response = GetMessageClass(method.output_type)
        if method.client_streaming and not method.server_streaming:
            continue  # containerd's API has none
        make = (
            channel.stream_stream
            if method.client_streaming
            else channel.unary_stream
            if method.server_streaming
            else channel.unary_unary
        )
        methods[method.name] = make(path, request.SerializeToString, response.FromString)
    return type(f"{service.name}Stub", (), methods)()


def _metadata_fields(cache: dict[Any, bytes], metadata: Any) -> bytes:
    pairs = tuple((str(k), str(v)) for k, v in metadata or ())
    extra = cache.get(pairs)
    if extra is None:
        extra = b"".join(literal(k.encode(), v.encode()) for k, v in pairs)
        cache[pairs] = extra
    return extra


class _Unary(Generic[Req, Resp]):
    def __init__(
        self,
        channel: Channel,
        method: str,
        serialize: Callable[[Req], bytes],
        deserialize: Callable[[bytes], Resp],
    ) -> None:
        self.channel = channel
        self._path = indexed_name(4, method.encode())
        self._method = method
        self._serialize = serialize
        self._deserialize = deserialize
        self._metadata_fields: dict[Any, bytes] = {}

    def __call__(
        self, request: Req, *, timeout: float | None = None, metadata: Any = None
    ) -> _Call[Req, Resp]:
        return _Call(self, request, _metadata_fields(self._metadata_fields, metadata), timeout)

    async def invoke(self, request: Req, extra: bytes, timeout: float | None) -> Resp:
        message = self._serialize(request)
        channel = self.channel
        channel.check_size(self._method, message)
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
                raise RpcError(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        return self._deserialize(body)


class _Call(Generic[Req, Resp]):
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
        self._code: StatusCode | None = None
        self._details = ""

    def _run(self) -> asyncio.Future[Resp]:
        if self._running is None:
            self._running = asyncio.ensure_future(self._invoke())
        return self._running

    async def _invoke(self) -> Resp:
        try:
            result = await self._unary.invoke(self._request, self._extra, self._timeout)
        except RpcError as e:
            self._code, self._details = e.code(), e.details()
            raise
        except asyncio.CancelledError:
            self._code, self._details = StatusCode.CANCELLED, "Locally cancelled"
            raise
        self._code = StatusCode.OK
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
        return self._code is StatusCode.CANCELLED

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

    async def code(self) -> StatusCode:
        await self._settled()
        return self._code if self._code is not None else StatusCode.UNKNOWN

    async def details(self) -> str:
        await self._settled()
        return self._details


class _Streaming(Generic[Req, Resp]):
    """A method whose answers are a stream: its request one message (`unary_stream`) or
    written by the caller (`stream_stream`)."""

    def __init__(
        self,
        channel: Channel,
        method: str,
        serialize: Callable[[Req], bytes],
        deserialize: Callable[[bytes], Resp],
        one_request: bool,
    ) -> None:
        self.channel = channel
        self.path = indexed_name(4, method.encode())
        self.method = method
        self.serialize = serialize
        self.deserialize = deserialize
        self.one_request = one_request
        self._metadata_fields: dict[Any, bytes] = {}

    def __call__(
        self, request: Req | None = None, *, timeout: float | None = None, metadata: Any = None
    ) -> _StreamCall[Req, Resp]:
        if self.one_request and request is None:
            raise TypeError(f"{self.method} takes a request")
        extra = _metadata_fields(self._metadata_fields, metadata)
        return _StreamCall(self, request, extra, timeout)


class _StreamCall(Generic[Req, Resp]):
    """One streaming call, opened at its first `read`, `write` or iteration. `cancel()`
    resets it; iterated, it is cancelled if the iteration stops before its end."""

    def __init__(
        self,
        method: _Streaming[Req, Resp],
        request: Req | None,
        extra: bytes,
        timeout: float | None,
    ) -> None:
        self._method = method
        self._request = request
        self._extra = extra
        self._timeout = timeout
        self._opening: asyncio.Future[tuple[Connection, _Stream]] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._cancelled = False

    async def _opened(self) -> tuple[Connection, _Stream]:
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
            self._opening.add_done_callback(_consume)  # when no one awaits it (cancelled)
        return await asyncio.shield(self._opening)

    async def _open(self) -> tuple[Connection, _Stream]:
        method = self._method
        channel = method.channel
        request = None
        if self._request is not None:
            request = method.serialize(self._request)
            channel.check_size(method.method, request)
        extra = self._extra
        if self._timeout is not None:
            extra += _timeout_header(self._timeout)
        conn = await channel.connection()
        stream = await conn.open(method.path, extra, channel.max_receive, streaming=True)
        if self._timeout is not None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self._timeout, conn.expire, stream)
        if request is not None and not self._cancelled:
            await conn.send(stream, request, last=True)
        if self._cancelled:  # while it opened: nothing else will reset it
            conn.cancel(stream)
        return conn, stream

    async def write(self, request: Req) -> None:
        """Sends one request message; raises the stream's error if it ended with one."""
        message = self._method.serialize(request)
        self._method.channel.check_size(self._method.method, message)
        conn, stream = await self._opened()
        await conn.send(stream, message)

    async def done_writing(self) -> None:
        conn, stream = await self._opened()
        await conn.send(stream, None)

    async def read(self) -> Resp | None:
        """The next answer; None at the stream's end; raises the error it ended with."""
        conn, stream = await self._opened()
        data = await conn.read(stream)
        if data is None:
            self._ended()
            return None
        return self._method.deserialize(data)

    async def __aiter__(self) -> AsyncIterator[Resp]:
        try:
            while (item := await self.read()) is not None:
                yield item
        finally:
            self.cancel()

    def cancel(self) -> bool:
        """Resets the stream unless it ended; later reads and writes raise CANCELLED."""
        self._ended()
        if self._cancelled:
            return False
        self._cancelled = True
        opening = self._opening
        if opening is None:
            self._opening = asyncio.get_running_loop().create_future()
            self._opening.set_exception(RpcError(StatusCode.CANCELLED, "Locally cancelled"))
            self._opening.add_done_callback(_consume)
            return True
        if opening.done() and opening.exception() is None:
            conn, stream = opening.result()
            if stream.answered.done():
                return False
            conn.cancel(stream)
        return True  # still opening: `_open` cancels it once it is open

    def _ended(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def __del__(self) -> None:
        """A call dropped before its end (its task cancelled between reads or writes) resets
        its stream, as grpc's call does when it is collected; from the loop's thread."""
        opening = self._opening
        if opening is None or not opening.done() or opening.cancelled():
            return
        if opening.exception() is None:
            conn, stream = opening.result()
            if not stream.answered.done():
                with contextlib.suppress(RuntimeError):  # the loop is closed: so is the socket
                    opening.get_loop().call_soon_threadsafe(conn.cancel, stream)
