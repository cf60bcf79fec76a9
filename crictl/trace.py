"""Where a CRI call's time goes: named spans recorded against the call being served.

The API's interceptor starts a `Trace` for each call and puts it in a context variable; the
store (writes, reads), the reconcile queue (waiting for a pass), the containerd client (each
round trip), CNI and runc executions record spans with `span(name)`. A reconcile pass runs in a
task the call's wake-up created, which copies the call's context, so the pass's spans land in
the call that caused it. The interceptor logs the totals with the call's line:
`"spans": {"containerd create task": [1, 12.3], ...}` (count, milliseconds), which
`benchmarks/` turns into a per-RPC breakdown. Spans nest (a containerd call inside a queue
wait), so their times are not meant to add up; the count of `containerd ...` spans is the
number of round trips the call made.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class Trace:
    __slots__ = ("spans",)

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}  # name -> [count, seconds]

    def add(self, name: str, seconds: float) -> None:
        entry = self.spans.get(name)
        if entry is None:
            self.spans[name] = [1, seconds]
        else:
            entry[0] += 1
            entry[1] += seconds

    def summary(self) -> dict[str, list[float]]:
        """{name: [count, milliseconds]}, for the call's log line."""
        return {k: [int(n), round(s * 1000, 3)] for k, (n, s) in self.spans.items()}


CURRENT: ContextVar[Trace | None] = ContextVar("crictld_trace", default=None)


@contextlib.contextmanager
def span(name: str) -> Iterator[None]:
    """Times the block into the current call's trace (nothing when no call is traced)."""
    trace = CURRENT.get()
    if trace is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        trace.add(name, time.perf_counter() - started)


def record(name: str, seconds: float) -> None:
    trace = CURRENT.get()
    if trace is not None:
        trace.add(name, seconds)


async def to_thread(name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """`asyncio.to_thread`, timed as a span."""
    with span(name):
        return await asyncio.to_thread(fn, *args, **kwargs)
