"""The registry's HTTP/1.1 client: h11 on asyncio streams.

What a distribution registry needs and no more: GET and POST, keep-alive connections pooled by
origin, TLS with the system's CAs, redirects (a registry hands blobs to a CDN; the
`Authorization` header never follows to another origin), a timeout on connecting and one on
every read, bodies streamed as they come. No compression is asked for (`Accept-Encoding` is
not sent), so a body's bytes are what the registry stored and their digest can be checked.

Why not aiohttp: its import alone was ~7.5 MiB of the daemon's memory (with multidict, yarl,
frozenlist, attrs) for what is a few hundred lines on h11, which the streaming server already
uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse
from collections.abc import Mapping

import h11

READ_SIZE = 1 << 16
MAX_REDIRECTS = 10
MAX_IDLE_PER_ORIGIN = 8
DRAIN_LIMIT = 1 << 16  # what is read off a response nobody reads to keep its connection
REDIRECTS = frozenset((301, 302, 303, 307, 308))
DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # scheme, host, port


class HTTPError(Exception):
    """A request that got no complete answer."""


class ConnectError(HTTPError):
    def __init__(self, message: str, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.os_error = os_error


class TLSError(ConnectError):
    """The TLS handshake failed."""


class CertificateError(TLSError):
    """The server's certificate is not trusted."""


class ProtocolError(HTTPError):
    """The connection broke, or the server's bytes were not HTTP."""


