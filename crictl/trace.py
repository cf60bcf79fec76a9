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
import os
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


# CRICTLD_TRACE_TIMELINE=1: each call's log line also carries `"timeline"`, every span as
# [name, start, duration] (ms from the call's start), to see which steps overlap.
TIMELINE = os.environ.get("CRICTLD_TRACE_TIMELINE") == "1"


class Trace:
    __slots__ = ("spans", "started", "timeline")

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}  # name -> [count, seconds]
        self.started = time.perf_counter()
        self.timeline: list[tuple[str, float, float]] | None = [] if TIMELINE else None

    def add(self, name: str, seconds: float) -> None:
        if self.timeline is not None:
            end = time.perf_counter() - self.started
            self.timeline.append((name, round((end - seconds) * 1000, 2), round(seconds * 1000, 2)))
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
