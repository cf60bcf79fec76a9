"""A keyed work queue: one worker per key at a time, repeated wake-ups collapse into one more
pass, and a caller can wait for the pass its wake-up caused (shielded: a caller that gives up,
its deadline passed, never cancels the work; a retry attaches to the same pass)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K")


class KeyedQueue(Generic[K]):
    def __init__(self, reconcile: Callable[[K], Awaitable[None]]) -> None:
        self._reconcile = reconcile
        self._running: dict[K, asyncio.Task[None]] = {}
        self._again: set[K] = set()

    def wake(self, key: K) -> asyncio.Task[None]:
        """Makes sure a pass for `key` starts after now; returns the task that will run it."""
        task = self._running.get(key)
        if task is not None and not task.done():
            self._again.add(key)
            return task
        task = asyncio.create_task(self._run(key), name=f"reconcile {key}")
        self._running[key] = task
        task.add_done_callback(lambda t: self._done(key, t))
        return task

    async def wait(self, key: K) -> None:
        """Wakes `key` and waits for a pass that started after this call to finish; its
        exception, if any, is raised here."""
        await asyncio.shield(self.wake(key))

    async def _run(self, key: K) -> None:
        while True:
            self._again.discard(key)
            try:
                await self._reconcile(key)
            except Exception:
                if key in self._again:
                    continue  # a newer wake-up gets its own pass; report that one's outcome
                raise
            if key not in self._again:
                return

    def _done(self, key: K, task: asyncio.Task[None]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled() and task.exception() is not None:
            log.debug("reconcile pass failed", extra={"key": str(key)})

    async def drain(self) -> None:
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
