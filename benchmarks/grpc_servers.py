"""What one call costs the server, by gRPC server: crictld's own (crictl/api/server.py),
grpc's asyncio server (crictld's until it), two on h2 (the grpclib library, and h2's
connection driven directly) and a bare HTTP/2 framing, next to crictld's daemon and
containerd's CRI when `--runtimes` is given.

Each server answers `runtime.v1.RuntimeService/Version` with a fixed message, in a process of
its own, on a unix socket. One Python grpc channel, held open as kubelet holds its own, sends
CALLS calls back to back, then IDLE_CALLS calls GAP ms apart (each from a quiet server, as
kubelet's reads arrive at rest). Per server and case: the server process's CPU per call (its
CPU clock, less what it spends at rest over as long: measured just before), its threads'
context switches per call and the client's p50. The servers run in alternating order, ROUNDS
times.

`framing` is a measurement, not a server: the least a gRPC unary call over HTTP/2 costs in
Python (frames read and written by hand, headers through the hpack library). It answers
unary calls that fit its windows and nothing else (no flow control past refilling the
client's windows, no errors, no deadlines, no streaming).

    .venv/bin/python -m benchmarks.grpc_servers
    .venv/bin/python -m benchmarks.grpc_servers --rounds 2 --runtimes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import hpack

from benchmarks.cri_bench import process_cpu_ns
from crictl.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc

SERVICE = "runtime.v1.RuntimeService"
METHOD = f"/{SERVICE}/Version"
ANSWER = api_pb2.VersionResponse(
    version="0.1.0", runtime_name="bench", runtime_version="0", runtime_api_version="v1"
)


def _answer(request: bytes) -> bytes:
    """The gRPC message (length-prefixed) answering one length-prefixed VersionRequest."""
    api_pb2.VersionRequest.FromString(request[5:])
    out = ANSWER.SerializeToString()
    return b"\0" + struct.pack(">I", len(out)) + out


async def serve_grpc_aio(sock: str) -> None:
    async def version(
        _request: api_pb2.VersionRequest, _context: grpc.aio.ServicerContext[Any, Any]
    ) -> api_pb2.VersionResponse:
        return ANSWER

    handler = grpc.unary_unary_rpc_method_handler(
        version,
        request_deserializer=api_pb2.VersionRequest.FromString,
        response_serializer=api_pb2.VersionResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Version": handler}),)
    )
    server.add_insecure_port(f"unix:{sock}")
    await server.start()
    await server.wait_for_termination()


async def serve_crictld(sock: str) -> None:
    """crictld's own server (crictl/api/server.py), the handler bare as above."""
    from crictl.api.server import GenericHandler, MethodHandler, Server, bind_unix

    async def version(_request: api_pb2.VersionRequest, _context: Any) -> api_pb2.VersionResponse:
        return ANSWER

    handler = MethodHandler(
        api_pb2.VersionRequest.FromString,
        api_pb2.VersionResponse.SerializeToString,
        unary_unary=version,
    )
    server = Server()
    server.add_generic_rpc_handlers((GenericHandler(SERVICE, {"Version": handler}),))
    await server.start(bind_unix(sock))
    await asyncio.Event().wait()


async def serve_grpclib(sock: str) -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server, Stream

    class Runtime:
        async def version(self, stream: Stream[Any, Any]) -> None:
            await stream.recv_message()
            await stream.send_message(ANSWER)

        def __mapping__(self) -> dict[str, Handler]:
            return {
                METHOD: Handler(
                    self.version,
                    Cardinality.UNARY_UNARY,
                    api_pb2.VersionRequest,
                    api_pb2.VersionResponse,
                )
            }

    server = Server([Runtime()])
    await server.start(path=sock)
    await server.wait_closed()


