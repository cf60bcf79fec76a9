"""An exec that reaches a container which stopped after the caller saw it running (kubelet's
probe racing the pod's stop): the shim refuses with "cannot exec in a stopped state" (code
Unknown), which is the container's state, FailedPrecondition, never INTERNAL; and nothing of
the exec is left (its FIFO dir, its record in the shim)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from crictl import errors
from crictl.containerd.client import translate
from crictl.containerd.h2 import RpcError
from crictl.http2 import StatusCode
from crictl.reconciler.stdio import ExecProcess


def refusal(details: str, code: StatusCode = StatusCode.UNKNOWN) -> RpcError:
    return RpcError(code, details)


class StoppedContainer:
    """containerd as it answers for a task that has just stopped."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.deleted: list[str] = []

    async def exec_process(self, container_id: str, exec_id: str, *args: Any, **kw: Any) -> None:
        # what the client raises for containerd's answer: code Unknown, the shim's message
        raise translate(refusal(self.message), f"exec {exec_id} in {container_id}")

    async def delete_process(self, container_id: str, exec_id: str) -> None:
        self.deleted.append(exec_id)


async def start(containerd: StoppedContainer, root: Path) -> ExecProcess:
    return await ExecProcess.start(
        cast(Any, containerd), "c1", {"args": ["true"]}, root, stdin=False, stdout=True, stderr=True
    )


@pytest.mark.parametrize("state", ["stopped", "paused", "created"])
async def test_a_container_no_longer_running_is_a_failed_precondition(
    tmp_path: Path, state: str
) -> None:
    containerd = StoppedContainer(f"cannot exec in a {state} state: unknown")
    with pytest.raises(errors.FailedPrecondition, match="container c1 is not running"):
        await start(containerd, tmp_path)
    assert list(tmp_path.iterdir()) == []  # the exec's FIFO dir went
    assert len(containerd.deleted) == 1


async def test_any_other_refusal_stays_internal(tmp_path: Path) -> None:
    with pytest.raises(errors.Internal, match="shim exploded"):
        await start(StoppedContainer("shim exploded"), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "details",
    [
        "cannot exec in a stopped state: unknown",
        'OCI runtime exec failed: exec failed: unable to start container process: exec: "nope":'
        " executable file not found in $PATH: unknown",
        "failed to update resources: unable to set memory limit to 1048576 (current usage:"
        " 2097152, peak usage: 4194304): unknown",
    ],
)
def test_runc_and_shim_state_refusals_are_failed_preconditions(details: str) -> None:
    err = translate(refusal(details), "exec")
    assert isinstance(err, errors.FailedPrecondition), err
    assert str(err) == f"containerd exec: {details}"


def test_other_answers_keep_their_codes() -> None:
    assert type(translate(refusal("shim exploded"), "exec")) is errors.Internal
    assert type(translate(refusal("no such task", StatusCode.NOT_FOUND), "x")) is (errors.NotFound)
    # the words alone do not decide: only containerd's Unknown carries runc's refusals
    internal = refusal("unable to set up the shim", StatusCode.INTERNAL)
    assert type(translate(internal, "start")) is errors.Internal
