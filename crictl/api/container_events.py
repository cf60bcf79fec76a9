"""GetContainerEvents, the stream kubelet's Evented PLEG reads instead of relisting.

The store hands every committed transaction's event rows to `EventHub.on_commit` (in the
writer thread); they are queued to the event loop in commit order and, for each container or
sandbox transition a kubelet cares about, one ContainerEventResponse is built from the state as
committed (the pod's PodSandboxStatus and the statuses of all its containers) and given to
every subscriber:

  container CREATED -> CONTAINER_CREATED_EVENT, RUNNING -> STARTED, EXITED -> STOPPED,
  removed -> DELETED; sandbox READY -> CREATED and STARTED, NOTREADY -> STOPPED, removed ->
  DELETED (the container id is then the sandbox's, as containerd sends them).

A sandbox that was removed has no status to read: its last one sent is reused (NOTREADY), so
kubelet can match the deletion to the pod. Each subscriber has a buffer of SUBSCRIBER_BUFFER
events; one that falls that far behind is dropped with RESOURCE_EXHAUSTED (kubelet then falls
back to relisting) instead of slowing the daemon or growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from crictl import errors
from crictl.api.containers import Containers
from crictl.api.front import on_front
from crictl.api.interceptor import Context
from crictl.api.sandboxes import PodSandboxes
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.store.engine import Store
from crictl.store.events import RecordedEvent, now_ns
from crictl.store.models import ContainerPhase, SandboxPhase

log = logging.getLogger(__name__)

SUBSCRIBER_BUFFER = 1000
EVENT = api_pb2.ContainerEventType

CONTAINER_EVENTS = {
    ContainerPhase.CREATED: (EVENT.CONTAINER_CREATED_EVENT,),
    ContainerPhase.RUNNING: (EVENT.CONTAINER_STARTED_EVENT,),
    ContainerPhase.EXITED: (EVENT.CONTAINER_STOPPED_EVENT,),
}
SANDBOX_EVENTS = {
    SandboxPhase.READY: (EVENT.CONTAINER_CREATED_EVENT, EVENT.CONTAINER_STARTED_EVENT),
    SandboxPhase.NOTREADY: (EVENT.CONTAINER_STOPPED_EVENT,),
}


@dataclass(frozen=True)
class Change:
    """One transition worth an event: which object, of which kind, and the event types."""

    kind: str  # "container" | "sandbox"
    object_id: str
    types: tuple[api_pb2.ContainerEventType.ValueType, ...]


def changes(events: list[RecordedEvent]) -> list[Change]:
    out = []
    for e in events:
        if e.object_kind not in ("container", "sandbox"):
            continue
        table = CONTAINER_EVENTS if e.object_kind == "container" else SANDBOX_EVENTS
        if e.action == "removed":
            out.append(Change(e.object_kind, e.object_id, (EVENT.CONTAINER_DELETED_EVENT,)))
        elif e.action == "transition" and e.to_phase in table:
            out.append(Change(e.object_kind, e.object_id, table[e.to_phase]))  # type: ignore[index]
    return out


# What the events need of the other servicers: a pod's id for a container, a pod's status,
# and the statuses of a pod's containers. None when the object is gone.
SandboxOf = Callable[[str], Awaitable[str | None]]
PodStatus = Callable[[str], Awaitable[api_pb2.PodSandboxStatus | None]]
ContainerStatuses = Callable[[str], Awaitable[list[api_pb2.ContainerStatus]]]


class EventHub:
    """Turns committed event rows into ContainerEventResponses for every subscriber."""

    def __init__(
        self, sandbox_of: SandboxOf, pod_status: PodStatus, statuses: ContainerStatuses
    ) -> None:
        self._sandbox_of = sandbox_of
        self._pod_status = pod_status
        self._statuses = statuses
        self._subscribers: set[asyncio.Queue[api_pb2.ContainerEventResponse | None]] = set()
        self._pending: asyncio.Queue[list[Change]] = asyncio.Queue()
        self._last_pod: dict[str, api_pb2.PodSandboxStatus] = {}
        self._pod_of: dict[str, str] = {}  # container -> sandbox, for containers removed
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="container-events")

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    # -- from the store's writer thread ----------------------------------------------------

    def on_commit(self, events: list[RecordedEvent]) -> None:
        # With nobody subscribed (kubelet reads this stream only with its EventedPLEG feature
        # gate) a commit wakes no loop: each hand-over is a thread switch for nothing. A
        # subscriber gets the commits after it subscribed, and relists when it subscribes.
        if not self._subscribers:
            return
        found = changes(events)
        if found:
            self._loop.call_soon_threadsafe(self._pending.put_nowait, found)

    # -- on the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = await self._pending.get()
            if not self._subscribers:
                self._forget(batch)
                continue
            for change in batch:
                try:
                    responses = await self._responses(change)
                except Exception as e:  # an event lost is a relist for kubelet, not a crash
                    log.warning("container event not built", extra={"error": str(e)})
                    continue
                for response in responses:
                    self._publish(response)
            self._forget(batch)

    def _forget(self, batch: list[Change]) -> None:
        for change in batch:
            if EVENT.CONTAINER_DELETED_EVENT in change.types:
                self._pod_of.pop(change.object_id, None)
                if change.kind == "sandbox":
                    self._last_pod.pop(change.object_id, None)

    async def _responses(self, change: Change) -> list[api_pb2.ContainerEventResponse]:
        if change.kind == "sandbox":
            sandbox_id: str | None = change.object_id
        else:
            sandbox_id = self._pod_of.get(change.object_id) or await self._sandbox_of(
                change.object_id
            )
        if sandbox_id is None:
            return []
        if change.kind == "container":
            self._pod_of[change.object_id] = sandbox_id
        pod = await self._pod_status(sandbox_id)
        if pod is None:
            pod = self._last_pod.get(sandbox_id)
            if pod is None:
                return []
            pod.state = api_pb2.SANDBOX_NOTREADY
        else:
            self._last_pod[sandbox_id] = pod
        statuses = await self._statuses(sandbox_id)
        at = now_ns()
        return [
            api_pb2.ContainerEventResponse(
                container_id=change.object_id,
                container_event_type=t,
                created_at=at,
                pod_sandbox_status=pod,
                containers_statuses=statuses,
            )
            for t in change.types
        ]

    def _publish(self, response: api_pb2.ContainerEventResponse) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(response)
            except asyncio.QueueFull:
                self._subscribers.discard(queue)
                while not queue.empty():  # what it holds is stale once it must relist
                    queue.get_nowait()
                queue.put_nowait(None)

    async def subscribe(self) -> AsyncGenerator[api_pb2.ContainerEventResponse, None]:
        queue: asyncio.Queue[api_pb2.ContainerEventResponse | None] = asyncio.Queue(
            SUBSCRIBER_BUFFER
        )
        self._subscribers.add(queue)
        try:
            while True:
                response = await queue.get()
                if response is None:
                    raise errors.ResourceExhausted(
                        f"GetContainerEvents: this subscriber fell {SUBSCRIBER_BUFFER} events "
                        "behind and was dropped; relist and subscribe again"
                    )
                yield response
        finally:
            self._subscribers.discard(queue)
            if not self._subscribers:
                # the removals of what they name are no longer handed on: nothing would drop
                # them (`_forget`), and the next subscriber starts from its relist
                self._pod_of.clear()
                self._last_pod.clear()


class ContainerEvents:
    """The servicer: GetContainerEvents streams what the hub publishes, until the client goes."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    @on_front()
    async def get_container_events(
        self, request: api_pb2.GetEventsRequest, context: Context
    ) -> AsyncIterator[api_pb2.ContainerEventResponse]:
        async for response in self.hub.subscribe():
            yield response


