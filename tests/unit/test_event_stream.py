"""The one event subscription (crictl.reconciler.events): nothing is dispatched as live before
our marker comes back, the resync runs once per subscription, image events reach the image
cache without waiting on task handlers, and a broken stream resubscribes at once when the
supervisor says containerd is back, not after its backoff."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from google.protobuf.any_pb2 import Any as AnyPb

from crictl import errors
from crictl.gen.containerd.api.events import task_pb2 as task_events
from crictl.gen.containerd.api.services.events.v1 import events_pb2
from crictl.reconciler import events
from crictl.reconciler.events import ContainerdEvents, EventHandlers, TaskExit


def envelope(topic: str, value: bytes, type_url: str = "") -> events_pb2.Envelope:
    return events_pb2.Envelope(topic=topic, event=AnyPb(type_url=type_url, value=value))


class Containerd:
    """A stream that sends what `script` holds after our marker, then breaks; the next
    subscriptions fail until `back` is set."""

    def __init__(self, script: list[events_pb2.Envelope]) -> None:
        self.script = script
        self.marker = asyncio.Queue[bytes]()
        self.subscribes = 0
        self.filters: tuple[str, ...] = ()
        self.back = asyncio.Event()
        self.failed_again = asyncio.Event()  # a subscription failed after the break

    async def publish(self, topic: str, payload: bytes) -> None:
        assert topic == events.MARKER_TOPIC
        self.marker.put_nowait(payload)

    async def subscribe(self, *filters: str) -> AsyncIterator[events_pb2.Envelope]:
        self.subscribes += 1
        self.filters = filters
        if self.subscribes > 1 and not self.back.is_set():
            if self.subscribes > 2:
                self.failed_again.set()  # the backoff has doubled at least once
            raise errors.Unavailable("containerd is away")
        yield envelope(events.MARKER_TOPIC, await self.marker.get())
        if self.subscribes == 1:
            for env in self.script:
                yield env
            raise errors.Unavailable("Stream removed")
        await asyncio.Event().wait()  # the second stream stays up


def test_one_stream_for_tasks_and_images_resubscribed_when_containerd_is_back() -> None:
    exit_ = task_events.TaskExit(container_id="c1", id="c1", exit_status=3)
    exec_exit = task_events.TaskExit(container_id="c1", id="exec-1", exit_status=1)
    script = [
        envelope("/images/delete", b"img", "containerd.services.images.v1.ImageDelete"),
        envelope("/tasks/exit", exec_exit.SerializeToString()),
        envelope("/tasks/exit", exit_.SerializeToString()),
    ]
    containerd = Containerd(script)
    seen: list[object] = []
    resyncs: list[int] = []
    resynced_again = asyncio.Event()

    async def on_exit(e: TaskExit) -> None:
        seen.append(e)

    async def resync() -> None:
        resyncs.append(containerd.subscribes)
        if len(resyncs) == 2:
            resynced_again.set()

    def on_image(topic: str, event: AnyPb) -> None:
        seen.append((topic, event.value))

    async def run() -> None:
        stream = ContainerdEvents(
            containerd,  # type: ignore[arg-type]
            EventHandlers(on_exit=[on_exit], on_image=[on_image], resync=[resync]),
        )
        stream.start()
        await asyncio.wait_for(stream.synced.wait(), 5)
        await asyncio.wait_for(containerd.failed_again.wait(), 5)
        assert stream.subscriptions == 1
        containerd.back.set()
        stream.retry_now()
        loop = asyncio.get_running_loop()
        woken = loop.time()
        await asyncio.wait_for(resynced_again.wait(), 5)
        # well under the backoff it was in (0.2 s, doubling, to 5 s)
        assert loop.time() - woken < events.RETRY_FIRST
        await stream.stop()

    asyncio.run(run())
    assert 'topic~="/images/"' in containerd.filters
    assert seen == [("/images/delete", b"img"), TaskExit("c1", 3, 0)]  # not the exec's exit
    assert resyncs == [1, containerd.subscribes]


class Echo:
    """A stream that stays up and echoes what is published to it, after what `inject` adds."""

    def __init__(self) -> None:
        self.stream = asyncio.Queue[events_pb2.Envelope]()
        self.subscribes = 0

    async def publish(self, topic: str, payload: bytes) -> None:
        self.stream.put_nowait(envelope(topic, payload))

    def inject(self, env: events_pb2.Envelope) -> None:
        self.stream.put_nowait(env)

    async def subscribe(self, *filters: str) -> AsyncIterator[events_pb2.Envelope]:
        self.subscribes += 1
        while True:
            yield await self.stream.get()


def test_an_exit_the_store_refused_is_recorded_by_a_resync_retried_in_the_same_stream(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exit handler that fails (the state disk full) does not break the stream: the resync
    runs again, with backoff, until it succeeds, and only the first failure is a warning."""
    monkeypatch.setattr(events, "RESYNC_RETRY_FIRST", 0.01)
    containerd = Echo()
    full = True
    resyncs: list[bool] = []  # each resync: whether it could write
    failed_thrice, recovered = asyncio.Event(), asyncio.Event()

    async def on_exit(e: TaskExit) -> None:
        raise errors.ResourceExhausted("disk full")

    async def resync() -> None:
        resyncs.append(not full)
        if len(resyncs) == 4:
            failed_thrice.set()
        if full:
            raise errors.ResourceExhausted("disk full")
        if len(resyncs) > 1:
            recovered.set()

    async def run() -> ContainerdEvents:
        nonlocal full
        stream = ContainerdEvents(
            containerd,  # type: ignore[arg-type]
            EventHandlers(on_exit=[on_exit], resync=[resync]),
        )
        full = False
        stream.start()
        await asyncio.wait_for(stream.synced.wait(), 5)
        full = True
        exit_ = task_events.TaskExit(container_id="c1", id="c1", exit_status=137)
        containerd.inject(envelope("/tasks/exit", exit_.SerializeToString()))
        await asyncio.wait_for(failed_thrice.wait(), 5)  # the first resync, three retries
        full = False
        await asyncio.wait_for(recovered.wait(), 5)
        await stream.stop()
        return stream

    with caplog.at_level("DEBUG", logger="crictl.reconciler.events"):
        stream = asyncio.run(run())
    assert containerd.subscribes == 1 and stream.subscriptions == 1  # never broken
    assert resyncs[0] and not any(resyncs[1:4]) and resyncs[-1]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["an exit event was not recorded"]
    assert [r.getMessage() for r in caplog.records if "resynced" in r.getMessage()][-1:] == [
        "resynced with containerd"
    ]
    assert stream._resync_failures == 0 and stream._resync_delay == events.RESYNC_RETRY_FIRST


