"""The image cache's resync from containerd's image store. containerd killed while a resync
reads image content must leave the cache as it was: a chaos run saw a resync that skipped
every image it could not read (containerd was gone), replace the cache with none, and
CreateContainer answer "image not found" until the next resync."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from crictl import errors
from crictl.gen.containerd.api.services.images.v1 import images_pb2
from crictl.gen.containerd.api.types import descriptor_pb2
from crictl.images.pull import ImageContent
from crictl.images.registry import Descriptor
from crictl.reconciler.images import ImageManager
from crictl.store.engine import Store

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def image(name: str, n: int) -> images_pb2.Image:
    return images_pb2.Image(
        name=name,
        target=descriptor_pb2.Descriptor(media_type=MANIFEST, digest=f"sha256:{n:064x}", size=9),
    )


def content(target: Descriptor) -> ImageContent:
    config = Descriptor(
        "application/vnd.oci.image.config.v1+json", "sha256:c" + target.digest[8:], 5
    )
    return ImageContent(target, target, config, (), (), {"config": {}})


class Containerd:
    def __init__(self, images: list[images_pb2.Image]) -> None:
        self.images = images

    async def list_images(self) -> list[images_pb2.Image]:
        return self.images


class Puller:
    """Reads content; `failing` digests raise what containerd's death or a lost blob would."""

    def __init__(self) -> None:
        self.failing: dict[str, errors.CrictlError] = {}

    async def describe(self, target: Descriptor) -> ImageContent:
        if target.digest in self.failing:
            raise self.failing[target.digest]
        return content(target)


def manager(store: Store, images: list[images_pb2.Image]) -> tuple[ImageManager, Puller]:
    m = ImageManager(store, Containerd(images), registry=None, pause_image="pause:3.10")  # type: ignore[arg-type]
    puller = Puller()
    m.puller = puller  # type: ignore[assignment]
    return m, puller


def names(m: ImageManager) -> set[str]:
    return set(m.index.by_name)


@pytest.mark.parametrize(
    "gone", [errors.Unavailable("Stream removed (Socket closed)"), errors.DeadlineExceeded("slow")]
)
def test_containerd_gone_mid_resync_keeps_the_cache(store: Store, gone: Any) -> None:
    listed = [image("registry.local/a:1", 1), image("registry.local/b:1", 2)]
    m, puller = manager(store, listed)
    asyncio.run(m.resync())
    assert names(m) == {"registry.local/a:1", "registry.local/b:1"}

    puller.failing[listed[1].target.digest] = gone
    with pytest.raises(type(gone)):
        asyncio.run(m.resync())
    assert names(m) == {"registry.local/a:1", "registry.local/b:1"}


async def _nothing() -> None:
    return None


def test_a_start_that_cannot_resync_serves_the_stored_cache(store: Store) -> None:
    listed = [image("registry.local/a:1", 1), image("registry.local/b:1", 2)]
    m, _ = manager(store, listed)
    asyncio.run(m.resync())

    restarted, puller = manager(store, listed)
    puller.failing[listed[0].target.digest] = errors.Unavailable("Stream removed")
    # only the resync of start(): no leftovers to collect, no event stream, no fs usage
    restarted.collect_pull_leftovers = _nothing  # type: ignore[method-assign]
    restarted._handle_events = _nothing  # type: ignore[method-assign]
    restarted._measure_fs = _nothing  # type: ignore[method-assign]

    async def start() -> None:
        await restarted.start()
        await asyncio.gather(*restarted._tasks)

    asyncio.run(start())
    assert names(restarted) == {"registry.local/a:1", "registry.local/b:1"}


def test_an_image_whose_content_is_unreadable_is_skipped(store: Store) -> None:
    listed = [image("registry.local/a:1", 1), image("registry.local/b:1", 2)]
    m, puller = manager(store, listed)
    puller.failing[listed[1].target.digest] = errors.NotFound("content sha256:...: not found")
    asyncio.run(m.resync())
    assert names(m) == {"registry.local/a:1"}
