"""How long a cheap call waits in a `grpc.aio` server that has just been sent N calls whose
first step costs C ms of CPU on the event loop (then they wait, as a RunPodSandbox waits on
containerd and CNI). No runtime is involved: this isolates the server's mechanism behind the
slow reads `benchmarks.scale` measures while 100 pods start (docs/performance.md, "Reads during
the burst").

grpc's asyncio server accepts one call per turn of the event loop, and each turn also runs the
first steps of the calls accepted before, so the cheap call's wait grows as N x C, and more
when other threads of the process compete for the GIL (the daemon has its store writer, CNI,
netns and gRPC poller threads).

`--front` also runs each case as the daemon serves since the server got a loop of its own
(crictl/api/front.py): the server on the front loop, the cheap call answered there, the slow
calls' work handed to another loop (the daemon's). It then prints what that costs a quiet
server: one call at a time, answered on one shared loop, on the front, or handed over (the
benchmark's loop also uses grpc, as the daemon's containerd client does), the front with both
loops watching grpc's wake-up socket and with it taken off the other loop, as the daemon runs
(`FrontLoop.take_grpc_events`); p50 and the process's CPU per call (the client's included: it
runs in the same process, the same in every case).

    .venv/bin/python -m benchmarks.grpc_accept
    .venv/bin/python -m benchmarks.grpc_accept --calls 100 --cpu-ms 0.5 2 5 --threads 0 4
    .venv/bin/python -m benchmarks.grpc_accept --front
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc import aio

from crictl.api.front import FrontLoop, dispatch_unary, on_front


def burn(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


Handler = Callable[[bytes, aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


async def start_server(
    sock: Path, service: str, methods: dict[str, Handler], front: FrontLoop | None
) -> aio.Server:
    """A server of `methods` on `sock`: on this loop, or with `front` on the front loop, each
    method dispatched as the daemon dispatches (marked `@on_front` or handed to this loop)."""
    loop = asyncio.get_running_loop()
    handlers = grpc.method_handlers_generic_handler(
        service,
        {
            name: grpc.unary_unary_rpc_method_handler(dispatch_unary(impl, loop) if front else impl)
            for name, impl in methods.items()
        },
    )

    async def start() -> aio.Server:
        server = aio.server()
        server.add_generic_rpc_handlers((handlers,))
        server.add_insecure_port(f"unix:{sock}")
        await server.start()
        return server

    return await (front.run(start()) if front else start())


async def stop_server(server: aio.Server, front: FrontLoop | None) -> None:
    await (front.run(server.stop(None)) if front else server.stop(None))


async def measure(
    calls: int, cpu_ms: float, threads: int, probes: int, front: FrontLoop | None = None
) -> list[float]:
    """The cheap call's latencies (ms), the first sent 20 ms after the N calls. With `front`,
    the server runs there and the slow calls on this loop."""
    sock = Path(tempfile.mkdtemp(prefix="grpc-accept-")) / "s.sock"

    async def slow(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        burn(cpu_ms)
        await asyncio.sleep(1.0)
        return b"ok"

    @on_front()
    async def fast(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        return b"ok"

    server = await start_server(sock, "bench.T", {"Slow": slow, "Fast": fast}, front)
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def contend() -> None:  # a thread that wants the GIL ~half the time
        while not stop.is_set():
            burn(1)
            time.sleep(0.001)

    others = [threading.Thread(target=contend) for _ in range(threads)]
    for t in others:
        t.start()
    channel = grpc.insecure_channel(f"unix:{sock}")  # one channel, as kubelet's
    slow_call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/bench.T/Slow")
    fast_call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/bench.T/Fast")
    latencies: list[float] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(calls + 1) as pool:
            await loop.run_in_executor(pool, lambda: fast_call(b"", timeout=10))
            sent = [
                loop.run_in_executor(pool, lambda: slow_call(b"", timeout=120))
                for _ in range(calls)
            ]
            await asyncio.sleep(0.02)
            for _ in range(probes):
                started = time.perf_counter()
                await loop.run_in_executor(pool, lambda: fast_call(b"", timeout=120))
                latencies.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.1)
            await asyncio.gather(*sent)
    finally:
        stop.set()
        for t in others:
            t.join()
        channel.close()
        await stop_server(server, front)
        sock.unlink(missing_ok=True)
        sock.parent.rmdir()
    return latencies


async def quiet(
    rounds: int, front: FrontLoop | None, route: bool = False
) -> tuple[tuple[float, float], tuple[float, float]]:
    """(p50 ms, process CPU us) of one call at a time: (answered where the server runs, handed
    to this loop). With `route`, grpc's wake-up socket is the front's alone."""
    sock = Path(tempfile.mkdtemp(prefix="grpc-quiet-")) / "s.sock"

    @on_front()
    async def here(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        return b"ok"

    async def there(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        return b"ok"

    # this loop uses grpc first, as the daemon's containerd client does
    own = aio.insecure_channel(f"unix:{sock}")
    server = await start_server(sock, "bench.Q", {"Here": here, "There": there}, front)
    bind: aio.UnaryUnaryMultiCallable[bytes, bytes] = own.unary_unary("/bench.Q/Here")
    await bind(b"")
    if route and front is not None and not await front.take_grpc_events():
        raise SystemExit("grpc's wake-up socket is not shared by the loops: nothing to route")

    def p50(method: str) -> tuple[float, float]:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
            for _ in range(100):
                call(b"", timeout=10)
            lat = []
            cpu = time.process_time()
            for _ in range(rounds):
                started = time.perf_counter()
                call(b"", timeout=10)
                lat.append((time.perf_counter() - started) * 1000)
            cpu = time.process_time() - cpu
        return sorted(lat)[len(lat) // 2], cpu / rounds * 1e6

    try:
        return await asyncio.to_thread(p50, "/bench.Q/Here"), await asyncio.to_thread(
            p50, "/bench.Q/There"
        )
    finally:
        await own.close()
        await stop_server(server, front)
        sock.unlink(missing_ok=True)
        sock.parent.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--cpu-ms", type=float, nargs="+", default=[0.5, 2.0, 5.0])
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--probes", type=int, default=15)
    parser.add_argument(
        "--front", action="store_true", help="also with the server on a loop of its own"
    )
    parser.add_argument("--quiet-rounds", type=int, default=2000)
    args = parser.parse_args(argv)
    print(
        f"{'calls':>5} {'cpu ms':>6} {'threads':>7} {'server':>7} | "
        "cheap call ms: first   max  median"
    )
    for threads in args.threads:
        for cpu_ms in args.cpu_ms:
            for on_front_loop in (False, True) if args.front else (False,):
                front = FrontLoop() if on_front_loop else None
                try:
                    lat = asyncio.run(measure(args.calls, cpu_ms, threads, args.probes, front))
                finally:
                    if front is not None:
                        front.close()
                where = "front" if on_front_loop else "shared"
                print(
                    f"{args.calls:>5} {cpu_ms:>6g} {threads:>7} {where:>7} | "
                    f"{lat[0]:>19.0f} {max(lat):>5.0f} {sorted(lat)[len(lat) // 2]:>7.1f}"
                )
    if args.front:
        print(
            f"\nquiet, one call at a time ({args.quiet_rounds} calls each): p50 ms, and the "
            "process's CPU us a call (client included)"
        )
        print(f"  {'server':<36} | {'answered there':>16} | {'handed over':>16}")
        for _ in range(2):  # twice, alternating: the VM drifts
            for label, on_front_loop, route in (
                ("one shared loop", False, False),
                ("front, both loops watch grpc", True, False),
                ("front, grpc's socket the front's", True, True),
            ):
                front = FrontLoop() if on_front_loop else None
                try:
                    (here, here_cpu), (there, there_cpu) = asyncio.run(
                        quiet(args.quiet_rounds, front, route)
                    )
                finally:
                    if front is not None:
                        front.close()
                print(
                    f"  {label:<36} | {here:>6.3f} {here_cpu:>6.0f} us | "
                    f"{there:>6.3f} {there_cpu:>6.0f} us"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