class LateSubscription:
    """A stream containerd registers only after `late` publishes: those markers are lost, as
    the first is when it beats the subscription, and the next ones are echoed."""

    def __init__(self, late: int) -> None:
        self.late = late
        self.published = 0
        self.stream = asyncio.Queue[events_pb2.Envelope]()

    async def publish(self, topic: str, payload: bytes) -> None:
        self.published += 1
        if self.published > self.late:
            self.stream.put_nowait(envelope(topic, payload))

    async def subscribe(self, *filters: str) -> AsyncIterator[events_pb2.Envelope]:
        while True:
            yield await self.stream.get()


@pytest.mark.parametrize("late", [1, 4, 9])
def test_a_lost_marker_is_sent_again_soon_then_less_often(
    late: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker lost to a subscription not yet registered is sent again after
    MARKER_FIRST, the pause doubling to MARKER_REPEAT: a start waits for the second marker
    (a few milliseconds), not a fixed 0.1 s."""
    containerd = LateSubscription(late)
    pauses: list[float] = []
    sleep = asyncio.sleep

    async def recorded(delay: float) -> None:
        pauses.append(delay)
        await sleep(0)

    async def run() -> None:
        stream = ContainerdEvents(containerd, EventHandlers())  # type: ignore[arg-type]
        monkeypatch.setattr(asyncio, "sleep", recorded)
        stream.start()
        await asyncio.wait_for(stream.synced.wait(), 5)
        monkeypatch.undo()
        await stream.stop()

    asyncio.run(run())
    expected = [min(events.MARKER_REPEAT, events.MARKER_FIRST * 2**i) for i in range(late)]
    assert pauses[:late] == expected
    assert expected[0] == 0.002 and max(pauses) <= events.MARKER_REPEAT
    assert containerd.published in (late + 1, late + 2)  # the echo may overtake one more