def origin_of(url: str) -> Origin:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ProtocolError(f"not an http(s) URL: {url!r}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as e:
        raise ProtocolError(f"bad port in {url!r}") from e
    return scheme, parts.hostname, port


class _Connection:
    def __init__(
        self, origin: Origin, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.origin = origin
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.used = False  # served a request before: may have been closed by the server idle

    def stale(self) -> bool:
        return self.reader.at_eof() or self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()

    async def receive(self, timeout: float) -> None:
        try:
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
        except TimeoutError:  # an OSError too
            raise
        except OSError as e:
            raise ProtocolError(f"connection lost: {e}") from e
        self.h11.receive_data(data)

    async def next_event(
        self, timeout: float
    ) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                raise ProtocolError(str(e)) from e
            if event is h11.NEED_DATA:
                await self.receive(timeout)
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise ProtocolError("the server closed the connection")
            return event


class Response:
    """A response whose body is read as it arrives. Release it (or use it as an async
    context manager): a body read to its end gives the connection back to the pool."""

    def __init__(
        self,
        client: Client,
        conn: _Connection,
        url: str,
        head: h11.Response,
        read_timeout: float,
    ) -> None:
        self._client = client
        self._conn: _Connection | None = conn
        self.url = url
        self.status = head.status_code
        headers: dict[str, str] = {}
        for name, value in head.headers:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        self.headers = headers  # lower-case names, the first value of each
        length = headers.get("content-length")
        self.content_length = int(length) if length and length.isdigit() else None
        self._timeout = read_timeout
        self._pending = b""
        self._done = False

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    async def read(self, n: int = READ_SIZE) -> bytes:
        """Up to `n` bytes of the body; b"" at its end. A read that brings nothing within the
        read timeout raises TimeoutError; a connection that breaks first, ProtocolError."""
        if self._pending:
            out, self._pending = self._pending[:n], self._pending[n:]
            return out
        if self._done or self._conn is None:
            return b""
        conn = self._conn
        try:
            event = await conn.next_event(self._timeout)
        except BaseException:
            self._drop()
            raise
        if isinstance(event, h11.Data):
            data = bytes(event.data)
            out, self._pending = data[:n], data[n:]
            return out
        if isinstance(event, h11.EndOfMessage):
            self._done = True
            await self.release()
            return b""
        self._drop()
        raise ProtocolError(f"unexpected {type(event).__name__} in a response body")

    async def read_all(self, limit: int) -> bytes:
        """The whole body; ProtocolError past `limit` bytes."""
        chunks: list[bytes] = []
        size = 0
        while chunk := await self.read():
            size += len(chunk)
            if size > limit:
                await self.release()
                raise ProtocolError(f"body larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def release(self) -> None:
        """Done with this response: its connection goes back to the pool if its body was read
        to the end (or a small rest can be), else it is closed."""
        conn = self._conn
        if conn is None:
            return
        if not self._done:
            remaining = self.content_length
            if remaining is not None and remaining <= DRAIN_LIMIT:
                with contextlib.suppress(HTTPError, TimeoutError):
                    while await self.read():
                        pass
                if self._conn is None:  # read() released it, or dropped it on an error
                    return
            if not self._done:
                self._drop()
                return
        self._conn = None
        self._client._give_back(conn)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class Client:
    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        headers: Mapping[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.headers = dict(headers or {})
        self._idle: dict[Origin, list[_Connection]] = {}
        self._tls = tls  # the system's CAs unless given
        self.closed = False

    async def close(self) -> None:
        self.closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Response:
        """The response, after following redirects. ConnectError (TLSError, CertificateError)
        when no connection could be made, ProtocolError when one broke, TimeoutError when the
        answer did not come within the read timeout."""
        if params:
            sep = "&" if urllib.parse.urlsplit(url).query else "?"
            url = url + sep + urllib.parse.urlencode(params)
        sent = dict(headers or {})
        for _ in range(MAX_REDIRECTS + 1):
            resp = await self._exchange(method, url, sent, body)
            location = resp.header("location")
            if resp.status not in REDIRECTS or not location:
                return resp
            await resp.release()
            target = urllib.parse.urljoin(url, location)
            if origin_of(target) != origin_of(url):
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            if resp.status == 303 or (resp.status in (301, 302) and method == "POST"):
                method, body = "GET", None
                sent = {k: v for k, v in sent.items() if k.lower() != "content-type"}
            url = target
        raise ProtocolError(f"more than {MAX_REDIRECTS} redirects, the last to {url}")

    async def post_form(self, url: str, form: Mapping[str, str]) -> Response:
        body = urllib.parse.urlencode(form).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return await self.request("POST", url, headers, body)

    async def _exchange(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> Response:
        origin = origin_of(url)
        parts = urllib.parse.urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        fields = [("Host", host), *self.headers.items(), *headers.items()]
        if body is not None:
            fields.append(("Content-Length", str(len(body))))
        request = h11.Request(method=method, target=target, headers=fields)
        # A pooled connection the server closed while it sat idle fails at once; an idempotent
        # request is sent once more on a new connection then. A POST always gets a new one.
        reuse = method in ("GET", "HEAD")
        while True:
            conn = self._pooled(origin) if reuse else None
            if conn is None:
                conn = await self._connect(origin)
            try:
                return await self._send(conn, url, request, body)
            except TimeoutError:  # an OSError too: no answer in time is not a stale connection
                conn.close()
                raise
            except (ProtocolError, OSError):
                conn.close()
                if not conn.used:
                    raise
            except BaseException:
                conn.close()
                raise

    async def _send(
        self, conn: _Connection, url: str, request: h11.Request, body: bytes | None
    ) -> Response:
        out = conn.h11.send(request) or b""
        if body:
            out += conn.h11.send(h11.Data(data=body)) or b""
        out += conn.h11.send(h11.EndOfMessage()) or b""
        conn.writer.write(out)
        await conn.writer.drain()
        while True:
            event = await conn.next_event(self.read_timeout)
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                conn.used = True
                return Response(self, conn, url, event, self.read_timeout)
            raise ProtocolError(f"unexpected {type(event).__name__} before a response")

    def _pooled(self, origin: Origin) -> _Connection | None:
        conns = self._idle.get(origin)
        while conns:
            conn = conns.pop()
            if not conn.stale():
                return conn
            conn.close()
        return None

    def _give_back(self, conn: _Connection) -> None:
        reusable = conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE
        if self.closed or not reusable or conn.stale():
            conn.close()
            return
        conn.h11.start_next_cycle()
        conns = self._idle.setdefault(conn.origin, [])
        if len(conns) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        conns.append(conn)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        where = f"{host}:{port}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=READ_SIZE), self.connect_timeout
            )
        except TimeoutError as e:  # an OSError too
            raise ConnectError(f"{where}: no connection within {self.connect_timeout:g}s") from e
        except OSError as e:
            raise ConnectError(f"{where}: {_describe(e)}", e) from e
        if scheme == "https":
            # the handshake apart from the connect: a server that is there but does not speak
            # TLS (a plain-HTTP registry) is told from one that is not there
            try:
                await asyncio.wait_for(
                    writer.start_tls(self._tls_context(), server_hostname=host),
                    self.connect_timeout,
                )
            except BaseException as e:
                writer.close()
                if isinstance(e, ssl.SSLCertVerificationError):
                    raise CertificateError(f"{where}: {e.verify_message or e}", e) from e
                if isinstance(e, TimeoutError):
                    raise TLSError(
                        f"{where}: no TLS handshake within {self.connect_timeout:g}s"
                    ) from e
                if isinstance(e, OSError):
                    raise TLSError(f"{where}: {_describe(e)}", e) from e
                raise
        return _Connection(origin, reader, writer)


def _describe(e: OSError) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, ConnectionResetError | BrokenPipeError) and not e.strerror:
        return "connection closed by the server"
    return e.strerror or str(e) or type(e).__name__
