"""The CRI server on a loop of its own (crictl/api/front.py): what is marked `@on_front` runs
there and answers while the daemon's loop is held; everything else runs on the daemon's loop,
errors, cancellation and streams included. Real gRPC over a unix socket; the test's own loop
plays the daemon's."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from crictl import errors
from crictl.api.front import FrontLoop, hand_over, needs_daemon, on_front
from crictl.api.images import Images
from crictl.api.interceptor import Context
from crictl.api.runtime_info import RuntimeInfo
from crictl.api.server import Server, bind_unix
from crictl.api.service import IMAGE_SERVICE, RUNTIME_SERVICE, generic_handler
from crictl.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crictl.reconciler.health import Health
from crictl.reconciler.images import FsUsage


class Servicer:
    """Records the thread each call ran on; `cancelled` and `stream_closed` are set by the
    handlers on the daemon's loop."""

    def __init__(self) -> None:
        self.threads: dict[str, int] = {}
        self.cancelled = threading.Event()
        self.stream_closed = threading.Event()

    @on_front()
    async def version(self, request: api_pb2.VersionRequest, context: Context) -> Any:
        self.threads["Version"] = threading.get_ident()
        return api_pb2.VersionResponse(runtime_name="front")

    async def runtime_config(self, request: Any, context: Context) -> Any:
        self.threads["RuntimeConfig"] = threading.get_ident()
        return api_pb2.RuntimeConfigResponse()

    @on_front(falls_back=True)
    async def pod_sandbox_status(
        self, request: api_pb2.PodSandboxStatusRequest, context: Context
    ) -> Any:
        self.threads["PodSandboxStatus" + (" verbose" if request.verbose else "")] = (
            threading.get_ident()
        )
        if request.pod_sandbox_id == "gone":
            raise errors.NotFound("pod sandbox gone not found")
        if request.verbose and request.pod_sandbox_id == "unstored":
            needs_daemon()  # as a spec the row does not hold: containerd is asked
            self.threads["PodSandboxStatus from containerd"] = threading.get_ident()
        return api_pb2.PodSandboxStatusResponse()

    async def container_status(
        self, request: api_pb2.ContainerStatusRequest, context: Context
    ) -> Any:
        if request.container_id == "hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        raise errors.FailedPrecondition(f"container {request.container_id} is exited")

    async def stream_container_stats(
        self, request: api_pb2.StreamContainerStatsRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamContainerStatsResponse]:
        self.threads["StreamContainerStats"] = threading.get_ident()
        try:
            for i in range(3):
                yield api_pb2.StreamContainerStatsResponse(
                    container_stats=[
                        api_pb2.ContainerStats(attributes=api_pb2.ContainerAttributes(id=str(i)))
                    ]
                )
            if request.filter.id == "fail":
                raise errors.NotFound("container fail not found")
            if request.filter.id == "endless":
                await asyncio.Event().wait()
        finally:
            self.stream_closed.set()


@pytest.fixture
def front() -> Iterator[FrontLoop]:
    loop = FrontLoop()
    yield loop
    loop.close()


@pytest.fixture
async def served(tmp_path: Path, front: FrontLoop) -> AsyncIterator[tuple[Servicer, str, Server]]:
    servicer = Servicer()
    path = tmp_path / "s.sock"
    server = Server()
    daemon = asyncio.get_running_loop()
    server.add_generic_rpc_handlers(
        (
            generic_handler(RUNTIME_SERVICE, servicer, daemon=daemon),
            generic_handler(IMAGE_SERVICE, daemon=daemon),
        )
    )
    await front.run(server.start(bind_unix(path)))
    yield servicer, f"unix:{path}", server
    await front.run(server.stop(0))


async def test_a_front_read_answers_while_the_daemon_loop_is_held(served: Any) -> None:
    servicer, target, _ = served
    answered = threading.Event()

    def client() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = api_pb2_grpc.RuntimeServiceStub(channel)
            stub.Version(api_pb2.VersionRequest(), timeout=10)
            stub.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id="p"), timeout=10)
        answered.set()

    thread = threading.Thread(target=client)
    thread.start()
    # Holds the daemon's loop (this one) until the reads are answered: were they waiting for
    # this loop, they would time out and `answered` would stay unset.
    held = answered.wait(15)
    thread.join()
    assert held, "the reads waited for the daemon's loop"
    assert servicer.threads["Version"] != threading.get_ident()
    assert servicer.threads["PodSandboxStatus"] == servicer.threads["Version"]


async def test_the_rest_runs_on_the_daemon_loop(served: Any) -> None:
    servicer, target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        assert (await stub.Version(api_pb2.VersionRequest())).runtime_name == "front"
        await stub.RuntimeConfig(api_pb2.RuntimeConfigRequest())
        await stub.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id="p"))
    here = threading.get_ident()
    assert servicer.threads["RuntimeConfig"] == here
    assert servicer.threads["PodSandboxStatus"] != here
    assert servicer.threads["Version"] != here


