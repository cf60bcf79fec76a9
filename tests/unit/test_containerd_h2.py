"""crictl/containerd/h2.py: containerd's unary calls over crictld's own HTTP/2 connection,
against grpc's own asyncio server on a unix socket (containerd's is grpc-go's; the suite's
integration tests run every call against it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from crictl.containerd import h2

METHOD = "/test.Echo/Echo"


class Echo:
    """The server's side: answers what each request asks, by its first byte."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.metadata: list[tuple[str, str]] = []
        self.timeouts: list[float | None] = []

    async def handle(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        self.metadata = [(k, str(v)) for k, v in context.invocation_metadata() or ()]
        self.timeouts.append(context.time_remaining())
        kind, rest = request[:1], request[1:]
        if kind == b"e":  # echo
            return rest
        if kind == b"b":  # a big answer of N bytes
            return b"x" * int(rest)
        if kind == b"f":  # fail with this message
            await context.abort(grpc.StatusCode.NOT_FOUND, rest.decode())
        if kind == b"s":  # never answer, until cancelled
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        raise AssertionError(request)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[str, Echo]]:
    echo = Echo()
    path = str(tmp_path / "c.sock")
    srv = await _serve(path, echo)
    yield path, echo
    await srv.stop(None)


async def _serve(path: str, echo: Echo, *options: tuple[str, int]) -> grpc.aio.Server:
    srv = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            *options,
        ]
    )
    srv.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo.handle)}
            ),
        )
    )
    srv.add_insecure_port(f"unix://{path}")
    await srv.start()
    return srv


def _channel(path: str, max_receive: int = 64 << 20) -> h2.Channel:
    return h2.Channel(path, grpc.aio.insecure_channel(f"unix://{path}"), 64 << 20, max_receive)


async def test_a_call_sends_its_metadata_and_gets_its_answer(
    server: tuple[str, Echo],
) -> None:
    path, echo = server
    channel = _channel(path)
    call = channel.unary_unary(METHOD)
    assert await call(b"ehello", metadata=(("containerd-namespace", "crictld"),)) == b"hello"
    assert ("containerd-namespace", "crictld") in echo.metadata
    answer = call(b"eagain", timeout=30)
    assert await answer == b"again"
    assert await answer.code() is grpc.StatusCode.OK and answer.done()
    assert echo.timeouts[-1] is not None and 25 < echo.timeouts[-1] <= 30  # grpc-timeout sent
    await channel.close()


async def test_messages_larger_than_a_window_and_a_frame_go_both_ways(
    server: tuple[str, Echo],
) -> None:
    """5 MiB each way, then 90 MiB of answers at once: the request waits for the server's
    windows and goes in frames of its frame size; the answers are granted window, stream and
    connection, as they are read."""
    path, _ = server
    channel = _channel(path)
    call = channel.unary_unary(METHOD)
    big = bytes(range(256)) * (5 << 12)
    assert await call(b"e" + big) == big
    assert await call(b"b%d" % (5 << 20)) == b"x" * (5 << 20)
    # more than the connection's window at once: granted back as it is read
    answers = await asyncio.gather(*(call(b"b%d" % (30 << 20)) for _ in range(3)))
    assert [len(a) for a in answers] == [30 << 20] * 3
    # several at once on the one connection, big and small interleaved
    answers = await asyncio.gather(*(call(b"e%d" % i + big[: i * 1000]) for i in range(50)))
    assert answers == [b"%d" % i + big[: i * 1000] for i in range(50)]
    await channel.close()


async def test_an_error_is_grpcs_own_with_its_code_and_details(
    server: tuple[str, Echo],
) -> None:
    path, _ = server
    channel = _channel(path)
    call = channel.unary_unary(METHOD)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call('fcontainer "x" not found: 100% é'.encode())
    assert e.value.code() is grpc.StatusCode.NOT_FOUND
    assert e.value.details() == 'container "x" not found: 100% é'
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await channel.unary_unary("/test.Echo/Nope")(b"e")
    assert e.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert await call(b"estill") == b"still"  # the connection is still good
    await channel.close()


