"""Every containerd call has a deadline, so a wedged shim or containerd cannot hang a
reconcile pass for good (a chaos run saw a sandbox pass wait on one for minutes, and every
RunPodSandbox retry with it); waits on a process have none."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crictl import errors
from crictl.containerd.client import ContainerdClient, translate
from crictl.containerd.h2 import RpcError
from crictl.gen.containerd.api.types import mount_pb2
from crictl.http2 import StatusCode


async def never() -> None:
    await asyncio.Event().wait()


async def soon() -> str:
    await asyncio.sleep(0.01)
    return "answered"


def test_a_call_that_never_answers_fails_naming_itself() -> None:
    async def go() -> None:
        c = ContainerdClient("/nonexistent/containerd.sock")
        try:
            with pytest.raises(errors.DeadlineExceeded, match="did not answer create task in 0s"):
                await c.call("create task", never(), deadline=0.05)
            assert await c.call("get task", soon(), deadline=5) == "answered"
            # no deadline: only the caller's own limit (a wait for an exit) ends it
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await c.call("wait task", never(), deadline=None)
        finally:
            await c.close()

    asyncio.run(go())


def rpc_error(code: StatusCode, details: str) -> RpcError:
    return RpcError(code, details)


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [
        # the pod's shim exited while containerd asked it to delete a task (a chaos run: the
        # StopPodSandbox answered INTERNAL where asking again succeeds)
        (StatusCode.UNKNOWN, "failed to delete task: context canceled", errors.Unavailable),
        (StatusCode.CANCELLED, "context canceled", errors.Unavailable),
        (StatusCode.UNKNOWN, "runc did not terminate successfully", errors.Internal),
        (StatusCode.NOT_FOUND, "task x not found", errors.NotFound),
        (StatusCode.FAILED_PRECONDITION, "task is running", errors.FailedPrecondition),
        (
            StatusCode.UNKNOWN,
            "failed to write: write /var/lib/containerd/ingest/x/data: no space left on device",
            errors.ResourceExhausted,
        ),
    ],
)
def test_containerd_errors_keep_their_kind(
    code: StatusCode, details: str, kind: type[errors.CrictlError]
) -> None:
    e = translate(rpc_error(code, details), "delete task")
    assert type(e) is kind and details in str(e) and "delete task" in str(e)


def test_a_stale_snapshot_directory_is_left_to_containerd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prepare that failed on a directory a killed containerd left: containerd removes that
    directory as the create fails, and the id is free again, so a snapshot made meanwhile may
    hold it (a 1000-kill chaos run). The prepare is asked for again and the directory, now
    another snapshot's, is not touched."""
    taken = tmp_path / "io.containerd.snapshotter.v1.overlayfs" / "snapshots" / "7"
    calls: list[str] = []

    async def prepare(*_: object) -> list[mount_pb2.Mount]:
        calls.append("prepare")
        if len(calls) == 1:
            (taken / "fs").mkdir(parents=True)  # another pod's snapshot, given id 7 meanwhile
            raise errors.Internal(
                f"containerd prepare snapshot: failed to rename: rename {taken.parent}/new-1 "
                f"{taken}: file exists"
            )
        return [mount_pb2.Mount(type="overlay", source="overlay")]

    async def go() -> None:
        c = ContainerdClient("/nonexistent/containerd.sock")
        monkeypatch.setattr(c, "_prepare_snapshot", prepare)
        try:
            mounts = await c.prepare_snapshot("overlayfs", "key", "parent")
        finally:
            await c.close()
        assert [m.type for m in mounts] == ["overlay"]

    asyncio.run(go())
    assert calls == ["prepare", "prepare"]
    assert (taken / "fs").is_dir()
