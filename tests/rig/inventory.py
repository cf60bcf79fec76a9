"""What a containerd namespace holds, counted through containerd's own API: the leak checks."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from crictl import errors
from crictl.containerd.client import ContainerdClient
from crictl.gen.containerd.api.services.containers.v1 import containers_pb2
from crictl.gen.containerd.api.services.content.v1 import content_pb2
from crictl.gen.containerd.api.services.leases.v1 import leases_pb2
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2


@dataclass(frozen=True)
class Inventory:
    images: frozenset[str]
    content: frozenset[str]
    ingests: frozenset[str]
    snapshots: frozenset[str]
    leases: frozenset[str]
    containers: frozenset[str]


async def inventory(address: str, namespace: str, snapshotter: str = "overlayfs") -> Inventory:
    c = ContainerdClient(address, namespace)
    try:
        md = c.metadata
        images = frozenset(i.name for i in await c.list_images())
        content: set[str] = set()
        async for resp in c.content.List(content_pb2.ListContentRequest(), metadata=md):
            content |= {i.digest for i in resp.info}
        ingests = await c.call(
            "list ingests", c.content.ListStatuses(content_pb2.ListStatusesRequest(), metadata=md)
        )
        snaps: set[str] = set()
        async for s in c.snapshots.List(
            snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter), metadata=md
        ):
            snaps |= {i.name for i in s.info}
        leases = await c.call("list leases", c.leases.List(leases_pb2.ListRequest(), metadata=md))
        containers = await c.call(
            "list containers",
            c.containers.List(containers_pb2.ListContainersRequest(), metadata=md),
        )
        return Inventory(
            images,
            frozenset(content),
            frozenset(s.ref for s in ingests.statuses),
            frozenset(snaps),
            frozenset(lease.id for lease in leases.leases),
            frozenset(x.id for x in containers.containers),
        )
    finally:
        await c.close()


async def purge_namespace(address: str, namespace: str) -> None:
    """Removes everything a test daemon left in its namespace, then the namespace."""
    c = ContainerdClient(address, namespace)
    try:
        md = c.metadata
        for lease in (
            await c.call("leases", c.leases.List(leases_pb2.ListRequest(), metadata=md))
        ).leases:
            await c.call(
                "delete lease",
                c.leases.Delete(leases_pb2.DeleteRequest(id=lease.id, sync=False), metadata=md),
            )
        for container in await c.list_containers():
            if await c.task_state(container.id) is not None:
                await c.kill_task(container.id, 9)
                with contextlib.suppress(errors.CrictlError):
                    await c.wait_task(container.id, timeout=10)
                await c.delete_task(container.id)
            await c.delete_container(container.id)
        snapshots: list[str] = []
        async for s in c.snapshots.List(
            snapshots_pb2.ListSnapshotsRequest(snapshotter="overlayfs"), metadata=md
        ):
            snapshots += [i.name for i in s.info if i.kind != snapshots_pb2.COMMITTED]
        for key in snapshots:
            await c.remove_snapshot("overlayfs", key)
        images = await c.list_images()
        for i, image in enumerate(images):
            await c.delete_image(image.name, sync=i == len(images) - 1)
        for attempt in range(50):
            try:
                await c.delete_namespace()
                return
            except errors.NotFound:
                return
            except errors.CrictlError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)  # garbage collection still running
    finally:
        await c.close()
