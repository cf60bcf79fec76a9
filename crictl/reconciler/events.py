"""containerd's events (tasks and images, on one subscription), the resync that follows
every (re)subscription, and the supervision of a managed containerd.

What recovery and resync rely on (what crictld trusts containerd for, and what it checks
itself):

* containerd is the truth for tasks. A task it runs is re-adopted as is (never restarted
  because crictld or containerd restarted: shims outlive both); a task that stopped yields its
  real exit code and time (containerd keeps a stopped task until it is deleted); a task it no
  longer knows (the node rebooted, its state was wiped) is EXITED with code 255 and reason
  `Unknown` for a container, NOTREADY `TaskVanished` for a sandbox, never a made-up 0.
* Events are a hint, never the only record: an exit sent while nobody listened (crictld down,
  containerd restarting, the stream broken) is found by the resync that follows the next
  subscription. The order matters and is enforced: subscribe, see our own marker event come
  back through the stream (so the subscription is live), then resync; an exit after that point
  arrives as an event, one before it is seen by the resync, and handling both is harmless
  (every handler is idempotent). An event whose handler failed (its write refused: the state
  disk full) is found the same way, by a resync run again in the stream until it succeeds.
* crictld checks itself what containerd cannot know: the pod's network namespace still being
  mounted (at start, with CNI CHECK unless the network disables it), and rows in flight, which
  get a pass that finishes or undoes them.
* Start-up recovery is just the first resync, plus the one-time work of a fresh process
  (leases and ingests of operations cut short, rows in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from google.protobuf.any_pb2 import Any as AnyPb

from crictl import errors
from crictl.containerd.client import ContainerdClient, timestamp_ns
from crictl.containerd.managed import ManagedContainerd
from crictl.gen.containerd.api.events import task_pb2 as task_events

log = logging.getLogger(__name__)

MARKER_TOPIC = "/crictld/subscribed"
# Published (with the subscription's marker) to run the resync again in the stream's order,
# after an event or a resync could not be recorded.
RESYNC_TOPIC = "/crictld/resync"
RESYNC_RETRY_FIRST = 0.5
RESYNC_RETRY_CAP = 10.0
RETRY_FIRST = 0.2
RETRY_CAP = 5.0
# The marker is published until the stream echoes it: the first may beat the subscription,
# which containerd registers a millisecond or two after the stream opens. Sent again after
# MARKER_FIRST, then twice as long each time up to MARKER_REPEAT: at a fixed 0.1 s a start
# whose first marker was lost (one of three restarts measured) waited ~0.1 s for the second
# (docs/performance.md, "Restart").
MARKER_FIRST = 0.002
MARKER_REPEAT = 0.1
PROBE_INTERVAL = 1.0
# While containerd answers calls, the supervisor asks it only after this long without an
# answer: a probe a second was most of an idle daemon's CPU (docs/performance.md, At rest).
QUIET_PROBE_INTERVAL = 5.0
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class TaskExit:
    container_id: str
    exit_status: int
    exited_at_ns: int
    pid: int = 0  # the exited process's (0: not known)


@dataclass
class EventHandlers:
    on_exit: list[Callable[[TaskExit], Awaitable[None]]] = field(default_factory=list)
    on_oom: list[Callable[[str], Awaitable[None]]] = field(default_factory=list)
    # (topic, event) of every /images/ event: the image cache decodes and queues them
    on_image: list[Callable[[str, AnyPb], None]] = field(default_factory=list)
    resync: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


class ContainerdEvents:
    """One subscription to containerd's task and image events, kept alive across outages;
    after each (re)subscription the resync handlers run (the first one is start-up
    recovery). One stream, so one marker proves it live for both: an image changed
    while the stream was down is found by the image resync, one changed after it arrives."""

    def __init__(self, containerd: ContainerdClient, handlers: EventHandlers) -> None:
        self.containerd = containerd
        self.handlers = handlers
        self.synced = asyncio.Event()  # set after the first resync (recovery) finished
        self.subscribed = False
        self.subscriptions = 0
        self.last_error = ""
        self.last_resync_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._retry_now = asyncio.Event()
        self._resync_retry: asyncio.Task[None] | None = None
        self._resync_delay = RESYNC_RETRY_FIRST
        self._resync_failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="containerd-events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def retry_now(self) -> None:
        """containerd answers again (the supervisor saw it): subscribe without waiting out
        the backoff, so exits are heard as they happen, not seconds later."""
        if not self.subscribed:
            self._retry_now.set()

    async def _run(self) -> None:
        delay = RETRY_FIRST
        while True:
            before = self.subscriptions
            self._retry_now.clear()
            try:
                await self._subscription()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.last_error = str(e)
                if self.subscribed:
                    log.warning("containerd event stream broke", extra={"error": str(e)})
            self.subscribed = False
            if self.subscriptions > before:
                delay = RETRY_FIRST  # it worked for a while: come back quickly
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry_now.wait(), delay)
            delay = min(RETRY_CAP, delay * 2)

    async def _subscription(self) -> None:
        marker = secrets.token_hex(8).encode()
        announcer = asyncio.create_task(self._announce(marker))
        try:
            async for env in self.containerd.subscribe(
                'topic=="/tasks/exit"',
                'topic=="/tasks/oom"',
                'topic~="/images/"',
                f'topic=="{MARKER_TOPIC}"',
                f'topic=="{RESYNC_TOPIC}"',
            ):
                if env.topic == MARKER_TOPIC:
                    if env.event.value == marker and not self.subscribed:
                        announcer.cancel()
                        self.subscribed = True
                        self.subscriptions += 1
                        await self._resync_or_retry(marker)
                elif env.topic == RESYNC_TOPIC:
                    if env.event.value == marker and self._resync_retry is not None:
                        self._resync_retry = None
                        await self._resync_or_retry(marker)
                elif env.topic.startswith("/images/"):
                    for handle_image in self.handlers.on_image:
                        handle_image(env.topic, env.event)
                elif env.topic == "/tasks/oom":
                    oom = task_events.TaskOOM.FromString(env.event.value)
                    try:
                        for handle_oom in self.handlers.on_oom:
                            await handle_oom(oom.container_id)
                    except errors.CrictlError as e:
                        self._retry_resync(marker, "an OOM event was not recorded", e)
                else:
                    event = task_events.TaskExit.FromString(env.event.value)
                    if event.id != event.container_id:
                        continue  # an exec'd process, not the task itself
                    exit_ = TaskExit(
                        event.container_id,
                        event.exit_status,
                        timestamp_ns(event.exited_at),
                        event.pid,
                    )
                    try:
                        for handle_exit in self.handlers.on_exit:
                            await handle_exit(exit_)
                    except errors.CrictlError as e:
                        self._retry_resync(marker, "an exit event was not recorded", e)
        finally:
            announcer.cancel()
            retry, self._resync_retry = self._resync_retry, None
            if retry is not None:  # the next subscription resyncs anyway
                retry.cancel()
            await asyncio.gather(announcer, *([retry] if retry else []), return_exceptions=True)

    async def _announce(self, marker: bytes) -> None:
        """Publishes our marker until it comes back through the stream: the subscription is
        then registered, and nothing that happens after the resync can be missed."""
        pause = MARKER_FIRST
        while True:
            with contextlib.suppress(errors.CrictlError):
                await self.containerd.publish(MARKER_TOPIC, marker)
            await asyncio.sleep(pause)
            pause = min(MARKER_REPEAT, pause * 2)

    async def _resync_or_retry(self, marker: bytes) -> None:
        """The resync, in the stream's order (no event is handled meanwhile). One that fails
        (containerd away, or the store refusing writes: its disk full) is tried again, with
        backoff, by a marker published to the stream; the stream itself is kept: should
        containerd have gone, it breaks anyway and the next subscription resyncs."""
        started = time.monotonic()
        try:
            for resync in self.handlers.resync:
                await resync()
        except errors.CrictlError as e:
            self._retry_resync(marker, "resync failed", e)
            return
        self.last_resync_at = time.time()
        self.synced.set()
        log.info(
            "resynced with containerd",
            extra={
                "subscription": self.subscriptions,
                "ms": (time.monotonic() - started) * 1e3,
                "failed_before": self._resync_failures,
            },
        )
        self._resync_delay, self._resync_failures = RESYNC_RETRY_FIRST, 0

    def _retry_resync(self, marker: bytes, what: str, error: errors.CrictlError) -> None:
        """An event or a resync could not be recorded: the resync (which compares every row
        with containerd, so finds what the event said) runs again after a backoff. The first
        failure is a warning; the next ones, until a resync succeeds, are logged at DEBUG."""
        self._resync_failures += 1
        self.last_error = str(error)
        level = logging.WARNING if self._resync_failures == 1 else logging.DEBUG
        log.log(level, what, extra={"error": str(error), "resync_in_s": self._resync_delay})
        if self._resync_retry is None:
            self._resync_retry = asyncio.create_task(
                self._publish_resync(marker, self._resync_delay), name="resync retry"
            )
            self._resync_delay = min(RESYNC_RETRY_CAP, self._resync_delay * 2)

    async def _publish_resync(self, marker: bytes, delay: float) -> None:
        await asyncio.sleep(delay)
        while True:
            with contextlib.suppress(errors.CrictlError):
                await self.containerd.publish(RESYNC_TOPIC, marker)
                return
            await asyncio.sleep(RESYNC_RETRY_CAP)


class Supervisor:
    """Restarts a managed containerd that exited (with backoff; its shims and containers
    survive it) and tracks whether containerd answers. An external containerd is only
    watched: the gRPC channel reconnects by itself and the task events resubscribe.

    A managed containerd's process is checked every PROBE_INTERVAL. containerd is asked
    (`Version`) every PROBE_INTERVAL while it is down, and while it is up only once no call
    has been answered for QUIET_PROBE_INTERVAL, or at the next tick once a call or the event
    stream found it unreachable (a restart breaks the stream at once): a hang of a quiet
    containerd is seen within QUIET_PROBE_INTERVAL + PROBE_TIMEOUT, its return within
    PROBE_INTERVAL. Status asks containerd itself on each call."""

    def __init__(
        self,
        containerd: ContainerdClient,
        managed: ManagedContainerd | None,
        on_back: Callable[[], None] = lambda: None,
    ) -> None:
        self.containerd = containerd
        self.managed = managed
        self.on_back = on_back  # containerd answers again after an outage
        self.connected = True
        self.restarts = 0
        self.outages = 0
        self.last_error = ""
        self.down_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="containerd-supervisor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = RETRY_FIRST
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            if self.managed is not None and not self.managed.alive():
                self._down("the managed containerd exited")
                try:
                    await self.managed.ensure_running()
                    self.restarts += 1
                    backoff = RETRY_FIRST
                    log.warning("restarted the managed containerd", extra={"pid": self.managed.pid})
                except errors.CrictlError as e:
                    self.last_error = str(e)
                    log.error("managed containerd does not start", extra={"error": str(e)})
                    await asyncio.sleep(backoff)
                    backoff = min(RETRY_CAP * 6, backoff * 2)
                    continue
            quiet = time.monotonic() - self.containerd.answered_at
            if self.connected and quiet < QUIET_PROBE_INTERVAL:
                continue
            try:
                await self.containerd.version(timeout=PROBE_TIMEOUT)
            except errors.CrictlError as e:
                self._down(str(e))
                continue
            if not self.connected:
                log.warning(
                    "containerd is back",
                    extra={"down_s": round(time.monotonic() - (self.down_since or 0), 1)},
                )
                self.on_back()
            self.connected = True
            self.down_since = None

    def _down(self, why: str) -> None:
        if self.connected:
            self.outages += 1
            self.down_since = time.monotonic()
            log.warning("containerd is unreachable", extra={"error": why})
        self.connected = False
        self.last_error = why
