"""The CRI's gRPC server: HTTP/2 (RFC 9113) and gRPC's wire protocol on an asyncio unix
socket server, for the calls kubelet and crictl make (unary and server-streaming).

grpc's asyncio server spent 320-375 us of the daemon's CPU on a `Version` sent back to back
and 640-780 us on one arriving at rest, ~14-19 context switches a call (its poller and
event-engine threads woken, then the loop), where containerd's CRI spent 125-160 and 360-420.
This one spends 125 and 210-290 (the daemon, its interceptor and log included: 150 and 290;
`benchmarks.grpc_servers`, docs/performance.md "The gRPC server"). h2 driven directly (230
and 350) and grpclib (360 and 560-740) were measured too.

What it serves: the `MethodHandler`s `crictl.api.service.generic_handler` makes, each call
a task on the loop the server runs on (the front, `crictl.api.front`). It imports no grpc.

What it does, and where:

- HTTP/2: the preface, SETTINGS (the peer's initial window and frame size applied; its
  header table size concerns no encoder here), PING answered, GOAWAY sent at shutdown and on
  a connection error (then the connection is closed), PRIORITY and unknown frames ignored,
  CONTINUATION accepted.
  Header blocks are decoded by hpack (the python-hyper library: Huffman and the dynamic
  table); the few headers sent are encoded here without the dynamic table.
- Flow control both ways: what a client sends is granted back as it is read, a stream's at
  once (a request is read whole, and refused once it says or shows it is over the limit),
  the connection's once half its window is read (`_GRANT_AT`: as the containerd client,
  crictl/containerd/h2.py, and grpc-go's server grant; a grant for each call's few bytes was
  a write of its own before the answer's, and a wake-up of the client); what is sent waits
  for the client's windows, stream and connection, and a streaming handler waits while a
  stream holds more than `_HIGH_WATER` unsent.
- gRPC: one request message per call of at most `MAX_RECEIVE` bytes (RESOURCE_EXHAUSTED
  above it, as containerd's CRI's limit), uncompressed (UNIMPLEMENTED otherwise),
  `grpc-timeout` (DEADLINE_EXCEEDED, the handler cancelled), RST_STREAM or a lost connection
  cancel the handler, an unknown method UNIMPLEMENTED, errors as Trailers-Only responses,
  `grpc-message` percent-encoded. Those statuses of the wire itself (grpc's server answered
  the same before) are the only ones made here: a handler's errors reach the server as the
  code and message `crictl.api.interceptor`, the one mapping, set on the call's `Context`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import hpack

from crictl.http2 import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Http2Error,
    StatusCode,
    frame,
    frames,
    indexed_name,
    literal,
    unpad,
)

log = logging.getLogger(__name__)

MAX_RECEIVE = 16 << 20  # a request's largest message, as containerd's CRI's (and kubelet's send)
MAX_CONCURRENT_STREAMS = 1000
_FRAME_SIZE = 16384  # what we accept (HTTP/2's default; we advertise no other)
_MAX_HEADER_LIST = 64 << 10
_HIGH_WATER = 1 << 20  # unsent bytes a streaming handler may queue before it waits
_MAX_WINDOW = (1 << 31) - 1
_STREAM_WINDOW = 1 << 20  # granted back as it is read
_CONNECTION_WINDOW = 1 << 26
_GRANT_AT = _CONNECTION_WINDOW // 2  # the connection's bytes read before they are granted back
_DEFAULT_WINDOW = 65535

_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


# ":status: 200" (static index 8); content-type (static index 31) "application/grpc", not
# indexed: no state shared with the peer's decoder beyond its static table.
_RESPONSE_HEADERS = b"\x88" + indexed_name(31, b"application/grpc")
_OK_TRAILERS = literal(b"grpc-status", b"0")


def _percent_encode(message: str) -> bytes:
    """gRPC's grpc-message encoding: UTF-8, bytes outside 0x20-0x7E and '%' as %XX."""
    out = bytearray()
    for byte in message.encode("utf-8", "replace"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def status_block(code: StatusCode, message: str) -> bytes:
    block = literal(b"grpc-status", str(int(code)).encode())
    if message:
        block += literal(b"grpc-message", _percent_encode(message[:8192]))
    return block


class Context:
    """What a handler's wrapper may set on its call (the interceptor's `_fail`)."""

    __slots__ = ("code", "details")

    def __init__(self) -> None:
        self.code = StatusCode.OK
        self.details = ""

    def set_code(self, code: StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


class _Stream:
    __slots__ = (
        "body",
        "client_done",
        "deadline",
        "drained",
        "expired",
        "headers",
        "headers_sent",
        "id",
        "pending",
        "pending_bytes",
        "send_window",
        "started",
        "task",
        "trailers",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.send_window = send_window
        self.pending: deque[memoryview] = deque()
        self.pending_bytes = 0
        self.trailers: bytes | None = None  # queued behind `pending`
        self.headers_sent = False
        self.started = False  # its handler's task made, or the call refused
        self.client_done = False  # the client's END_STREAM came
        self.task: asyncio.Task[None] | None = None
        self.deadline: asyncio.TimerHandle | None = None
        self.expired = False
        self.drained: asyncio.Event | None = None


class MethodHandler:
    """One method: its request's parser, its answer's serializer, and its handler, a
    coroutine function (`unary_unary`) or an async generator function (`unary_stream`)."""

    __slots__ = ("request_deserializer", "response_serializer", "unary_stream", "unary_unary")

    def __init__(
        self,
        request_deserializer: Callable[[bytes], Any],
        response_serializer: Callable[[Any], bytes],
        unary_unary: Callable[[Any, Context], Awaitable[Any]] | None = None,
        unary_stream: Callable[[Any, Context], AsyncIterator[Any]] | None = None,
    ) -> None:
        if (unary_unary is None) == (unary_stream is None):
            raise TypeError("a method handler is unary or server-streaming")
        self.request_deserializer = request_deserializer
        self.response_serializer = response_serializer
        self.unary_unary = unary_unary
        self.unary_stream = unary_stream


class GenericHandler:
    """A service's method handlers, by the path a call names (`/runtime.v1.RuntimeService/
    Version`)."""

    def __init__(self, service: str, methods: Mapping[str, MethodHandler]) -> None:
        self._methods = {f"/{service}/{name}": handler for name, handler in methods.items()}

    def method(self, path: str) -> MethodHandler | None:
        return self._methods.get(path)


Lookup = Callable[[str], MethodHandler | None]


class Http2Connection(asyncio.Protocol):
    """One client connection: its frames read, its calls run as tasks, their answers written."""

    def __init__(self, lookup: Lookup, connections: set[Http2Connection]) -> None:
        self._lookup = lookup
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface = False
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = _MAX_HEADER_LIST
        self._streams: dict[int, _Stream] = {}
        self._last_stream = 0
        self._header_block: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self._send_window = _DEFAULT_WINDOW
        self._peer_window = _DEFAULT_WINDOW  # the peer's SETTINGS_INITIAL_WINDOW_SIZE
        self._peer_frame = _FRAME_SIZE
        self._unacked = 0  # read on the connection and not yet granted back
        self._going_away = False
        self._out: list[bytes] = []
        self.idle = asyncio.Event()
        self.idle.set()

    # -- the transport's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(self)
        settings = struct.pack(
            ">HIHIHIHI",
            ENABLE_PUSH,
            0,
            MAX_CONCURRENT,
            MAX_CONCURRENT_STREAMS,
            INITIAL_WINDOW_SIZE,
            _STREAM_WINDOW,
            MAX_HEADER_LIST_SIZE,
            _MAX_HEADER_LIST,
        )
        increment = struct.pack(">I", _CONNECTION_WINDOW - _DEFAULT_WINDOW)
        transport.write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, increment))

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        for stream in list(self._streams.values()):
            self._drop(stream)

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except Http2Error as e:
            log.info("closing a CRI connection", extra={"error": str(e), "http2_code": e.code})
            self._out.append(frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream, e.code)))
            self._write()
            if self._transport is not None:
                self._transport.close()
            return
        self._write()

    def _write(self) -> None:
        if self._out and self._transport is not None:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    # -- reading frames

    def _receive(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        if not self._preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    raise Http2Error(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                return
            if bytes(buf[: len(PREFACE)]) != PREFACE:
                raise Http2Error(PROTOCOL_ERROR, "not an HTTP/2 client preface")
            del buf[: len(PREFACE)]
            self._preface = True
        for kind, flags, stream_id, payload in frames(buf, _FRAME_SIZE):
            self._frame(kind, flags, stream_id, payload)

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and kind != CONTINUATION:
            raise Http2Error(PROTOCOL_ERROR, "a header block was interrupted")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if self._header_block is None or self._header_block[0] != stream_id:
                raise Http2Error(PROTOCOL_ERROR, "CONTINUATION out of a header block")
            self._header_block[2].extend(payload)
            if len(self._header_block[2]) > _MAX_HEADER_LIST:
                raise Http2Error(PROTOCOL_ERROR, "a header block over the header list's limit")
            if flags & END_HEADERS:
                sid, first_flags, block = self._header_block
                self._header_block = None
                self._header_block_done(sid, first_flags, bytes(block))
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise Http2Error(FRAME_SIZE_ERROR, "a PING not of 8 bytes on stream 0")
            if not flags & ACK:
                self._out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if len(payload) != 4 or not stream_id:
                raise Http2Error(PROTOCOL_ERROR, "a malformed RST_STREAM")
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._drop(stream)
        elif kind == GOAWAY:
            self._going_away = True
        elif kind == PUSH_PROMISE:
            raise Http2Error(PROTOCOL_ERROR, "a client sent PUSH_PROMISE")
        elif kind == PRIORITY and (len(payload) != 5 or not stream_id):
            raise Http2Error(PROTOCOL_ERROR, "a malformed PRIORITY")
        # other types are ignored (RFC 9113 5.5)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise Http2Error(PROTOCOL_ERROR, "DATA on stream 0")
        self._unacked += len(payload)  # read: the connection's window granted back in bulk
        if self._unacked >= _GRANT_AT:
            self._out.append(frame(WINDOW_UPDATE, 0, 0, self._unacked.to_bytes(4, "big")))
            self._unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None or stream.started:
            if stream_id > self._last_stream:
                raise Http2Error(PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream we reset or answered: what is in flight is dropped
        data = unpad(flags, payload)
        stream.body += data
        body = stream.body
        declared = int.from_bytes(body[1:5], "big") if len(body) >= 5 else 0
        if len(body) > MAX_RECEIVE + 5 or declared > MAX_RECEIVE:
            self._refuse(
                stream,
                StatusCode.RESOURCE_EXHAUSTED,
                f"the request is larger than {MAX_RECEIVE} bytes",
            )
            return
        if payload and not flags & END_STREAM:  # the stream's window too: read, not held
            self._out.append(frame(WINDOW_UPDATE, 0, stream_id, len(payload).to_bytes(4, "big")))
        if flags & END_STREAM:
            stream.client_done = True
            self._start(stream)

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise Http2Error(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            block = block[5:]
        if flags & END_HEADERS:
            self._header_block_done(stream_id, flags, block)
        else:
            self._header_block = (stream_id, flags, bytearray(block))

    def _header_block_done(self, stream_id: int, flags: int, block: bytes) -> None:
        try:  # decoded always: the decoder's table follows every block the peer encoded
            fields = self._decoder.decode(block, raw=True)
        except hpack.HPACKError as e:
            raise Http2Error(COMPRESSION_ERROR, f"a header block: {e}") from e
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client: a gRPC request has none
            if flags & END_STREAM and not stream.started:
                stream.client_done = True
                self._start(stream)
            return
        if stream_id % 2 == 0:
            raise Http2Error(PROTOCOL_ERROR, f"HEADERS opening even stream {stream_id}")
        if stream_id <= self._last_stream:
            return  # trailers of a stream answered (refused) before the client had sent all
        self._last_stream = stream_id
        if self._going_away or len(self._streams) >= MAX_CONCURRENT_STREAMS:
            self._out.append(frame(RST_STREAM, 0, stream_id, struct.pack(">I", REFUSED_STREAM)))
            return
        stream = _Stream(stream_id, self._peer_window)
        stream.headers = {bytes(k): bytes(v) for k, v in fields}
        self._streams[stream_id] = stream
        self.idle.clear()
        if flags & END_STREAM:
            stream.client_done = True
            self._start(stream)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise Http2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise Http2Error(FRAME_SIZE_ERROR, "a SETTINGS ack with a payload")
            return
        if len(payload) % 6:
            raise Http2Error(FRAME_SIZE_ERROR, "SETTINGS not in 6-byte entries")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == INITIAL_WINDOW_SIZE:
                if value > _MAX_WINDOW:
                    raise Http2Error(FLOW_CONTROL_ERROR, "an initial window over 2^31-1")
                delta, self._peer_window = value - self._peer_window, value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif key == MAX_FRAME_SIZE:
                if not _FRAME_SIZE <= value < 1 << 24:
                    raise Http2Error(PROTOCOL_ERROR, f"a max frame size of {value}")
                self._peer_frame = value
            # HEADER_TABLE_SIZE: our encoder uses no dynamic table; the others concern us not
        self._out.append(frame(SETTINGS, ACK, 0))
        self._flush_all()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise Http2Error(FRAME_SIZE_ERROR, "a WINDOW_UPDATE not of 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise Http2Error(PROTOCOL_ERROR, "a WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > _MAX_WINDOW:
                raise Http2Error(FLOW_CONTROL_ERROR, "the connection's window overflowed")
            self._flush_all()
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if not increment or stream.send_window + increment > _MAX_WINDOW:
            self._reset(stream, PROTOCOL_ERROR if not increment else FLOW_CONTROL_ERROR)
            return
        stream.send_window += increment
        self._flush(stream)

    # -- calls

    def _start(self, stream: _Stream) -> None:
        headers = stream.headers
        path = headers.get(b":path", b"").decode("utf-8", "replace")
        if headers.get(b":method") != b"POST":
            self._refuse(stream, StatusCode.UNIMPLEMENTED, f"{path}: only POST is served")
            return
        if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
            self._refuse(stream, StatusCode.INTERNAL, f"{path}: not a gRPC content-type")
            return
        handler = self._lookup(path)
        if handler is None:
            self._refuse(stream, StatusCode.UNIMPLEMENTED, f"unknown method {path}")
            return
        body = stream.body
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._refuse(
                stream,
                StatusCode.INTERNAL,
                f"{path}: the request is not one length-prefixed message",
            )
            return
        if body[0]:
            self._refuse(
                stream, StatusCode.UNIMPLEMENTED, f"{path}: compressed requests not served"
            )
            return
        timeout = headers.get(b"grpc-timeout")
        seconds = None
        if timeout is not None:
            match = _TIMEOUT.fullmatch(timeout.decode("ascii", "replace"))
            if match is None:
                self._refuse(stream, StatusCode.INTERNAL, f"{path}: a malformed grpc-timeout")
                return
            seconds = int(match[1]) * _UNITS[match[2]]
        message = bytes(body[5:])
        stream.body = bytearray()
        run = self._unary if handler.unary_unary is not None else self._server_stream
        loop = asyncio.get_running_loop()
        stream.started = True
        stream.task = loop.create_task(run(stream, handler, message))
        if seconds is not None:
            stream.deadline = loop.call_later(seconds, self._expire, stream)

    def _expire(self, stream: _Stream) -> None:
        stream.expired = True
        if stream.task is not None:
            stream.task.cancel()

    async def _unary(self, stream: _Stream, handler: MethodHandler, message: bytes) -> None:
        context = Context()
        request = self._parse(stream, handler, message)
        if request is None:
            return
        try:
            call = handler.unary_unary
            assert call is not None
            response = await call(request, context)
            if context.code is StatusCode.OK and response is not None:
                data = handler.response_serializer(response)
                self._answer(stream, data)
            else:
                self._end(stream, context.code, context.details)
        except asyncio.CancelledError:
            self._cancelled(stream)
        except Exception as e:  # the interceptor maps every handler's error: this is ours
            log.exception("a CRI call failed in the server", exc_info=e)
            self._end(stream, StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    async def _server_stream(self, stream: _Stream, handler: MethodHandler, message: bytes) -> None:
        context = Context()
        serialize = handler.response_serializer
        items: AsyncIterator[Any] | None = None
        request = self._parse(stream, handler, message)
        if request is None:
            return
        try:
            produce = handler.unary_stream
            assert produce is not None
            items = produce(request, context)
            async for item in items:
                await self._send_message(stream, serialize(item))
            self._end(stream, context.code, context.details)
        except asyncio.CancelledError:
            self._cancelled(stream)
        except Exception as e:
            log.exception("a CRI stream failed in the server", exc_info=e)
            self._end(stream, StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        finally:
            if items is not None:
                with contextlib.suppress(Exception):
                    await items.aclose()  # type: ignore[attr-defined]

    def _parse(self, stream: _Stream, handler: MethodHandler, message: bytes) -> Any:
        """The call's request, or None once the call was answered that it does not parse."""
        try:
            return handler.request_deserializer(message)
        except Exception as e:  # protobuf's DecodeError, or what a bad field raises
            path = stream.headers.get(b":path", b"").decode("utf-8", "replace")
            self._end(stream, StatusCode.INTERNAL, f"{path}: the request does not parse: {e}")
            return None

    def _cancelled(self, stream: _Stream) -> None:
        if stream.expired and self._streams.get(stream.id) is stream:
            self._end(stream, StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    # -- writing

    def _answer(self, stream: _Stream, data: bytes) -> None:
        """A unary answer: headers, the message, the OK trailers."""
        if self._streams.get(stream.id) is not stream:
            return  # reset by the client, or its connection gone, as the handler returned
        self._send_headers(stream)
        self._queue(stream, b"\x00" + len(data).to_bytes(4, "big"))
        self._queue(stream, data)
        stream.trailers = _OK_TRAILERS
        self._flush(stream)
        self._write()

    async def _send_message(self, stream: _Stream, data: bytes) -> None:
        if self._streams.get(stream.id) is not stream:
            raise asyncio.CancelledError  # the client reset it meanwhile
        self._send_headers(stream)
        self._queue(stream, b"\x00" + len(data).to_bytes(4, "big"))
        self._queue(stream, data)
        self._flush(stream)
        self._write()
        while stream.pending_bytes > _HIGH_WATER:
            stream.drained = stream.drained or asyncio.Event()
            stream.drained.clear()
            await stream.drained.wait()
            if self._streams.get(stream.id) is not stream:
                raise asyncio.CancelledError

    def _end(self, stream: _Stream, code: StatusCode, message: str) -> None:
        """The call's status: trailers behind what is queued, or Trailers-Only."""
        if self._streams.get(stream.id) is not stream:
            return
        if code is StatusCode.OK and stream.headers_sent:
            stream.trailers = _OK_TRAILERS
        elif stream.headers_sent:
            stream.trailers = status_block(code, message)
        else:
            stream.headers_sent = True
            self._headers_frames(stream.id, _RESPONSE_HEADERS + status_block(code, message), True)
            self._close(stream)
            self._write()
            return
        self._flush(stream)
        self._write()

    def _refuse(self, stream: _Stream, code: StatusCode, message: str) -> None:
        """Answers a call that never starts; what the client still sends is dropped."""
        stream.started = True
        self._end(stream, code, message)
        if not stream.client_done:
            self._out.append(frame(RST_STREAM, 0, stream.id, struct.pack(">I", NO_ERROR)))

    def _send_headers(self, stream: _Stream) -> None:
        if not stream.headers_sent:
            stream.headers_sent = True
            self._headers_frames(stream.id, _RESPONSE_HEADERS, False)

    def _headers_frames(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        size = self._peer_frame
        first, rest = block[:size], block[size:]
        flags = (END_STREAM if end_stream else 0) | (0 if rest else END_HEADERS)
        self._out.append(frame(HEADERS, flags, stream_id, first))
        while rest:
            piece, rest = rest[:size], rest[size:]
            self._out.append(frame(CONTINUATION, 0 if rest else END_HEADERS, stream_id, piece))

    def _queue(self, stream: _Stream, data: bytes) -> None:
        if data:
            stream.pending.append(memoryview(data))
            stream.pending_bytes += len(data)

    def _flush(self, stream: _Stream) -> None:
        """Sends what the windows allow of STREAM's queue, then its trailers once it is empty."""
        out = self._out
        while stream.pending:
            allowed = min(self._send_window, stream.send_window, self._peer_frame)
            if allowed <= 0:
                break
            chunks: list[memoryview] = []
            size = 0
            while stream.pending and size < allowed:
                head = stream.pending[0]
                if len(head) <= allowed - size:
                    chunks.append(stream.pending.popleft())
                    size += len(head)
                else:
                    chunks.append(head[: allowed - size])
                    stream.pending[0] = head[allowed - size :]
                    size = allowed
            self._send_window -= size
            stream.send_window -= size
            stream.pending_bytes -= size
            out.append(frame(DATA, 0, stream.id, b"".join(chunks)))
        if stream.drained is not None and stream.pending_bytes <= _HIGH_WATER // 2:
            stream.drained.set()
        if not stream.pending and stream.trailers is not None:
            self._headers_frames(stream.id, stream.trailers, True)
            self._close(stream)

    def _flush_all(self) -> None:
        for stream in list(self._streams.values()):
            if stream.pending:
                self._flush(stream)

    def _close(self, stream: _Stream) -> None:
        """STREAM is done both ways: forgotten."""
        if self._streams.pop(stream.id, None) is not None and stream.deadline is not None:
            stream.deadline.cancel()
        if not self._streams:
            self.idle.set()

    def _reset(self, stream: _Stream, code: int) -> None:
        self._out.append(frame(RST_STREAM, 0, stream.id, struct.pack(">I", code)))
        self._drop(stream)

    def _drop(self, stream: _Stream) -> None:
        """STREAM is gone (reset, or the connection): its handler is cancelled."""
        self._close(stream)
        if stream.drained is not None:
            stream.drained.set()
        task = stream.task
        if task is not None and not task.done():
            task.cancel()

    # -- shutdown

    def go_away(self) -> None:
        """No new calls: the client is told which it sent will be answered."""
        self._going_away = True
        self._out.append(frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream, NO_ERROR)))
        self._write()

    def abort(self) -> None:
        for stream in list(self._streams.values()):
            self._drop(stream)
        if self._transport is not None:
            self._transport.close()


def bind_unix(path: str | os.PathLike[str]) -> socket.socket:
    """A unix stream socket bound at PATH, not yet listened on (`Server.start` does)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
    except BaseException:
        sock.close()
        raise
    return sock


class Server:
    """The CRI's gRPC server on a unix socket, served from the loop `start` runs on."""

    def __init__(self) -> None:
        self._handlers: list[GenericHandler] = []
        self._methods: dict[str, MethodHandler | None] = {}
        self._connections: set[Http2Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    def add_generic_rpc_handlers(self, handlers: Sequence[GenericHandler]) -> None:
        self._handlers.extend(handlers)

    def _lookup(self, method: str) -> MethodHandler | None:
        try:
            return self._methods[method]
        except KeyError:
            pass
        found = None
        for generic in self._handlers:
            found = generic.method(method)
            if found is not None:
                break
        if len(self._methods) < 4096:  # unknown paths a client makes up are not kept forever
            self._methods[method] = found
        return found

    async def start(self, sock: socket.socket) -> None:
        """Serves on SOCK, a bound unix socket (listened on here)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: Http2Connection(self._lookup, self._connections), sock=sock, backlog=128
        )

    async def stop(self, grace: float) -> None:
        """No new connections or calls; the calls in flight get GRACE seconds, then are
        cancelled, and the connections closed."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.go_away()
        idle = [asyncio.ensure_future(c.idle.wait()) for c in self._connections]
        if idle:
            _, late = await asyncio.wait(idle, timeout=grace)
            for waiter in late:
                waiter.cancel()
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
