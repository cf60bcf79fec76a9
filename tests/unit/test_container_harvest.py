"""One harvest per exit, and no round trip a stop or removal does not need.

A StopContainer's pass and containerd's exit event see the same exit. Each used to record it
and delete the task, the event after asking containerd whether another task ran (an exit of
an earlier task of the same id is ignored), the stop after asking for the task's state first,
and the removal then asked containerd to delete the task once more: against this fake, a stop
took six round trips (eight with the event first) where three do, a removal three where two
do. Here containerd is a fake that counts what it is asked (the real calls are exercised by
tests/integration/test_containers.py); the store and the reconcile queue are the real ones."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from crictl.containerd.client import TaskState
from crictl.reconciler.containers import (
    CONTAINER_CONFIGS,
    ContainerReconciler,
    container_config_of,
)
from crictl.reconciler.events import TaskExit
from crictl.store import containers as sc
from crictl.store.engine import Store
from crictl.store.models import ContainerDesired, ContainerPhase
from tests.unit.rows import container_reconciler, store_with_created_container

SID = "a" * 64
CID = "b" * 64
PID = 4242


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = store_with_created_container(tmp_path, SID, CID, 42)
    s.write_sync(lambda x: sc.set_container_desired(x, CID, ContainerDesired.RUNNING))
    s.write_sync(lambda x: sc.record_container_started(x, CID, PID))
    yield s
    s.close()


class Containerd:
    """A task that SIGKILL ends with 137; its exit event is delivered to `on_exit` before the
    wait answers (`event_first`), after, or never (`event=False`)."""

    namespace = "crictld-unit-test"

    def __init__(self, event_first: bool = True, event: bool = True, task: bool = True) -> None:
        self.calls: list[str] = []
        self.event_first = event_first
        self.event = event
        self.task: TaskState | None = TaskState("RUNNING", PID, 0, 0) if task else None
        self.exited = asyncio.Event()
        self.on_exit: Any = None
        self.delivered: asyncio.Task[None] | None = None

    async def task_state(self, cid: str) -> TaskState | None:
        self.calls.append("get task")
        return self.task

    async def kill_task(self, cid: str, sig: int, all_processes: bool = True) -> bool:
        self.calls.append("kill task")
        if self.task is None:
            return False
        if sig == signal.SIGKILL:
            self.task = TaskState("STOPPED", 0, 137, time.time_ns())
            if self.event:
                exit_ = TaskExit(cid, 137, self.task.exited_at_ns, PID)
                self.delivered = asyncio.create_task(self.on_exit(exit_))
            self.exited.set()
        return True

    async def wait_exit(self, cid: str, timeout: float | None = None) -> TaskState | None:
        self.calls.append("wait task")
        if self.task is None:
            return None
        await self.exited.wait()
        if self.event_first and self.delivered is not None:
            await asyncio.shield(self.delivered)
        return self.task

    async def delete_task(self, cid: str) -> int | None:
        self.calls.append("delete task")
        task, self.task = self.task, None
        return None if task is None else task.exit_status

    async def delete_container(self, cid: str) -> None:
        self.calls.append("delete container")

    async def remove_snapshot(self, snapshotter: str, key: str) -> None:
        self.calls.append("remove snapshot")


def reconciler(store: Store, containerd: Containerd, tmp_path: Path) -> ContainerReconciler:
    return container_reconciler(store, containerd, tmp_path)


async def stop(store: Store, r: ContainerReconciler) -> None:
    await store.write(lambda s: sc.set_container_desired(s, CID, ContainerDesired.EXITED))
    r.request_stop(CID, 0)
    await r.queue.wait(CID, settled=True)
    await r.queue.wait(CID)  # and the rest of the pass (the task's delete)


async def remove(store: Store, r: ContainerReconciler) -> None:
    await store.write(lambda s: sc.set_container_desired(s, CID, ContainerDesired.REMOVED))
    await r.queue.wait(CID)


def exit_transitions(store: Store) -> int:
    with store.session() as s:
        return int(
            s.execute(
                text("SELECT count(*) FROM events WHERE object_id = :cid AND to_phase = 'EXITED'"),
                {"cid": CID},
            ).scalar_one()
        )


@pytest.mark.parametrize("event_first", [True, False], ids=["event-first", "wait-first"])
def test_a_stop_and_its_exit_event_harvest_once(
    store: Store, tmp_path: Path, event_first: bool
) -> None:
    containerd = Containerd(event_first=event_first)
    r = reconciler(store, containerd, tmp_path)

    async def main() -> None:
        await stop(store, r)
        if containerd.delivered is not None:
            await containerd.delivered
        assert containerd.calls == ["kill task", "wait task", "delete task"]
        containerd.calls.clear()
        container_config_of(store.snapshot.containers[CID])
        assert CID in CONTAINER_CONFIGS
        await remove(store, r)

    asyncio.run(main())
    assert containerd.calls == ["delete container", "remove snapshot"]
    assert exit_transitions(store) == 1
    assert CID not in store.snapshot.containers
    assert CID not in CONTAINER_CONFIGS  # its parsed config goes with the row


def stopped(store: Store, tmp_path: Path, containerd: Containerd) -> tuple[Any, ...]:
    """The container's (phase, exit code, reason) once a StopContainer's pass ran."""
    asyncio.run(stop(store, reconciler(store, containerd, tmp_path)))
    row = store.snapshot.containers[CID]
    return (row.phase, row.exit_code, row.reason)


def test_the_exit_is_recorded_with_its_code(store: Store, tmp_path: Path) -> None:
    containerd = Containerd(event=False)
    assert stopped(store, tmp_path, containerd) == (ContainerPhase.EXITED, 137, "Error")
    assert containerd.calls == ["kill task", "wait task", "delete task"]


def test_a_task_gone_without_an_exit_is_exited_unknown(store: Store, tmp_path: Path) -> None:
    containerd = Containerd(task=False)
    assert stopped(store, tmp_path, containerd) == (ContainerPhase.EXITED, 255, "Unknown")


@pytest.mark.parametrize(
    ("pid", "before_start"),
    [(PID + 1, False), (PID, True), (0, False)],
    ids=["another-pid", "before-the-recorded-start", "pid-unknown"],
)
def test_an_exit_it_cannot_tell_is_checked_against_containerd(
    store: Store, tmp_path: Path, pid: int, before_start: bool
) -> None:
    """An earlier task of the same id (a start cut short) whose exit arrives late, or an exit
    that cannot be told from one: containerd runs the recorded task, so it is ignored."""
    containerd = Containerd()
    r = reconciler(store, containerd, tmp_path)
    started = store.snapshot.containers[CID].started_at
    assert started is not None
    at = started - 1 if before_start else time.time_ns()
    asyncio.run(r.on_exit(TaskExit(CID, 1, at, pid)))
    assert containerd.calls == ["get task"]
    assert store.snapshot.containers[CID].phase == ContainerPhase.RUNNING


class SlowDelete(Containerd):
    """Its task deletes (runc delete and the shim's exit, tens of ms under load) wait until
    `deletes` is set."""

    def __init__(self) -> None:
        super().__init__(event=False)
        self.deletes = asyncio.Event()

    async def delete_task(self, cid: str) -> int | None:
        self.calls.append("delete task")
        await self.deletes.wait()
        task, self.task = self.task, None
        return None if task is None else task.exit_status


def test_a_pod_stop_waits_for_its_containers_task_deletes(store: Store, tmp_path: Path) -> None:
    """The pod's tasks share one shim, which exits once its last task is deleted: the pause
    task is touched only once every container's delete has answered. kubelet stops a pod's
    containers first (StopContainer answers once the exit is recorded), so their deletes
    may still run when the pod's stop comes: it waits for them and writes nothing more."""
    containerd = SlowDelete()
    r = reconciler(store, containerd, tmp_path)

    async def main() -> None:
        await store.write(lambda s: sc.set_container_desired(s, CID, ContainerDesired.EXITED))
        r.request_stop(CID, 0)
        await r.queue.wait(CID, settled=True)  # StopContainer's answer
        writes: list[Any] = []
        write = store.write

        async def counted(fn: Any, then: Any = None, *, off_loop: bool = False) -> Any:
            writes.append(getattr(fn, "func", fn))
            return await write(fn, then, off_loop=off_loop)

        store.write = counted  # type: ignore[method-assign]
        stop = asyncio.create_task(r.teardown_sandbox_containers(SID, remove=False))
        await asyncio.sleep(0.05)
        assert not stop.done()  # the container's task delete is still running
        containerd.deletes.set()
        await asyncio.wait_for(stop, 10)
        assert containerd.task is None
        assert containerd.calls == ["kill task", "wait task", "delete task"]
        row = store.snapshot.containers[CID]
        assert (row.phase, row.exit_code) == (ContainerPhase.EXITED, 137)
        assert row.desired == ContainerDesired.EXITED
        assert sc.set_containers_desired not in writes  # all recorded: nothing more written

    asyncio.run(main())


def test_a_pod_removal_waits_for_its_containers_passes(store: Store, tmp_path: Path) -> None:
    containerd = SlowDelete()
    r = reconciler(store, containerd, tmp_path)

    async def main() -> None:
        stop = asyncio.create_task(r.teardown_sandbox_containers(SID, remove=False))
        await asyncio.sleep(0.05)
        removal = asyncio.create_task(r.teardown_sandbox_containers(SID, remove=True))
        await asyncio.sleep(0.05)
        assert not removal.done()  # the stop's task delete is still running
        containerd.deletes.set()
        await asyncio.wait_for(asyncio.gather(stop, removal), 10)
        assert CID not in store.snapshot.containers
        assert containerd.calls[-2:] == ["delete container", "remove snapshot"]

    asyncio.run(main())
