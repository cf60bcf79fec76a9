"""A pod's stop asks containerd for its pause task's state only when it must: a READY pod's task
runs, so it is killed, waited for and deleted (three round trips, where it was four); a pod
that was not READY, or whose kill was refused, is stopped from the state containerd gives.
containerd is a fake counting what it is asked; the real calls are exercised by
tests/integration/test_sandboxes.py and the crash suites."""

from __future__ import annotations

import asyncio
import signal

import pytest

from crictl import errors
from crictl.containerd.client import TaskState
from crictl.reconciler.sandboxes import SandboxReconciler

SID = "a" * 64


class Containerd:
    def __init__(self, task: TaskState | None, kill_error: Exception | None = None) -> None:
        self.task = task
        self.kill_error = kill_error
        self.calls: list[str] = []

    async def task_state(self, sid: str) -> TaskState | None:
        self.calls.append("get task")
        return self.task

    async def kill_task(self, sid: str, sig: int, all_processes: bool = True) -> bool:
        self.calls.append("kill task")
        if self.kill_error is not None:
            error, self.kill_error = self.kill_error, None
            raise error
        if self.task is None or self.task.status == "STOPPED":
            return False  # containerd: not found
        assert sig == signal.SIGKILL
        self.task = TaskState("STOPPED", 0, 137, 1)
        return True

    async def wait_task(self, sid: str, timeout: float | None = None) -> int | None:
        self.calls.append("wait task")
        return None if self.task is None else self.task.exit_status

    async def delete_task(self, sid: str) -> int | None:
        self.calls.append("delete task")
        task, self.task = self.task, None
        return None if task is None else task.exit_status


def stop(containerd: Containerd, ready: bool) -> list[str]:
    r = object.__new__(SandboxReconciler)
    r.containerd = containerd  # type: ignore[assignment]
    r._task_deleted = set()
    asyncio.run(r._stop_task(SID, ready=ready))
    assert containerd.task is None  # deleted, whatever it was
    assert r._task_deleted == {SID}  # so the pod's removal does not ask for it again
    return containerd.calls


RUNNING = TaskState("RUNNING", 42, 0, 0)


@pytest.mark.parametrize(
    ("task", "ready", "calls"),
    [
        (RUNNING, True, ["kill task", "wait task", "delete task"]),
        (TaskState("STOPPED", 0, 2, 1), True, ["kill task", "wait task", "delete task"]),
        (None, True, ["kill task", "wait task", "delete task"]),
        (RUNNING, False, ["get task", "kill task", "wait task", "delete task"]),
        (TaskState("STOPPED", 0, 2, 1), False, ["get task", "delete task"]),
        (TaskState("UNKNOWN", 0, 0, 0), False, ["get task", "delete task"]),  # half-created
        (None, False, ["get task", "delete task"]),  # a shim without a task: only a delete
    ],
    ids=[
        "ready",
        "ready-but-exited",
        "ready-but-gone",
        "not-ready-running",
        "not-ready-stopped",
        "half-created",
        "no-task",
    ],
)
def test_round_trips(task: TaskState | None, ready: bool, calls: list[str]) -> None:
    assert stop(Containerd(task), ready) == calls


def test_a_refused_kill_falls_back_to_the_tasks_state() -> None:
    containerd = Containerd(RUNNING, kill_error=errors.FailedPrecondition("paused"))
    assert stop(containerd, ready=True) == [
        "kill task",
        "get task",
        "kill task",
        "wait task",
        "delete task",
    ]


def test_containerd_away_is_raised() -> None:
    containerd = Containerd(RUNNING, kill_error=errors.Unavailable("containerd is away"))

    async def away(sid: str) -> TaskState | None:
        raise errors.Unavailable("containerd is away")

    containerd.task_state = away  # type: ignore[method-assign]
    r = object.__new__(SandboxReconciler)
    r.containerd = containerd  # type: ignore[assignment]
    r._task_deleted = set()
    with pytest.raises(errors.Unavailable):
        asyncio.run(r._stop_task(SID, ready=True))
    assert r._task_deleted == set()  # not deleted: the removal must ask
