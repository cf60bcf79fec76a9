"""A TCP proxy on loopback between crictld and the test registry, to make the network misbehave
on purpose: throttle, stall after N bytes, flip a byte of large responses, or cut connections.
It runs its own event loop in a thread so synchronous tests can steer it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass


@dataclass
class Faults:
    rate: int = 0  # bytes/s from the registry to the client; 0 = unlimited
    stall_after: int = -1  # stop forwarding (but keep the connection) after this many bytes
    corrupt_large: int = 0  # flip one body byte of responses larger than this many bytes


class Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults = Faults()
        self.port = 0
        self.forwarded = 0  # bytes sent to clients, over all connections
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Proxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def cut_all(self) -> None:
        """Closes every open connection (as a registry that died would)."""
        asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _cut(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, up_w}
        to_upstream = asyncio.create_task(self._pipe(client_r, up_w, inbound=False))
        to_client = asyncio.create_task(self._pipe(up_r, client_w, inbound=True))
        await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
        for t in (to_upstream, to_client):
            t.cancel()
        for w in (client_w, up_w):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, inbound: bool
    ) -> None:
        header = b""
        body_seen = -1  # -1 while still in the headers of the current response
        length = 0
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(16384)
                if not data:
                    return
                if inbound:
                    f = self.faults
                    if f.corrupt_large:
                        data, header, body_seen, length = _maybe_corrupt(
                            data, header, body_seen, length, f.corrupt_large
                        )
                    if f.stall_after >= 0 and self.forwarded + len(data) > f.stall_after:
                        allowed = max(f.stall_after - self.forwarded, 0)
                        writer.write(data[:allowed])
                        self.forwarded += allowed
                        await writer.drain()
                        await asyncio.Event().wait()  # hold the connection open, silent
                    if f.rate:
                        await asyncio.sleep(len(data) / f.rate)
                    self.forwarded += len(data)
                writer.write(data)
                await writer.drain()


def _maybe_corrupt(
    data: bytes, header: bytes, body_seen: int, length: int, threshold: int
) -> tuple[bytes, bytes, int, int]:
    """Flips the 1000th body byte of any response with Content-Length above `threshold`."""
    if body_seen < 0:
        header += data
        end = header.find(b"\r\n\r\n")
        if end < 0:
            return data, header, body_seen, length
        for line in header[:end].split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body_start_in_data = len(data) - (len(header) - end - 4)
        body_seen = 0
        header = b""
        prefix, data_body = data[:body_start_in_data], data[body_start_in_data:]
    else:
        prefix, data_body = b"", data
    if length > threshold and body_seen <= 1000 < body_seen + len(data_body):
        i = 1000 - body_seen
        data_body = data_body[:i] + bytes([data_body[i] ^ 0xFF]) + data_body[i + 1 :]
    body_seen += len(data_body)
    if body_seen >= length:
        body_seen, length = -1, 0  # the next response on this connection
    return prefix + data_body, header, body_seen, length
