"""GetContainerEvents for real: two subscribers see a pod's and a container's whole lifecycle,
in order, each event carrying the pod's status and its containers' statuses as committed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.integration.test_containers import Pod
from tests.integration.test_sandboxes import remove
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

E = api_pb2.ContainerEventType


class Subscriber:
    """Reads GetContainerEvents on a thread of its own into a list."""

    def __init__(self, d: Daemon) -> None:
        self.channel = grpc.insecure_channel(d.endpoint)
        self.call = api_pb2_grpc.RuntimeServiceStub(self.channel).GetContainerEvents(
            api_pb2.GetEventsRequest()
        )
        self.events: list[api_pb2.ContainerEventResponse] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events.append(event)
        except grpc.RpcError:
            pass

    def seen(self) -> list[tuple[str, int]]:
        return [(e.container_id, e.container_event_type) for e in self.events]

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)
        self.channel.close()


def wait_for_events(sub: Subscriber, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(sub.events) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(sub.events) >= n, sub.seen()


def test_two_subscribers_see_a_whole_lifecycle(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    d = image_daemon
    first, second = Subscriber(d), Subscriber(d)
    time.sleep(0.3)  # both subscribed
    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("app", ["sleep", "3600"])
    pod.start(cid)
    pod.stop(cid)
    pod.remove(cid)
    remove(d, pod.id)  # stops and removes the pod
    expected = [
        (pod.id, E.CONTAINER_CREATED_EVENT),
        (pod.id, E.CONTAINER_STARTED_EVENT),
        (cid, E.CONTAINER_CREATED_EVENT),
        (cid, E.CONTAINER_STARTED_EVENT),
        (cid, E.CONTAINER_STOPPED_EVENT),
        (cid, E.CONTAINER_DELETED_EVENT),
        (pod.id, E.CONTAINER_STOPPED_EVENT),
        (pod.id, E.CONTAINER_DELETED_EVENT),
    ]
    for sub in (first, second):
        wait_for_events(sub, len(expected))
        assert sub.seen() == expected
    first.close()
    second.close()

    events = {(e.container_id, e.container_event_type): e for e in first.events}
    for e in first.events:  # what kubelet's Evented PLEG needs of every event
        assert e.pod_sandbox_status.id == pod.id
        assert e.pod_sandbox_status.metadata.uid == "uid-1"
        assert e.created_at > 0
    # the statuses are the committed state at the event
    started = events[(cid, E.CONTAINER_STARTED_EVENT)]
    assert [(s.id, s.state) for s in started.containers_statuses] == [
        (cid, api_pb2.CONTAINER_RUNNING)
    ]
    assert started.pod_sandbox_status.state == api_pb2.SANDBOX_READY
    stopped = events[(cid, E.CONTAINER_STOPPED_EVENT)]
    assert [(s.id, s.state) for s in stopped.containers_statuses] == [
        (cid, api_pb2.CONTAINER_EXITED)
    ]
    assert events[(cid, E.CONTAINER_DELETED_EVENT)].containers_statuses == []
    gone = events[(pod.id, E.CONTAINER_DELETED_EVENT)]
    assert gone.pod_sandbox_status.state == api_pb2.SANDBOX_NOTREADY
