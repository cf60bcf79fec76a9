"""The CRI's gRPC server (crictl/api/server.py), against grpc's own client over a unix socket:
answers, errors, deadlines, cancellation, flow control both ways, streams, shutdown; and its
HTTP/2 framing fed frames by hand and arbitrary bytes."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crictl import errors, http2
from crictl.api import server as srv
from crictl.api.interceptor import Context
from crictl.api.server import Http2Connection, Server, bind_unix
from crictl.api.service import IMAGE_SERVICE, RUNTIME_SERVICE, generic_handler
from crictl.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crictl.http2 import frame

BIG = 64 << 20


class Servicer:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.closed = asyncio.Event()

    async def version(self, request: api_pb2.VersionRequest, context: Context) -> Any:
        return api_pb2.VersionResponse(runtime_name=request.version[:64])

    async def container_status(
        self, request: api_pb2.ContainerStatusRequest, context: Context
    ) -> Any:
        cid = request.container_id
        if cid in ("hang", "slow"):
            try:
                await asyncio.sleep(0.3 if cid == "slow" else 3600)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return api_pb2.ContainerStatusResponse(info={"slept": "yes"})
        if cid == "big":
            return api_pb2.ContainerStatusResponse(info={"big": "x" * (5 << 20)})
        raise errors.NotFound(f"container {cid} not found: ünïcode 100%")

    async def stream_container_stats(
        self, request: api_pb2.StreamContainerStatsRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamContainerStatsResponse]:
        try:
            for i in range(int(request.filter.id or "3")):
                attributes = api_pb2.ContainerAttributes(
                    id=str(i), annotations={"pad": "p" * 10000}
                )
                yield api_pb2.StreamContainerStatsResponse(
                    container_stats=[api_pb2.ContainerStats(attributes=attributes)]
                )
            if request.filter.pod_sandbox_id == "endless":
                await asyncio.Event().wait()
        finally:
            self.closed.set()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Servicer, Server, str]]:
    servicer = Servicer()
    server = Server()
    server.add_generic_rpc_handlers(
        (generic_handler(RUNTIME_SERVICE, servicer), generic_handler(IMAGE_SERVICE))
    )
    await server.start(bind_unix(tmp_path / "s.sock"))
    yield servicer, server, f"unix:{tmp_path / 's.sock'}"
    await server.stop(0)


def big_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[("grpc.max_receive_message_length", BIG), ("grpc.max_send_message_length", BIG)],
    )


async def test_calls_are_answered_one_by_one_and_many_at_once(served: Any) -> None:
    _, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        assert (await stub.Version(api_pb2.VersionRequest(version="v1"))).runtime_name == "v1"
        answers = await asyncio.gather(
            *(stub.Version(api_pb2.VersionRequest(version=str(i))) for i in range(300))
        )
        assert [a.runtime_name for a in answers] == [str(i) for i in range(300)]


async def test_an_error_keeps_its_code_and_message(served: Any) -> None:
    _, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="c1"))
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "container c1 not found: ünïcode 100%"
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.RunPodSandbox(api_pb2.RunPodSandboxRequest())
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "RunPodSandbox is not implemented" in (missing.value.details() or "")
        unknown: Any = channel.unary_unary("/runtime.v1.RuntimeService/Nothing")
        with pytest.raises(grpc.aio.AioRpcError) as nothing:
            await unknown(b"")
        assert nothing.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert nothing.value.details() == "unknown method /runtime.v1.RuntimeService/Nothing"
        garbage: Any = channel.unary_unary("/runtime.v1.RuntimeService/Version")
        with pytest.raises(grpc.aio.AioRpcError) as unparsed:
            await garbage(b"\xff\xff\xff")
        assert unparsed.value.code() == grpc.StatusCode.INTERNAL
        assert (unparsed.value.details() or "").startswith(
            "/runtime.v1.RuntimeService/Version: the request does not parse: "
        )
        # the connection still serves
        assert (await stub.Version(api_pb2.VersionRequest(version="x"))).runtime_name == "x"


async def test_a_deadline_cancels_the_handler(served: Any) -> None:
    servicer, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.ContainerStatus(
                api_pb2.ContainerStatusRequest(container_id="hang"), timeout=0.3
            )
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(servicer.cancelled.wait(), 10)


async def test_a_client_leaving_cancels_the_handler(served: Any) -> None:
    servicer, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        call = stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="hang"))
        await asyncio.sleep(0.2)
        call.cancel()
        await asyncio.wait_for(servicer.cancelled.wait(), 10)


async def test_an_answer_larger_than_the_client_windows_arrives_whole(served: Any) -> None:
    _, _, target = served
    async with big_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        answers = await asyncio.gather(
            *(
                stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="big"))
                for _ in "ab"
            )
        )
        assert all(a.info["big"] == "x" * (5 << 20) for a in answers)


async def test_a_request_over_the_limit_is_refused_and_the_connection_kept(served: Any) -> None:
    _, _, target = served
    async with big_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Version(api_pb2.VersionRequest(version="v" * srv.MAX_RECEIVE))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"larger than {srv.MAX_RECEIVE} bytes" in (refused.value.details() or "")
        fits = "v" * (srv.MAX_RECEIVE - 16)
        assert (await stub.Version(api_pb2.VersionRequest(version=fits))).runtime_name == fits[:64]


async def test_a_stream_brings_every_item_in_order(served: Any) -> None:
    _, _, target = served
    async with big_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        request = api_pb2.StreamContainerStatsRequest(filter=api_pb2.ContainerStatsFilter(id="500"))
        got = [r.container_stats[0].attributes.id async for r in stub.StreamContainerStats(request)]
        assert got == [str(i) for i in range(500)]


async def test_a_stream_its_client_leaves_is_closed(served: Any) -> None:
    servicer, _, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        endless = api_pb2.ContainerStatsFilter(id="3", pod_sandbox_id="endless")
        call = stub.StreamContainerStats(api_pb2.StreamContainerStatsRequest(filter=endless))
        for _ in range(3):
            await call.read()
        assert not servicer.closed.is_set()
        call.cancel()
        await asyncio.wait_for(servicer.closed.wait(), 10)


async def test_stop_lets_the_calls_in_flight_answer_then_serves_no_more(
    tmp_path: Path, served: Any
) -> None:
    _, server, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        await stub.Version(api_pb2.VersionRequest())
        slow = asyncio.ensure_future(
            stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="slow"))
        )
        await asyncio.sleep(0.1)
        await server.stop(5)
        assert (await slow).info["slept"] == "yes"
    async with grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await api_pb2_grpc.RuntimeServiceStub(channel).Version(
                api_pb2.VersionRequest(), timeout=2
            )
        assert gone.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )


async def test_stop_cancels_what_outlives_its_grace(served: Any) -> None:
    servicer, server, target = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        hung = asyncio.ensure_future(
            stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="hang"))
        )
        await asyncio.sleep(0.2)
        await server.stop(0.2)
        await asyncio.wait_for(servicer.cancelled.wait(), 10)
        with pytest.raises(grpc.aio.AioRpcError):
            await hung


# -- the framing, by hand


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def frames(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        stream = int.from_bytes(data[pos + 5 : pos + 9], "big")
        yield kind, flags, stream, data[pos + 9 : pos + 9 + length]
        pos += 9 + length


def connection() -> tuple[Http2Connection, Transport]:
    conn = Http2Connection(lambda _path: None, set())
    transport = Transport()
    conn.connection_made(transport)
    transport.written.clear()
    return conn, transport


async def test_settings_and_pings_are_acknowledged_and_an_unknown_method_answered() -> None:
    conn, transport = connection()
    headers = hpack.Encoder().encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/x.Y/Z"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
        ]
    )
    conn.data_received(
        http2.PREFACE
        + frame(http2.SETTINGS, 0, 0, struct.pack(">HI", http2.INITIAL_WINDOW_SIZE, 1 << 20))
        + frame(http2.PING, 0, 0, b"12345678")
        + frame(http2.HEADERS, http2.END_HEADERS, 1, headers)
        + frame(http2.DATA, http2.END_STREAM, 1, b"\x00\x00\x00\x00\x00")
    )
    got = list(frames(bytes(transport.written)))
    kinds = [(k, f, s) for k, f, s, _ in got]
    assert kinds[:2] == [(http2.SETTINGS, http2.ACK, 0), (http2.PING, http2.ACK, 0)]
    assert got[1][3] == b"12345678"
    answer = [g for g in got if g[0] == http2.HEADERS]
    assert len(answer) == 1 and answer[0][1] & http2.END_STREAM and answer[0][2] == 1
    fields: dict[Any, Any] = dict(hpack.Decoder().decode(answer[0][3]))
    assert fields["grpc-status"] == "12"
    assert fields["grpc-message"] == "unknown method /x.Y/Z"
    assert not transport.closed


def request_frames(stream_id: int, body: bytes, flags: int = http2.END_STREAM) -> bytes:
    fields = [(":method", "POST"), (":scheme", "http"), (":path", "/x.Y/Z")]
    fields += [(":authority", "localhost"), ("content-type", "application/grpc")]
    headers = hpack.Encoder().encode(fields)
    return frame(http2.HEADERS, http2.END_HEADERS, stream_id, headers) + frame(
        http2.DATA, flags, stream_id, body
    )


async def test_the_connections_window_is_granted_back_in_bulk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call's few bytes are not granted back on their own (a write before the answer's, and
    a wake-up of the client, each call): the connection's window once `_GRANT_AT` bytes were
    read, all of them, padding included; a stream's that goes on, at once."""
    monkeypatch.setattr(srv, "_GRANT_AT", 100)
    conn, transport = connection()
    conn.data_received(http2.PREFACE + request_frames(1, b"\x00" * 45))
    got = list(frames(bytes(transport.written)))
    assert [k for k, *_ in got] == [http2.HEADERS]  # the answer alone
    transport.written.clear()
    padded = b"\x04" + b"\x00" * 40 + b"pppp"  # 45 bytes: 1 + 40 + 4 of padding
    conn.data_received(request_frames(3, padded, http2.END_STREAM | http2.PADDED))
    assert [k for k, *_ in frames(bytes(transport.written))] == [http2.HEADERS]
    transport.written.clear()
    conn.data_received(request_frames(5, b"\x00" * 20, 0))  # 110 read: all granted
    got = list(frames(bytes(transport.written)))
    updates = [(s, struct.unpack(">I", p)[0]) for k, _, s, p in got if k == http2.WINDOW_UPDATE]
    assert updates == [(0, 110), (5, 20)]
    transport.written.clear()
    conn.data_received(frame(http2.DATA, http2.END_STREAM, 5, b"\x00" * 5))
    got = list(frames(bytes(transport.written)))
    assert [k for k, *_ in got] == [http2.HEADERS]  # 5 more: held
    assert not transport.closed


