"""The CRI server's own event loop, so that reads answer while the daemon's loop is busy.

On the daemon's loop every turn also runs reconcile passes, containerd answers and store
wake-ups: while 100 pods start, a turn takes ~20 ms, and under grpc's asyncio server (which
accepted one call a turn) a ListPodSandbox sent behind the 100 RunPodSandbox waited 1-4 s to
be accepted (docs/performance.md, "Reads during the burst"). So the server runs on a loop of
its own, in its own thread (the front), which does little more than read and answer calls:

- An RPC whose handler answers from the read model alone (the store's snapshot, the image
  index: both published whole by the store's writer thread, so any thread reads them) or the
  store's readers is marked `@on_front` and runs on the front loop. So does Status, whose
  containerd probe goes over a client made for the front loop (crictl.reconciler.health).
  One marked `@on_front(falls_back=True)` may find, before it changed anything, that this
  request needs the daemon's loop after all (a verbose status whose spec the row does not
  hold asks containerd): it calls `needs_daemon()`, and the whole handler runs again there.
- Every other RPC runs on the daemon's loop: the front hands the handler's coroutine over
  (`hand_over`) and waits for it; the client's cancellation is handed on too.
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
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

UnaryImpl = Callable[[Any, Any], Awaitable[Any]]
StreamImpl = Callable[[Any, Any], AsyncIterator[Any]]

_MARK = "_crictld_on_front"
_PLAIN = "plain"
_FALLS_BACK = "falls back"
# True while a `falls_back` handler runs on the front loop (set in its task's context only)
_ON_FRONT: contextvars.ContextVar[bool] = contextvars.ContextVar("on_front", default=False)


class NeedsDaemon(Exception):
    """Raised on the front loop by `needs_daemon()`: the dispatcher runs the handler again on
    the daemon's loop."""


def needs_daemon() -> None:
    """Called by a `@on_front(falls_back=True)` handler at the step that needs the daemon's
    loop (containerd's client lives there), before it changed anything: on the front loop it
    ends the handler, which then runs again, whole, on the daemon's loop; there it returns."""
    if _ON_FRONT.get():
        raise NeedsDaemon


def on_front(falls_back: bool = False) -> Callable[[F], F]:
    """Marks a servicer method that answers from the read model and the store's readers: no
    containerd through the daemon's client, no reconciler, no asyncio object of the daemon's
    loop. It runs on the front loop; with `falls_back`, a request it calls `needs_daemon()`
    for runs on the daemon's."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, _FALLS_BACK if falls_back else _PLAIN)
        return fn

    return mark


def front_rule(impl: Callable[..., Any]) -> str | None:
    """How `impl` is marked: `_PLAIN`, `_FALLS_BACK`, or None (the daemon's loop)."""
    rule: str | None = getattr(impl, _MARK, None)
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
    to the daemon's loop (with `falls_back`: first itself, then handed over if it asked)."""
    rule = front_rule(impl)
    if rule == _PLAIN:
        return impl

    async def on_daemon(request: Any, context: Any) -> Any:
        # Cancelling the wait (the client went away) cancels the handler's task.
        return await hand_over(impl(request, context), daemon)

    if rule is None:
        return on_daemon

    async def falling_back(request: Any, context: Any) -> Any:
        token = _ON_FRONT.set(True)
        try:
            return await impl(request, context)
        except NeedsDaemon:
            pass
        finally:
            _ON_FRONT.reset(token)  # before the hand-over, which copies this context
        return await on_daemon(request, context)

    return falling_back


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def hand_over(awaitable: Awaitable[T], daemon: asyncio.AbstractEventLoop) -> T:
    """`awaitable` run as a task on the `daemon` loop, its outcome awaited on this one;
    cancelling the wait cancels the task (and a task cancelled there cancels the wait).

    What `run_coroutine_threadsafe` and `wrap_future` did, with half their CPU: their
    concurrent future, its lock and the chaining into an asyncio one cost ~90 us a round trip
    between two loops where two `call_soon_threadsafe` cost ~50 (a scratch loop, warm); every
    call not answered on the front pays one. The task runs in a copy of the caller's context,
    as there (the call's trace is in it)."""
    front = asyncio.get_running_loop()
    answer: asyncio.Future[T] = front.create_future()
    started: list[asyncio.Task[T]] = []  # touched on the daemon's loop only

    def start() -> None:
        task = daemon.create_task(_await(awaitable))
        started.append(task)
        task.add_done_callback(finished)

    def finished(task: asyncio.Task[T]) -> None:
        with contextlib.suppress(RuntimeError):  # the front loop closed: nobody waits
            front.call_soon_threadsafe(_settle, answer, task)

    def cancel() -> None:
        for task in started:
            task.cancel()

    daemon.call_soon_threadsafe(start)  # before `cancel`, which runs after it there
    try:
        return await answer
    except asyncio.CancelledError:
        with contextlib.suppress(RuntimeError):  # the daemon's loop closed: nothing runs
            daemon.call_soon_threadsafe(cancel)
        raise


def _settle(answer: asyncio.Future[T], task: asyncio.Task[T]) -> None:
    # the task's error is taken even when nobody waits: asyncio would log it as never retrieved
    error = None if task.cancelled() else task.exception()
    if answer.done():  # the wait was cancelled
        return
    if task.cancelled():
        answer.cancel()
    elif error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(task.result())


_END = object()


def dispatch_stream(impl: StreamImpl, daemon: asyncio.AbstractEventLoop) -> StreamImpl:
    """A server-streaming `impl` as the front loop calls it: itself where it is marked
    `@on_front`, else iterated on the daemon's loop, each item handed to the front's."""
    rule = front_rule(impl)
    if rule == _PLAIN:
        return impl
    if rule is not None:
        raise TypeError(f"{impl.__qualname__}: `falls_back` is for unary RPCs only")

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
