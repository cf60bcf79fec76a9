"""The CRI surface in-process: method binding, the error mapping, UNIMPLEMENTED answers, the
per-call log line. Real gRPC over a real unix socket; only the servicers behind it are small."""

from __future__ import annotations

import asyncio
import errno
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from crictl import errors
from crictl.api.interceptor import READS, Context, wrap_unary
from crictl.api.runtime_info import RuntimeInfo
from crictl.api.server import Server, bind_unix
from crictl.api.service import IMAGE_SERVICE, RUNTIME_SERVICE, generic_handler, snake_case
from crictl.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from crictl.reconciler.health import Condition, Health


class FakeHealth(Health):
    def __init__(self, conditions: list[Condition]) -> None:
        self._conditions = conditions

    async def conditions(self) -> list[Condition]:
        return self._conditions


class Failing:
    """Raises the error named by the request's pod sandbox id."""

    async def pod_sandbox_status(
        self, request: api_pb2.PodSandboxStatusRequest, context: Context
    ) -> api_pb2.PodSandboxStatusResponse:
        kinds: dict[str, type[Exception]] = {
            "invalid": errors.InvalidArgument,
            "notfound": errors.NotFound,
            "exists": errors.AlreadyExists,
            "precondition": errors.FailedPrecondition,
            "unavailable": errors.Unavailable,
            "deadline": errors.DeadlineExceeded,
            "denied": errors.PermissionDenied,
            "bug": ZeroDivisionError,
        }
        if request.pod_sandbox_id == "nospace":
            raise OSError(errno.ENOSPC, "No space left on device", "/var/lib/crictld/x/hosts")
        if request.pod_sandbox_id == "slow":
            await asyncio.sleep(5)  # longer than the client waits
        raise kinds[request.pod_sandbox_id](f"because {request.pod_sandbox_id}")


class Changing:
    """A change that succeeds."""

    async def update_pod_sandbox_resources(
        self, request: api_pb2.UpdatePodSandboxResourcesRequest, context: Context
    ) -> api_pb2.UpdatePodSandboxResourcesResponse:
        return api_pb2.UpdatePodSandboxResourcesResponse()


async def _serve(tmp_path: Path, *servicers: object) -> tuple[Server, str]:
    server = Server()
    server.add_generic_rpc_handlers(
        (generic_handler(RUNTIME_SERVICE, *servicers), generic_handler(IMAGE_SERVICE))
    )
    await server.start(bind_unix(tmp_path / "s.sock"))
    return server, f"unix:{tmp_path / 's.sock'}"


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[api_pb2_grpc.RuntimeServiceAsyncStub]:
    health = FakeHealth(
        [
            Condition("RuntimeReady", True),
            Condition("NetworkReady", False, "NoCNIConfig", "no config"),
        ]
    )
    server, target = await _serve(tmp_path, RuntimeInfo(health, {"k": "v"}), Failing(), Changing())
    async with grpc.aio.insecure_channel(target) as channel:
        yield api_pb2_grpc.RuntimeServiceStub(channel)
    await server.stop(0)


def test_snake_case() -> None:
    assert snake_case("RunPodSandbox") == "run_pod_sandbox"
    assert snake_case("ImageFsInfo") == "image_fs_info"
    assert snake_case("ExecSync") == "exec_sync"


async def test_version_and_runtime_config(stub: Any) -> None:
    v = await stub.Version(api_pb2.VersionRequest())
    assert (v.version, v.runtime_name, v.runtime_api_version) == ("0.1.0", "crictld", "v1")
    rc = await stub.RuntimeConfig(api_pb2.RuntimeConfigRequest())
    assert rc.linux.cgroup_driver == api_pb2.CGROUPFS


async def test_status_reports_conditions_with_reasons(stub: Any) -> None:
    st = await stub.Status(api_pb2.StatusRequest(verbose=True))
    conds = {c.type: c for c in st.status.conditions}
    assert conds["RuntimeReady"].status is True
    assert (conds["NetworkReady"].status, conds["NetworkReady"].reason) == (False, "NoCNIConfig")
    assert '"k": "v"' in st.info["config"]


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT),
        ("notfound", grpc.StatusCode.NOT_FOUND),
        ("exists", grpc.StatusCode.ALREADY_EXISTS),
        ("precondition", grpc.StatusCode.FAILED_PRECONDITION),
        ("unavailable", grpc.StatusCode.UNAVAILABLE),
        ("deadline", grpc.StatusCode.DEADLINE_EXCEEDED),
        ("denied", grpc.StatusCode.PERMISSION_DENIED),
        ("bug", grpc.StatusCode.INTERNAL),
        ("nospace", grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
async def test_errors_map_to_codes_with_their_message(
    stub: Any, key: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=key))
    assert info.value.code() == code
    if key == "nospace":
        assert info.value.details() == (
            "/runtime.v1.RuntimeService/PodSandboxStatus: [Errno 28] No space left on device: "
            "'/var/lib/crictld/x/hosts'"
        )
    else:
        assert f"because {key}" in (info.value.details() or "")


