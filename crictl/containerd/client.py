"""A thin typed async client over containerd's v1 gRPC API.

Every request carries the `containerd-namespace` header (crictld's own namespace, never
`k8s.io`, which containerd's CRI plugin owns). containerd's gRPC errors are translated into
crictld's error vocabulary here, so callers never see a grpc.StatusCode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc
import grpc.aio
from google.protobuf.empty_pb2 import Empty

from crictl import errors
from crictl.gen.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from crictl.gen.containerd.api.services.content.v1 import content_pb2_grpc
from crictl.gen.containerd.api.services.diff.v1 import diff_pb2_grpc
from crictl.gen.containerd.api.services.events.v1 import events_pb2, events_pb2_grpc
from crictl.gen.containerd.api.services.images.v1 import images_pb2, images_pb2_grpc
from crictl.gen.containerd.api.services.introspection.v1 import (
    introspection_pb2,
    introspection_pb2_grpc,
)
from crictl.gen.containerd.api.services.leases.v1 import leases_pb2_grpc
from crictl.gen.containerd.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from crictl.gen.containerd.api.services.tasks.v1 import tasks_pb2_grpc
from crictl.gen.containerd.api.services.version.v1 import version_pb2_grpc

T = TypeVar("T")

NAMESPACE_HEADER = "containerd-namespace"
DEFAULT_NAMESPACE = "crictld"

_CODES: Mapping[grpc.StatusCode, type[errors.CrictlError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
}


def translate(e: grpc.aio.AioRpcError, what: str) -> errors.CrictlError:
    kind = _CODES.get(e.code(), errors.Internal)
    return kind(f"containerd {what}: {e.details()}")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    revision: str


class ContainerdClient:
    """One channel to one containerd, scoped to one namespace."""

    def __init__(self, address: str, namespace: str = DEFAULT_NAMESPACE) -> None:
        if namespace == "k8s.io":
            raise errors.InvalidArgument("the k8s.io namespace belongs to containerd's CRI plugin")
        self.address = address
        self.namespace = namespace
        target = address if address.startswith("unix:") else f"unix://{address}"
        self.channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        self.metadata = ((NAMESPACE_HEADER, namespace),)
        self.version_service = version_pb2_grpc.VersionStub(self.channel)
        self.namespaces = namespace_pb2_grpc.NamespacesStub(self.channel)
        self.containers = containers_pb2_grpc.ContainersStub(self.channel)
        self.tasks = tasks_pb2_grpc.TasksStub(self.channel)
        self.content = content_pb2_grpc.ContentStub(self.channel)
        self.images = images_pb2_grpc.ImagesStub(self.channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(self.channel)
        self.diff = diff_pb2_grpc.DiffStub(self.channel)
        self.leases = leases_pb2_grpc.LeasesStub(self.channel)
        self.events = events_pb2_grpc.EventsStub(self.channel)
        self.introspection = introspection_pb2_grpc.IntrospectionStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def call(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as e:
            raise translate(e, what) from e

    async def version(self, timeout: float | None = None) -> VersionInfo:
        resp = await self.call("version", self.version_service.Version(Empty(), timeout=timeout))
        return VersionInfo(resp.version, resp.revision)

    async def ensure_namespace(self, labels: Mapping[str, str] | None = None) -> bool:
        """Creates this client's namespace; returns False if it already existed."""
        request = namespace_pb2.CreateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name=self.namespace, labels=dict(labels or {}))
        )
        try:
            await self.call(
                "create namespace", self.namespaces.Create(request, metadata=self.metadata)
            )
        except errors.AlreadyExists:
            return False
        return True

    async def delete_namespace(self) -> None:
        """Deletes this client's namespace (containerd refuses while it holds anything)."""
        await self.call(
            "delete namespace",
            self.namespaces.Delete(
                namespace_pb2.DeleteNamespaceRequest(name=self.namespace), metadata=self.metadata
            ),
        )

    async def list_namespaces(self) -> list[str]:
        resp = await self.call(
            "list namespaces", self.namespaces.List(namespace_pb2.ListNamespacesRequest())
        )
        return [ns.name for ns in resp.namespaces]

    async def list_containers(self, *filters: str) -> list[containers_pb2.Container]:
        resp = await self.call(
            "list containers",
            self.containers.List(
                containers_pb2.ListContainersRequest(filters=list(filters)),
                metadata=self.metadata,
            ),
        )
        return list(resp.containers)

    # -- images ------------------------------------------------------------------------------

    async def list_images(self, *filters: str) -> list[images_pb2.Image]:
        resp = await self.call(
            "list images",
            self.images.List(
                images_pb2.ListImagesRequest(filters=list(filters)), metadata=self.metadata
            ),
        )
        return list(resp.images)

    async def get_image(self, name: str) -> images_pb2.Image | None:
        try:
            resp = await self.call(
                "get image",
                self.images.Get(images_pb2.GetImageRequest(name=name), metadata=self.metadata),
            )
        except errors.NotFound:
            return None
        return resp.image

    async def delete_image(self, name: str, sync: bool = False) -> bool:
        """Deletes the image record; with `sync`, containerd collects garbage before answering.
        Returns False if there was no such record."""
        try:
            await self.call(
                "delete image",
                self.images.Delete(
                    images_pb2.DeleteImageRequest(name=name, sync=sync), metadata=self.metadata
                ),
            )
        except errors.NotFound:
            return False
        return True

    # -- events and introspection ------------------------------------------------------------

    async def subscribe(self, *filters: str) -> AsyncIterator[events_pb2.Envelope]:
        """containerd's event stream, filtered (e.g. 'topic~="/images/"'), own namespace only."""
        call = self.events.Subscribe(
            events_pb2.SubscribeRequest(
                filters=[f'namespace=="{self.namespace}",{f}' for f in filters]
                or [f'namespace=="{self.namespace}"']
            )
        )
        try:
            async for envelope in call:
                yield envelope
        except grpc.aio.AioRpcError as e:
            raise translate(e, "event stream") from e
        finally:
            call.cancel()

    async def snapshotter_root(self, snapshotter: str) -> str | None:
        resp = await self.call(
            "introspect plugins",
            self.introspection.Plugins(
                introspection_pb2.PluginsRequest(
                    filters=[f'type=="io.containerd.snapshotter.v1",id=="{snapshotter}"']
                )
            ),
        )
        for plugin in resp.plugins:
            root = plugin.exports.get("root")
            if root:
                return root
        return None

    async def snapshots_usage(self, snapshotter: str) -> tuple[int, int]:
        """(bytes, inodes) used by every snapshot in this namespace."""
        keys: list[str] = []
        try:
            async for resp in self.snapshots.List(
                snapshots_pb2.ListSnapshotsRequest(snapshotter=snapshotter), metadata=self.metadata
            ):
                keys.extend(info.name for info in resp.info)
        except grpc.aio.AioRpcError as e:
            raise translate(e, "list snapshots") from e
        size = inodes = 0
        for key in keys:
            try:
                usage = await self.call(
                    "snapshot usage",
                    self.snapshots.Usage(
                        snapshots_pb2.UsageRequest(snapshotter=snapshotter, key=key),
                        metadata=self.metadata,
                    ),
                )
            except errors.NotFound:
                continue  # removed meanwhile
            size += usage.size
            inodes += usage.inodes
        return size, inodes
