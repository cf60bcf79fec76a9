"""The one event subscription (crictl.reconciler.events): nothing is dispatched as live before
our marker comes back, the resync runs once per subscription, image events reach the image
cache without waiting on task handlers, and a broken stream resubscribes at once when the
supervisor says containerd is back, not after its backoff."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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
