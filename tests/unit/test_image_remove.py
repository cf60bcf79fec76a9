"""RemoveImage's deletes and the image events they cause: containerd commits each delete,
publishes its event, and only then (the deletes are synchronous) collects garbage. The
refresh an event triggers must not ask containerd anything while that collection runs
(measured: it slowed that delete by ~2 ms); the removal records what containerd deleted while
the collection runs, once the event says it committed, and also when a later delete fails."""

from __future__ import annotations

import asyncio

import pytest

from crictl import errors
from crictl.gen.containerd.api.services.images.v1 import images_pb2
from crictl.reconciler.images import ImageManager
from crictl.store.engine import Store
from tests.unit.test_image_resync import image, manager, names

TAG = "registry.local/a:1"
DIGEST = "registry.local/a@sha256:" + f"{1:064x}"


class Containerd:
    """An image store whose deletes echo back as events while they run."""

    def __init__(self, images: list[images_pb2.Image]) -> None:
        self.images = {i.name: i for i in images}
        self.manager: ImageManager | None = None
        self.gets: list[str] = []
        self.fail_on: str | None = None
        self.gc: asyncio.Event | None = None  # set: the synchronous collection may end
        self.gc_fails = False
        self.collecting = asyncio.Event()
        self.calls: list[tuple[str, bool]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def list_images(self) -> list[images_pb2.Image]:
        return list(self.images.values())

    async def get_image(self, name: str) -> images_pb2.Image | None:
        self.gets.append(name)
        return self.images.get(name)

    async def delete_image(self, name: str, sync: bool = False) -> bool:
        self.calls.append((name, sync))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # a round trip: the other deletes are sent meanwhile
            return await self._delete(name, sync)
        finally:
            self.in_flight -= 1

    async def _delete(self, name: str, sync: bool) -> bool:
        if name == self.fail_on:
            raise errors.Unavailable("containerd went away")
        found = self.images.pop(name, None) is not None
        assert self.manager is not None
        await self.manager.on_event("/images/delete", name)  # published before the collection
        if sync:
            self.collecting.set()
            if self.gc is not None:
                await self.gc.wait()
            if self.gc_fails:
                raise errors.Internal("garbage collection failed")
        return found


def setup(store: Store) -> tuple[ImageManager, Containerd]:
    m, _ = manager(store, [])
    fake = Containerd([image(TAG, 1), image(DIGEST, 1)])
    fake.manager = m
    m.containerd = fake  # type: ignore[assignment]
    asyncio.run(m.resync())
    assert names(m) == {TAG, DIGEST}
    return m, fake


def test_the_echo_of_a_removal_asks_containerd_nothing(store: Store) -> None:
    m, fake = setup(store)
    asyncio.run(m.remove(TAG))
    assert names(m) == set()
    assert fake.gets == []
    assert m.status(TAG) is None


def test_the_names_are_deleted_at_once_each_synchronously(store: Store) -> None:
    """Sent at once, the deletes commit in an order nobody knows: each waits for its own
    collection, so when the last answers what the image held is freed."""
    m, fake = setup(store)
    asyncio.run(m.remove(TAG))
    assert sorted(fake.calls) == [(TAG, True), (DIGEST, True)]
    assert fake.most_in_flight == 2


def test_a_removal_cut_short_records_what_was_deleted(store: Store) -> None:
    m, fake = setup(store)
    fake.fail_on = DIGEST
    with pytest.raises(errors.Unavailable):
        asyncio.run(m.remove(TAG))
    assert names(m) == {DIGEST}  # the tag is gone from containerd and from the cache
    # the removal no longer owns the name: its events are refreshed again
    fake.images.pop(DIGEST)
    asyncio.run(m.refresh(DIGEST))
    assert fake.gets == [DIGEST] and names(m) == set()


async def held_in_gc(m: ImageManager, fake: Containerd, spec: str) -> asyncio.Task[None]:
    """A removal of `spec`, started and now waiting in containerd's (held) collection."""
    fake.gc = asyncio.Event()
    removal = asyncio.create_task(m.remove(spec))
    await fake.collecting.wait()
    return removal


def test_the_removal_is_recorded_while_containerd_collects(store: Store) -> None:
    m, fake = setup(store)

    async def run() -> None:
        removal = await held_in_gc(m, fake, TAG)
        for _ in range(50):  # the cache write runs in the store's writer thread
            if not names(m):
                break
            await asyncio.sleep(0.01)
        assert names(m) == set() and not removal.done()  # recorded, still collecting
        assert fake.gc is not None
        fake.gc.set()
        await removal

    asyncio.run(run())
    assert m.status(TAG) is None and fake.gets == []


def test_a_collection_that_fails_after_the_delete_keeps_the_record(store: Store) -> None:
    """The event said containerd deleted the name: the cache says so too, and the error of the
    collection is the answer."""
    m, fake = setup(store)
    fake.gc_fails = True
    with pytest.raises(errors.Internal):
        asyncio.run(m.remove(TAG))
    assert names(m) == set()


def test_a_removal_cancelled_after_the_delete_committed_records_it(store: Store) -> None:
    m, fake = setup(store)

    async def run() -> None:
        removal = await held_in_gc(m, fake, DIGEST)
        removal.cancel()  # the client's deadline, say, mid-collection
        with pytest.raises(asyncio.CancelledError):
            await removal

    asyncio.run(run())
    assert names(m) == set()  # both deletes committed: neither name stays in the cache
