"""The CRI server's own event loop, so that reads answer while the daemon's loop is busy.

On the daemon's loop every turn also runs reconcile passes, containerd answers and store
wake-ups: while 100 pods start, a turn takes ~20 ms, and under grpc's asyncio server (which
accepted one call a turn) a ListPodSandbox sent behind the 100 RunPodSandbox waited 1-4 s to
be accepted (docs/performance.md, "Reads during the burst"). So the server runs on a loop of
its own, in its own thread (the front), which does little more than read and answer calls:

- An RPC whose handler answers from the read model alone (the store's snapshot, the image
  index: both published whole by the store's writer thread, so any thread reads them) is
  marked `@on_front` and runs on the front loop.
- Every other RPC runs on the daemon's loop: the front hands the handler's coroutine over
  (`run_coroutine_threadsafe`) and waits for it; the client's cancellation is handed on too.
  A server-streaming one is pumped from the daemon's loop into the front's.

The server is crictld's own (`crictl.api.server`), plain asyncio: the front loop does not
use grpc, which the daemon's loop alone uses (its containerd client). Under grpc's asyncio
server both loops were bound to grpc's one completion-queue poller and both woke for every
completion (docs/performance.md, "The gRPC server").

Handlers never use the gRPC context (the interceptor does, on the front loop): it belongs to
the front loop's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

UnaryImpl = Callable[[Any, Any], Awaitable[Any]]
StreamImpl = Callable[[Any, Any], AsyncIterator[Any]]
# True for a request the front may not answer itself (it asks containerd, say)
Unless = Callable[[Any], bool]

_MARK = "_crictld_on_front"


def _never(_request: Any) -> bool:
    return False


def on_front(unless: Unless = _never) -> Callable[[F], F]:
    """Marks a servicer method that answers from the read model alone: no containerd, no
    reconciler, no asyncio object of the daemon's loop. It runs on the front loop, except for
    the requests `unless` is true for (a verbose status asks containerd for the spec)."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, unless)
        return fn

    return mark


def front_rule(impl: Callable[..., Any]) -> Unless | None:
    """`impl`'s `unless` if it is marked `@on_front`, else None."""
    rule: Unless | None = getattr(impl, _MARK, None)
    return rule


class FrontLoop:
    """A thread running the event loop the CRI server lives on (made and started on it, through
    `run`)."""

    def __init__(self, name: str = "cri-front") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` on the front loop and waits for it from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        """Stops the loop once what is scheduled on it ran, closes it and joins its thread
        (from any thread but its own, a running loop's included)."""
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()


def dispatch_unary(impl: UnaryImpl, daemon: asyncio.AbstractEventLoop) -> UnaryImpl:
    """`impl` as the front loop calls it: itself where it is marked `@on_front`, else handed
    to the daemon's loop."""
    unless = front_rule(impl)
    if unless is _never:
        return impl

    async def dispatched(request: Any, context: Any) -> Any:
        if unless is not None and not unless(request):
            return await impl(request, context)
        # Cancelling the wait (the client went away) cancels the handler's task.
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(_await(impl(request, context)), daemon)
        )

    return dispatched


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


_END = object()


def dispatch_stream(impl: StreamImpl, daemon: asyncio.AbstractEventLoop) -> StreamImpl:
    """A server-streaming `impl` as the front loop calls it: itself where it is marked
    `@on_front`, else iterated on the daemon's loop, each item handed to the front's."""
    rule = front_rule(impl)
    if rule is _never:
        return impl
    if rule is not None:
        raise TypeError(f"{impl.__qualname__}: `unless` is for unary RPCs only")

    async def dispatched(request: Any, context: Any) -> AsyncIterator[Any]:
        front = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()

        def hand(item: Any, error: BaseException | None = None) -> None:
            front.call_soon_threadsafe(items.put_nowait, (item, error))

        async def pump() -> None:
            try:
                async for item in impl(request, context):
                    hand(item)
            except asyncio.CancelledError:
                raise  # the front went away: nobody reads
            except Exception as e:  # handed to the front, which raises it to the mapping
                hand(_END, e)
            else:
                hand(_END)

        pumping = asyncio.run_coroutine_threadsafe(pump(), daemon)
        try:
            while True:
                item, error = await items.get()
                if item is _END:
                    if error is not None:
                        raise error
                    return
                yield item
        finally:
            pumping.cancel()

    return dispatched


def verbose(request: Any) -> bool:
    """For `@on_front(unless=verbose)`: a verbose status asks containerd for the spec."""
    return bool(request.verbose)
