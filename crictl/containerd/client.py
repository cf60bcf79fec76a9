"""A thin typed async client over containerd's v1 gRPC API.

Every request carries the `containerd-namespace` header (crictld's own namespace, never
`k8s.io`, which containerd's CRI plugin owns). containerd's gRPC errors are translated into
crictld's error vocabulary here, so callers never see a grpc.StatusCode.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc
import grpc.aio
from google.protobuf.empty_pb2 import Empty

from crictl import errors
from crictl.gen.containerd.api.services.containers.v1 import containers_pb2, containers_pb2_grpc
from crictl.gen.containerd.api.services.content.v1 import content_pb2_grpc
from crictl.gen.containerd.api.services.diff.v1 import diff_pb2_grpc
from crictl.gen.containerd.api.services.events.v1 import events_pb2_grpc
from crictl.gen.containerd.api.services.images.v1 import images_pb2_grpc
from crictl.gen.containerd.api.services.introspection.v1 import introspection_pb2_grpc
from crictl.gen.containerd.api.services.leases.v1 import leases_pb2_grpc
from crictl.gen.containerd.api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2_grpc
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

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as e:
            raise translate(e, what) from e

    async def version(self, timeout: float | None = None) -> VersionInfo:
        resp = await self._call("version", self.version_service.Version(Empty(), timeout=timeout))
        return VersionInfo(resp.version, resp.revision)

    async def ensure_namespace(self, labels: Mapping[str, str] | None = None) -> bool:
        """Creates this client's namespace; returns False if it already existed."""
        request = namespace_pb2.CreateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name=self.namespace, labels=dict(labels or {}))
        )
        try:
            await self._call(
                "create namespace", self.namespaces.Create(request, metadata=self.metadata)
            )
        except errors.AlreadyExists:
            return False
        return True

    async def delete_namespace(self) -> None:
        """Deletes this client's namespace (containerd refuses while it holds anything)."""
        await self._call(
            "delete namespace",
            self.namespaces.Delete(
                namespace_pb2.DeleteNamespaceRequest(name=self.namespace), metadata=self.metadata
            ),
        )

    async def list_namespaces(self) -> list[str]:
        resp = await self._call(
            "list namespaces", self.namespaces.List(namespace_pb2.ListNamespacesRequest())
        )
        return [ns.name for ns in resp.namespaces]

    async def list_containers(self, *filters: str) -> list[containers_pb2.Container]:
        resp = await self._call(
            "list containers",
            self.containers.List(
                containers_pb2.ListContainersRequest(filters=list(filters)),
                metadata=self.metadata,
            ),
        )
        return list(resp.containers)
