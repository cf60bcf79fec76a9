"""The streaming server, live on 127.0.0.1 with a fake backend: exec, attach and port-forward
over SPDY and WebSocket, the HTTP refusals, clean-up when a client goes away, and fuzzing of
the HTTP request, the SPDY session and the WebSocket channels (CRICTLD_FUZZ_EXAMPLES sizes it).

Every test is bounded by asyncio.timeout. The `server` fixture fails a test whose server logged
an error or left an exception to the event loop, and one whose connections did not all end.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request

from crictl import errors
from crictl.streaming import spdy
from crictl.streaming.requests import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    RequestCache,
    StreamRequest,
)
from crictl.streaming.server import StreamServer
from tests.unit.streaming_client import (
    CLOSED_PORT,
    FakeBackend,
    SpdyClient,
    WsClient,
    abort,
    close_all,
    connect,
    echo_handler,
    http_request,
    split_url,
    until,
    upgrade_request,
)

FUZZ_EXAMPLES = int(os.environ.get("CRICTLD_FUZZ_EXAMPLES", "50"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
TEST_TIMEOUT = 20.0
V4 = "v4.channel.k8s.io"
V2 = "v2.channel.k8s.io"
CLIENT_GO_OFFER = ["v5.channel.k8s.io", V4, "v3.channel.k8s.io", V2, "channel.k8s.io"]
SUCCESS = b'{"metadata":{},"status":"Success"}'


def exec_request(
    *cmd: str, stdin: bool = False, tty: bool = False, stdout: bool = True, stderr: bool = True
) -> ExecRequest:
    return ExecRequest("c1", cmd, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr and not tty)


def exit_3_status(status: bytes) -> None:
    parsed = json.loads(status)
    assert parsed["status"] == "Failure"
    assert parsed["reason"] == "NonZeroExitCode"
    assert parsed["message"].startswith("command terminated with non-zero exit code: ")
    assert parsed["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}


# -- fixtures -----------------------------------------------------------------------------------


class Problems(logging.Handler):
    """Collects the server's error log records (an exception that escaped a handler)."""

    def __init__(self, found: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.found = found

    def emit(self, record: logging.LogRecord) -> None:
        self.found.append(f"log: {record.getMessage()} {record.exc_info!r}")


@pytest.fixture
async def problems() -> AsyncIterator[list[str]]:
    """Error log records of crictl.streaming and exceptions left to the event loop."""
    found: list[str] = []
    handler = Problems(found)
    logger = logging.getLogger("crictl.streaming")
    logger.addHandler(handler)
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def on_error(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        details = [context.get(k) for k in ("message", "exception", "task")]
        found.append("event loop: " + " ".join(map(repr, details)))

    loop.set_exception_handler(on_error)
    try:
        yield found
    finally:
        loop.set_exception_handler(previous)
        logger.removeHandler(handler)


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    echo = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
    try:
        yield echo.sockets[0].getsockname()[1]
    finally:
        echo.close()


@pytest.fixture
async def backend(echo_port: int) -> FakeBackend:
    return FakeBackend(echo_port)


@pytest.fixture
async def server(backend: FakeBackend, problems: list[str]) -> AsyncIterator[StreamServer]:
    srv = StreamServer(backend)
    await srv.start()
    try:
        yield srv
        await close_all()  # what a failed test left open
        # Every connection the test opened has ended, every process was released.
        await until(lambda: srv.sessions == 0, 8)
        assert copy_tasks() == []  # no port-forward copy outlives its session
        assert all(p.closed for p in backend.processes)
    finally:
        async with asyncio.timeout(10):
            await srv.stop()
    assert not problems, problems


# -- helpers ------------------------------------------------------------------------------------


async def spdy_exec(
    server: StreamServer,
    request: StreamRequest,
    *,
    protocols: list[str] | None = None,
    stdin: bytes | None = None,
) -> tuple[SpdyClient, dict[str, bytes]]:
    """A whole exec/attach over SPDY as client-go does it: streams error, stdin, stdout,
    stderr|resize; optional stdin then its half-close; everything read to the end."""
    assert isinstance(request, ExecRequest | AttachRequest)
    response, client = await SpdyClient.connect(server.url_for(request), protocols or [V4])
    assert response.status == 101, response
    kinds = ["error"]
    kinds += ["stdin"] if request.stdin else []
    kinds += ["stdout"] if request.stdout else []
    kinds += ["stderr"] if request.stderr and not request.tty else []
    kinds += ["resize"] if request.tty else []
    ids = await client.open_streams(*kinds)
    if stdin is not None:
        if stdin:
            await client.write(ids["stdin"], stdin)
        await client.write(ids["stdin"], b"", fin=True)
    out = {kind: await client.read_to_end(sid) for kind, sid in ids.items() if kind != "stdin"}
    return client, out


async def ws_collect(client: WsClient) -> list[bytes | str]:
    await client.run_until_closed()
    return client.messages


async def sessions_end(server: StreamServer, timeout: float = 3.0) -> None:
    await until(lambda: server.sessions == 0, timeout)


# -- exec over SPDY -----------------------------------------------------------------------------


async def test_exec_stdout_stderr_and_success_status(
    server: StreamServer, backend: FakeBackend
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client, out = await spdy_exec(server, exec_request("print", "hello", "oops", "0"))
        assert out == {"error": SUCCESS, "stdout": b"hello", "stderr": b"oops"}
        assert all(s.fin and s.reset is None for s in client.streams.values())
        # Then the session ends: GOAWAY (OK, naming the last stream), then EOF.
        await client.wait_eof()
        assert client.goaways() == [spdy.GoAway(5, spdy.GOAWAY_OK)]
        await client.close()
        await sessions_end(server)
        assert backend.processes[0].closed


async def test_exec_non_zero_exit_status(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client, out = await spdy_exec(server, exec_request("print", "", "bad\n", "3"))
        assert out["stdout"] == b""
        assert out["stderr"] == b"bad\n"
        exit_3_status(out["error"])
        await client.close()


async def test_client_go_offer_gets_v4(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("print", "x", "", "0"))
        response, client = await SpdyClient.connect(url, CLIENT_GO_OFFER)
        assert response.status == 101
        assert response.header("upgrade") == "SPDY/3.1"
        assert response.header("connection") == "Upgrade"
        assert response.header("x-stream-protocol-version") == V4
        await client.close()


async def test_comma_separated_offer(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("print", "x", "", "0"))
        response, client = await SpdyClient.connect(url, ["v5.channel.k8s.io, v2.channel.k8s.io"])
        assert response.header("x-stream-protocol-version") == V2
        await client.close()


async def test_server_sends_nothing_before_the_client_frames(server: StreamServer) -> None:
    """The Go client loses bytes sent right after the 101 (they sit in its bufio.Reader)."""
    async with asyncio.timeout(TEST_TIMEOUT):
        response, client = await SpdyClient.connect(server.url_for(exec_request("sleep")))
        assert response.status == 101
        await asyncio.sleep(0.2)
        assert client.frames == []
        await client.close()


async def test_exec_stdin_echo_and_half_close(server: StreamServer, backend: FakeBackend) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("echo", stdin=True))
        _, client = await SpdyClient.connect(url)
        ids = await client.open_streams("error", "stdin", "stdout", "stderr")
        await client.write(ids["stdin"], b"abc")
        await client.wait(lambda: bytes(client.streams[ids["stdout"]].data) == b"abc")
        await client.write(ids["stdin"], b"def\n")
        await client.wait(lambda: bytes(client.streams[ids["stdout"]].data) == b"abcdef\n")
        process = backend.processes[0]
        assert not process.stdin_closed
        await client.write(ids["stdin"], b"", fin=True)  # client-go's stdin EOF
        assert await client.read_to_end(ids["error"]) == SUCCESS
        assert process.stdin_closed
        assert process.stdin == b"abcdef\n"
        assert await client.read_to_end(ids["stdout"]) == b"abcdef\n"
        assert await client.read_to_end(ids["stderr"]) == b""
        await client.wait_eof()
        await client.close()


async def test_exec_stdin_exit_code_after_half_close(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client, out = await spdy_exec(server, exec_request("echo", "3", stdin=True), stdin=b"in")
        assert out["stdout"] == b"in"
        exit_3_status(out["error"])
        await client.close()


async def test_exec_tty_resize(server: StreamServer, backend: FakeBackend) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("echo", stdin=True, tty=True))
        _, client = await SpdyClient.connect(url)
        # A TTY session has no stderr stream; client-go opens resize last.
        ids = await client.open_streams("error", "stdin", "stdout", "resize")
        await client.write(ids["resize"], b'{"Width":80,"Hei')
        await client.write(ids["resize"], b'ght":24}\n{"Width":100,"Height":30}\n')
        await client.write(ids["resize"], b'{"Width":200,"Height":60}')
        process = backend.processes[0]
        await until(lambda: process.resizes == [(80, 24), (100, 30), (200, 60)])
        assert process.tty
        await client.write(ids["stdin"], b"x")
        await client.write(ids["stdin"], b"", fin=True)
        assert await client.read_to_end(ids["error"]) == SUCCESS
        assert await client.read_to_end(ids["stdout"]) == b"x"
        await client.close()


async def test_bad_resize_stream_is_ignored_not_fatal(
    server: StreamServer, backend: FakeBackend
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("echo", stdin=True, tty=True))
        _, client = await SpdyClient.connect(url)
        ids = await client.open_streams("error", "stdin", "stdout", "resize")
        await client.write(ids["resize"], b'{"Width":1,"Height":2}')
        await until(lambda: backend.processes[0].resizes == [(1, 2)])
        await client.write(ids["resize"], b"[not a size]}")
        await client.write(ids["resize"], b'{"Width":3,"Height":4}')
        await client.write(ids["stdin"], b"", fin=True)
        assert await client.read_to_end(ids["error"]) == SUCCESS
        assert backend.processes[0].resizes == [(1, 2)]
        await client.close()


async def test_stdin_opened_with_fin_is_an_immediate_eof(
    server: StreamServer, backend: FakeBackend
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        _, client = await SpdyClient.connect(server.url_for(exec_request("echo", stdin=True)))
        error = await client.open({"streamtype": "error"})
        await client.open({"streamtype": "stdin"}, fin=True)
        stdout = await client.open({"streamtype": "stdout"})
        await client.open({"streamtype": "stderr"})
        assert await client.read_to_end(error) == SUCCESS
        assert await client.read_to_end(stdout) == b""
        assert backend.processes[0].stdin_closed
        await client.close()


async def test_client_reset_of_stdout_does_not_end_the_session(
    server: StreamServer, backend: FakeBackend
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("echo", "3", stdin=True))
        _, client = await SpdyClient.connect(url)
        ids = await client.open_streams("error", "stdin", "stdout", "stderr")
        await client.send(spdy.RstStream(ids["stdout"], spdy.CANCEL))
        await client.write(ids["stdin"], b"lost")
        await until(lambda: backend.processes[0].stdin == b"lost")
        await client.write(ids["stdin"], b"", fin=True)
        exit_3_status(await client.read_to_end(ids["error"]))
        assert bytes(client.streams[ids["stdout"]].data) == b""
        await client.close()


async def test_ping_is_echoed(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        _, client = await SpdyClient.connect(server.url_for(exec_request("sleep")))
        await client.send(spdy.Ping(1))
        await client.send(spdy.Ping(2))  # even: a server's id, not echoed
        await client.send(spdy.Ping(0x7FFFFFFF))
        await client.wait(lambda: spdy.Ping(0x7FFFFFFF) in client.frames)
        assert [f for f in client.frames if isinstance(f, spdy.Ping)] == [
            spdy.Ping(1),
            spdy.Ping(0x7FFFFFFF),
        ]
        # Pings keep being answered while the streams are open and the process runs.
        await client.open_streams("error", "stdout", "stderr")
        await client.send(spdy.Ping(5))
        await client.wait(lambda: spdy.Ping(5) in client.frames)
        await client.close()


async def test_settings_and_window_update_are_ignored(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("print", "out", "", "0"))
        _, client = await SpdyClient.connect(url)
        await client.send(spdy.Settings(((0, 7, 65536), (1, 4, 100))))
        await client.send(spdy.WindowUpdate(0, 1000))
        ids = await client.open_streams("error", "stdout", "stderr")
        await client.send(spdy.WindowUpdate(ids["stdout"], 1))
        assert await client.read_to_end(ids["stdout"]) == b"out"
        assert await client.read_to_end(ids["error"]) == SUCCESS
        await client.close()


async def test_unexpected_and_duplicate_streams_are_refused(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("print", "out", "", "0", stderr=False))
        _, client = await SpdyClient.connect(url)
        error = await client.open({"streamtype": "error"})
        dup = await client.open({"streamtype": "error"})
        other = await client.open({"streamtype": "stderr"})  # not requested
        none = await client.open({})
        await client.wait(lambda: all(client.streams[i].reset == 3 for i in (dup, other, none)))
        stdout = await client.open({"streamtype": "stdout"})
        assert await client.read_to_end(stdout) == b"out"
        assert await client.read_to_end(error) == SUCCESS
        await client.close()


async def test_process_start_failure_is_an_internal_error_status(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client, out = await spdy_exec(server, exec_request("missing", "/bin/nope"))
        status = json.loads(out["error"])
        assert status["status"] == "Failure"
        assert status["reason"] == "InternalError"
        assert status["code"] == 500
        assert "/bin/nope" in status["message"]
        assert out["stdout"] == out["stderr"] == b""
        await client.close()


async def test_output_larger_than_a_spdy_window(server: StreamServer) -> None:
    """No flow control: spdystream sends no WINDOW_UPDATE, so >64 KiB must flow anyway."""
    async with asyncio.timeout(TEST_TIMEOUT):
        big = "x" * 300_000
        client, out = await spdy_exec(server, exec_request("print", big, "", "0"))
        assert out["stdout"] == big.encode()
        await client.close()


async def test_stdin_larger_than_a_frame(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        data = bytes(range(256)) * 1000
        client, out = await spdy_exec(server, exec_request("echo", stdin=True), stdin=data)
        assert out["stdout"] == data
        await client.close()


async def test_attach_over_spdy(server: StreamServer, backend: FakeBackend) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        request = AttachRequest("echo", tty=False, stdin=True, stdout=True, stderr=True)
        client, out = await spdy_exec(server, request, stdin=b"echo -n hello\n")
        assert out == {"error": SUCCESS, "stdout": b"echo -n hello\n", "stderr": b""}
        assert backend.processes[0].stdin_closed
        await client.close()


# -- v2 (and older): no status on success, plain text on failure ---------------------------------


async def test_v2_success_sends_no_status(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        request = exec_request("print", "hello", "", "0")
        client, out = await spdy_exec(server, request, protocols=[V2])
        assert out == {"error": b"", "stdout": b"hello", "stderr": b""}
        await client.close()


async def test_v2_failure_is_plain_text(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        request = exec_request("print", "", "", "3")
        client, out = await spdy_exec(server, request, protocols=[V2])
        text = out["error"].decode()
        assert text.startswith("command terminated with non-zero exit code: ")
        assert "3" in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
        await client.close()


async def test_v2_tty_has_no_resize_stream(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("echo", stdin=True, tty=True))
        _, client = await SpdyClient.connect(url, [V2])
        ids = await client.open_streams("error", "stdin", "stdout")
        await client.write(ids["stdin"], b"hi", fin=True)
        assert await client.read_to_end(ids["stdout"]) == b"hi"
        assert await client.read_to_end(ids["error"]) == b""
        await client.close()


# -- HTTP refusals --------------------------------------------------------------------------------


async def test_unknown_token_is_404(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.base_url + "exec/AAAAAAAA"
        response = await http_request(url, protocols=[V4])
        assert response.status == 404


async def test_unknown_path_is_404(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        for path in ("", "exec", "logs/AAAAAAAA", "exec/a/b"):
            response = await http_request(server.base_url + path, protocols=[V4])
            assert response.status == 404, path


async def test_reused_token_is_404(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("print", "x", "", "0"))
        response, client = await SpdyClient.connect(url)
        assert response.status == 101
        response = await http_request(url, protocols=[V4])
        assert response.status == 404
        assert b"token" in response.body
        await client.close()


async def test_token_is_consumed_even_when_the_upgrade_fails(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("print", "x", "", "0"))
        assert (await http_request(url, protocols=[])).status == 400
        assert (await http_request(url, protocols=[V4])).status == 404


async def test_exec_token_on_attach_path_is_400(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("print", "x", "", "0"))
        response = await http_request(url.replace("/exec/", "/attach/"), protocols=[V4])
        assert response.status == 400
        assert b"exec" in response.body
        url = server.url_for(PortForwardRequest("s1", ()))
        response = await http_request(url.replace("/portforward/", "/exec/"), protocols=[V4])
        assert response.status == 400


async def test_missing_protocol_version_is_400(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        response = await http_request(server.url_for(exec_request("sleep")), protocols=[])
        assert response.status == 400
        assert b"X-Stream-Protocol-Version" in response.body


async def test_no_common_protocol_is_403_with_accepted_versions(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("sleep"))
        response = await http_request(url, protocols=["v9.channel.k8s.io", "portforward.k8s.io"])
        assert response.status == 403
        accepted = response.header("x-accepted-stream-protocol-versions")
        assert accepted is not None
        assert [v.strip() for v in accepted.split(",")] == [
            V4,
            "v3.channel.k8s.io",
            V2,
            "channel.k8s.io",
        ]
        url = server.url_for(PortForwardRequest("s1", ()))
        response = await http_request(url, protocols=[V4])
        assert response.status == 403
        assert response.header("x-accepted-stream-protocol-versions") == "portforward.k8s.io"


async def test_missing_upgrade_is_400(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("sleep"))
        response = await http_request(url, upgrade=None, protocols=[V4])
        assert response.status == 400
        url = server.url_for(exec_request("sleep"))
        response = await http_request(url, upgrade="h2c", protocols=[V4])
        assert response.status == 400


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_bad_method_is_405(server: StreamServer, method: str) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("sleep"))
        response = await http_request(url, method=method, protocols=[V4])
        assert response.status == 405


async def test_get_upgrade_to_spdy_is_accepted(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("print", "x", "", "0"))
        response, client = await SpdyClient.connect(url, method="GET")
        assert response.status == 101
        await client.close()


async def test_malformed_http_is_400(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        response = await http_request(server.base_url, raw=b"GET / HTTP/1.1\r\nbad header\r\n\r\n")
        assert response.status == 400


async def test_url_is_absolute(server: StreamServer) -> None:
    url = server.url_for(exec_request("sleep"))
    host, port, target = split_url(url)
    assert (host, port) == ("127.0.0.1", server.port)
    assert target.startswith("/exec/") and len(target) == len("/exec/") + 8
    assert server.cache.consume(target.rsplit("/", 1)[1]) is not None


async def test_request_target_urlsplit_refuses_is_400(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        raw = b"GET //[/exec/AAAAAAAA HTTP/1.1\r\nHost: x\r\n\r\n"
        reader, writer = await connect("127.0.0.1", server.port)
        writer.write(raw)
        reply = await reader.read()
        writer.close()
        assert reply.startswith(b"HTTP/1.1 400 ")


# -- exec over WebSocket --------------------------------------------------------------------------


async def test_websocket_v4_binary_exec(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("print", "hello", "oops", "0"))
        client = await WsClient.connect(url, [V4])
        assert client.accepted is not None
        assert client.accepted.subprotocol == V4
        messages = await ws_collect(client)
        assert messages[0] == b"\x01"  # the empty first message on the lowest channel
        assert b"\x01hello" in messages
        assert b"\x02oops" in messages
        assert messages[-1] == b"\x03" + SUCCESS
        assert client.close_code == 1000
        await client.close()


async def test_websocket_v4_exit_status(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await WsClient.connect(server.url_for(exec_request("print", "", "", "3")), [V4])
        messages = await ws_collect(client)
        last = messages[-1]
        assert isinstance(last, bytes) and last[0] == 3
        exit_3_status(last[1:])
        assert client.close_code == 1000
        await client.close()


async def test_websocket_v4_base64_exec(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("print", "hello", "oops", "0"))
        client = await WsClient.connect(url, ["v4.base64.channel.k8s.io"])
        messages = await ws_collect(client)
        assert messages[0] == "1"
        assert "1" + base64.b64encode(b"hello").decode() in messages
        assert "2" + base64.b64encode(b"oops").decode() in messages
        assert messages[-1] == "3" + base64.b64encode(SUCCESS).decode()
        assert client.close_code == 1000
        await client.close()


async def test_websocket_base64_stdin(server: StreamServer, backend: FakeBackend) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("echo", stdin=True))
        client = await WsClient.connect(url, ["base64.channel.k8s.io"])
        await client.send("0" + base64.b64encode(b"hi\n").decode())
        await client.wait_messages(2)
        assert client.messages == ["1", "1" + base64.b64encode(b"hi\n").decode()]
        # No way to close stdin before v5: hanging up ends the session (and stdin).
        await client.close()
        await sessions_end(server)
        assert backend.processes[0].closed


async def test_websocket_v5_stdin_close(server: StreamServer, backend: FakeBackend) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("echo", stdin=True))
        client = await WsClient.connect(url, ["v5.channel.k8s.io"])
        assert client.accepted is not None
        assert client.accepted.subprotocol == "v5.channel.k8s.io"
        await client.send(b"\x00abc")
        await client.wait_messages(2)
        assert client.messages == [b"\x01", b"\x01abc"]
        await client.send(b"\xff\x00")  # v5: close stdin
        messages = await ws_collect(client)
        assert messages[-1] == b"\x03" + SUCCESS
        assert client.close_code == 1000
        assert backend.processes[0].stdin_closed
        assert backend.processes[0].stdin == b"abc"
        await client.close()


async def test_websocket_resize(server: StreamServer, backend: FakeBackend) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("echo", stdin=True, tty=True))
        client = await WsClient.connect(url, ["v5.channel.k8s.io"])
        await client.send(b'\x04{"Width":90,"Height":33}')
        await until(lambda: backend.processes[0].resizes == [(90, 33)])
        await client.send(b"\xff\x00")
        await ws_collect(client)
        assert client.close_code == 1000
        await client.close()


async def test_websocket_v1_success_has_no_status(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("print", "hi", "", "0"))
        client = await WsClient.connect(url, ["channel.k8s.io"])
        messages = await ws_collect(client)
        assert messages == [b"\x01", b"\x01hi"]
        assert client.close_code == 1000
        await client.close()


async def test_websocket_without_subprotocol(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await WsClient.connect(server.url_for(exec_request("print", "hi", "", "0")), [])
        assert client.accepted is not None and client.accepted.subprotocol is None
        assert await ws_collect(client) == [b"\x01", b"\x01hi"]
        await client.close()


async def test_websocket_unsupported_subprotocol_is_403(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("sleep"))
        client = await WsClient.connect(url, ["v6.channel.k8s.io", "SPDY/3.1+portforward.k8s.io"])
        assert client.rejected is not None
        assert client.rejected.status_code == 403
        await client.close()


async def test_websocket_post_is_400(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("sleep"))
        extra = [
            ("Sec-WebSocket-Key", base64.b64encode(b"0123456789abcdef").decode()),
            ("Sec-WebSocket-Version", "13"),
        ]
        response = await http_request(url, method="POST", upgrade="websocket", extra=extra)
        assert response.status == 400


async def test_websocket_bad_channel_message_closes_1002(
    server: StreamServer, backend: FakeBackend
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await WsClient.connect(server.url_for(exec_request("sleep", stdin=True)), [V4])
        await client.send("text on a binary protocol")
        await client.run_until_closed()
        assert client.close_code == 1002
        await client.close()
        await sessions_end(server)
        assert backend.processes[0].killed


# -- port-forward over SPDY -----------------------------------------------------------------------


async def pf_connect(server: StreamServer) -> SpdyClient:
    response, client = await SpdyClient.connect(
        server.url_for(PortForwardRequest("s1", ())), ["portforward.k8s.io"]
    )
    assert response.status == 101
    assert response.header("x-stream-protocol-version") == "portforward.k8s.io"
    return client


async def pf_pair(client: SpdyClient, port: int | str, request_id: str | None) -> tuple[int, int]:
    """As client-go: the error stream, FIN'd at once, then the data stream."""
    headers = {"port": str(port)} | ({"requestid": request_id} if request_id is not None else {})
    error = await client.open({"streamtype": "error", **headers}, fin=True)
    data = await client.open({"streamtype": "data", **headers})
    await client.wait(lambda: client.streams[error].replied and client.streams[data].replied)
    return error, data


async def echoes(client: SpdyClient, data: int, payload: bytes, timeout: float = 5) -> None:
    """Writes `payload` on a data stream and waits until all it received ends with it."""
    await client.write(data, payload)
    await client.wait(lambda: bytes(client.streams[data].data).endswith(payload), timeout)


async def test_port_forward_echo(server: StreamServer, backend: FakeBackend) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await pf_connect(server)
        error, data = await pf_pair(client, 8080, "0")
        await client.write(data, b"ping\n")
        await client.wait(lambda: bytes(client.streams[data].data) == b"ping\n")
        await client.write(data, b"more", fin=True)
        assert await client.read_to_end(data) == b"ping\nmore"
        assert client.streams[data].fin
        assert await client.read_to_end(error) == b""
        assert backend.dials == [("s1", 8080)]
        await client.close()


async def test_port_forward_dial_failure_writes_the_error(
    server: StreamServer, backend: FakeBackend
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await pf_connect(server)
        error, data = await pf_pair(client, CLOSED_PORT, "7")
        text = await client.read_to_end(error)
        assert f"port {CLOSED_PORT}".encode() in text
        await client.wait(lambda: client.streams[data].ended)
        assert client.streams[data].reset is not None
        await client.close()


async def test_port_forward_two_pairs_over_one_session(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await pf_connect(server)
        _, data1 = await pf_pair(client, 80, "1")
        _, data2 = await pf_pair(client, 81, "2")
        await client.write(data2, b"two")
        await client.write(data1, b"one")
        await client.wait(lambda: bytes(client.streams[data1].data) == b"one")
        await client.wait(lambda: bytes(client.streams[data2].data) == b"two")
        # The first connection ends (client-go resets the data stream); the second goes on.
        await client.send(spdy.RstStream(data1, spdy.CANCEL))
        await client.write(data2, b"-again")
        await client.wait(lambda: bytes(client.streams[data2].data) == b"two-again")
        # A third pair after that, on the same session.
        _, data3 = await pf_pair(client, 82, "3")
        await client.write(data3, b"three", fin=True)
        assert await client.read_to_end(data3) == b"three"
        await client.write(data2, b"", fin=True)
        assert await client.read_to_end(data2) == b"two-again"
        await client.close()


async def test_port_forward_interleaved_pairs(server: StreamServer) -> None:
    """Pairing is by requestid, not by order."""
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await pf_connect(server)
        e1 = await client.open({"streamtype": "error", "port": "80", "requestid": "a"}, fin=True)
        e2 = await client.open({"streamtype": "error", "port": "81", "requestid": "b"}, fin=True)
        d2 = await client.open({"streamtype": "data", "port": "81", "requestid": "b"})
        d1 = await client.open({"streamtype": "data", "port": "80", "requestid": "a"})
        await client.wait(lambda: all(client.streams[i].replied for i in (e1, e2, d1, d2)))
        await client.write(d1, b"A", fin=True)
        await client.write(d2, b"B", fin=True)
        assert await client.read_to_end(d1) == b"A"
        assert await client.read_to_end(d2) == b"B"
        await client.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"streamtype": "data", "port": "http", "requestid": "1"},
        {"streamtype": "data", "port": "0", "requestid": "1"},
        {"streamtype": "data", "port": "65536", "requestid": "1"},
        {"streamtype": "data", "port": "-1", "requestid": "1"},
        {"streamtype": "data", "requestid": "1"},
        {"streamtype": "stdout", "port": "80", "requestid": "1"},
        {"port": "80", "requestid": "1"},
    ],
)
async def test_port_forward_bad_headers_reset_the_stream(
    server: StreamServer, headers: dict[str, str]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await pf_connect(server)
        sid = await client.open(headers)
        await client.wait(lambda: client.streams[sid].reset == spdy.PROTOCOL_ERROR)
        # The session goes on.
        _, data = await pf_pair(client, 80, "2")
        await client.write(data, b"ok", fin=True)
        assert await client.read_to_end(data) == b"ok"
        await client.close()


async def test_port_forward_non_ascii_digit_port_is_reset(
    server: StreamServer, problems: list[str]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await pf_connect(server)
        sid = await client.open({"streamtype": "data", "port": "\xb2", "requestid": "1"})
        try:
            await client.wait(lambda: client.streams[sid].reset == spdy.PROTOCOL_ERROR, 1)
        finally:
            await client.close()
            await sessions_end(server)
            found = list(problems)
            problems.clear()  # reported here, not again by the fixture
        assert found == []


async def test_port_forward_duplicate_stream_in_a_pair_is_reset(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await pf_connect(server)
        await client.open({"streamtype": "error", "port": "80", "requestid": "x"}, fin=True)
        dup = await client.open({"streamtype": "error", "port": "80", "requestid": "x"}, fin=True)
        await client.wait(lambda: client.streams[dup].reset == spdy.PROTOCOL_ERROR)
        await client.close()


async def test_port_forward_pair_without_request_id(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await pf_connect(server)
        _, data = await pf_pair(client, 80, None)
        await client.write(data, b"old client", fin=True)
        assert await client.read_to_end(data, timeout=1) == b"old client"
        await client.close()


# -- port-forward over WebSocket (legacy ?ports=) ------------------------------------------------


async def test_port_forward_websocket_legacy(server: StreamServer, backend: FakeBackend) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(PortForwardRequest("s1", ())) + "?ports=8080"
        client = await WsClient.connect(url, [V4])
        assert client.accepted is not None and client.accepted.subprotocol == V4
        await client.wait_messages(2)
        prefix = struct.pack("<H", 8080)
        assert client.messages[:2] == [b"\x00" + prefix, b"\x01" + prefix]
        await client.send(b"\x00hello")
        await client.wait_messages(3)
        assert client.messages[2] == b"\x00hello"
        assert backend.dials == [("s1", 8080)]
        await client.close()


async def test_port_forward_websocket_cached_ports_win(
    server: StreamServer, backend: FakeBackend
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(PortForwardRequest("s1", (80, 81))) + "?ports=9999"
        client = await WsClient.connect(url, ["v4.base64.channel.k8s.io"])
        await client.wait_messages(4)
        p80 = base64.b64encode(struct.pack("<H", 80)).decode()
        p81 = base64.b64encode(struct.pack("<H", 81)).decode()
        assert client.messages[:4] == ["0" + p80, "1" + p80, "2" + p81, "3" + p81]
        await client.send("2" + base64.b64encode(b"to 81").decode())
        await client.wait_messages(5)
        assert client.messages[4] == "2" + base64.b64encode(b"to 81").decode()
        await until(lambda: sorted(backend.dials) == [("s1", 80), ("s1", 81)])
        await client.close()


async def test_port_forward_websocket_dial_failure(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(PortForwardRequest("s1", ())) + f"?ports={CLOSED_PORT}"
        client = await WsClient.connect(url, [V4])
        await client.wait_messages(3)
        assert client.messages[2][:1] == b"\x01"
        assert f"port {CLOSED_PORT}".encode() in bytes(client.messages[2])  # type: ignore[arg-type]
        await client.close()


async def test_port_forward_websocket_non_ascii_digit_port(
    server: StreamServer, problems: list[str]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(PortForwardRequest("s1", ())) + "?ports=%C2%B2"
        client = await WsClient.connect(url, [V4])
        await client.run_until_closed()
        await client.close()
        await sessions_end(server)
        found = list(problems)
        problems.clear()  # reported here, not again by the fixture
        assert client.close_code == 1008
        assert found == []


async def test_port_forward_websocket_without_ports_closes(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await WsClient.connect(server.url_for(PortForwardRequest("s1", ())), [V4])
        await client.run_until_closed()
        assert client.close_code == 1008
        await client.close()


# -- port-forward through the SPDY-in-WebSocket tunnel (crictl -r websocket) ---------------------


async def test_port_forward_websocket_tunnel(server: StreamServer, backend: FakeBackend) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(PortForwardRequest("s1", ()))
        client = await WsClient.connect(url, ["SPDY/3.1+portforward.k8s.io"])
        assert client.accepted is not None
        assert client.accepted.subprotocol == "SPDY/3.1+portforward.k8s.io"
        encoder, decoder = spdy.Encoder(), spdy.Decoder()
        headers = {"port": "8080", "requestid": "0"}
        for frame in (
            spdy.SynStream(1, {"streamtype": "error", **headers}, fin=True),
            spdy.SynStream(3, {"streamtype": "data", **headers}),
            spdy.DataFrame(3, b"through the tunnel", fin=True),
        ):
            await client.send(encoder.encode(frame))
        frames: list[spdy.Frame] = []
        seen = 0
        while spdy.DataFrame(3, b"", fin=True) not in frames:
            await client.wait_messages(seen + 1)
            assert len(client.messages) > seen, "the tunnel ended early"
            for message in client.messages[seen:]:
                assert isinstance(message, bytes)
                frames += decoder.feed(message)
            seen = len(client.messages)
        assert spdy.SynReply(1, {}) in frames and spdy.SynReply(3, {}) in frames
        data = b"".join(
            f.data for f in frames if isinstance(f, spdy.DataFrame) and f.stream_id == 3
        )
        assert data == b"through the tunnel"
        assert backend.dials == [("s1", 8080)]
        await client.close()


async def test_injected_request_cache_is_used(backend: FakeBackend) -> None:
    cache = RequestCache(max_in_flight=2)
    srv = StreamServer(backend, cache=cache)
    assert srv.cache is cache


async def test_url_for_at_the_bound_is_resource_exhausted(backend: FakeBackend) -> None:
    srv = StreamServer(backend)
    srv.cache.max_in_flight = 2
    srv.url_for(exec_request("sleep"))
    srv.url_for(PortForwardRequest("s1", ()))
    with pytest.raises(errors.ResourceExhausted):
        srv.url_for(exec_request("sleep"))


async def test_attach_over_websocket(server: StreamServer, backend: FakeBackend) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        request = AttachRequest(
            "print:hello:warn:0", tty=False, stdin=False, stdout=True, stderr=True
        )
        client = await WsClient.connect(server.url_for(request), [V4])
        messages = await ws_collect(client)
        assert messages == [b"\x01", b"\x01hello", b"\x02warn", b"\x03" + SUCCESS]
        assert client.close_code == 1000
        await client.close()


# -- clients that go away -------------------------------------------------------------------------


async def test_spdy_client_disconnect_kills_the_process(
    server: StreamServer, backend: FakeBackend
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("sleep", stdin=True))
        _, client = await SpdyClient.connect(url)
        ids = await client.open_streams("error", "stdin", "stdout", "stderr")
        await client.write(ids["stdin"], b"half a command")
        await until(lambda: backend.processes[0].stdin == b"half a command")
        assert server.sessions == 1
        await client.close()
        await sessions_end(server)
        assert backend.processes[0].killed
        assert backend.processes[0].close_calls >= 1


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
async def test_client_reset_during_the_upgrade_is_not_an_error(
    server: StreamServer, problems: list[str], transport: str
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        for _ in range(10):
            url = server.url_for(exec_request("sleep"))
            if transport == "spdy":
                raw = upgrade_request(url, protocols=[V4])
            else:
                _, _, target = split_url(url)
                request = Request(host="127.0.0.1", target=target, subprotocols=[V4])
                raw = WSConnection(ConnectionType.CLIENT).send(request)
            _, writer = await connect("127.0.0.1", server.port)
            writer.write(raw)
            await writer.drain()
            abort(writer)
            await sessions_end(server)
        found = list(problems)
        problems.clear()  # reported here, not again by the fixture
        assert found == []


async def test_spdy_client_disconnect_before_streams(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        _, client = await SpdyClient.connect(server.url_for(exec_request("sleep")))
        await client.open({"streamtype": "error"})
        await client.close()
        await sessions_end(server)


async def test_websocket_client_disconnect_kills_the_process(
    server: StreamServer, backend: FakeBackend
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await WsClient.connect(server.url_for(exec_request("sleep", stdin=True)), [V4])
        await client.send(b"\x00x")
        await until(lambda: backend.processes[0].stdin == b"x")
        await client.close()
        await sessions_end(server)
        assert backend.processes[0].killed


def run_isolated(scenario: Callable[[StreamServer, FakeBackend], Awaitable[None]]) -> None:
    """Runs `scenario` against a fresh server on its own event loop, in a thread: for bugs
    that damage the loop they run on (a leaked reader on a closed fd)."""

    async def main() -> None:
        echo = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
        backend = FakeBackend(echo.sockets[0].getsockname()[1])
        srv = StreamServer(backend)
        await srv.start()
        try:
            async with asyncio.timeout(TEST_TIMEOUT):
                await scenario(srv, backend)
        finally:
            await srv.stop()
            echo.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, main()).result(timeout=TEST_TIMEOUT + 15)


def copy_tasks() -> list[asyncio.Task[Any]]:
    """Port-forward copy tasks still alive on the running loop."""
    return [t for t in asyncio.all_tasks() if "_copy_" in repr(t.get_coro())]


async def test_port_forward_client_disconnect_when_idle(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await pf_connect(server)
        await pf_pair(client, CLOSED_PORT, "1")
        await client.close()
        await sessions_end(server)
        assert copy_tasks() == []


def test_port_forward_client_disconnect_mid_copy() -> None:
    async def scenario(server: StreamServer, backend: FakeBackend) -> None:
        for round_ in range(3):
            client = await pf_connect(server)
            _, data = await pf_pair(client, 80, "1")
            try:
                await echoes(client, data, b"round %d" % round_, timeout=2)
            finally:
                await client.close()
            await sessions_end(server)
            assert copy_tasks() == [], f"round {round_}: copy tasks outlived their session"

    run_isolated(scenario)


async def test_data_on_an_output_stream_does_not_stall_the_session(
    server: StreamServer, backend: FakeBackend, problems: list[str]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("sleep", stdin=True))
        _, client = await SpdyClient.connect(url)
        ids = await client.open_streams("error", "stdin", "stdout", "stderr")
        chunk = b"z" * 32768
        for _ in range(40):  # 1.25 MiB
            await client.write(ids["error"], chunk)
        await client.send(spdy.Ping(99))
        try:
            await client.wait(lambda: spdy.Ping(99) in client.frames, timeout=0.8)
        finally:
            await client.close()
            with contextlib.suppress(TimeoutError):
                await until(lambda: server.sessions == 0, 0.5)
            if server.sessions:  # leave the server clean for the fixture
                await server.stop()


@pytest.mark.parametrize("message", [b"\x00ignored", b'\x04{"Width":1,"Height":1}'])
async def test_websocket_input_without_a_reader_does_not_stall(
    server: StreamServer, backend: FakeBackend, problems: list[str], message: bytes
) -> None:
    """stdin messages for a session without stdin, resize messages for one without a TTY."""
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await WsClient.connect(server.url_for(exec_request("sleep")), [V4])
        for _ in range(100):
            await client.send(message)
        await client.close()
        try:
            await until(lambda: server.sessions == 0, 1)
        finally:
            if server.sessions:
                await server.stop()


async def test_websocket_resizes_after_a_bad_one_do_not_stall(
    server: StreamServer, backend: FakeBackend, problems: list[str]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("echo", stdin=True, tty=True))
        client = await WsClient.connect(url, ["v5.channel.k8s.io"])
        for width in range(70):
            await client.send(b'\x04{"width":%d,"height":24}' % width)
        await client.send(b"\x00still here")
        try:
            await client.wait_messages(2, timeout=0.8)
            assert client.messages[1:] == [b"\x01still here"]
        finally:
            await client.close()
            with contextlib.suppress(TimeoutError):
                await until(lambda: server.sessions == 0, 0.5)
            if server.sessions:
                await server.stop()


async def test_session_ends_promptly_after_client_goaway(server: StreamServer) -> None:
    """spdystream's Close() sends GOAWAY, then hangs up: the server must not linger."""
    async with asyncio.timeout(TEST_TIMEOUT):
        client, out = await spdy_exec(server, exec_request("print", "x", "", "0"))
        assert out["error"] == SUCCESS
        await client.send(spdy.GoAway(0, spdy.GOAWAY_OK))  # what spdystream's Close() sends
        await client.close()
        await until(lambda: server.sessions == 0, 2)


async def test_websocket_session_ends_promptly_after_close(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client = await WsClient.connect(server.url_for(exec_request("print", "x", "", "0")), [V4])
        await ws_collect(client)
        await client.close()
        await until(lambda: server.sessions == 0, 2)


async def test_spdy_session_ends_promptly_on_client_eof(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        client, _ = await spdy_exec(server, exec_request("print", "x", "", "0"))
        await client.close()
        await until(lambda: server.sessions == 0, 2)


async def stop_with_a_live_session(server: StreamServer, backend: FakeBackend) -> None:
    _, client = await SpdyClient.connect(server.url_for(exec_request("sleep")))
    await client.open_streams("error", "stdout", "stderr")
    await until(lambda: len(backend.processes) == 1)
    stopping = asyncio.create_task(server.stop())
    await client.wait_eof()  # GOAWAY, then the server half-closes: the client hangs up
    await client.close()
    await stopping
    assert server.sessions == 0
    assert backend.processes[0].killed
    assert client.goaways() == [spdy.GoAway(5, spdy.GOAWAY_OK)]


async def test_stop_ends_live_sessions(
    server: StreamServer, backend: FakeBackend, problems: list[str]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await stop_with_a_live_session(server, backend)
        await asyncio.sleep(0.01)


async def test_stop_leaves_no_error_on_the_event_loop(
    server: StreamServer, backend: FakeBackend, problems: list[str]
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        await stop_with_a_live_session(server, backend)
        await asyncio.sleep(0.01)
        found = list(problems)
        problems.clear()  # reported here, not again by the fixture
        assert found == []


# -- fuzzing --------------------------------------------------------------------------------------


async def check_alive(server: StreamServer) -> None:
    """A fresh, valid exec still works: the daemon is not stalled."""
    client, out = await spdy_exec(server, exec_request("print", "alive", "", "0"))
    assert out == {"error": SUCCESS, "stdout": b"alive", "stderr": b""}
    await client.close()


async def settle(server: StreamServer, backend: FakeBackend, problems: list[str]) -> None:
    """After a fuzz example's client closed: its connection ends within a few seconds, its
    process is released, and nothing escaped into the logs or the event loop."""
    try:
        await until(lambda: server.sessions == 0, 4)
    except TimeoutError:
        raise AssertionError(f"{server.sessions} connection(s) still open") from None
    assert copy_tasks() == [], "port-forward copy tasks outlived their session"
    await until(lambda: all(p.closed for p in backend.processes), 2)
    assert not problems, problems
    await check_alive(server)
    await until(lambda: server.sessions == 0, 4)


FUZZ_REQUESTS: list[StreamRequest] = [
    exec_request("sleep", stdin=True),
    exec_request("echo", stdin=True),
    exec_request("echo", stdin=True, tty=True),
    exec_request("print", "out", "err", "3"),
    AttachRequest("echo", tty=False, stdin=True, stdout=True, stderr=True),
    PortForwardRequest("s1", ()),
]
STREAM_TYPES = ["error", "stdin", "stdout", "stderr", "resize", "data", ""]


@st.composite
def spdy_frames(draw: st.DrawFn) -> spdy.Frame:
    sid = draw(st.integers(1, 15))
    headers = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "streamtype": st.sampled_from(STREAM_TYPES),
                "port": st.sampled_from(["80", "1", "0", "x", "65536", "\u00b2", "\u0663"]),
                "requestid": st.sampled_from(["0", "1", "2"]),
            },
        )
    )
    payload = st.binary(max_size=64) | st.sampled_from(
        [b'{"Width":80,"Height":24}\n', b"{", b"}", b"\n"]
    )
    frame: spdy.Frame = draw(
        st.one_of(
            st.builds(spdy.SynStream, st.just(sid), st.just(headers), fin=st.booleans()),
            st.builds(spdy.DataFrame, st.just(sid), payload, fin=st.booleans()),
            st.builds(spdy.RstStream, st.just(sid), st.integers(1, 11)),
            st.builds(spdy.Ping, st.integers(1, 2**32 - 1)),
            st.builds(spdy.GoAway, st.integers(0, 15), st.integers(0, 2)),
            st.builds(spdy.WindowUpdate, st.integers(0, 15), st.integers(0, 2**31 - 1)),
            st.builds(spdy.Settings, st.just(((0, 4, 100),))),
            st.builds(spdy.Headers, st.just(sid), st.just(headers), fin=st.booleans()),
            st.builds(spdy.SynReply, st.just(sid), st.just({})),
        )
    )
    return frame


@st.composite
def spdy_inputs(draw: st.DrawFn, port_forward: bool) -> list[bytes]:
    """Chunks to send after a valid upgrade: arbitrary bytes, or valid frames (often a valid
    start: exec's streams, or a port-forward pair with data) with some bytes flipped and
    possibly cut short."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=4))
    encoder = spdy.Encoder()
    start: list[spdy.Frame] = []  # sent intact, so that the session gets somewhere
    if draw(st.booleans()) and port_forward:
        pair = {"port": "80", "requestid": "0"}
        start += [
            spdy.SynStream(1, {"streamtype": "error", **pair}, fin=True),
            spdy.SynStream(3, {"streamtype": "data", **pair}),
            spdy.DataFrame(3, b"GET / HTTP/1.0\r\n\r\n", fin=draw(st.booleans())),
        ]
    elif draw(st.booleans()):
        start += [
            spdy.SynStream(i, {"streamtype": kind})
            for i, kind in zip((1, 3, 5, 7), ["error", "stdin", "stdout", "stderr"], strict=True)
        ]
    intact = b"".join(encoder.encode(frame) for frame in start)
    data = bytearray()
    for frame in draw(st.lists(spdy_frames(), max_size=8)):
        with contextlib.suppress(ValueError):
            data += encoder.encode(frame)
    for _ in range(draw(st.integers(0, 3))):
        if data:
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= draw(st.integers(1, 255))
    if data and draw(st.booleans()):
        del data[draw(st.integers(0, len(data) - 1)) :]
    data[:0] = intact
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    return [bytes(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


@FUZZ
@given(
    request=st.sampled_from(FUZZ_REQUESTS),
    data=st.data(),
    linger=st.booleans(),
    reset=st.booleans(),
)
async def test_fuzz_spdy_session(
    server: StreamServer,
    backend: FakeBackend,
    problems: list[str],
    request: StreamRequest,
    data: st.DataObject,
    linger: bool,
    reset: bool,
) -> None:
    chunks = data.draw(spdy_inputs(isinstance(request, PortForwardRequest)), label="chunks")
    async with asyncio.timeout(TEST_TIMEOUT):
        protocol = "portforward.k8s.io" if isinstance(request, PortForwardRequest) else V4
        response, client = await SpdyClient.connect(server.url_for(request), [protocol])
        assert response.status == 101
        with contextlib.suppress(ConnectionError):
            for chunk in chunks:
                await client.send_raw(chunk)
                if linger:
                    await asyncio.sleep(0)
        if linger:
            await asyncio.sleep(0.01)
        await client.close(reset)
        await settle(server, backend, problems)


async def test_protocol_error_on_one_connection_leaves_others_working(
    server: StreamServer,
) -> None:
    """A connection that broke the protocol gets GOAWAY(PROTOCOL_ERROR) and its end, while
    it is still open a new exec works."""
    async with asyncio.timeout(TEST_TIMEOUT):
        _, bad = await SpdyClient.connect(server.url_for(exec_request("sleep", stdin=True)))
        await bad.send_raw(b"\x80\x02\x00\x01garbage!")
        await bad.wait_eof()
        assert bad.goaways()[0] == spdy.GoAway(0, spdy.GOAWAY_PROTOCOL_ERROR)
        await check_alive(server)
        await bad.close()


async def test_protocol_error_sends_one_goaway(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        _, client = await SpdyClient.connect(server.url_for(exec_request("sleep")))
        await client.open_streams("error")
        await client.send_raw(b"\x80\x02\x00\x01\x00\x00\x00\x00")  # SPDY/2
        await client.wait_eof()
        await client.close()
        assert client.goaways() == [spdy.GoAway(1, spdy.GOAWAY_PROTOCOL_ERROR)]


@st.composite
def ws_inputs(draw: st.DrawFn) -> list[bytes]:
    """Raw bytes after the handshake: arbitrary, or client frames (masked, as a client must)
    with some bytes flipped."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.lists(st.binary(min_size=1, max_size=100), min_size=1, max_size=3))
    data = bytearray()
    for _ in range(draw(st.integers(1, 5))):
        opcode = draw(st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3]))
        fin = draw(st.booleans()) or opcode >= 0x8
        payload = draw(
            st.binary(max_size=40)
            | st.sampled_from([b"\x00hi", b"\xff\x00", b'\x04{"Width":1,"Height":2}', b"\x03x"])
        )
        if opcode == 0x1:
            payload = draw(st.sampled_from([b"0aGk=", b"1", b"9!!", b"\xff\xfe"]))
        mask = draw(st.binary(min_size=4, max_size=4))
        data += bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask
        data += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    for _ in range(draw(st.integers(0, 2))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] ^= draw(st.integers(1, 255))
    return [bytes(data)]


@FUZZ
@given(
    request=st.sampled_from([r for r in FUZZ_REQUESTS if not isinstance(r, AttachRequest)]),
    subprotocol=st.sampled_from([V4, "v4.base64.channel.k8s.io", "v5.channel.k8s.io"]),
    chunks=ws_inputs(),
    reset=st.booleans(),
)
async def test_fuzz_websocket(
    server: StreamServer,
    backend: FakeBackend,
    problems: list[str],
    request: StreamRequest,
    subprotocol: str,
    chunks: list[bytes],
    reset: bool,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(request)
        if isinstance(request, PortForwardRequest):
            url += "?ports=80"
            subprotocol = subprotocol.replace("v5.", "v4.")
        client = await WsClient.connect(url, [subprotocol])
        assert client.accepted is not None
        with contextlib.suppress(ConnectionError):
            for chunk in chunks:
                await client.send_raw(chunk)
            await asyncio.sleep(0.005)
        await client.close(reset)
        await settle(server, backend, problems)


HTTP_METHODS = st.sampled_from(["GET", "POST", "PUT", "get", "", "G\x00T", "CONNECT"])
HTTP_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "Host",
                "Connection",
                "Upgrade",
                "X-Stream-Protocol-Version",
                "Sec-WebSocket-Key",
                "Sec-WebSocket-Version",
                "Sec-WebSocket-Protocol",
                "Content-Length",
                "Transfer-Encoding",
                "X-\u00e9",
                "Bad Header",
                "",
            ]
        ),
        st.sampled_from(
            [
                "Upgrade",
                "SPDY/3.1",
                "websocket",
                V4,
                "portforward.k8s.io",
                "13",
                "dGhlIHNhbXBsZSBub25jZQ==",
                "0",
                "5",
                "-1",
                "chunked",
                "",
                "\u00ff",
            ]
        )
        | st.text(max_size=10),
    ),
    max_size=8,
)


@st.composite
def http_inputs(draw: st.DrawFn, token_path: str) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(min_size=1, max_size=300))
    method = draw(HTTP_METHODS)
    target = draw(
        st.sampled_from(
            [token_path, "/", "*", "/exec/", token_path + "?ports=1", "/exec/\u00e9", "//["]
        )
        | st.text(max_size=20).map(lambda t: "/" + t)
    )
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "", "HTTP/1.1 x"]))
    lines = [f"{method} {target} {version}"]
    lines += [f"{k}: {v}" for k, v in draw(HTTP_HEADERS)]
    text = "\r\n".join(lines) + draw(st.sampled_from(["\r\n\r\n", "\n\n", "\r\n", ""]))
    tail = draw(st.binary(max_size=40))
    return text.encode("utf-8") + tail


@FUZZ
@given(data=st.data())
async def test_fuzz_http_request(
    server: StreamServer, backend: FakeBackend, problems: list[str], data: st.DataObject
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        url = server.url_for(exec_request("sleep", stdin=True))
        _, _, token_path = split_url(url)
        raw = data.draw(http_inputs(token_path))
        reset = data.draw(st.booleans())
        reader, writer = await connect("127.0.0.1", server.port)
        with contextlib.suppress(ConnectionError):
            writer.write(raw)
            await writer.drain()
            if reset:
                abort(writer)
            else:
                writer.write_eof()
        try:
            async with asyncio.timeout(4):
                reply = await reader.read(65536)
                while more := await reader.read(65536):  # then the server hangs up
                    reply += more
        except ConnectionError:
            reply = b""
        except TimeoutError:
            raise AssertionError(f"no close after {raw!r}") from None
        finally:
            writer.close()
        if reply:
            status = reply.split(b"\r\n", 1)[0]
            assert status[:9] in (b"HTTP/1.1 ", b"HTTP/1.0 "), reply[:100]
            code = int(status[9:12])
            assert code == 101 or 400 <= code < 500, reply[:200]
        server.cache.consume(token_path.rsplit("/", 1)[1])  # unless the request used it
        await settle(server, backend, problems)


async def test_endless_or_stalled_requests_do_not_block_others(server: StreamServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        _, writer = await connect("127.0.0.1", server.port)
        writer.write(b"GET /exec/" + b"A" * 70_000)  # an endless request line
        await writer.drain()
        await check_alive(server)
        writer.close()
        head = upgrade_request(server.url_for(exec_request("sleep")))
        _, writer2 = await connect("127.0.0.1", server.port)
        writer2.write(head[:20])  # half a request, then nothing: held until the client goes
        await writer2.drain()
        await check_alive(server)
        writer2.close()
