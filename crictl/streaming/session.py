"""A server-side SPDY/3.1 session over a transport: the asyncio layer above the pure codec.

What the Go client (moby/spdystream) needs from its peer, and so what this does:
- every SYN_STREAM is answered with a SYN_REPLY at once (the client waits at most 30 s per
  stream, and DATA sent before the reply is dropped), before the handler sees the stream;
- client PINGs are echoed;
- no flow control: spdystream sends no WINDOW_UPDATE, so enforcing SPDY's window would
  deadlock after 64 KiB; SETTINGS and WINDOW_UPDATE are read and ignored;
- the socket is always read: a stream nobody reads buffers up to a bound, past which the read
  loop waits (TCP backpressure, as the Go server behaves), so handlers must read or reset
  every stream they accept;
- any malformed frame ends the connection (GOAWAY with PROTOCOL_ERROR).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from crictl.streaming import spdy
from crictl.streaming.transport import Transport, TransportClosed

log = logging.getLogger(__name__)

MAX_DATA_FRAME = 32 * 1024
STREAM_BUFFER_LIMIT = 1 << 20


class SpdyStream:
    def __init__(self, session: SpdySession, stream_id: int, headers: dict[str, str]) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self.remote_closed = False  # FIN or RST from the client
        self.reset_by_peer = False
        self.local_closed = False  # FIN or RST from us
        self._discard = False

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    # -- inbound ---------------------------------------------------------------------------

    def discard_input(self) -> None:
        """Drops what the client sends on this stream from now on (a stream we only write,
        or one whose reader gave up), so that it can never stall the session's read loop."""
        self._discard = True
        self._chunks.clear()
        self._buffered = 0
        self._drained.set()

    def _receive(self, data: bytes, fin: bool) -> None:
        if data and not self._discard:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > STREAM_BUFFER_LIMIT:
                self._drained.clear()
        if fin:
            self.remote_closed = True
        self._readable.set()

    def _end(self, reset: bool) -> None:
        self.remote_closed = True
        self.reset_by_peer = self.reset_by_peer or reset
        if reset:
            self.local_closed = True
        self._readable.set()
        self._drained.set()

    async def read(self) -> bytes:
        """The next data the client sent; b"" once it ended the stream (FIN or RST)."""
        while not self._chunks:
            if self.remote_closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._chunks.popleft()
        self._buffered -= len(data)
        if self._buffered <= STREAM_BUFFER_LIMIT:
            self._drained.set()
        return data

    # -- outbound --------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        if self.local_closed:
            raise TransportClosed(f"stream {self.id} is closed")
        view = memoryview(data)
        for start in range(0, len(view), MAX_DATA_FRAME):
            await self.session.send(
                spdy.DataFrame(self.id, bytes(view[start : start + MAX_DATA_FRAME]))
            )

    async def close(self) -> None:
        """Ends our side (FIN), once."""
        if self.local_closed:
            return
        self.local_closed = True
        with contextlib.suppress(TransportClosed):
            await self.session.send(spdy.DataFrame(self.id, b"", fin=True))

    async def reset(self, status: int = spdy.CANCEL) -> None:
        if self.local_closed and self.remote_closed:
            return
        self.local_closed = True
        self._end(reset=False)
        with contextlib.suppress(TransportClosed):
            await self.session.send(spdy.RstStream(self.id, status))


class SpdySession:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.decoder = spdy.Decoder()
        self.encoder = spdy.Encoder()
        self.streams: dict[int, SpdyStream] = {}
        self._new: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._last_client_id = 0
        self._write_lock = asyncio.Lock()
        self.closed = False
        self.error: str | None = None
        self._goaway_sent = False

    async def send(self, frame: spdy.Frame) -> None:
        # Encoding and writing under one lock: the header compression context must see frames
        # in the order they go out.
        async with self._write_lock:
            if self.closed:
                raise TransportClosed("session closed")
            await self.transport.write(self.encoder.encode(frame))

    async def accept(self) -> SpdyStream | None:
        """The next stream the client opened; None once the session ended."""
        return await self._new.get()

    async def run(self) -> None:
        """Reads the connection until it ends; then every stream reads end-of-stream."""
        try:
            while True:
                data = await self.transport.read()
                if not data:
                    break
                try:
                    frames = self.decoder.feed(data)
                except spdy.ProtocolError as e:
                    self.error = f"SPDY protocol error: {e}"
                    log.info("closing SPDY connection", extra={"error": self.error})
                    with contextlib.suppress(TransportClosed):
                        await self._goaway(spdy.GOAWAY_PROTOCOL_ERROR)
                    break
                if not await self._dispatch(frames):
                    break
        except TransportClosed:
            pass
        finally:
            self._finish()

    async def _dispatch(self, frames: list[spdy.Frame]) -> bool:
        for frame in frames:
            if isinstance(frame, spdy.DataFrame):
                stream = self.streams.get(frame.stream_id)
                if stream is None or stream.remote_closed:
                    await self.send(spdy.RstStream(frame.stream_id, spdy.INVALID_STREAM))
                    continue
                stream._receive(frame.data, frame.fin)
                await stream._drained.wait()
            elif isinstance(frame, spdy.SynStream):
                if frame.stream_id % 2 == 0 or frame.stream_id <= self._last_client_id:
                    self.error = f"SPDY protocol error: bad stream id {frame.stream_id}"
                    await self._goaway(spdy.GOAWAY_PROTOCOL_ERROR)
                    return False
                self._last_client_id = frame.stream_id
                stream = SpdyStream(self, frame.stream_id, frame.headers)
                self.streams[frame.stream_id] = stream
                await self.send(spdy.SynReply(frame.stream_id, {}))
                if frame.fin:
                    stream._end(reset=False)
                self._new.put_nowait(stream)
            elif isinstance(frame, spdy.RstStream):
                stream = self.streams.get(frame.stream_id)
                if stream is not None:
                    stream._end(reset=True)
            elif isinstance(frame, spdy.Ping):
                if frame.ping_id % 2 == 1:  # the client's; ours would be even (we send none)
                    await self.send(frame)
            elif isinstance(frame, spdy.GoAway):
                return False
            elif (
                isinstance(frame, spdy.Headers)
                and frame.fin
                and (stream := self.streams.get(frame.stream_id)) is not None
            ):
                stream._end(reset=False)
            # SYN_REPLY (we open no streams), SETTINGS, WINDOW_UPDATE: nothing to do.
        return True

    def _finish(self) -> None:
        for stream in self.streams.values():
            stream._end(reset=True)
        self._new.put_nowait(None)

    async def _goaway(self, status: int) -> None:
        """One GOAWAY per connection: a later one would contradict the first."""
        if not self._goaway_sent:
            self._goaway_sent = True
            await self.send(spdy.GoAway(self._last_client_id, status))

    async def close(self) -> None:
        """GOAWAY, then the connection: everything written so far reaches the client first."""
        if self.closed:
            return
        with contextlib.suppress(TransportClosed):
            await self._goaway(spdy.GOAWAY_OK)
        self.closed = True
        await self.transport.close()