async def test_a_deadline_and_a_cancellation_reset_the_stream(
    server: tuple[str, Echo],
) -> None:
    path, echo = server
    channel = _channel(path)
    call = channel.unary_unary(METHOD)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call(b"s", timeout=0.2)
    assert e.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(echo.cancelled.wait(), 5)
    echo.cancelled.clear()
    waiting = asyncio.ensure_future(call(b"s"))  # no deadline: only a cancellation ends it
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(echo.cancelled.wait(), 5)  # the server saw the reset
    assert await call(b"eafter") == b"after"
    await channel.close()


async def test_an_answer_over_the_limit_is_refused_and_the_connection_stays(
    server: tuple[str, Echo],
) -> None:
    path, _ = server
    channel = _channel(path, max_receive=1 << 20)
    call = channel.unary_unary(METHOD)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call(b"b%d" % (3 << 20))
    assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await call(b"b%d" % (1 << 20)) == b"x" * (1 << 20)
    await channel.close()


async def test_no_server_is_unavailable_at_once_and_a_new_one_is_found(tmp_path: Path) -> None:
    """A call while nothing listens fails UNAVAILABLE at once; calls in flight when the server
    goes fail UNAVAILABLE; once a server listens again the next call reaches it."""
    path = str(tmp_path / "c.sock")
    channel = _channel(path)
    call = channel.unary_unary(METHOD)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await asyncio.wait_for(call(b"e"), 2)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    for _ in range(2):
        srv = await _serve(path, Echo())
        assert await call(b"eup") == b"up"
        waiting = asyncio.ensure_future(call(b"s"))
        await asyncio.sleep(0.2)
        await srv.stop(None)  # the connection goes with the call on it
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(waiting, 5)
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(call(b"e"), 2)
        assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    await channel.close()


async def test_after_a_goaway_calls_go_on_a_new_connection(tmp_path: Path) -> None:
    """A server that ends its connections (GOAWAY, here its maximum connection age) lets the
    streams it accepted finish; the calls after it open a connection of their own."""
    path = str(tmp_path / "c.sock")
    srv = await _serve(
        path,
        Echo(),
        ("grpc.max_connection_age_ms", 300),
        ("grpc.max_connection_age_grace_ms", 5000),
    )
    channel = _channel(path)
    call = channel.unary_unary(METHOD)
    connections = set()
    for i in range(8):
        assert await call(b"e%d" % i) == b"%d" % i
        connections.add(id(await channel.connection()))
        await asyncio.sleep(0.15)
    assert len(connections) >= 2, "no GOAWAY was seen"
    await channel.close()
    await srv.stop(None)


async def test_the_call_object_answers_as_grpcs_does(server: tuple[str, Echo]) -> None:
    """What grpc's call object offers besides its await: cancel() (the await raises
    CancelledError and the server sees the reset), done(), code(), details(), a callback."""
    path, echo = server
    channel = _channel(path)
    call = channel.unary_unary(METHOD)
    slow = call(b"s")

    async def wait() -> bytes:
        answer: bytes = await slow
        return answer

    waiting = asyncio.ensure_future(wait())
    await asyncio.sleep(0.2)
    assert not slow.done() and slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slow.cancelled() and await slow.code() is grpc.StatusCode.CANCELLED
    await asyncio.wait_for(echo.cancelled.wait(), 5)
    ended: list[object] = []
    quick = call(b"eX", timeout=10)
    quick.add_done_callback(ended.append)  # starts it, in a task of its own
    assert await quick == b"X" and ended == [quick]
    assert await quick.code() is grpc.StatusCode.OK and await quick.details() == ""
    assert 0 < (quick.time_remaining() or 0) <= 10
    failed = call(b"fno such thing")
    assert await failed.code() is grpc.StatusCode.NOT_FOUND
    assert await failed.details() == "no such thing"
    await channel.close()
