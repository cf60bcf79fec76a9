"""crictl/containerd/h2.py: containerd's calls and streams over crictld's own HTTP/2
connection, against grpc's own asyncio server on a unix socket (containerd's is grpc-go's;
the suite's integration tests run every call against it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from crictl import http2
from crictl.containerd import h2
from crictl.http2 import StatusCode

METHOD = "/test.Echo/Echo"


class Echo:
    """The server's side: answers what each request asks, by its first byte."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.metadata: list[tuple[str, str]] = []
        self.timeouts: list[float | None] = []
        self.produced = 0  # bytes a stream's handler has yielded

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

    async def stream(
        self,
        request: bytes,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[bytes]:
        """b"COUNT SIZE [fail]": COUNT messages of SIZE bytes (each its index's digits, then
        x), then the end or NOT_FOUND; COUNT -1: never ends."""
        words = request.split()
        count, size = int(words[0]), int(words[1])
        self.produced = 0
        # given up on while it waits (CancelledError) or while grpc holds it at its yield
        # (closed: GeneratorExit), by a reset or by the call's deadline
        finished = False
        try:
            i = 0
            while count < 0 or i < count:
                head = b"%d " % i
                yield head + b"x" * (size - len(head))
                self.produced += size
                i += 1
                if count < 0:
                    await asyncio.sleep(0.01)
            finished = True
        finally:
            if not finished:
                self.cancelled.set()
        if words[2:] == [b"fail"]:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"gone after {count}")

    async def chat(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[bytes]:
        """Echoes each request; b"full" ends the stream with RESOURCE_EXHAUSTED."""
        self.metadata = [(k, str(v)) for k, v in context.invocation_metadata() or ()]
        async for request in requests:
            if request == b"full":
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "write: no space left on device"
                )
            yield request


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
                "test.Echo",
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(echo.handle),
                    "Stream": grpc.unary_stream_rpc_method_handler(echo.stream),
                    "Chat": grpc.stream_stream_rpc_method_handler(echo.chat),
                },
            ),
        )
    )
    srv.add_insecure_port(f"unix://{path}")
    await srv.start()
    return srv


def _channel(path: str, max_receive: int = 64 << 20) -> h2.Channel:
    return h2.Channel(path, 64 << 20, max_receive)


def _bytes(data: bytes) -> bytes:
    return data


def _unary(channel: h2.Channel, method: str = METHOD) -> h2._Unary[bytes, bytes]:
    return channel.unary_unary(method, _bytes, _bytes)


async def test_a_call_sends_its_metadata_and_gets_its_answer(
    server: tuple[str, Echo],
) -> None:
    path, echo = server
    channel = _channel(path)
    call = _unary(channel)
    assert await call(b"ehello", metadata=(("containerd-namespace", "crictld"),)) == b"hello"
    assert ("containerd-namespace", "crictld") in echo.metadata
    answer = call(b"eagain", timeout=30)
    assert await answer == b"again"
    assert await answer.code() is StatusCode.OK and answer.done()
    assert echo.timeouts[-1] is not None and 25 < echo.timeouts[-1] <= 30  # grpc-timeout sent
    await channel.close()


