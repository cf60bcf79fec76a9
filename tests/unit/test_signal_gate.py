"""Signals to one pod's tasks go a few at a time, each keeping its place until the exit it
causes comes (containerd 1.6's shim, one per pod, jams when many of its tasks exit while
their kills are in flight: see ContainerReconciler._signal). Here containerd is a fake that
records how many kills of each pod are in flight and delivers exit events when told to; the
store and the reconciler are the real ones. tests/integration/test_containers.py stops a pod
of many containers at once through the real shim."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from crictl import errors
from crictl.reconciler import containers as rc
from crictl.reconciler.containers import ContainerReconciler
from crictl.reconciler.events import TaskExit
from crictl.reconciler.queue import KeyedGate
from crictl.store import containers as sc
from crictl.store import sandboxes as ss
from crictl.store.engine import Store
from tests.unit.rows import container_reconciler, new_container, store_with_created_container

PODS = ["a" * 64, "c" * 64]


def cid(pod: int, i: int) -> str:
    return f"{pod}{i:03d}".ljust(64, "f")


def add_containers(store: Store, pod: int, ids: list[str], pid: str) -> None:
    """Containers in pod `pod` whose PID namespace mode is `pid` ("CONTAINER": each its own,
    as kubelet's default; "POD": the pod's, which is also the CRI's default, as in "{}")."""
    config = json.dumps({"linux": {"securityContext": {"namespaceOptions": {"pid": pid}}}})
    for c in ids:
        new = dataclasses.replace(new_container(c, PODS[pod], name=f"n{c[:4]}"), config=config)
        store.write_sync(partial(sc.create_container, new=new))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """Two READY pods of ten containers each (the first pod's first is the rows' own)."""
    s = store_with_created_container(tmp_path, PODS[0], cid(0, 0), 42)
    pod = ss.NewSandbox(
        id=PODS[1], name="q", namespace="d", uid="v", attempt=0, config="{}", config_digest="d"
    )
    s.write_sync(lambda x: ss.create_sandbox(x, pod))
    s.write_sync(lambda x: ss.record_sandbox_started(x, PODS[1], PODS[1], 43))
    for p, sid in enumerate(PODS):
        for i in range(10):
            if (p, i) == (0, 0):
                continue
            new = new_container(cid(p, i), sid, name=f"c{p}{i}")
            s.write_sync(partial(sc.create_container, new=new))
    yield s
    s.close()


class Containerd:
    """Kills answer at once; their exits come only when the test says (`exit`), as events."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.in_flight: Counter[str] = Counter()  # signalled, exit not yet delivered, by pod
        self.most: Counter[str] = Counter()
        self.killed: list[tuple[str, int]] = []
        self.fail = fail or set()
        self.on_exit: Any = None
        self.pod_of: dict[str, str] = {}

    async def kill_task(self, cid: str, sig: int, all_processes: bool = True) -> bool:
        if cid in self.fail:
            raise errors.FailedPrecondition("process already finished")
        pod = self.pod_of[cid]
        self.in_flight[pod] += 1
        self.most[pod] = max(self.most[pod], self.in_flight[pod])
        self.killed.append((cid, sig))
        return True

    async def task_state(self, cid: str) -> None:
        return None  # the task is gone: a failed kill is what was wanted

    async def exit(self, cid: str) -> None:
        self.in_flight[self.pod_of[cid]] -= 1
        await self.on_exit(TaskExit(cid, 137, 1, 7))


def reconciler(store: Store, containerd: Containerd, tmp_path: Path) -> ContainerReconciler:
    r = container_reconciler(store, containerd, tmp_path)
    for row in store.snapshot.containers.values():
        containerd.pod_of[row.id] = row.sandbox_id
    return r


def short_exit_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal that may cause no exit keeps its place 0.05 s; a SIGKILL's, 1 s."""
    monkeypatch.setattr(rc, "SIGNAL_EXIT_WAIT", 0.05)
    monkeypatch.setattr(rc, "KILL_EXIT_WAIT", 1.0)


async def signal_all(r: ContainerReconciler, ids: list[str], sig: int) -> float:
    """Seconds until `sig` was sent to every task of `ids`, all asked at once."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(*(r._signal(c, sig) for c in ids))
    return loop.time() - start


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_pods_signals_wait_for_the_exits_of_those_before_them(
    store: Store, tmp_path: Path
) -> None:
    """Ten SIGKILLs to one pod and ten to another, all at once: four of each pod's are in
    flight, the others wait; each exit lets one more go; the other pod is not held back."""
    fake = Containerd()
    r = reconciler(store, fake, tmp_path)
    ids = [cid(p, i) for p in (0, 1) for i in range(10)]
    sent = [asyncio.create_task(r._signal(c, signal.SIGKILL)) for c in ids]
    await settle()
    assert fake.in_flight == {PODS[0]: 4, PODS[1]: 4}
    assert sum(t.done() for t in sent) == 8
    await fake.exit(fake.killed[0][0])
    await settle()
    assert fake.in_flight == {PODS[0]: 4, PODS[1]: 4} and sum(t.done() for t in sent) == 9
    exited = {fake.killed[0][0]}
    while not all(t.done() for t in sent):
        for c, _ in list(fake.killed):
            if c not in exited:
                exited.add(c)
                await fake.exit(c)
        await settle()
    await asyncio.gather(*sent)
    assert fake.most == {PODS[0]: 4, PODS[1]: 4}
    await asyncio.gather(*r._gate_releases)
    assert len(r._signal_gates) == 0 and r._exit_seen == {}  # nothing kept once all exited


async def test_a_signal_without_an_exit_gives_its_place_back_after_a_while(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM the task ignores causes no exit: its place comes back after SIGNAL_EXIT_WAIT
    (a SIGKILL's after KILL_EXIT_WAIT), so the pod's other signals are late, never stuck.
    The SIGTERMs go to tasks of their own PID namespace (PID 1 there, which a SIGTERM without
    a handler leaves running)."""
    short_exit_waits(monkeypatch)
    own = [cid(0, i) for i in range(10, 18)]
    add_containers(store, 0, own, "CONTAINER")
    r = reconciler(store, Containerd(), tmp_path)
    terms = await signal_all(r, own, signal.SIGTERM)
    assert 0.05 <= terms < 1.0  # the second four waited for the first four's places
    assert await signal_all(r, [cid(0, i) for i in range(8)], signal.SIGKILL) >= 1.0
    await asyncio.gather(*r._gate_releases)
    assert len(r._signal_gates) == 0 and r._exit_seen == {}


async def test_a_sigterm_to_a_task_sharing_its_pods_pid_namespace_keeps_its_place_longer(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a shared PID namespace no container is PID 1, so a SIGTERM without a handler kills
    and the shim runs `runc kill --all` on the exit: the signal waits for it as a SIGKILL
    does (KILL_EXIT_WAIT), where one to a task of its own namespace waits SIGNAL_EXIT_WAIT."""
    short_exit_waits(monkeypatch)
    shared = [cid(1, i) for i in range(10, 18)]
    own = [cid(0, i) for i in range(10, 18)]
    add_containers(store, 1, shared, "POD")
    add_containers(store, 0, own, "CONTAINER")
    r = reconciler(store, Containerd(), tmp_path)
    # the second four waited for the first four's places
    assert await signal_all(r, shared, signal.SIGTERM) >= 1.0
    assert await signal_all(r, own, signal.SIGTERM) < 1.0
    await asyncio.gather(*r._gate_releases)
    assert len(r._signal_gates) == 0 and r._exit_seen == {}


async def test_a_signal_that_fails_gives_its_place_back_at_once(
    store: Store, tmp_path: Path
) -> None:
    """A kill containerd refuses for a task that is gone signalled nothing: no exit to wait
    for, and the next signal goes at once."""
    fake = Containerd(fail={cid(0, i) for i in range(4)})
    r = reconciler(store, fake, tmp_path)
    await asyncio.gather(*(r._signal(cid(0, i), signal.SIGKILL) for i in range(4)))
    await asyncio.wait_for(r._signal(cid(0, 4), signal.SIGKILL), 0.1)
    assert fake.killed == [(cid(0, 4), signal.SIGKILL)]


async def test_a_keyed_gate_holds_each_key_apart_and_keeps_nothing() -> None:
    gate = KeyedGate(2)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(key: str, name: str) -> None:
        await gate.acquire(key)
        order.append(name)
        await release.wait()
        gate.release(key)

    tasks = [asyncio.create_task(hold(k, f"{k}{i}")) for k in "xy" for i in range(3)]
    await settle()
    assert sorted(order) == ["x0", "x1", "y0", "y1"]
    waiting = asyncio.create_task(gate.acquire("x"))
    await settle()
    waiting.cancel()  # a waiter that gives up leaves the key's count as it was
    await settle()
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(order) == ["x0", "x1", "x2", "y0", "y1", "y2"]
    assert len(gate) == 0
