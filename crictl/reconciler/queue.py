"""A keyed work queue: one worker per key at a time, repeated wake-ups collapse into one more
pass, and a caller can wait for the pass its wake-up caused (shielded: a caller that gives up,
its deadline passed, never cancels the work; a retry attaches to the same pass). A caller can
also ask to be answered once that pass has `settle`d: done what the caller waits for, its
clean-up still to come (a StopContainer once the exit is recorded, before the task's delete).

A pass that fails is retried, level-triggered, after a backoff that doubles from RETRY_FIRST
to RETRY_CAP (the caller that woke it still gets its error at once); the key's failure count
and last error stay readable (`failures`) until a pass succeeds, and `on_failure` is told of
each new failure (the first, or one with another error) so it can be recorded where operators
look.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from crictl import metrics, trace

log = logging.getLogger(__name__)

K = TypeVar("K")

RETRY_FIRST = 0.5
RETRY_CAP = 30.0


class KeyedGate:
    """At most `limit` holders at once per key; a key's semaphore lives only while it is held
    or waited for, so keys that come and go (pods) leave nothing behind. `release` may come
    from another task than the `acquire` (a place kept until something happens)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._gates: dict[str, tuple[asyncio.Semaphore, int]] = {}

    async def acquire(self, key: str) -> None:
        gate, users = self._gates.get(key) or (asyncio.Semaphore(self.limit), 0)
        self._gates[key] = (gate, users + 1)
        try:
            await gate.acquire()
        except BaseException:
            self._leave(key)
            raise

    def release(self, key: str) -> None:
        self._gates[key][0].release()
        self._leave(key)

    def _leave(self, key: str) -> None:
        gate, users = self._gates[key]
        if users == 1:
            del self._gates[key]
        else:
            self._gates[key] = (gate, users - 1)

    def __len__(self) -> int:
        return len(self._gates)


@dataclass
class Failure:
    attempts: int
    error: str
    since: float  # wall clock of the first failure in this run of failures
    retry_at: float  # monotonic


class KeyedQueue(Generic[K]):
    def __init__(
        self,
        reconcile: Callable[[K], Awaitable[None]],
        on_failure: Callable[[K, Exception], Awaitable[None]] | None = None,
        retry_first: float = RETRY_FIRST,
        retry_cap: float = RETRY_CAP,
        kind: str = "",
    ) -> None:
        self._reconcile = reconcile
        self.kind = kind  # what the keys name, for metrics
        self._woken_at: dict[K, float] = {}
        self._on_failure = on_failure
        self._running: dict[K, asyncio.Task[None]] = {}
        # Passes started by the worker running for a key, and the callers waiting for a pass
        # (by its number) to settle.
        self._started: dict[K, int] = {}
        self._settles: dict[K, list[tuple[int, asyncio.Future[None]]]] = {}
        self._again: set[K] = set()
        self._retries: dict[K, asyncio.TimerHandle] = {}
        self.failures: dict[K, Failure] = {}
        self.retry_first = retry_first
        self.retry_cap = retry_cap
        self.passes_failed = 0

    def wake(self, key: K) -> asyncio.Task[None]:
        """Makes sure a pass for `key` starts after now; returns the task that will run it."""
        retry = self._retries.pop(key, None)
        if retry is not None:
            retry.cancel()
        self._woken_at.setdefault(key, time.monotonic())
        task = self._running.get(key)
        if task is not None and not task.done():
            self._again.add(key)
            return task
        task = asyncio.create_task(self._run(key), name=f"reconcile {key}")
        self._running[key] = task
        task.add_done_callback(lambda t: self._done(key, t))
        return task

    async def wait(self, key: K, settled: bool = False) -> None:
        """Wakes `key` and waits for a pass that started after this call to finish; its
        exception, if any, is raised here. With `settled`, returns as soon as that pass calls
        `settle(key)`; what the pass does after that, if it fails, is retried as any pass."""
        with trace.span("queue wait"):
            task = self.wake(key)
            if not settled:
                await asyncio.shield(task)
                return
            # The pass this call woke is the worker's next: the one it runs after the present
            # pass, or the first of a worker just started.
            waiter = (self._started.get(key, 0) + 1, asyncio.get_running_loop().create_future())
            self._settles.setdefault(key, []).append(waiter)
            try:
                await asyncio.wait((task, waiter[1]), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiters = self._settles.get(key, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._settles.pop(key, None)
            if not waiter[1].done():
                await asyncio.shield(task)  # ended before it settled: its outcome is the answer

    def settle(self, key: K) -> None:
        """The pass running for `key` has done what callers waiting with `settled` wait for:
        they are answered now, the pass goes on."""
        started = self._started.get(key, 0)
        for number, future in self._settles.get(key, []):
            if number <= started and not future.done():
                future.set_result(None)

    def depth(self) -> int:
        """Keys with a pass running or a retry pending."""
        return len(self._running) + len(self._retries)

    async def _run(self, key: K) -> None:
        while True:
            self._again.discard(key)
            self._started[key] = self._started.get(key, 0) + 1
            started = time.monotonic()
            woken = self._woken_at.pop(key, None)
            if woken is not None:
                metrics.RECONCILE_WAIT.labels(self.kind).observe(started - woken)
                trace.record("queue lag", started - woken)
            try:
                await self._reconcile(key)
            except Exception as e:
                metrics.RECONCILE_PASSES.labels(self.kind, "error").observe(
                    time.monotonic() - started
                )
                if key in self._again:
                    continue  # a newer wake-up gets its own pass; report that one's outcome
                await self._failed(key, e)
                raise
            metrics.RECONCILE_PASSES.labels(self.kind, "ok").observe(time.monotonic() - started)
            self.failures.pop(key, None)
            if key not in self._again:
                return

    async def _failed(self, key: K, error: Exception) -> None:
        self.passes_failed += 1
        metrics.RECONCILE_FAILURES.labels(self.kind).inc()
        previous = self.failures.get(key)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(self.retry_cap, self.retry_first * 2 ** min(attempts - 1, 32))
        self.failures[key] = Failure(
            attempts,
            str(error) or type(error).__name__,
            previous.since if previous else time.time(),
            time.monotonic() + delay,
        )
        log.info(
            "reconcile pass failed; retrying",
            extra={"key": str(key), "attempt": attempts, "in": delay, "error": str(error)},
        )
        if self._on_failure is not None and (previous is None or previous.error != str(error)):
            try:
                await self._on_failure(key, error)
            except Exception as e:  # recording the failure must not hide it
                log.warning("recording a failed pass failed", extra={"error": str(e)})
        loop = asyncio.get_running_loop()
        self._retries[key] = loop.call_later(delay, self._retry, key)

    def _retry(self, key: K) -> None:
        if self._retries.pop(key, None) is not None:
            self.wake(key)

    def _done(self, key: K, task: asyncio.Task[None]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
            self._started.pop(key, None)  # the next worker counts its passes from 1
        if not task.cancelled():
            task.exception()  # retrieved: the error was logged, recorded and is retried

    async def drain(self) -> None:
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
