"""RemoveImage's deletes and the image events they cause: containerd echoes each delete back
as an event, and the refresh it triggers must not ask containerd anything while the removal's
synchronous garbage collection runs (measured: it slowed that delete by ~2 ms); the removal
records what containerd deleted, also when a later delete fails."""

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

    async def list_images(self) -> list[images_pb2.Image]:
        return list(self.images.values())

    async def get_image(self, name: str) -> images_pb2.Image | None:
        self.gets.append(name)
        return self.images.get(name)

    async def delete_image(self, name: str, sync: bool = False) -> bool:
        if name == self.fail_on:
            raise errors.Unavailable("containerd went away")
        found = self.images.pop(name, None) is not None
        assert self.manager is not None
        await self.manager.refresh(name)  # the /images/delete event, seen mid-removal
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