async def test_missing_rpcs_are_unimplemented_by_name(stub: Any, tmp_path: Path) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RunPodSandbox(api_pb2.RunPodSandboxRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/runtime.v1.RuntimeService/RunPodSandbox" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.StreamPodSandboxes(api_pb2.StreamPodSandboxesRequest()):
            pass
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "StreamPodSandboxes" in (info.value.details() or "")


async def test_every_call_logs_one_line(stub: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="crictl.api.calls"):
        await stub.Version(api_pb2.VersionRequest())
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id="notfound"))
        await stub.UpdatePodSandboxResources(api_pb2.UpdatePodSandboxResourcesRequest())
    records = [r for r in caplog.records if r.name == "crictl.api.calls"]
    assert [
        (r.__dict__["rpc"].rsplit("/", 1)[1], r.__dict__["code"], r.levelno) for r in records
    ] == [
        ("Version", "OK", logging.DEBUG),  # a read that succeeded
        ("PodSandboxStatus", "NOT_FOUND", logging.INFO),  # a read that failed
        ("UpdatePodSandboxResources", "OK", logging.INFO),  # a change
    ]
    assert all(isinstance(r.__dict__["ms"], float) for r in records)
    assert [r.__dict__.get("error") for r in records] == [None, "because notfound", None]


async def test_at_info_a_read_that_succeeded_is_not_logged(
    stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="crictl.api.calls"):
        await stub.Version(api_pb2.VersionRequest())
        await stub.Status(api_pb2.StatusRequest())
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id="notfound"))
        await stub.UpdatePodSandboxResources(api_pb2.UpdatePodSandboxResourcesRequest())
    records = [r for r in caplog.records if r.name == "crictl.api.calls"]
    assert [r.__dict__["rpc"].rsplit("/", 1)[1] for r in records] == [
        "PodSandboxStatus",
        "UpdatePodSandboxResources",
    ]


def test_the_reads_are_rpcs_and_change_nothing() -> None:
    rpcs = {m.name for s in (RUNTIME_SERVICE, IMAGE_SERVICE) for m in s.methods}
    assert rpcs >= READS
    changes = {"Run", "Stop", "Remove", "Create", "Start", "Update", "Pull", "Checkpoint"}
    assert not {r for r in READS if re.findall("[A-Z][a-z]*", r)[0] in changes}
    assert {"Version", "ListContainers", "ContainerStatus", "ImageStatus"} <= READS


async def test_a_change_is_logged_once_its_answer_went_to_grpc() -> None:
    """grpc serializes the answer and starts sending it as soon as the handler returns, before
    it next awaits: the log line is made on the loop's next turn, off the answer's path."""
    answered: list[object] = []
    at_log: list[list[object]] = []

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            at_log.append(list(answered))

    async def change(_request: Any, _context: Any) -> str:
        return "answer"

    calls = logging.getLogger("crictl.api.calls")
    probe = Probe(logging.INFO)
    calls.addHandler(probe)
    level = calls.level
    calls.setLevel(logging.INFO)
    try:
        wrapped = wrap_unary("/runtime.v1.RuntimeService/UpdatePodSandboxResources", change)
        answered.append(await wrapped(None, None))  # type: ignore[arg-type]
        assert at_log == []
        await asyncio.sleep(0)
        assert at_log == [["answer"]]
    finally:
        calls.removeHandler(probe)
        calls.setLevel(level)


async def test_a_call_its_client_gave_up_on_is_not_logged_ok(
    stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="crictl.api.calls"):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.PodSandboxStatus(
                api_pb2.PodSandboxStatusRequest(pod_sandbox_id="slow"), timeout=0.2
            )
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(50):
            if any(r.name == "crictl.api.calls" for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    [record] = [r for r in caplog.records if r.name == "crictl.api.calls"]
    assert record.__dict__["code"] == "CANCELLED"


def test_a_misnamed_handler_is_refused() -> None:
    class Typo:
        async def run_pod_sandboxx(self, request: Any, context: Any) -> None:
            return None

    with pytest.raises(TypeError, match="run_pod_sandboxx"):
        generic_handler(RUNTIME_SERVICE, Typo())