async def test_what_is_not_http2_gets_a_goaway_and_the_connection_closed() -> None:
    conn, transport = connection()
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.closed
    [(kind, _, _, payload)] = list(frames(bytes(transport.written)))
    assert kind == http2.GOAWAY and struct.unpack(">II", payload) == (0, http2.PROTOCOL_ERROR)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 12), st.integers(0, 255), st.integers(0, 9), st.binary(max_size=40)
        ),
        max_size=12,
    ),
    st.binary(max_size=64),
)
def test_arbitrary_frames_never_escape_the_connection(
    sent: list[tuple[int, int, int, bytes]], tail: bytes
) -> None:
    """Whatever a client sends, the connection answers, refuses or closes itself: nothing
    raises out of it, and a closed one wrote a GOAWAY last."""

    async def feed() -> None:
        conn, transport = connection()
        data = http2.PREFACE + b"".join(frame(k, f, s, p) for k, f, s, p in sent) + tail
        for i in range(0, len(data), 7):
            if transport.closed:
                break
            conn.data_received(data[i : i + 7])
        if transport.closed:
            *_, (kind, _, _, _) = frames(bytes(transport.written))
            assert kind == http2.GOAWAY
        conn.connection_lost(None)

    asyncio.run(feed())


async def test_a_header_block_without_end_is_refused_once_over_the_limit() -> None:
    conn, transport = connection()
    piece = b"\x00" * 16000
    conn.data_received(http2.PREFACE + frame(http2.HEADERS, 0, 1, piece))
    for _ in range(4):  # 80000 bytes in all, over the 64 KiB limit
        conn.data_received(frame(http2.CONTINUATION, 0, 1, piece))
        if transport.closed:
            break
    assert transport.closed  # one header block is not kept growing
    *_, (kind, _, _, payload) = frames(bytes(transport.written))
    assert kind == http2.GOAWAY and struct.unpack(">II", payload)[1] == http2.PROTOCOL_ERROR
