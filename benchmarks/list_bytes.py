"""What keeping the bytes of an unchanged list answer saves: a ListContainers answer of N
containers (kubelet's labels and annotations, ~1 KB each) served by crictld's gRPC server
(`crictl.api.server`) in a process of its own, its serializer either protobuf's
`SerializeToString` (every call serializes again) or the daemon's `LastSerialized` (the same
answer object: the same bytes). The client
calls over one persistent channel, as kubelet's relist does, and reads the bytes without
parsing them. No runtime is involved: this isolates one step of the daemon's ListContainers
and ListPodSandbox (crictl/api/service.py), which `benchmarks.containers` measures whole.

    .venv/bin/python -m benchmarks.list_bytes
    .venv/bin/python -m benchmarks.list_bytes --containers 300 --calls 400 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from crictl.api.server import GenericHandler, MethodHandler, Server, bind_unix
from crictl.api.service import LastSerialized
from crictl.gen.cri.runtime.v1 import api_pb2

METHOD = "/bench.Lists/ListContainers"


def answer(containers: int) -> api_pb2.ListContainersResponse:
    resp = api_pb2.ListContainersResponse()
    for i in range(containers):
        c = resp.containers.add(
            id=f"{i:064x}",
            pod_sandbox_id=f"{i // 3:064x}",
            image_ref="sha256:" + "a" * 64,
            state=api_pb2.CONTAINER_RUNNING,
            created_at=1_796_215_033_370_000_000 + i,
        )
        c.metadata.name = f"c{i % 3}"
        c.image.image = "registry.local/e2e-test-images/busybox:1.29-2"
        for k in range(6):
            c.labels[f"io.kubernetes.label{k}"] = f"value-{i}-{k}-" + "x" * 16
            c.annotations[f"io.kubernetes.container.annotation{k}"] = f"value-{i}-{k}-" + "y" * 24
    return resp


def serve(sock: str, containers: int, reuse: bool) -> None:
    resp = answer(containers)
    serializer: Callable[[Any], bytes] = (
        LastSerialized() if reuse else api_pb2.ListContainersResponse.SerializeToString
    )

    async def handler(request: bytes, context: Any) -> Any:
        return resp

    async def main() -> None:
        server = Server()
        server.add_generic_rpc_handlers(
            (
                GenericHandler(
                    "bench.Lists",
                    {"ListContainers": MethodHandler(bytes, serializer, unary_unary=handler)},
                ),
            )
        )
        await server.start(bind_unix(sock))
        await asyncio.Event().wait()

    asyncio.run(main())


def measure(containers: int, reuse: bool, calls: int) -> list[float]:
    sock = str(Path(tempfile.mkdtemp(prefix="list-bytes-")) / "s.sock")
    server = multiprocessing.Process(target=serve, args=(sock, containers, reuse), daemon=True)
    server.start()
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            call = channel.unary_unary(
                METHOD, request_serializer=bytes, response_deserializer=bytes
            )
            for _ in range(50):  # warm-up
                call(b"")
            out = []
            for _ in range(calls):
                started = time.perf_counter()
                call(b"")
                out.append((time.perf_counter() - started) * 1000)
            return sorted(out)
    finally:
        server.kill()
        server.join()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--containers", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    args = parser.parse_args(argv)
    print("containers  answer KB | serializer        |  p50 ms  p90 ms")
    for n in args.containers:
        size = len(answer(n).SerializeToString()) / 1024
        for _ in range(args.rounds):
            for reuse in (False, True):
                lat = measure(n, reuse, args.calls)
                name = "LastSerialized" if reuse else "SerializeToString"
                p50, p90 = lat[len(lat) // 2], lat[int(len(lat) * 0.9)]
                print(f"{n:10d} {size:10.0f} | {name:17s} | {p50:7.3f} {p90:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
