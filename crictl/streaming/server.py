"""The streaming server: an HTTP/1.1 listener (h11) on its own address (127.0.0.1 and a random
port by default) serving `/exec/TOKEN`, `/attach/TOKEN` and `/portforward/TOKEN`.

One accepted socket goes either way: `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version`
negotiation (what kubelet, crictl and critest send by default), or `Upgrade: websocket` with a
channel subprotocol (crictl `-r websocket`, critest `-websocket-*`, the Python client), including
the SPDY-in-WebSocket port-forward tunnel. The token is consumed by the first request that names
it; the cached CRI request, not the URL, decides the streams. Unknown, used or expired tokens
get 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

import h11
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError as WsProtocolError

from crictl.streaming import channels as ch
from crictl.streaming import portforward, remotecommand
from crictl.streaming.backend import Backend, Process
from crictl.streaming.requests import (
    ROUTES,
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    RequestCache,
    StreamRequest,
)
from crictl.streaming.session import SpdySession
from crictl.streaming.transport import TcpTransport, TransportClosed, TunnelTransport, WebSocket

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 30.0
MAX_HEADER_BYTES = 64 * 1024
MAX_SESSIONS = 1000
TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"


@dataclass(frozen=True)
class HttpError(Exception):
    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


def negotiate(offered: list[str], supported: tuple[str, ...]) -> str | None:
    """The first protocol the client offers that the server supports (kubelet's rule)."""
    return next((p for p in offered if p in supported), None)


def header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """All values of a header, repeated or comma-separated."""
    return [
        v.strip()
        for key, value in headers
        if key == name
        for v in value.decode("latin-1").split(",")
        if v.strip()
    ]


class StreamServer:
    def __init__(
        self,
        backend: Backend,
        host: str = "127.0.0.1",
        port: int = 0,
        cache: RequestCache | None = None,
    ) -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self.cache = cache if cache is not None else RequestCache()  # an empty one is falsy
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def url_for(self, request: StreamRequest) -> str:
        """Caches the request and returns its absolute URL (clients reject host-less ones)."""
        token = self.cache.insert(request)
        return urllib.parse.urljoin(self.base_url, f"{ROUTES[type(request)]}/{token}")

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._sessions) >= MAX_SESSIONS:
            writer.close()
            return
        self._sessions.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TransportClosed) as e:
            log.info("streaming client went away", extra={"error": str(e)})
        except asyncio.CancelledError:
            # stop(). Ends normally: Python 3.11's start_server callback calls
            # task.exception(), which raises for a cancelled task.
            pass
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        raw = bytearray()
        try:
            async with asyncio.timeout(HEADER_TIMEOUT):
                request = await self._read_request(reader, conn, raw)
        except (TimeoutError, ConnectionError):
            return
        except h11.RemoteProtocolError as e:
            await self._respond(writer, conn, HttpError(400, f"bad request: {e}"))
            return
        if request is None:
            return
        try:
            await self._route(reader, writer, conn, request, bytes(raw))
        except HttpError as e:
            log.info("streaming request refused", extra={"status": e.status, "error": e.message})
            await self._respond(writer, conn, e)

    @staticmethod
    async def _read_request(
        reader: asyncio.StreamReader, conn: h11.Connection, raw: bytearray
    ) -> h11.Request | None:
        """The request, read to the end of its (empty) body, so that h11 lets a 101 switch
        protocols; `raw` gets the bytes read (a WebSocket handshake parses them again)."""
        request = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data or len(raw) + len(data) > 2 * MAX_HEADER_BYTES:
                    return None
                raw += data
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return request
            elif not isinstance(event, h11.Data):
                return None

    async def _respond(
        self, writer: asyncio.StreamWriter, conn: h11.Connection, e: HttpError
    ) -> None:
        body = (e.message + "\n").encode()
        headers = [
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(body))),
            ("connection", "close"),
            *e.headers,
        ]
        with contextlib.suppress(h11.LocalProtocolError, ConnectionError):
            writer.write(conn.send(h11.Response(status_code=e.status, headers=headers)))
            writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()

    async def _route(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        request: h11.Request,
        raw: bytes,
    ) -> None:
        if request.method not in (b"GET", b"POST"):
            raise HttpError(405, f"method {request.method.decode()} not allowed")
        try:
            target = urllib.parse.urlsplit(request.target.decode("latin-1"))
        except ValueError as e:
            raise HttpError(400, f"bad request target: {e}") from None
        parts = target.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ROUTES.values():
            raise HttpError(404, f"no such path: {target.path}")
        cached = self.cache.consume(parts[1])
        if cached is None:
            raise HttpError(404, "unknown, used or expired streaming token")
        if ROUTES[type(cached)] != parts[0]:
            raise HttpError(400, f"the token is for {ROUTES[type(cached)]}, not {parts[0]}")
        upgrade = [u.lower() for u in header_values(request.headers, b"upgrade")]
        if "websocket" in upgrade:
            await self._websocket(reader, writer, request, raw, cached, target.query)
        elif "spdy/3.1" in upgrade:
            await self._spdy(reader, writer, conn, request, cached)
        else:
            raise HttpError(400, "Upgrade request required (SPDY/3.1 or websocket)")

    # -- SPDY -----------------------------------------------------------------------------

    async def _spdy(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        request: h11.Request,
        cached: StreamRequest,
    ) -> None:
        supported = (
            (portforward.PROTOCOL,)
            if isinstance(cached, PortForwardRequest)
            else remotecommand.SPDY_PROTOCOLS
        )
        offered = header_values(request.headers, b"x-stream-protocol-version")
        if not offered:
            raise HttpError(400, "X-Stream-Protocol-Version header is missing")
        chosen = negotiate(offered, supported)
        if chosen is None:
            raise HttpError(
                403,
                f"no protocol in common: offered {offered}, supported {list(supported)}",
                (("x-accepted-stream-protocol-versions", ", ".join(supported)),),
            )
        response = h11.InformationalResponse(
            status_code=101,
            headers=[
                ("connection", "Upgrade"),
                ("upgrade", "SPDY/3.1"),
                ("x-stream-protocol-version", chosen),
            ],
        )
        writer.write(conn.send(response))
        await writer.drain()
        transport = TcpTransport(reader, writer, conn.trailing_data[0])
        await self._run_spdy(SpdySession(transport), cached, chosen)

    async def _run_spdy(self, session: SpdySession, cached: StreamRequest, version: str) -> None:
        reading = asyncio.create_task(session.run())
        try:
            if isinstance(cached, PortForwardRequest):
                await portforward.SpdyPortForward(session, self._dialer(cached)).serve()
                return
            channels = await remotecommand.SpdyChannels.accept(
                session, version, cached.stdin, cached.stdout, cached.stderr, cached.tty
            )
            if channels is None:
                return
            reading.add_done_callback(lambda _: channels.gone.set())
            await self._remote_command(channels, cached)
        finally:
            await session.close()
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)

    # -- WebSocket ------------------------------------------------------------------------

    async def _websocket(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        raw: bytes,
        cached: StreamRequest,
        query: str,
    ) -> None:
        if request.method != b"GET":
            raise HttpError(400, "a WebSocket upgrade must be a GET")
        ws = H11Handshake(ConnectionType.SERVER)
        try:
            ws.receive_data(raw)
            handshake = next(iter(ws.events()), None)
        except WsProtocolError as e:
            raise HttpError(400, f"bad WebSocket handshake: {e}") from None
        if not isinstance(handshake, Request):
            raise HttpError(400, "bad WebSocket handshake")
        offered = list(handshake.subprotocols)
        if isinstance(cached, PortForwardRequest):
            supported: tuple[str, ...] = (TUNNEL_PROTOCOL, *ch.PORT_FORWARD_PROTOCOLS)
        else:
            supported = ch.REMOTE_COMMAND_PROTOCOLS
        chosen = negotiate(offered or [""], supported)
        if chosen is None:
            writer.write(ws.send(RejectConnection(status_code=403)))
            await writer.drain()
            log.info("WebSocket protocol refused", extra={"offered": offered})
            return
        writer.write(ws.send(AcceptConnection(subprotocol=chosen or None)))
        await writer.drain()
        assert ws.connection is not None
        wsock = WebSocket(TcpTransport(reader, writer), ws.connection)
        if chosen == TUNNEL_PROTOCOL:
            assert isinstance(cached, PortForwardRequest)
            await self._run_spdy(SpdySession(TunnelTransport(wsock)), cached, portforward.PROTOCOL)
            return
        protocol = ch.Protocol(chosen)
        if isinstance(cached, PortForwardRequest):
            ports = list(cached.ports) or _query_ports(query)
            if not ports:
                await wsock.close(1008, "no ports to forward")
                return
            await portforward.serve_websocket(wsock, protocol, ports, self._dialer(cached))
            return
        channels = remotecommand.WebSocketChannels(
            wsock, protocol, cached.stdin, cached.stdout, cached.stderr and not cached.tty
        )
        await channels.open()
        reading = asyncio.create_task(channels.pump())
        try:
            await self._remote_command(channels, cached)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            await wsock.close(1000)

    # -- handlers ---------------------------------------------------------------------------

    async def _remote_command(
        self, channels: remotecommand.Channels, cached: ExecRequest | AttachRequest
    ) -> None:
        if isinstance(cached, ExecRequest):
            exec_request = cached

            async def start() -> Process:
                return await self.backend.exec(exec_request)

            what = f"command {list(cached.cmd)!r}"
        else:
            attach_request = cached

            async def start() -> Process:
                return await self.backend.attach(attach_request)

            what = "container"
        await remotecommand.run(channels, start, what, cached.stdin, cached.tty)

    def _dialer(self, cached: PortForwardRequest) -> portforward.Dial:
        async def dial(port: int) -> socket.socket:
            return await self.backend.dial(cached.sandbox_id, port)

        return dial


def _query_ports(query: str) -> list[int]:
    ports = []
    for value in urllib.parse.parse_qs(query).get("ports", []):
        for p in value.split(","):
            p = p.strip()
            if p.isascii() and p.isdigit() and 0 < int(p) < 65536:
                ports.append(int(p))
    return ports
