"""A pull's own image records come back as containerd events while the pull is still
recording them: those are left to the pull (each used to cost a second describe and cache
write beside it); events for other names of the same repository that arrive meanwhile are
refreshed once the pull ends, and every held name is refreshed when the pull fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from crictl import errors
from crictl.gen.containerd.api.services.images.v1 import images_pb2
from crictl.images.pull import ImageContent
from crictl.images.reference import Reference
from crictl.images.registry import Credentials, Descriptor
from crictl.reconciler.images import ImageManager
from crictl.store.engine import Store
from tests.unit.test_image_resync import MANIFEST, content, image, manager, names

REPO = "registry.local/app"
TAG = f"{REPO}:1"
DIGEST = f"{REPO}@sha256:{7:064x}"
OTHER = f"{REPO}:other"  # tagged by another client while the pull runs


class Containerd:
    def __init__(self) -> None:
        self.images: dict[str, images_pb2.Image] = {}
        self.gets: list[str] = []

    async def list_images(self) -> list[images_pb2.Image]:
        return list(self.images.values())

    async def get_image(self, name: str) -> images_pb2.Image | None:
        self.gets.append(name)
        return self.images.get(name)


class Puller:
    """Creates the records, each echoed back as an event before the pull records them."""

    def __init__(self, m: ImageManager, fake: Containerd) -> None:
        self.m, self.fake = m, fake
        self.fail = False
        self.known_before: dict[str, str | None] = {}
        self.config_before: str | None = None

    async def pull(
        self,
        ref: Reference,
        creds: Credentials | None,
        record: Callable[[ImageContent, list[str]], Awaitable[None]],
        known: Callable[[str], str | None] | None = None,
        known_config: Callable[[str], str | None] | None = None,
    ) -> tuple[ImageContent, list[str]]:
        assert known is not None and known_config is not None
        target = Descriptor(MANIFEST, f"sha256:{7:064x}", 9)
        self.known_before = {name: known(name) for name in (TAG, DIGEST)}
        self.config_before = known_config(content(target).id)
        for name in (TAG, DIGEST, OTHER):
            self.fake.images[name] = image(name, 7)
            await self.m.on_event("/images/create", name)
        if self.fail:
            raise errors.Unavailable("containerd went away")
        await record(content(target), [TAG, DIGEST])
        return content(target), [TAG, DIGEST]

    async def describe(self, target: Descriptor) -> ImageContent:
        return content(target)


def setup(store: Store) -> tuple[ImageManager, Containerd, Puller]:
    m, _ = manager(store, [])
    fake = Containerd()
    m.containerd = fake  # type: ignore[assignment]
    puller = Puller(m, fake)
    m.puller = puller  # type: ignore[assignment]
    asyncio.run(m.resync())
    return m, fake, puller


def test_the_pulls_own_records_are_left_to_it(store: Store) -> None:
    m, fake, puller = setup(store)
    asyncio.run(m.pull(TAG))
    assert fake.gets == [OTHER]  # asked once the pull ended; its own names never
    assert names(m) == {TAG, DIGEST, OTHER}
    assert m.status(TAG) is not None and m.status(OTHER) is not None
    # the puller is told where the cache holds each name, and its config: none the first time
    assert puller.known_before == {TAG: None, DIGEST: None}
    assert puller.config_before is None
    asyncio.run(m.pull(TAG))
    assert puller.known_before == {TAG: f"sha256:{7:064x}", DIGEST: f"sha256:{7:064x}"}
    assert puller.config_before is not None
    assert json.loads(puller.config_before) == dict(
        content(Descriptor(MANIFEST, "", 0)).config_json
    )


def test_a_failed_pull_refreshes_every_name_it_held(store: Store) -> None:
    m, fake, puller = setup(store)
    puller.fail = True
    with pytest.raises(errors.Unavailable):
        asyncio.run(m.pull(TAG))
    assert sorted(fake.gets) == sorted([TAG, DIGEST, OTHER])
    assert names(m) == {TAG, DIGEST, OTHER}  # containerd has them: so has the cache
    assert m._pulling == {} and m._held_events == {}