class H2Protocol(asyncio.Protocol):
    """h2's connection state machine, driven directly (no validation of headers)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_inbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.bodies: dict[int, bytearray] = {}
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.bodies[event.stream_id] = bytearray()
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                sid = event.stream_id
                body = _answer(bytes(self.bodies.pop(sid)))
                self.conn.send_headers(
                    sid, [(b":status", b"200"), (b"content-type", b"application/grpc")]
                )
                self.conn.send_data(sid, body)
                self.conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        out = self.conn.data_to_send()
        if out:
            self.transport.write(out)


_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _SETTINGS, _PING, _WINDOW_UPDATE = 0, 1, 4, 6, 8
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 1, 1, 4, 8, 0x20


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream)
        + payload
    )


def _unpad(flags: int, payload: bytes) -> bytes:
    return payload[1 : len(payload) - payload[0]] if flags & _PADDED else payload


class FramingProtocol(asyncio.Protocol):
    """A bare HTTP/2 framing of unary gRPC calls: see the module's docstring for all it lacks."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = bytearray()
        self.preface_seen = False
        self.decoder, self.encoder = hpack.Decoder(), hpack.Encoder()
        self.bodies: dict[int, bytearray] = {}
        settings = struct.pack(">HI", 3, 1000)  # MAX_CONCURRENT_STREAMS
        transport.write(
            _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 24))
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.preface_seen:
            if len(buf) < len(_PREFACE):
                return
            assert bytes(buf[: len(_PREFACE)]) == _PREFACE
            del buf[: len(_PREFACE)]
            self.preface_seen = True
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            stream = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            if kind == _HEADERS:
                block = _unpad(flags, payload)
                block = block[5:] if flags & _PRIORITY else block
                assert flags & _END_HEADERS, "no CONTINUATION here"
                self.decoder.decode(block, raw=True)
                self.bodies[stream] = bytearray()
                if flags & _END_STREAM:
                    out.append(self._answer(stream))
            elif kind == _DATA:
                self.bodies[stream] += _unpad(flags, payload)
                if length:
                    out.append(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", length)))
                if flags & _END_STREAM:
                    out.append(self._answer(stream))
            elif kind == _SETTINGS and not flags & _ACK:
                out.append(_frame(_SETTINGS, _ACK, 0))
            elif kind == _PING and not flags & _ACK:
                out.append(_frame(_PING, _ACK, 0, payload))
        del buf[:pos]
        if out:
            self.transport.write(b"".join(out))

    def _answer(self, stream: int) -> bytes:
        body = _answer(bytes(self.bodies.pop(stream)))
        start = self.encoder.encode([(b":status", b"200"), (b"content-type", b"application/grpc")])
        end = self.encoder.encode([(b"grpc-status", b"0")])
        return (
            _frame(_HEADERS, _END_HEADERS, stream, start)
            + _frame(_DATA, 0, stream, body)
            + _frame(_HEADERS, _END_HEADERS | _END_STREAM, stream, end)
        )


def _protocol_server(
    factory: Callable[[], asyncio.Protocol],
) -> Callable[[str], Coroutine[Any, Any, None]]:
    async def serve(sock: str) -> None:
        server = await asyncio.get_running_loop().create_unix_server(factory, sock)
        async with server:
            await server.serve_forever()

    return serve


SERVERS: dict[str, Callable[[str], Coroutine[Any, Any, None]]] = {
    "crictld's server": serve_crictld,
    "grpc.aio": serve_grpc_aio,
    "grpclib": serve_grpclib,
    "h2": _protocol_server(H2Protocol),
    "framing": _protocol_server(FramingProtocol),
}


def context_switches(pid: int) -> int:
    """Voluntary and involuntary switches of PID's live threads."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
    return total


@dataclass
class Figures:
    cpu_us: float  # the server's CPU per call, less its CPU at rest over as long
    switches: float  # its threads' context switches per call
    p50_us: float  # the client's


def measure(endpoint: str, pid: int, calls: int, gap: float) -> Figures:
    channel = grpc.insecure_channel(endpoint)
    try:
        version = api_pb2_grpc.RuntimeServiceStub(channel).Version
        for _ in range(100):  # the channel connected, the server warm
            version(api_pb2.VersionRequest(version="v1"), timeout=10)
        rest_cpu = process_cpu_ns(pid)
        started = time.perf_counter()
        time.sleep(max(calls * gap, 0.5))
        at_rest = (process_cpu_ns(pid) - rest_cpu) / (time.perf_counter() - started)
        cpu, switches = process_cpu_ns(pid), context_switches(pid)
        started = time.perf_counter()
        took = []
        for _ in range(calls):
            t = time.perf_counter()
            version(api_pb2.VersionRequest(version="v1"), timeout=10)
            took.append(time.perf_counter() - t)
            if gap:
                time.sleep(gap)
        elapsed = time.perf_counter() - started
        spent = process_cpu_ns(pid) - cpu - at_rest * elapsed
        return Figures(
            spent / calls / 1000,
            (context_switches(pid) - switches) / calls,
            statistics.median(took) * 1e6,
        )
    finally:
        channel.close()


def _listening(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(sock))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def server_process(kind: str, directory: Path) -> Iterator[tuple[str, int]]:
    sock = directory / f"{kind.replace(' ', '-')}.sock"
    sock.unlink(missing_ok=True)  # the last round's
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.grpc_servers", "--serve", kind, str(sock)],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        deadline = time.monotonic() + 30
        while not _listening(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {kind} server did not start")
            time.sleep(0.05)
        yield f"unix:{sock}", proc.pid
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def runtimes() -> Iterator[dict[str, tuple[str, int]]]:
    """crictld's daemon and containerd's CRI, as the other benchmarks start them."""
    from benchmarks.setup import local_node, local_processes, local_registry

    with local_registry(None, None) as registry, local_node(registry) as node:
        found = {}
        for target in node.targets:
            daemons = local_processes(target).daemons
            name = "crictld daemon" if target.runtime.name == "crictld" else "containerd's CRI"
            pid = daemons.get("crictld daemon") or daemons["containerd (CRI plugin)"]
            found[name] = (target.runtime.endpoint.replace("unix://", "unix:"), pid)
        yield found


def _span(values: list[float], fmt: str) -> str:
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low}-{high}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.grpc_servers",
        description="A unary call's CPU in the server, by gRPC server implementation.",
    )
    parser.add_argument("--calls", type=int, default=3000, help="calls back to back (3000)")
    parser.add_argument("--idle-calls", type=int, default=500, help="calls GAP apart (500)")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="GAP (20 ms)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all servers (2)")
    parser.add_argument(
        "--runtimes", action="store_true", help="also crictld and containerd's CRI (root)"
    )
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "SOCKET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        kind, sock = args.serve
        asyncio.run(SERVERS[kind](sock))
        return 0

    cases = (
        ("back to back", args.calls, 0.0),
        (f"{args.gap_ms:g} ms apart", args.idle_calls, args.gap_ms / 1000),
    )
    results: dict[tuple[str, str], list[Figures]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="crd-bench-servers-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        targets = stack.enter_context(runtimes()) if args.runtimes else {}
        for index in range(args.rounds):
            kinds = list(SERVERS) + list(targets)
            for kind in kinds if index % 2 == 0 else reversed(kinds):
                with contextlib.ExitStack() as one:
                    if kind in targets:
                        endpoint, pid = targets[kind]
                    else:
                        endpoint, pid = one.enter_context(server_process(kind, Path(tmp)))
                    for case, calls, gap in cases:
                        figures = measure(endpoint, pid, calls, gap)
                        results.setdefault((kind, case), []).append(figures)
                        print(
                            f"round {index + 1} {kind}, {case}: {figures.cpu_us:.0f} us CPU, "
                            f"{figures.switches:.1f} switches, p50 {figures.p50_us:.0f} us",
                            file=sys.stderr,
                        )
    print(f"{'server':<18} {'case':<14} {'CPU us/call':>14} {'switches/call':>14} {'p50 us':>12}")
    for (kind, case), runs in results.items():
        cpu = _span([f.cpu_us for f in runs], "{:.0f}")
        switches = _span([f.switches for f in runs], "{:.1f}")
        p50 = _span([f.p50_us for f in runs], "{:.0f}")
        print(f"{kind:<18} {case:<14} {cpu:>14} {switches:>14} {p50:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