async def test_a_calls_headers_and_message_go_in_one_write(server: tuple[str, Echo]) -> None:
    """A unary call is one write, its HEADERS and its DATA (written apart, containerd's
    reader woke for each)."""
    path, _ = server
    channel = _channel(path)
    call = _unary(channel)
    assert await call(b"efirst") == b"first"  # connected
    conn = await channel.connection()
    assert conn._transport is not None
    writes: list[bytes] = []
    real = conn._transport.write

    def recording(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        real(data)

    conn._transport.write = recording  # type: ignore[method-assign]
    assert await call(b"esecond") == b"second"
    kinds = [[(w[i + 3], w[i + 4] & http2.END_STREAM) for i in _frame_starts(w)] for w in writes]
    assert kinds[0] == [(http2.HEADERS, 0), (http2.DATA, http2.END_STREAM)]
    await channel.close()


def _frame_starts(data: bytes) -> list[int]:
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += 9 + int.from_bytes(data[pos : pos + 3], "big")
    return starts


async def test_messages_larger_than_a_window_and_a_frame_go_both_ways(
    server: tuple[str, Echo],
) -> None:
    """5 MiB each way, then 90 MiB of answers at once: the request waits for the server's
    windows and goes in frames of its frame size; the answers are granted window, stream and
    connection, as they are read."""
    path, _ = server
    channel = _channel(path)
    call = _unary(channel)
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


async def test_an_error_has_its_code_and_details(
    server: tuple[str, Echo],
) -> None:
    path, _ = server
    channel = _channel(path)
    call = _unary(channel)
    with pytest.raises(h2.RpcError) as e:
        await call('fcontainer "x" not found: 100% é'.encode())
    assert e.value.code() is StatusCode.NOT_FOUND
    assert e.value.details() == 'container "x" not found: 100% é'
    with pytest.raises(h2.RpcError) as e:
        await _unary(channel, "/test.Echo/Nope")(b"e")
    assert e.value.code() is StatusCode.UNIMPLEMENTED
    assert await call(b"estill") == b"still"  # the connection is still good
    await channel.close()


async def test_a_deadline_and_a_cancellation_reset_the_stream(
    server: tuple[str, Echo],
) -> None:
    path, echo = server
    channel = _channel(path)
    call = _unary(channel)
    with pytest.raises(h2.RpcError) as e:
        await call(b"s", timeout=0.2)
    assert e.value.code() is StatusCode.DEADLINE_EXCEEDED
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
    call = _unary(channel)
    with pytest.raises(h2.RpcError) as e:
        await call(b"b%d" % (3 << 20))
    assert e.value.code() is StatusCode.RESOURCE_EXHAUSTED
    assert await call(b"b%d" % (1 << 20)) == b"x" * (1 << 20)
    await channel.close()


async def test_no_server_is_unavailable_at_once_and_a_new_one_is_found(tmp_path: Path) -> None:
    """A call while nothing listens fails UNAVAILABLE at once; calls in flight when the server
    goes fail UNAVAILABLE; once a server listens again the next call reaches it."""
    path = str(tmp_path / "c.sock")
    channel = _channel(path)
    call = _unary(channel)
    with pytest.raises(h2.RpcError) as e:
        await asyncio.wait_for(call(b"e"), 2)
    assert e.value.code() is StatusCode.UNAVAILABLE
    for _ in range(2):
        srv = await _serve(path, Echo())
        assert await call(b"eup") == b"up"
        waiting = asyncio.ensure_future(call(b"s"))
        await asyncio.sleep(0.2)
        await srv.stop(None)  # the connection goes with the call on it
        with pytest.raises(h2.RpcError) as e:
            await asyncio.wait_for(waiting, 5)
        assert e.value.code() in (StatusCode.UNAVAILABLE, StatusCode.CANCELLED)
        with pytest.raises(h2.RpcError) as e:
            await asyncio.wait_for(call(b"e"), 2)
        assert e.value.code() is StatusCode.UNAVAILABLE
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
    call = _unary(channel)
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
    call = _unary(channel)
    slow = call(b"s")

    async def wait() -> bytes:
        answer: bytes = await slow
        return answer

    waiting = asyncio.ensure_future(wait())
    await asyncio.sleep(0.2)
    assert not slow.done() and slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slow.cancelled() and await slow.code() is StatusCode.CANCELLED
    await asyncio.wait_for(echo.cancelled.wait(), 5)
    ended: list[object] = []
    quick = call(b"eX", timeout=10)
    quick.add_done_callback(ended.append)  # starts it, in a task of its own
    assert await quick == b"X" and ended == [quick]
    assert await quick.code() is StatusCode.OK and await quick.details() == ""
    assert 0 < (quick.time_remaining() or 0) <= 10
    failed = call(b"fno such thing")
    assert await failed.code() is StatusCode.NOT_FOUND
    assert await failed.details() == "no such thing"
    await channel.close()


def _stream(channel: h2.Channel) -> h2._Streaming[bytes, bytes]:
    return channel.unary_stream("/test.Echo/Stream", _bytes, _bytes)


def _chat(channel: h2.Channel) -> h2._Streaming[bytes, bytes]:
    return channel.stream_stream("/test.Echo/Chat", _bytes, _bytes)


async def test_a_server_stream_gives_every_message_then_its_end_or_its_error(
    server: tuple[str, Echo],
) -> None:
    """Messages split across frames and frames holding several messages; more in all than
    the stream's and the connection's windows; then the end, or the status it ends with
    after its messages."""
    path, _ = server
    channel = _channel(path)
    got = [m async for m in _stream(channel)(b"3000 50")]
    assert len(got) == 3000 and all(m.startswith(b"%d " % i) for i, m in enumerate(got))
    sizes = [len(m) async for m in _stream(channel)(b"1100 70000")]  # 77 MB: past both windows
    assert sizes == [70000] * 1100
    call = _stream(channel)(b"3 10 fail")
    assert [await call.read() for _ in range(3)] == [b"0 xxxxxxxx", b"1 xxxxxxxx", b"2 xxxxxxxx"]
    with pytest.raises(h2.RpcError) as e:
        await call.read()
    assert e.value.code() is StatusCode.NOT_FOUND and e.value.details() == "gone after 3"
    assert await _unary(channel)(b"estill") == b"still"  # the connection is still good
    await channel.close()


async def test_a_stream_not_read_holds_at_most_a_window(server: tuple[str, Echo]) -> None:
    """A stream's window is granted back as its messages are read, not as they arrive: a
    reader that stops holds the sender back instead of taking all it sends into memory
    (grpc's server, which buffers what its handler yields, holds the rest)."""
    path, echo = server
    channel = _channel(path)
    call = _stream(channel)(b"1000 65536")  # 64 MiB
    assert (await call.read() or b"").startswith(b"0 ")
    await asyncio.sleep(0.5)
    assert call._opening is not None
    _, stream = call._opening.result()
    held = sum(len(m) for m, _ in stream.messages) + len(stream.body)
    # a window, and the message the reader waited for when it read
    limit = h2._RECEIVE_WINDOW + 65541
    assert 0 < held <= limit, f"{held} bytes taken for a reader that stopped"
    count = 1 + len([m async for m in call])
    assert count == 1000 and echo.produced == 1000 * 65536
    await channel.close()


async def test_a_bidirectional_stream_echoes_and_ends(server: tuple[str, Echo]) -> None:
    path, echo = server
    channel = _channel(path)
    call = _chat(channel)(metadata=(("containerd-namespace", "crictld"),))
    for i in range(200):
        await call.write(b"m%d" % i)
        if i >= 10:  # ten answers left unread while the next go out
            assert await call.read() == b"m%d" % (i - 10)
    big = bytes(range(256)) * 20000  # 5 MB: past the server's window, in frames
    await call.write(big)
    assert [await call.read() for _ in range(10)] == [b"m%d" % i for i in range(190, 200)]
    assert await call.read() == big
    await call.done_writing()
    assert await call.read() is None
    assert ("containerd-namespace", "crictld") in echo.metadata
    await channel.close()


async def test_a_stream_ended_with_an_error_while_written_raises_that_error(
    server: tuple[str, Echo],
) -> None:
    """containerd ends a content write with its status (a disk full) while the writer still
    sends: the next write or read raises that status and its words."""
    path, _ = server
    channel = _channel(path)
    call = _chat(channel)()
    await call.write(b"full")
    with pytest.raises(h2.RpcError) as e:
        for _ in range(1000):
            await call.write(b"y" * 10000)
            await asyncio.sleep(0)
        await call.read()
    assert e.value.code() is StatusCode.RESOURCE_EXHAUSTED
    assert e.value.details() == "write: no space left on device"
    with pytest.raises(h2.RpcError):
        await call.read()
    await channel.close()


async def test_a_stream_cancelled_or_left_or_past_its_deadline_is_reset(
    server: tuple[str, Echo],
) -> None:
    path, echo = server
    channel = _channel(path)
    call = _stream(channel)(b"-1 10")
    assert await call.read() is not None
    assert call.cancel() and not call.cancel()
    await asyncio.wait_for(echo.cancelled.wait(), 5)
    with pytest.raises(h2.RpcError) as e:
        await call.read()
    assert e.value.code() is StatusCode.CANCELLED
    echo.cancelled.clear()
    # an iteration left before the end gives the stream up
    async for _ in _stream(channel)(b"-1 10"):
        break
    await asyncio.wait_for(echo.cancelled.wait(), 5)
    echo.cancelled.clear()
    call = _stream(channel)(b"-1 10", timeout=0.3)
    with pytest.raises(h2.RpcError) as e:
        while True:
            await call.read()
    assert e.value.code() is StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(echo.cancelled.wait(), 5)
    # cancelled before it was ever opened: nothing is sent, and it reads CANCELLED
    unopened = _chat(channel)()
    assert unopened.cancel()
    with pytest.raises(h2.RpcError) as e:
        await unopened.write(b"x")
    assert e.value.code() is StatusCode.CANCELLED
    # a call dropped mid-stream, never cancelled (its task was, between two reads)
    echo.cancelled.clear()
    dropped = _stream(channel)(b"-1 10")
    assert await dropped.read() is not None
    del dropped
    await asyncio.wait_for(echo.cancelled.wait(), 5)
    conn = await channel.connection()
    await asyncio.sleep(0.1)
    assert not conn._streams  # every stream above ended on this side
    await channel.close()


async def test_a_stream_on_a_lost_connection_is_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    srv = await _serve(path, Echo())
    channel = _channel(path)
    call = _stream(channel)(b"-1 10")
    assert await call.read() is not None
    await srv.stop(None)
    with pytest.raises(h2.RpcError) as e:
        while True:
            await asyncio.wait_for(call.read(), 5)
    assert e.value.code() in (StatusCode.UNAVAILABLE, StatusCode.CANCELLED)
    srv = await _serve(path, Echo())
    assert [m async for m in _stream(channel)(b"2 5")] == [b"0 xxx", b"1 xxx"]
    await channel.close()
    await srv.stop(None)
