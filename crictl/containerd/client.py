"""A thin typed async client over containerd's v1 gRPC API.

Every request carries the `containerd-namespace` header (crictld's own namespace, never
`k8s.io`, which containerd's CRI plugin owns). containerd's gRPC errors are translated into
crictld's error vocabulary here, so callers never see a StatusCode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.empty_pb2 import Empty
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from crictl import errors, trace
from crictl.containerd import h2, runc
from crictl.containerd.h2 import RpcError
from crictl.gen.containerd.api.services.containers.v1 import containers_pb2
from crictl.gen.containerd.api.services.content.v1 import content_pb2
from crictl.gen.containerd.api.services.diff.v1 import diff_pb2
from crictl.gen.containerd.api.services.events.v1 import events_pb2
from crictl.gen.containerd.api.services.images.v1 import images_pb2
from crictl.gen.containerd.api.services.introspection.v1 import introspection_pb2
from crictl.gen.containerd.api.services.leases.v1 import leases_pb2
from crictl.gen.containerd.api.services.namespaces.v1 import namespace_pb2
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2
from crictl.gen.containerd.api.services.tasks.v1 import tasks_pb2
from crictl.gen.containerd.api.services.version.v1 import version_pb2
from crictl.gen.containerd.api.types import mount_pb2
from crictl.gen.containerd.api.types.task import task_pb2
from crictl.gen.containerd.runtime.v2.runc.options import oci_pb2 as runc_options_pb2
from crictl.http2 import StatusCode
from crictl.mounts import remove_dir

if TYPE_CHECKING:
    # grpc's generated stubs type the calls; the daemon makes its own (`h2.stub`)
    from crictl.gen.containerd.api.services.containers.v1.containers_pb2_grpc import (
        ContainersAsyncStub,
    )
    from crictl.gen.containerd.api.services.content.v1.content_pb2_grpc import ContentAsyncStub
    from crictl.gen.containerd.api.services.diff.v1.diff_pb2_grpc import DiffAsyncStub
    from crictl.gen.containerd.api.services.events.v1.events_pb2_grpc import EventsAsyncStub
    from crictl.gen.containerd.api.services.images.v1.images_pb2_grpc import ImagesAsyncStub
    from crictl.gen.containerd.api.services.introspection.v1.introspection_pb2_grpc import (
        IntrospectionAsyncStub,
    )
    from crictl.gen.containerd.api.services.leases.v1.leases_pb2_grpc import LeasesAsyncStub
    from crictl.gen.containerd.api.services.namespaces.v1.namespace_pb2_grpc import (
        NamespacesAsyncStub,
    )
    from crictl.gen.containerd.api.services.snapshots.v1.snapshots_pb2_grpc import (
        SnapshotsAsyncStub,
    )
    from crictl.gen.containerd.api.services.tasks.v1.tasks_pb2_grpc import TasksAsyncStub
    from crictl.gen.containerd.api.services.version.v1.version_pb2_grpc import VersionAsyncStub

T = TypeVar("T")

log = logging.getLogger(__name__)

_STALE_BUNDLE = re.compile(r"failed to start shim: mkdir (/\S+): file exists")
_TASK_STATE = "io.containerd.runtime.v2.task"
_STALE_SNAPSHOT = re.compile(
    r"(?:mkdir|rename \S+) (/\S+/io\.containerd\.snapshotter\.v1\.\w+/snapshots/[0-9]+): "
    r"file exists"
)

NAMESPACE_HEADER = "containerd-namespace"
DEFAULT_NAMESPACE = "crictld"

_CODES: Mapping[StatusCode, type[errors.CrictlError]] = {
    StatusCode.NOT_FOUND: errors.NotFound,
    StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    StatusCode.UNAVAILABLE: errors.Unavailable,
    StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    StatusCode.UNIMPLEMENTED: errors.Unimplemented,
}


# What runc and the shim refuse because of the container's state, or of the request's
# conflict with it: containerd passes them on with code UNKNOWN, but they are no fault of
# crictld's or containerd's, so they are FAILED_PRECONDITION.
STATE_REFUSALS = (
    "cannot exec in a",  # the shim: an exec into a stopped, paused or created task
    "OCI runtime exec failed",  # runc exec: the command cannot start (not found, no such dir)
    "unable to set memory limit",  # runc update: under what the container uses now
)


# A disk full or over quota in containerd's root, a snapshot or a task's bundle (an ingest, an
# unpack, runc's state): containerd passes the errno's text on with code UNKNOWN.
NO_SPACE = ("no space left on device", "disk quota exceeded")


def translate(e: RpcError, what: str) -> errors.CrictlError:
    details = e.details() or ""
    if e.code() == StatusCode.UNKNOWN and any(r in details for r in STATE_REFUSALS):
        return errors.FailedPrecondition(f"containerd {what}: {details}")
    if e.code() in (StatusCode.UNKNOWN, StatusCode.INTERNAL) and any(
        r in details for r in NO_SPACE
    ):
        return errors.ResourceExhausted(f"containerd {what}: {details}")
    if e.code() in (StatusCode.UNKNOWN, StatusCode.CANCELLED) and ("context canceled" in details):
        # containerd's side of the call was cut short, not refused: a shim that exits while
        # containerd asks it something (the pod's shim ending as its last task goes) answers
        # "context canceled" (code UNKNOWN). What happened is unknown: asked again, it is
        # answered. crictld's own cancellations never get here (asyncio raises them).
        return errors.Unavailable(f"containerd {what} was cut short: {details}")
    kind = _CODES.get(e.code(), errors.Internal)
    return kind(f"containerd {what}: {details}")


# The longest any containerd call may take, waits on processes and layer applies aside: runc
# create or start takes well under a second; a minute means a wedged shim or containerd.
CALL_DEADLINE = 60.0
# The largest message either way (an image's manifest list, a list of every container)
MAX_MESSAGE = 64 << 20


def socket_path(address: str) -> str:
    """The socket's path in a containerd address: `unix:///path`, `unix:path` or a path."""
    for prefix in ("unix://", "unix:"):
        if address.startswith(prefix):
            return address[len(prefix) :]
    return address


SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
# A snapshot with this label is kept by containerd's GC until it is removed (its value: when).
GC_ROOT_LABEL = "containerd.io/gc.root"
RUNC_RUNTIME = "io.containerd.runc.v2"


@dataclass(frozen=True)
class TaskState:
    status: str  # CREATED | RUNNING | STOPPED | PAUSED | UNKNOWN
    pid: int
    exit_status: int
    exited_at_ns: int

    @property
    def half_created(self) -> bool:
        """A task a create cut short left: containerd lists it, its shim runs no process
        (UNKNOWN, pid 0). It cannot be signalled or waited for; it can only be deleted."""
        return self.status == "UNKNOWN" and self.pid == 0


@dataclass(frozen=True)
class VersionInfo:
    version: str
    revision: str


def timestamp_ns(ts: Timestamp) -> int:
    """A containerd timestamp in ns since the epoch; 0 for none: Go's zero time, which a task
    that has not exited, or whose shim does not answer, reports as 0001-01-01 (-6.2e19 ns,
    which no SQLite INTEGER holds)."""
    return ts.seconds * 1_000_000_000 + ts.nanos if ts.seconds > 0 else 0


class ContainerdClient:
    """One channel to one containerd, scoped to one namespace."""

    def __init__(
        self, address: str, namespace: str = DEFAULT_NAMESPACE, systemd_cgroup: bool = False
    ) -> None:
        if namespace == "k8s.io":
            raise errors.InvalidArgument("the k8s.io namespace belongs to containerd's CRI plugin")
        self.address = address
        self.namespace = namespace
        self.systemd_cgroup = systemd_cgroup
        # runc's cgroup manager for the containers we create: systemd or cgroupfs (the spec's
        # cgroupsPath must be written for the same one).
        self.runtime = self.runtime_for("")
        # monotonic time of containerd's last answer to a call (the supervisor's probe
        # waits while calls are answered); -inf once a call or the event stream found it
        # unreachable
        self.answered_at = -math.inf
        # Every call goes over crictld's own HTTP/2 connection (crictl/containerd/h2.py).
        self.channel = h2.Channel(socket_path(address), MAX_MESSAGE, MAX_MESSAGE)
        self.metadata = ((NAMESPACE_HEADER, namespace),)

        def stub(module: Any, name: str) -> Any:
            return h2.stub(self.channel, module.DESCRIPTOR.services_by_name[name])

        self.version_service: VersionAsyncStub = stub(version_pb2, "Version")
        self.namespaces: NamespacesAsyncStub = stub(namespace_pb2, "Namespaces")
        self.containers: ContainersAsyncStub = stub(containers_pb2, "Containers")
        self.tasks: TasksAsyncStub = stub(tasks_pb2, "Tasks")
        self.content: ContentAsyncStub = stub(content_pb2, "Content")
        self.images: ImagesAsyncStub = stub(images_pb2, "Images")
        self.snapshots: SnapshotsAsyncStub = stub(snapshots_pb2, "Snapshots")
        self.diff: DiffAsyncStub = stub(diff_pb2, "Diff")
        self.leases: LeasesAsyncStub = stub(leases_pb2, "Leases")
        self.events: EventsAsyncStub = stub(events_pb2, "Events")
        self.introspection: IntrospectionAsyncStub = stub(introspection_pb2, "Introspection")

    async def close(self) -> None:
        await self.channel.close()

    async def call(
        self, what: str, call: Awaitable[T], deadline: float | None = CALL_DEADLINE
    ) -> T:
        """Awaits one containerd call. No call may hang a reconcile pass for good (containerd's
        CRI gets that from kubelet's deadline; crictld's passes outlive the CRI call that
        asked): after `deadline` seconds the call is cancelled (containerd cancels what it
        asked the shim) and DEADLINE_EXCEEDED names it. Waits on a process pass None."""
        try:
            with trace.span(f"containerd {what}"):
                async with asyncio.timeout(deadline):
                    result = await call
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"containerd at {self.address} did not answer {what} in {deadline:.0f}s"
            ) from None
        except RpcError as e:
            if e.code() == StatusCode.UNAVAILABLE:
                self.answered_at = -math.inf  # the supervisor asks at its next tick
                raise errors.Unavailable(
                    f"containerd at {self.address} is unreachable ({what}): {e.details()}"
                ) from e
            raise translate(e, what) from e
        self.answered_at = time.monotonic()
        return result

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publishes an event of crictld's own on containerd's exchange (a marker in the
        event stream: see crictl.reconciler.events)."""
        await self.call(
            "publish event",
            self.events.Publish(
                events_pb2.PublishRequest(
                    topic=topic,
                    event=AnyPb(type_url="types.crictld.io/marker", value=payload),
                ),
                metadata=self.metadata,
            ),
        )

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
        return await self.scan_containers(lambda c: c, *filters)

    async def scan_containers(
        self, keep: Callable[[containers_pb2.Container], T], *filters: str
    ) -> list[T]:
        """What `keep` takes of each container record, read one record at a time (ListStream):
        a record carries its spec (~5-6 KB), and List's one answer held a node's all at once
        (~2.4 MB at 400 containers, estimated from that size), which with its parse left 3.0
        MiB more in a process after the orphan sweep's look (docs/performance.md, "Memory")."""

        async def scan() -> list[T]:
            call = self.containers.ListStream(
                containers_pb2.ListContainersRequest(filters=list(filters)),
                metadata=self.metadata,
            )
            try:
                return [keep(message.container) async for message in call]
            finally:
                call.cancel()

        return await self.call("list containers", scan())

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
        except RpcError as e:
            if e.code() == StatusCode.UNAVAILABLE:  # containerd went: asked at once
                self.answered_at = -math.inf
            raise translate(e, "event stream") from e
        finally:
            call.cancel()

    async def snapshotter_root(self, snapshotter: str) -> str | None:
        return await self._plugin_root("io.containerd.snapshotter.v1", snapshotter)

    async def content_root(self) -> str | None:
        """The directory of containerd's content store backend (its `content` plugin's)."""
        return await self._plugin_root("io.containerd.content.v1", "content")

    async def _plugin_root(self, kind: str, plugin_id: str) -> str | None:
        resp = await self.call(
            "introspect plugins",
            self.introspection.Plugins(
                introspection_pb2.PluginsRequest(filters=[f'type=="{kind}",id=="{plugin_id}"'])
            ),
        )
        for plugin in resp.plugins:
            root = plugin.exports.get("root")
            if root:
                return root
        return None

    # -- containers, snapshots and tasks -----------------------------------------------------
    # Every call is idempotent: creating what exists returns what exists, deleting what is gone
    # succeeds. Callers rely on that to repeat any step after a crash.

    def runtime_for(self, binary: str) -> containers_pb2.Container.Runtime:
        """runc's shim with its options: the cgroup manager, and `binary` (a RuntimeClass
        handler's runc-compatible binary) in place of runc when given."""
        runtime = containers_pb2.Container.Runtime(name=RUNC_RUNTIME)
        if self.systemd_cgroup or binary:
            # The type URL as containerd itself writes it (its typeurl registry has no
            # type.googleapis.com/ prefix for its own types).
            runtime.options.type_url = "containerd.runc.v1.Options"
            runtime.options.value = runc_options_pb2.Options(
                systemd_cgroup=self.systemd_cgroup, binary_name=binary
            ).SerializeToString()
        return runtime

    async def create_container(
        self,
        container_id: str,
        image: str,
        spec: str,
        snapshotter: str,
        labels: Mapping[str, str],
        binary: str = "",
    ) -> bool:
        """Creates the container record (its snapshot key is its id); False if it existed.
        `spec`: the OCI spec's JSON, which the caller also keeps (encoded once). `binary`: a
        RuntimeClass handler's runtime binary (runc when empty)."""
        container = containers_pb2.Container(
            id=container_id,
            image=image,
            labels=dict(labels),
            runtime=self.runtime_for(binary) if binary else self.runtime,
            spec=AnyPb(type_url=SPEC_TYPE_URL, value=spec.encode()),
            snapshotter=snapshotter,
            snapshot_key=container_id,
        )
        try:
            await self.call(
                "create container",
                self.containers.Create(
                    containers_pb2.CreateContainerRequest(container=container),
                    metadata=self.metadata,
                ),
            )
        except errors.AlreadyExists:
            return False
        return True

    async def delete_container(self, container_id: str) -> bool:
        try:
            await self.call(
                "delete container",
                self.containers.Delete(
                    containers_pb2.DeleteContainerRequest(id=container_id), metadata=self.metadata
                ),
            )
        except errors.NotFound:
            return False
        return True

    async def prepare_snapshot(
        self,
        snapshotter: str,
        key: str,
        parent: str,
        view: bool = False,
        labels: Mapping[str, str] | None = None,
    ) -> list[mount_pb2.Mount]:
        """The writable snapshot `key` on top of `parent` (a read-only one with `view`); its
        mounts if it exists already. `labels` may carry a GC root label, to hold the snapshot
        until something owns it.

        containerd killed while its overlay snapshotter made a snapshot leaves the directory of
        a snapshot id its metadata never recorded; the next snapshot gets that id again and
        fails ("rename .../new-N .../snapshots/<n>: file exists"), and containerd removes that
        directory as it fails (overlay's createSnapshot reclaims the path of a failed create),
        so the snapshot is asked for again. crictld must not remove it itself: by the time the
        error reaches it, the id is free again and another snapshot made meanwhile may have
        it (a 1000-kill chaos run: a pod's pause task then found its rootfs gone)."""
        for attempt in range(1, 9):
            try:
                return await self._prepare_snapshot(snapshotter, key, parent, view, labels or {})
            except errors.CrictlError as e:
                found = _STALE_SNAPSHOT.search(str(e))
                if found is None or attempt == 8:
                    raise
                log.warning(
                    "a snapshot directory a crash left was in the way (containerd removed it); "
                    "preparing again",
                    extra={"path": found.group(1)},
                )
        raise AssertionError("unreachable")

    async def _prepare_snapshot(
        self,
        snapshotter: str,
        key: str,
        parent: str,
        view: bool,
        labels: Mapping[str, str],
    ) -> list[mount_pb2.Mount]:
        try:
            if view:
                viewed = await self.call(
                    "view snapshot",
                    self.snapshots.View(
                        snapshots_pb2.ViewSnapshotRequest(
                            snapshotter=snapshotter, key=key, parent=parent, labels=labels
                        ),
                        metadata=self.metadata,
                    ),
                )
                return list(viewed.mounts)
            prepared = await self.call(
                "prepare snapshot",
                self.snapshots.Prepare(
                    snapshots_pb2.PrepareSnapshotRequest(
                        snapshotter=snapshotter, key=key, parent=parent, labels=labels
                    ),
                    metadata=self.metadata,
                ),
            )
            return list(prepared.mounts)
        except errors.AlreadyExists:
            # Made by a pass a crash cut short (or by an earlier crictld, under a create lease
            # that expires): the GC root label must hold it too, or containerd's GC can take it
            # before a container owns it.
            if labels:
                await self.call(
                    "label snapshot",
                    self.snapshots.Update(
                        snapshots_pb2.UpdateSnapshotRequest(
                            snapshotter=snapshotter,
                            info=snapshots_pb2.Info(name=key, labels=labels),
                            update_mask=FieldMask(paths=[f"labels.{k}" for k in labels]),
                        ),
                        metadata=self.metadata,
                    ),
                )
            return await self.snapshot_mounts(snapshotter, key)

    async def snapshot_mounts(self, snapshotter: str, key: str) -> list[mount_pb2.Mount]:
        """The mounts of an existing active snapshot (NotFound if there is none)."""
        resp = await self.call(
            "snapshot mounts",
            self.snapshots.Mounts(
                snapshots_pb2.MountsRequest(snapshotter=snapshotter, key=key),
                metadata=self.metadata,
            ),
        )
        return list(resp.mounts)

    async def remove_snapshot(self, snapshotter: str, key: str) -> bool:
        try:
            await self.call(
                "remove snapshot",
                self.snapshots.Remove(
                    snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
                    metadata=self.metadata,
                ),
            )
        except errors.NotFound:
            return False
        return True

    async def create_task(
        self,
        container_id: str,
        rootfs: list[mount_pb2.Mount],
        stdout: str = "",
        stderr: str = "",
        stdin: str = "",
        terminal: bool = False,
    ) -> int:
        """Creates the task (runc create); returns its pid, also when it existed already.

        A create whose caller died (crictld was killed) can leave containerd half done: a task
        it lists but whose shim holds no container ("already exists", yet Get answers not
        found), or its bundle directory ("file exists"); containerd killed during it leaves
        runc's state dir (runc's "container with given ID already exists": crictl/containerd/
        runc.py). The first is cleared by deleting the task (containerd tolerates the shim's
        not-found), the others by removing the directory, and the create is tried again; what
        still stands in the way then is reported as a passing state (UNAVAILABLE), so the
        step is retried rather than failed for good."""
        request = tasks_pb2.CreateTaskRequest(
            container_id=container_id,
            rootfs=rootfs,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            terminal=terminal,
        )
        for attempt in (1, 2):
            try:
                resp = await self.call(
                    "create task", self.tasks.Create(request, metadata=self.metadata)
                )
                return resp.pid
            except (errors.AlreadyExists, errors.FailedPrecondition, errors.Internal) as e:
                text = str(e)
                stale_runc = runc.STATE_EXISTS in text
                if not (isinstance(e, errors.AlreadyExists) or "file exists" in text or stale_runc):
                    raise
                state = await self.task_state(container_id)
                if state is not None and not state.half_created:
                    return state.pid  # a repeated step
                if attempt == 2:
                    raise errors.Unavailable(
                        f"an earlier create of task {container_id} is still in containerd: {e}"
                    ) from e
                with contextlib.suppress(errors.CrictlError):
                    await self.delete_task(container_id)
                if state is None:
                    await asyncio.to_thread(self._remove_stale_bundle, container_id, text)
                if stale_runc:  # containerd holds no live task: runc's dir is a create's left
                    await asyncio.to_thread(runc.remove_stale_state, self.namespace, container_id)
        raise AssertionError("unreachable")

    def _remove_stale_bundle(self, container_id: str, error: str) -> None:
        """containerd 1.6 killed while it made a task's bundle leaves the directory, and every
        later create of that task fails on its mkdir ("failed to start shim: mkdir <bundle>:
        file exists"), even across containerd restarts. With no task of that id in containerd,
        the directory is garbage of containerd's own: its rootfs is unmounted and it goes."""
        found = _STALE_BUNDLE.search(error)
        if found is None:
            return
        bundle = Path(found.group(1))
        if bundle.parts[-2:] != (self.namespace, container_id) or _TASK_STATE not in bundle.parts:
            return
        log.warning("removing a task bundle a crash left", extra={"bundle": str(bundle)})
        remove_dir(bundle)

    async def start_task(self, container_id: str) -> int:
        try:
            resp = await self.call(
                "start task",
                self.tasks.Start(
                    tasks_pb2.StartRequest(container_id=container_id), metadata=self.metadata
                ),
            )
            return resp.pid
        except errors.CrictlError as e:
            # A repeated step: the task was started by a pass a crash cut short. containerd
            # answers "cannot start a running process" with one code or another (UNKNOWN,
            # FAILED_PRECONDITION): what it runs is the truth.
            state = await self.task_state(container_id)
            if state is not None and state.status == "RUNNING":
                return state.pid
            if (
                state is not None
                and state.status == "CREATED"
                and state.pid > 0
                and "already running" in str(e)
            ):
                # containerd killed during Start: the shim's `runc start` was cut off after it
                # released the process, so runc runs it while the shim still says CREATED.
                # The process is the task's init; the shim reaps it and reports its exit.
                log.warning("a start cut short had started the task", extra={"task": container_id})
                return state.pid
            raise

    async def task_states(self) -> dict[str, TaskState]:
        """Every task of the namespace and its state, in one round trip (recovery: one call
        instead of one per container)."""
        resp = await self.call(
            "list tasks", self.tasks.List(tasks_pb2.ListTasksRequest(), metadata=self.metadata)
        )
        return {
            p.container_id or p.id: TaskState(
                task_pb2.Status.Name(p.status),
                p.pid,
                p.exit_status,
                timestamp_ns(p.exited_at),
            )
            for p in resp.tasks
        }

    async def task_state(self, container_id: str) -> TaskState | None:
        try:
            resp = await self.call(
                "get task",
                self.tasks.Get(
                    tasks_pb2.GetRequest(container_id=container_id), metadata=self.metadata
                ),
            )
        except errors.NotFound:
            return None
        p = resp.process
        return TaskState(
            task_pb2.Status.Name(p.status),
            p.pid,
            p.exit_status,
            timestamp_ns(p.exited_at),
        )

    async def kill_task(self, container_id: str, signal: int, all_processes: bool = True) -> bool:
        try:
            await self.call(
                "kill task",
                self.tasks.Kill(
                    tasks_pb2.KillRequest(
                        container_id=container_id, signal=signal, all=all_processes
                    ),
                    metadata=self.metadata,
                ),
            )
        except errors.NotFound:
            return False
        return True

    async def wait_task(self, container_id: str, timeout: float | None = None) -> int | None:
        """Waits for the task to exit; its exit status, or None if there is no task."""
        exited = await self.wait_exit(container_id, timeout)
        return exited.exit_status if exited is not None else None

    async def wait_exit(self, container_id: str, timeout: float | None = None) -> TaskState | None:
        """Waits for the task to exit; its state then (STOPPED, with the exit status and time
        the wait answered: no second round trip to ask), or None if there is no task."""
        try:
            resp = await self.call(
                "wait task",
                self.tasks.Wait(
                    tasks_pb2.WaitRequest(container_id=container_id),
                    metadata=self.metadata,
                    timeout=timeout,
                ),
                deadline=None,
            )
        except errors.NotFound:
            return None
        at = timestamp_ns(resp.exited_at)
        return TaskState("STOPPED", 0, resp.exit_status, at)

    async def delete_task(self, container_id: str) -> int | None:
        """Deletes a stopped task; its exit status, or None if there was no task.

        A `runc kill --all` killed halfway (containerd killed during a stop) leaves the
        container's cgroup frozen, so runc calls it paused and refuses to delete it, and the
        SIGKILL it sent waits for a thaw. The task is resumed (the kill lands), killed again to
        be sure, and the delete tried once more."""
        for attempt in (1, 2):
            try:
                resp = await self.call(
                    "delete task",
                    self.tasks.Delete(
                        tasks_pb2.DeleteTaskRequest(container_id=container_id),
                        metadata=self.metadata,
                    ),
                )
                return resp.exit_status
            except errors.NotFound:
                return None
            except errors.CrictlError as e:
                if attempt == 2 or "paused" not in str(e):
                    raise
                log.warning(
                    "thawing a task a cut-short kill left frozen", extra={"task": container_id}
                )
                with contextlib.suppress(errors.CrictlError):
                    await self.call(
                        "resume task",
                        self.tasks.Resume(
                            tasks_pb2.ResumeTaskRequest(container_id=container_id),
                            metadata=self.metadata,
                        ),
                    )
                with contextlib.suppress(errors.CrictlError):
                    await self.kill_task(container_id, 9)
                with contextlib.suppress(errors.CrictlError):
                    await self.wait_task(container_id, timeout=10)
        raise AssertionError("unreachable")

    # -- exec'd processes --------------------------------------------------------------------

    async def container_spec(self, container_id: str) -> dict[str, object]:
        resp = await self.call(
            "get container",
            self.containers.Get(
                containers_pb2.GetContainerRequest(id=container_id), metadata=self.metadata
            ),
        )
        spec = json.loads(resp.container.spec.value)
        assert isinstance(spec, dict)
        return spec

    async def update_container_spec(self, container_id: str, spec: Mapping[str, object]) -> None:
        """Replaces the spec of the container record: the one its next task is made from."""
        await self.call(
            "update container",
            self.containers.Update(
                containers_pb2.UpdateContainerRequest(
                    container=containers_pb2.Container(
                        id=container_id,
                        spec=AnyPb(type_url=SPEC_TYPE_URL, value=json.dumps(spec).encode()),
                    ),
                    update_mask=FieldMask(paths=["spec"]),
                ),
                metadata=self.metadata,
            ),
        )

    async def exec_process(
        self,
        container_id: str,
        exec_id: str,
        process: Mapping[str, object],
        stdout: str,
        stderr: str,
        stdin: str = "",
        terminal: bool = False,
    ) -> None:
        await self.call(
            "exec",
            self.tasks.Exec(
                tasks_pb2.ExecProcessRequest(
                    container_id=container_id,
                    exec_id=exec_id,
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                    terminal=terminal,
                    spec=AnyPb(
                        type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                        value=json.dumps(process).encode(),
                    ),
                ),
                metadata=self.metadata,
            ),
        )

    async def start_process(self, container_id: str, exec_id: str) -> int:
        resp = await self.call(
            "start exec",
            self.tasks.Start(
                tasks_pb2.StartRequest(container_id=container_id, exec_id=exec_id),
                metadata=self.metadata,
            ),
        )
        return resp.pid

    async def wait_process(self, container_id: str, exec_id: str) -> int:
        resp = await self.call(
            "wait exec",
            self.tasks.Wait(
                tasks_pb2.WaitRequest(container_id=container_id, exec_id=exec_id),
                metadata=self.metadata,
            ),
            deadline=None,
        )
        return resp.exit_status

    async def kill_process(self, container_id: str, exec_id: str, signal: int) -> None:
        with contextlib.suppress(errors.NotFound, errors.FailedPrecondition):
            await self.call(
                "kill exec",
                self.tasks.Kill(
                    tasks_pb2.KillRequest(
                        container_id=container_id, exec_id=exec_id, signal=signal
                    ),
                    metadata=self.metadata,
                ),
            )

    async def delete_process(self, container_id: str, exec_id: str) -> None:
        with contextlib.suppress(errors.NotFound):
            await self.call(
                "delete exec",
                self.tasks.DeleteProcess(
                    tasks_pb2.DeleteProcessRequest(container_id=container_id, exec_id=exec_id),
                    metadata=self.metadata,
                ),
            )

    async def resize_pty(self, container_id: str, exec_id: str, width: int, height: int) -> None:
        """Resizes the terminal of the task (exec_id "") or of one exec'd process."""
        await self.call(
            "resize pty",
            self.tasks.ResizePty(
                tasks_pb2.ResizePtyRequest(
                    container_id=container_id, exec_id=exec_id, width=width, height=height
                ),
                metadata=self.metadata,
            ),
        )

    async def close_stdin(self, container_id: str, exec_id: str = "") -> None:
        """Closes the stdin of the task or of an exec'd process. The shim holds its stdin
        FIFO open itself, so closing our end is not enough for the process to see EOF."""
        with contextlib.suppress(errors.NotFound):
            await self.call(
                "close stdin",
                self.tasks.CloseIO(
                    tasks_pb2.CloseIORequest(
                        container_id=container_id, exec_id=exec_id, stdin=True
                    ),
                    metadata=self.metadata,
                ),
            )

    async def update_task_resources(
        self, container_id: str, resources: Mapping[str, object]
    ) -> None:
        """Applies new cgroup limits to a running task (runc update)."""
        await self.call(
            "update task",
            self.tasks.Update(
                tasks_pb2.UpdateTaskRequest(
                    container_id=container_id,
                    resources=AnyPb(
                        type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
                        value=json.dumps(resources).encode(),
                    ),
                ),
                metadata=self.metadata,
            ),
        )