async def test_a_handler_that_needs_the_daemon_loop_runs_again_there(served: Any) -> None:
    servicer, target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        verbose = api_pb2.PodSandboxStatusRequest(pod_sandbox_id="p", verbose=True)
        await stub.PodSandboxStatus(verbose)
        front = servicer.threads.pop("PodSandboxStatus verbose")
        assert "PodSandboxStatus from containerd" not in servicer.threads
        verbose.pod_sandbox_id = "unstored"
        await stub.PodSandboxStatus(verbose)
        # and from the daemon's loop, it may: once more there, whole
        again = servicer.threads["PodSandboxStatus verbose"]
        assert servicer.threads["PodSandboxStatus from containerd"] == again
        await stub.PodSandboxStatus(verbose)  # the front's flag did not stay set
    here = threading.get_ident()
    assert front != here and again == here


async def test_errors_map_to_their_codes_from_either_loop(served: Any) -> None:
    _, target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as on_front_loop:
            await stub.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id="gone"))
        with pytest.raises(grpc.aio.AioRpcError) as on_daemon_loop:
            await stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="c1"))
    assert on_front_loop.value.code() == grpc.StatusCode.NOT_FOUND
    assert on_front_loop.value.details() == "pod sandbox gone not found"
    assert on_daemon_loop.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert on_daemon_loop.value.details() == "container c1 is exited"


async def test_a_client_giving_up_cancels_the_handler_on_the_daemon_loop(served: Any) -> None:
    servicer, target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as gave_up:
            await stub.ContainerStatus(
                api_pb2.ContainerStatusRequest(container_id="hang"), timeout=0.3
            )
    assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await asyncio.to_thread(servicer.cancelled.wait, 10)


async def test_a_stream_runs_on_the_daemon_loop_and_hands_its_items_over(served: Any) -> None:
    servicer, target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        got = [
            r.container_stats[0].attributes.id
            async for r in stub.StreamContainerStats(api_pb2.StreamContainerStatsRequest())
        ]
        assert got == ["0", "1", "2"]
        assert servicer.threads["StreamContainerStats"] == threading.get_ident()

        failing = stub.StreamContainerStats(
            api_pb2.StreamContainerStatsRequest(filter=api_pb2.ContainerStatsFilter(id="fail"))
        )
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for r in failing:
                got.append(r.container_stats[0].attributes.id)
        assert got == ["0", "1", "2"]
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "container fail not found"


async def test_a_stream_its_client_leaves_is_closed_on_the_daemon_loop(served: Any) -> None:
    servicer, target, _ = served
    async with grpc.aio.insecure_channel(target) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        call = stub.StreamContainerStats(
            api_pb2.StreamContainerStatsRequest(filter=api_pb2.ContainerStatsFilter(id="endless"))
        )
        for _ in range(3):
            await call.read()
        servicer.stream_closed.clear()  # set by the earlier tests' streams, if any
        assert not servicer.stream_closed.is_set()
        call.cancel()
    assert await asyncio.to_thread(servicer.stream_closed.wait, 10)


def test_a_stream_cannot_be_on_the_front_only_for_some_requests() -> None:
    class Streams:
        @on_front(falls_back=True)
        async def stream_containers(self, request: Any, context: Context) -> AsyncIterator[Any]:
            yield api_pb2.StreamContainersResponse()

    daemon = asyncio.new_event_loop()
    try:
        with pytest.raises(TypeError, match="falls_back"):
            generic_handler(RUNTIME_SERVICE, Streams(), daemon=daemon)
    finally:
        daemon.close()


async def test_close_from_a_running_loop_twice() -> None:
    # as the daemon closes it: from its own loop, running
    front = FrontLoop()
    front.close()
    front.close()
    assert front.loop.is_closed()


async def test_a_hand_over_runs_in_the_callers_context_and_carries_a_cancel_either_way() -> None:
    """The handler's task runs on the daemon's loop in a copy of the caller's context (the
    call's trace is a context variable); its answer, its error and its cancellation come back;
    the caller's cancellation goes there."""
    front = FrontLoop("hand-over-test")
    daemon = asyncio.get_running_loop()  # the test's loop plays the daemon's
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    hung = asyncio.Event()
    cancelled = threading.Event()

    async def handler(kind: str) -> tuple[str, int]:
        if kind == "fails":
            raise errors.NotFound("gone")
        if kind == "hangs":
            hung.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        if kind == "cancelled there":
            raise asyncio.CancelledError
        return var.get(), threading.get_ident()

    async def on_front(kind: str) -> tuple[str, int]:
        var.set(f"set on the front for {kind}")
        return await hand_over(handler(kind), daemon)

    try:
        value, thread = await front.run(on_front("answers"))
        assert (value, thread) == ("set on the front for answers", threading.get_ident())
        with pytest.raises(errors.NotFound, match="gone"):
            await front.run(on_front("fails"))
        with pytest.raises(asyncio.CancelledError):
            await front.run(on_front("cancelled there"))
        waiting = asyncio.ensure_future(front.run(on_front("hangs")))
        await hung.wait()
        front.loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks()])
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await asyncio.to_thread(cancelled.wait, 10)
    finally:
        front.close()


