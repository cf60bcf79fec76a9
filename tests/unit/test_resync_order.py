"""The resync reads the rows before it lists containerd's tasks: a container started while the
list is under way is RUNNING in rows read after the list, whose task the list lacks. Read in
that order, it would be taken for vanished (EXITED 255): the chaos run found exactly that."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crictl.containerd.client import TaskState
from crictl.reconciler.containers import ContainerReconciler
from crictl.reconciler.sandboxes import SandboxReconciler
from crictl.store import containers as sc
from crictl.store import sandboxes as ss
from crictl.store.common import Tx
from crictl.store.engine import Store
from crictl.store.models import ContainerPhase, SandboxPhase
from tests.unit.rows import store_with_created_container

SID = "a" * 64
CID = "b" * 64
RUNNING = TaskState("RUNNING", 42, 0, 0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = store_with_created_container(tmp_path, SID, CID, 42)
    yield s
    s.close()


class StartedDuringTheList:
    """containerd whose task list, while in flight, sees something started (`meanwhile`
    writes its row); the list itself was taken before and lacks its task."""

    def __init__(self, store: Store, meanwhile: Callable[[Tx], object]) -> None:
        self.store = store
        self.meanwhile = meanwhile

    async def task_states(self) -> dict[str, TaskState]:
        await self.store.write(self.meanwhile)
        return {SID: RUNNING}


class Queue:
    def wake(self, key: str) -> None:
        pass


def reconciler(cls: type[Any], store: Store, meanwhile: Callable[[Tx], object]) -> Any:
    """Just what a resync uses: the store, containerd's task list, the queue."""
    r = object.__new__(cls)
    r.store, r.containerd, r.queue = store, StartedDuringTheList(store, meanwhile), Queue()
    return r


def test_a_container_started_during_the_list_is_not_taken_for_vanished(store: Store) -> None:
    r: ContainerReconciler = reconciler(
        ContainerReconciler, store, lambda x: sc.record_container_started(x, CID, 77)
    )
    asyncio.run(r.resync())
    row = store.snapshot.containers[CID]
    assert row.phase == ContainerPhase.RUNNING, (row.phase, row.reason, row.message)


def test_a_pod_started_during_the_list_is_not_taken_for_vanished(store: Store) -> None:
    other = "c" * 64
    store.write_sync(
        lambda x: ss.create_sandbox(
            x,
            ss.NewSandbox(
                id=other,
                name="q",
                namespace="d",
                uid="v",
                attempt=0,
                config="{}",
                config_digest="d",
            ),
        )
    )
    r: SandboxReconciler = reconciler(
        SandboxReconciler, store, lambda x: ss.record_sandbox_started(x, other, other, 43)
    )
    r._recovering, r._checking, r._to_check, r._serving = set(), {SID}, [], False
    asyncio.run(r.resync())
    row = store.snapshot.sandboxes[other]
    assert row.phase == SandboxPhase.READY, (row.phase, row.reason, row.message)
