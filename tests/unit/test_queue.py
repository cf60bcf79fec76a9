"""crictl/reconciler/queue.py: one pass per key at a time, wake-ups collapsing into one more
pass, callers waiting for the pass their wake-up caused, and callers answered when a pass
settles (its clean-up still to come)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from crictl.reconciler.queue import KeyedQueue

MADE: list[Passes] = []


@pytest.fixture(autouse=True)
async def drained() -> AsyncIterator[None]:
    """Every queue a test made is drained after it: the tests share the session's loop, where
    a failed pass's retry (60 s) fired during a later test and left a pass waiting at a gate
    no one opens, destroyed pending at the session's end (a CI run printed it)."""
    yield
    while MADE:
        await MADE.pop().queue.drain()


class Passes:
    """A reconcile function whose passes the test drives: each pass records its number, and
    waits at `settle_at` (after settling) and at `end` until the test lets it go on."""

    def __init__(self) -> None:
        self.queue: KeyedQueue[str] = KeyedQueue(self.reconcile, retry_first=60, retry_cap=60)
        MADE.append(self)
        self.started: list[int] = []
        self.gates: dict[tuple[int, str], asyncio.Event] = {}
        self.fail_at: dict[tuple[int, str], Exception] = {}

    def gate(self, n: int, where: str) -> asyncio.Event:
        return self.gates.setdefault((n, where), asyncio.Event())

    async def reconcile(self, key: str) -> None:
        n = len(self.started) + 1
        self.started.append(n)
        await self.gate(n, "before").wait()
        if (n, "before") in self.fail_at:
            raise self.fail_at[(n, "before")]
        self.queue.settle(key)
        await self.gate(n, "after").wait()
        if (n, "after") in self.fail_at:
            raise self.fail_at[(n, "after")]


async def settled_soon(task: asyncio.Task[None]) -> bool:
    """True if `task` finishes within a few loop turns."""
    for _ in range(20):
        await asyncio.sleep(0)
    return task.done()


async def test_a_plain_wait_is_answered_when_the_pass_ends() -> None:
    p = Passes()
    waiting = asyncio.create_task(p.queue.wait("k"))
    p.gate(1, "before").set()
    assert not await settled_soon(waiting)  # settled, but it waits for the end
    p.gate(1, "after").set()
    await waiting
    assert p.started == [1]


async def test_a_settled_wait_is_answered_when_the_pass_settles() -> None:
    p = Passes()
    waiting = asyncio.create_task(p.queue.wait("k", settled=True))
    assert not await settled_soon(waiting)
    p.gate(1, "before").set()
    assert await settled_soon(waiting)
    await waiting
    # the pass goes on after the answer
    assert not p.queue._running["k"].done()
    p.gate(1, "after").set()
    await asyncio.shield(p.queue._running["k"])


async def test_a_wait_during_a_pass_that_settled_needs_the_next_pass() -> None:
    """A caller whose wake-up came after the running pass started (it may have read the state
    before the caller's change) is answered by the next pass's settle, not that one's."""
    p = Passes()
    first = asyncio.create_task(p.queue.wait("k", settled=True))
    p.gate(1, "before").set()
    await first
    second = asyncio.create_task(p.queue.wait("k", settled=True))
    assert not await settled_soon(second)
    p.gate(1, "after").set()
    assert not await settled_soon(second)  # pass 2 has not settled yet
    assert p.started == [1, 2]
    p.gate(2, "before").set()
    await asyncio.wait_for(second, 5)
    worker = p.queue._running["k"]
    p.gate(2, "after").set()
    # ended before the test's loop closes: a task left pending there is destroyed pending,
    # which a later test's check of the loop's errors reported as its own
    await asyncio.wait_for(worker, 5)


async def test_a_wait_during_a_pass_not_yet_settled_is_not_answered_by_it() -> None:
    p = Passes()
    first = asyncio.create_task(p.queue.wait("k"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert p.started == [1]
    second = asyncio.create_task(p.queue.wait("k", settled=True))
    p.gate(1, "before").set()  # pass 1 settles: not the pass `second` woke
    assert not await settled_soon(second)
    p.gate(1, "after").set()
    assert not await settled_soon(second)
    assert p.started == [1, 2]
    p.gate(2, "before").set()
    await asyncio.wait_for(second, 5)
    assert not first.done()  # a plain wait: the worker's last pass, still running
    p.gate(2, "after").set()
    await asyncio.wait_for(first, 5)


async def test_a_pass_that_fails_before_it_settles_fails_the_wait() -> None:
    p = Passes()
    p.fail_at[(1, "before")] = RuntimeError("containerd said no")
    p.gate(1, "before").set()
    with pytest.raises(RuntimeError, match="containerd said no"):
        await p.queue.wait("k", settled=True)
    assert p.queue.failures["k"].attempts == 1


async def test_a_failure_after_settling_is_retried_not_answered() -> None:
    p = Passes()
    p.fail_at[(1, "after")] = RuntimeError("delete failed")
    p.gate(1, "before").set()
    await p.queue.wait("k", settled=True)  # answered: no error
    p.gate(1, "after").set()
    for _ in range(50):
        await asyncio.sleep(0)
        if "k" in p.queue.failures:
            break
    assert p.queue.failures["k"].error == "delete failed"  # left to the retry
    await p.queue.drain()


async def test_no_waiter_is_left_behind() -> None:
    p = Passes()
    for n in (1, 2):
        p.gate(n, "before").set()
        p.gate(n, "after").set()
    await p.queue.wait("k", settled=True)
    await p.queue.wait("k", settled=True)
    assert p.queue._settles == {}
    await asyncio.sleep(0)
    assert p.queue._running == {} and p.queue._started == {}