async def test_a_handler_failing_after_its_caller_left_is_not_logged_as_never_retrieved() -> None:
    """The caller gave up, then the handler raised: nobody waits for the error, and asyncio
    must not report it as a task exception never retrieved."""
    front = FrontLoop("hand-over-left-test")
    daemon = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    daemon.set_exception_handler(lambda _loop, context: reported.append(context))
    hung = asyncio.Event()
    raised = threading.Event()

    async def handler() -> None:
        hung.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raised.set()
            raise RuntimeError("failed while being cancelled") from None

    try:
        waiting = asyncio.ensure_future(front.run(hand_over(handler(), daemon)))
        await hung.wait()
        front.loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks()])
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await asyncio.to_thread(raised.wait, 10)
        for _ in range(20):  # the front settles (and drops) the task's outcome
            await asyncio.sleep(0.01)
        gc.collect()
        await asyncio.sleep(0)
        assert not reported, reported
    finally:
        daemon.set_exception_handler(None)
        front.close()


class Probe:
    """Stands for the Status probe's containerd client: records the thread it was asked on."""

    address = "unix:///run/probe.sock"

    def __init__(self) -> None:
        self.threads: list[int] = []

    async def version(self, timeout: float | None = None) -> None:
        self.threads.append(threading.get_ident())


class FsUsages:
    """Stands for the image manager: `measured` is what ImageFsInfo may answer on the front
    loop (None: to be measured), `fs_usage` records the thread that measured."""

    def __init__(self) -> None:
        self.measured: FsUsage | None = None
        self.measured_on: list[int] = []

    def measured_fs_usage(self) -> FsUsage | None:
        return self.measured

    async def fs_usage(self) -> FsUsage:
        self.measured_on.append(threading.get_ident())
        self.measured = FsUsage(1, "/snapshots", 10, 2)
        return self.measured


async def test_status_runtime_config_and_a_measured_fs_usage_answer_while_the_daemon_loop_is_held(
    tmp_path: Path, front: FrontLoop
) -> None:
    """What kubelet asks every few seconds beside its reads: Status (its containerd probe over a
    client of the front's own), RuntimeConfig, ImageFsInfo once measured. The image fs is
    measured on the daemon's loop when no measurement is current."""
    probe, usages = Probe(), FsUsages()
    health = Health(probe, tmp_path / "net.d", [tmp_path])  # type: ignore[arg-type]
    daemon = asyncio.get_running_loop()
    server = Server()
    server.add_generic_rpc_handlers(
        (
            generic_handler(RUNTIME_SERVICE, RuntimeInfo(health, {}), daemon=daemon),
            generic_handler(IMAGE_SERVICE, Images(usages), daemon=daemon),  # type: ignore[arg-type]
        )
    )
    path = tmp_path / "s.sock"
    await front.run(server.start(bind_unix(path)))
    try:
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
            images = api_pb2_grpc.ImageServiceStub(channel)
            first = await images.ImageFsInfo(api_pb2.ImageFsInfoRequest())
        assert first.image_filesystems[0].used_bytes.value == 10
        assert usages.measured_on == [threading.get_ident()]
        answered: dict[str, Any] = {}

        def client() -> None:
            with grpc.insecure_channel(f"unix:{path}") as channel:
                runtime = api_pb2_grpc.RuntimeServiceStub(channel)
                answered["Status"] = runtime.Status(api_pb2.StatusRequest(), timeout=10)
                runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest(), timeout=10)
                images = api_pb2_grpc.ImageServiceStub(channel)
                answered["ImageFsInfo"] = images.ImageFsInfo(
                    api_pb2.ImageFsInfoRequest(), timeout=10
                )
            answered["all"] = True

        thread = threading.Thread(target=client)
        thread.start()
        thread.join(15)  # holds the daemon's loop (this one) meanwhile
        assert answered.get("all"), "a call waited for the daemon's loop"
        conditions = {c.type: c for c in answered["Status"].status.conditions}
        assert conditions["RuntimeReady"].status is True
        assert (conditions["NetworkReady"].status, conditions["NetworkReady"].reason) == (
            False,
            "NoCNIConfig",
        )
        assert probe.threads and threading.get_ident() not in probe.threads
        assert answered["ImageFsInfo"].image_filesystems[0].fs_id.mountpoint == "/snapshots"
        assert len(usages.measured_on) == 1  # the measurement was current: not measured again
    finally:
        await front.run(server.stop(0))
