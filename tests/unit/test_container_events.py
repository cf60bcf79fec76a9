"""The event hub's logic (crictl/api/container_events.py) on fake status sources: which rows
make which events, order, fan-out, and a slow subscriber dropped instead of buffering forever."""

from __future__ import annotations

import asyncio

import pytest

from crictl import errors
from crictl.api import container_events
from crictl.api.container_events import EventHub, changes
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.store.events import RecordedEvent

E = api_pb2.ContainerEventType


def row(kind: str, oid: str, action: str, to: str | None = None) -> RecordedEvent:
    return RecordedEvent(0, 0, kind, oid, action, None, to, "", "")


def test_rows_to_event_types() -> None:
    found = changes(
        [
            row("container", "c", "created", "PENDING"),  # not yet a CRI container
            row("container", "c", "transition", "CREATED"),
            row("container", "c", "transition", "RUNNING"),
            row("container", "c", "pass-failed"),
            row("container", "c", "transition", "EXITED"),
            row("container", "c", "removed"),
            row("sandbox", "s", "transition", "READY"),
            row("sandbox", "s", "transition", "NOTREADY"),
            row("sandbox", "s", "removed"),
            row("image", "i", "removed"),
        ]
    )
    assert [(c.object_id, c.types) for c in found] == [
        ("c", (E.CONTAINER_CREATED_EVENT,)),
        ("c", (E.CONTAINER_STARTED_EVENT,)),
        ("c", (E.CONTAINER_STOPPED_EVENT,)),
        ("c", (E.CONTAINER_DELETED_EVENT,)),
        ("s", (E.CONTAINER_CREATED_EVENT, E.CONTAINER_STARTED_EVENT)),
        ("s", (E.CONTAINER_STOPPED_EVENT,)),
        ("s", (E.CONTAINER_DELETED_EVENT,)),
    ]


def fake_hub() -> EventHub:
    async def sandbox_of(cid: str) -> str | None:
        return "s"

    async def pod_status(sid: str) -> api_pb2.PodSandboxStatus | None:
        return api_pb2.PodSandboxStatus(id=sid, metadata=api_pb2.PodSandboxMetadata(uid="u"))

    async def statuses(sid: str) -> list[api_pb2.ContainerStatus]:
        return []

    return EventHub(sandbox_of, pod_status, statuses)


async def test_fan_out_in_commit_order() -> None:
    hub = fake_hub()
    got: dict[int, list[tuple[str, int]]] = {0: [], 1: []}

    async def read(n: int) -> None:
        async for e in hub.subscribe():
            got[n].append((e.container_id, e.container_event_type))
            if len(got[n]) == 3:
                return

    readers = [asyncio.create_task(read(n)) for n in (0, 1)]
    await asyncio.sleep(0)
    hub.on_commit([row("container", "a", "transition", "CREATED")])
    hub.on_commit(
        [row("container", "a", "transition", "RUNNING"), row("container", "b", "removed")]
    )
    await asyncio.wait_for(asyncio.gather(*readers), 5)
    want = [
        ("a", E.CONTAINER_CREATED_EVENT),
        ("a", E.CONTAINER_STARTED_EVENT),
        ("b", E.CONTAINER_DELETED_EVENT),
    ]
    assert got == {0: want, 1: want}
    await hub.close()


async def test_a_slow_subscriber_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container_events, "SUBSCRIBER_BUFFER", 5)
    hub = fake_hub()
    slow = hub.subscribe()
    first = asyncio.ensure_future(slow.__anext__())  # subscribed, then reads no more
    await asyncio.sleep(0)
    for i in range(10):
        hub.on_commit([row("container", f"c{i}", "transition", "RUNNING")])
    await asyncio.sleep(0.1)
    with pytest.raises(errors.ResourceExhausted, match="fell 5 events behind"):
        await first  # told at once, without the stale events it held
    assert not hub._subscribers
    await hub.close()


async def test_a_subscriber_that_leaves_is_forgotten() -> None:
    hub = fake_hub()
    sub = hub.subscribe()
    pending = asyncio.ensure_future(sub.__anext__())
    await asyncio.sleep(0)
    assert len(hub._subscribers) == 1
    pending.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await pending
    await sub.aclose()
    assert not hub._subscribers
    await hub.close()


async def test_with_nobody_subscribed_a_commit_wakes_no_loop() -> None:
    hub = fake_hub()
    handed: list[object] = []
    hub._pending.put_nowait = handed.append  # type: ignore[method-assign,assignment]
    hub.on_commit([row("container", "a", "transition", "RUNNING")])
    await asyncio.sleep(0.01)
    assert handed == []
    sub = hub.subscribe()
    first = asyncio.ensure_future(sub.__anext__())
    await asyncio.sleep(0)
    hub.on_commit([row("container", "a", "transition", "RUNNING")])
    await asyncio.sleep(0.01)
    assert len(handed) == 1
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await sub.aclose()
    hub.on_commit([row("container", "a", "removed")])
    await asyncio.sleep(0.01)
    assert len(handed) == 1
    await hub.close()


async def test_what_the_last_subscriber_left_is_dropped() -> None:
    hub = fake_hub()
    sub = hub.subscribe()
    got = asyncio.ensure_future(sub.__anext__())
    await asyncio.sleep(0)
    hub.on_commit([row("container", "a", "transition", "RUNNING")])
    event = await asyncio.wait_for(got, 5)
    assert event.container_id == "a"
    assert hub._pod_of == {"a": "s"} and set(hub._last_pod) == {"s"}
    await sub.aclose()
    assert hub._pod_of == {} and hub._last_pod == {}
    await hub.close()