# The status builders take the RPC's context but do not use it.
NO_CONTEXT = cast(Context, None)


def hub_for(store: Store, pods: PodSandboxes, containers: Containers) -> EventHub:
    """A hub fed by `store`'s commits, building statuses as the status RPCs answer them."""

    async def sandbox_of(container_id: str) -> str | None:
        row = store.snapshot.containers.get(container_id)
        return row.sandbox_id if row is not None else None

    async def pod_status(sandbox_id: str) -> api_pb2.PodSandboxStatus | None:
        try:
            resp = await pods.pod_sandbox_status(
                api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), NO_CONTEXT
            )
        except errors.NotFound:
            return None
        return resp.status

    async def statuses(sandbox_id: str) -> list[api_pb2.ContainerStatus]:
        listed = await containers.list_containers(
            api_pb2.ListContainersRequest(
                filter=api_pb2.ContainerFilter(pod_sandbox_id=sandbox_id)
            ),
            NO_CONTEXT,
        )
        out = []
        for c in listed.containers:
            try:
                resp = await containers.container_status(
                    api_pb2.ContainerStatusRequest(container_id=c.id), NO_CONTEXT
                )
            except errors.NotFound:
                continue
            out.append(resp.status)
        return out

    hub = EventHub(sandbox_of, pod_status, statuses)
    store.add_listener(hub.on_commit)
    return hub
