"""The registry's HTTP client against scripted HTTP/1.1 servers on 127.0.0.1 (h11 on the server
side too): keep-alive and the pool, a pooled connection the server dropped, redirects and the
Authorization header, bodies chunked, drained or cut short, timeouts, TLS trusted and not."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest

from crictl.images import http


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int  # which accepted connection carried it


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunked: bool = False
    hang_up: bool = False  # close the connection instead of answering
    close_after: bool = False  # close the connection after answering, without saying so
    stall_after_head: bool = False  # send the head, then nothing


Script = Callable[[Seen], Answer]


class Server:
    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.seen: list[Seen] = []
        self.connections = 0
        self.release = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        conn.receive_data(data)
                        if not data and conn.their_state is h11.IDLE:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                seen = Seen(
                    request.method.decode(),
                    request.target.decode(),
                    {k.decode(): v.decode() for k, v in request.headers},
                    body,
                    number,
                )
                self.seen.append(seen)
                answer = self.script(seen)
                if answer.hang_up:
                    return
                headers = list(answer.headers)
                if not answer.chunked:
                    headers.append(("Content-Length", str(len(answer.body))))
                writer.write(conn.send(h11.Response(status_code=answer.status, headers=headers)))
                if answer.stall_after_head:
                    await writer.drain()
                    await self.release.wait()
                    return
                if answer.chunked:
                    for i in range(0, len(answer.body), 7):
                        writer.write(conn.send(h11.Data(data=answer.body[i : i + 7])))
                elif answer.body:
                    writer.write(conn.send(h11.Data(data=answer.body)))
                writer.write(conn.send(h11.EndOfMessage()))
                await writer.drain()
                if answer.close_after or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, ssl.SSLError):
            return
        finally:
            writer.close()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    started: list[Server] = []

    async def start(script: Script, tls: ssl.SSLContext | None = None) -> Server:
        s = Server(script, tls)
        await s.start()
        started.append(s)
        return s

    yield start
    for s in started:
        await s.stop()


@pytest.fixture
async def client() -> AsyncIterator[http.Client]:
    c = http.Client(connect_timeout=5.0, read_timeout=5.0, headers={"User-Agent": "test"})
    yield c
    await c.close()


def ok(body: bytes = b"hello") -> Script:
    return lambda seen: Answer(body=body)


async def get(
    client: http.Client,
    url: str,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    async with await client.request("GET", url, headers, params=params) as resp:
        return resp.status, await resp.read_all(1 << 20)


# -- keep-alive and the pool --------------------------------------------------------------------


async def test_requests_one_after_another_share_one_connection(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(ok())
    for _ in range(3):
        assert await get(client, f"{s.url}/v2/") == (200, b"hello")
    assert s.connections == 1
    assert [x.headers["host"] for x in s.seen] == [f"127.0.0.1:{s.port}"] * 3
    assert s.seen[0].headers["user-agent"] == "test"
    assert "accept-encoding" not in s.seen[0].headers  # bodies come as stored


async def test_requests_at_once_get_a_connection_each(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(ok())
    first = await client.request("GET", f"{s.url}/a")
    second = await client.request("GET", f"{s.url}/b")
    assert s.connections == 2
    assert await first.read_all(100) == await second.read_all(100) == b"hello"
    assert await get(client, f"{s.url}/c") == (200, b"hello")
    assert s.connections == 2  # both went back to the pool


async def test_a_pooled_connection_the_server_dropped_is_replaced(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    # the server closes a kept-alive connection just as the next request arrives on it
    s = await servers(lambda seen: Answer(hang_up=seen.target == "/second", body=b"x"))
    assert await get(client, f"{s.url}/first") == (200, b"x")

    def after(seen: Seen) -> Answer:
        return Answer(hang_up=seen.connection == 1, body=b"y")

    s.script = after
    assert await get(client, f"{s.url}/second") == (200, b"y")
    assert [(x.target, x.connection) for x in s.seen] == [
        ("/first", 1),
        ("/second", 1),
        ("/second", 2),
    ]


async def test_a_fresh_connection_hung_up_on_is_an_error(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(lambda seen: Answer(hang_up=True))
    with pytest.raises(http.ProtocolError):
        await client.request("GET", f"{s.url}/x")
    assert s.connections == 1  # not retried: nothing says the server would answer a new one


async def test_a_post_never_rides_a_pooled_connection(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(ok())
    assert await get(client, f"{s.url}/a") == (200, b"hello")
    async with await client.post_form(f"{s.url}/token", {"a": "1 2", "b": "&"}) as resp:
        assert resp.status == 200
    assert s.connections == 2
    post = s.seen[1]
    assert post.method == "POST"
    assert post.body == b"a=1+2&b=%26"
    assert post.headers["content-type"] == "application/x-www-form-urlencoded"


async def test_query_parameters_are_encoded(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(ok())
    await get(client, f"{s.url}/token", params={"scope": "repository:a/b:pull", "service": "r"})
    assert s.seen[0].target == "/token?scope=repository%3Aa%2Fb%3Apull&service=r"


async def test_a_connection_closed_after_its_answer_is_not_reused(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(lambda seen: Answer(body=b"z", headers=[("Connection", "close")]))
    assert await get(client, f"{s.url}/a") == (200, b"z")
    assert await get(client, f"{s.url}/b") == (200, b"z")
    assert s.connections == 2


# -- bodies -------------------------------------------------------------------------------------


async def test_a_chunked_body_is_read_whole_and_the_connection_kept(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    body = bytes(range(256)) * 3
    s = await servers(lambda seen: Answer(body=body, chunked=True))
    async with await client.request("GET", f"{s.url}/blob") as resp:
        assert resp.content_length is None
        assert resp.header("transfer-encoding") == "chunked"
        assert await resp.read_all(len(body)) == body
    assert await get(client, f"{s.url}/blob") == (200, body)
    assert s.connections == 1


async def test_read_gives_at_most_what_is_asked(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(ok(b"abcdefghij"))
    async with await client.request("GET", f"{s.url}/x") as resp:
        got = [await resp.read(3) for _ in range(5)]
    assert b"".join(got) == b"abcdefghij"
    assert all(len(g) <= 3 for g in got)


async def test_a_body_over_the_limit_is_refused(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(ok(b"x" * 100))
    resp = await client.request("GET", f"{s.url}/x")
    with pytest.raises(http.ProtocolError, match="larger than 99 bytes"):
        await resp.read_all(99)


async def test_a_small_unread_body_is_drained_a_large_one_closes_the_connection(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(
        lambda seen: Answer(body=b"s" * 10 if seen.target == "/small" else b"L" * (1 << 20))
    )
    await (await client.request("GET", f"{s.url}/small")).release()
    await (await client.request("GET", f"{s.url}/small")).release()
    assert s.connections == 1
    await (await client.request("GET", f"{s.url}/large")).release()
    await (await client.request("GET", f"{s.url}/small")).release()
    assert s.connections == 2


async def test_a_connection_broken_midway_is_a_protocol_error(
    client: http.Client,
) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"p" * 40)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        resp = await client.request("GET", f"http://127.0.0.1:{port}/x")
        got = b""
        with pytest.raises(http.ProtocolError):
            while chunk := await resp.read():
                got += chunk
        assert got == b"p" * 40
    finally:
        server.close()


async def test_garbage_instead_of_http_is_a_protocol_error(client: http.Client) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(http.ProtocolError):
            await client.request("GET", f"http://127.0.0.1:{port}/x")
    finally:
        server.close()


# -- timeouts and connecting --------------------------------------------------------------------


async def test_a_body_that_stalls_times_out_and_its_connection_is_dropped(
    servers: Callable[..., Awaitable[Server]],
) -> None:
    s = await servers(lambda seen: Answer(stall_after_head=seen.target == "/stall", body=b"k"))
    c = http.Client(connect_timeout=5.0, read_timeout=0.2)
    try:
        resp = await c.request("GET", f"{s.url}/stall")
        with pytest.raises(TimeoutError):
            await resp.read()
        await resp.release()
        assert await get(c, f"{s.url}/fine") == (200, b"k")
        assert s.connections == 2
    finally:
        await c.close()


async def test_no_answer_in_time_is_a_timeout_not_a_retry(
    servers: Callable[..., Awaitable[Server]],
) -> None:
    s = await servers(ok())
    c = http.Client(connect_timeout=5.0, read_timeout=0.2)
    try:
        assert await get(c, f"{s.url}/a") == (200, b"hello")

        async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await s.release.wait()

        server = await asyncio.start_server(never, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(TimeoutError):
                await c.request("GET", f"http://127.0.0.1:{port}/x")
        finally:
            server.close()
    finally:
        await c.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_refused_connection_names_the_address(client: http.Client) -> None:
    port = closed_port()
    with pytest.raises(http.ConnectError) as info:
        await client.request("GET", f"http://127.0.0.1:{port}/v2/")
    assert isinstance(info.value.os_error, ConnectionRefusedError)
    assert str(info.value).startswith(f"127.0.0.1:{port}: ")


async def test_a_url_that_is_not_http_is_refused(client: http.Client) -> None:
    with pytest.raises(http.ProtocolError, match="not an http"):
        await client.request("GET", "ftp://example.com/x")


# -- redirects ----------------------------------------------------------------------------------


async def test_redirects_keep_authorization_on_the_same_origin_only(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    cdn = await servers(ok(b"blob"))

    def registry(seen: Seen) -> Answer:
        if seen.target == "/v2/blob":
            return Answer(status=307, headers=[("Location", "/v2/moved")])
        return Answer(status=302, headers=[("Location", f"{cdn.url}/cdn/blob?sig=1")])

    r = await servers(registry)
    status, body = await get(client, f"{r.url}/v2/blob", headers={"Authorization": "Bearer t"})
    assert (status, body) == (200, b"blob")
    assert [(x.target, x.headers.get("authorization")) for x in r.seen] == [
        ("/v2/blob", "Bearer t"),
        ("/v2/moved", "Bearer t"),
    ]
    [at_cdn] = cdn.seen
    assert at_cdn.target == "/cdn/blob?sig=1"
    assert "authorization" not in at_cdn.headers


async def test_a_see_other_after_a_post_is_a_get(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(
        lambda seen: (
            Answer(status=303, headers=[("Location", "/done")])
            if seen.method == "POST"
            else Answer(body=b"done")
        )
    )
    async with await client.post_form(f"{s.url}/token", {"a": "b"}) as resp:
        assert resp.status == 200
    assert [(x.method, x.target, x.body) for x in s.seen] == [
        ("POST", "/token", b"a=b"),
        ("GET", "/done", b""),
    ]
    assert "content-type" not in s.seen[1].headers


async def test_a_redirect_loop_ends(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(lambda seen: Answer(status=302, headers=[("Location", "/again")]))
    with pytest.raises(http.ProtocolError, match="more than 10 redirects"):
        await client.request("GET", f"{s.url}/x")
    assert len(s.seen) == 11


async def test_a_redirect_without_location_is_the_answer(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(lambda seen: Answer(status=302, body=b"nowhere"))
    assert await get(client, f"{s.url}/x") == (302, b"nowhere")


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=registry.test", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*certificate)
    return ctx


async def test_tls_with_a_trusted_certificate(
    servers: Callable[..., Awaitable[Server]], certificate: tuple[Path, Path]
) -> None:
    s = await servers(ok(b"secure"), tls=server_tls(certificate))
    c = http.Client(5.0, 5.0, tls=ssl.create_default_context(cafile=str(certificate[0])))
    try:
        assert await get(c, f"{s.url}/v2/") == (200, b"secure")
        assert await get(c, f"{s.url}/v2/") == (200, b"secure")
        assert s.connections == 1
    finally:
        await c.close()


async def test_tls_with_an_untrusted_certificate(
    servers: Callable[..., Awaitable[Server]], certificate: tuple[Path, Path]
) -> None:
    s = await servers(ok(), tls=server_tls(certificate))
    c = http.Client(5.0, 5.0)  # the system's CAs do not know it
    try:
        with pytest.raises(http.CertificateError, match="certificate"):
            await c.request("GET", f"{s.url}/v2/")
    finally:
        await c.close()
    assert not s.seen


async def test_tls_to_a_plain_http_server(
    servers: Callable[..., Awaitable[Server]], client: http.Client
) -> None:
    s = await servers(ok())
    with pytest.raises(http.TLSError) as info:
        await client.request("GET", f"https://127.0.0.1:{s.port}/v2/")
    assert not isinstance(info.value, http.CertificateError)
