"""ListContainers and ListPodSandbox (kubelet's relist, every second) against a real store: the
unfiltered answer is kept until the next committed write and never outlives it."""

from __future__ import annotations

from functools import partial
from typing import Any, cast

from crictl.api.container_events import NO_CONTEXT
from crictl.api.containers import Containers
from crictl.api.sandboxes import PodSandboxes
from crictl.api.service import RUNTIME_SERVICE, LastSerialized, generic_handler
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.store import containers as sc
from crictl.store import sandboxes as ss
from crictl.store.engine import Store
from tests.unit.test_readmodel import new_container, new_sandbox

SID = "a" * 64
CIDS = ("b" * 64, "c" * 64)


def populate(store: Store) -> None:
    store.write_sync(lambda s: ss.create_sandbox(s, new_sandbox(SID, "web")))
    store.write_sync(lambda s: ss.record_sandbox_started(s, SID, SID, 42))
    for i, cid in enumerate(CIDS):
        new = new_container(cid, SID, f"c{i}", {"n": str(i)})
        store.write_sync(partial(sc.create_container, new=new))
        store.write_sync(
            partial(sc.record_container_created, container_id=cid, uid=1000, gid=1000, groups=[1])
        )


def containers_api(store: Store) -> Containers:
    return Containers(store, cast(Any, None))  # lists never reach the reconciler


def pods_api(store: Store) -> PodSandboxes:
    return PodSandboxes(store, cast(Any, None))


async def list_containers(api: Containers, **flt: Any) -> api_pb2.ListContainersResponse:
    req = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(**flt))
    return await api.list_containers(req, NO_CONTEXT)


async def test_an_unchanged_store_answers_the_same_list(store: Store) -> None:
    populate(store)
    api = containers_api(store)
    first = await list_containers(api)
    assert [c.id for c in first.containers] == list(CIDS)
    assert {c.state for c in first.containers} == {api_pb2.CONTAINER_CREATED}
    assert await list_containers(api) is first


async def test_a_committed_write_is_in_the_next_list(store: Store) -> None:
    populate(store)
    api = containers_api(store)
    before = await list_containers(api)
    store.write_sync(lambda s: sc.record_container_started(s, CIDS[0], 77))
    after = await list_containers(api)
    assert after is not before
    assert [(c.id, c.state) for c in after.containers] == [
        (CIDS[0], api_pb2.CONTAINER_RUNNING),
        (CIDS[1], api_pb2.CONTAINER_CREATED),
    ]
    assert before.containers[0].state == api_pb2.CONTAINER_CREATED  # an answer given stays
    store.write_sync(lambda s: sc.delete_container(s, CIDS[1]))
    assert [c.id for c in (await list_containers(api)).containers] == [CIDS[0]]


async def test_filtered_lists_are_built_each_time_and_agree(store: Store) -> None:
    populate(store)
    api = containers_api(store)
    one = await list_containers(api, label_selector={"n": "1"})
    again = await list_containers(api, label_selector={"n": "1"})
    assert one is not again
    assert one == again
    assert [c.id for c in one.containers] == [CIDS[1]]
    by_pod = await list_containers(api, pod_sandbox_id=SID)
    assert [c.id for c in by_pod.containers] == list(CIDS)
    everything = await list_containers(api)
    assert list(everything.containers) == list(by_pod.containers)


async def test_the_pod_list_follows_the_same_rule(store: Store) -> None:
    populate(store)
    api = pods_api(store)
    req = api_pb2.ListPodSandboxRequest()
    first = await api.list_pod_sandbox(req, NO_CONTEXT)
    assert [(p.id, p.state) for p in first.items] == [(SID, api_pb2.SANDBOX_READY)]
    assert await api.list_pod_sandbox(req, NO_CONTEXT) is first
    store.write_sync(lambda s: ss.record_sandbox_not_ready(s, SID, "Stopped", "stopped"))
    after = await api.list_pod_sandbox(req, NO_CONTEXT)
    assert [(p.id, p.state) for p in after.items] == [(SID, api_pb2.SANDBOX_NOTREADY)]
    ready_only = api_pb2.ListPodSandboxRequest(
        filter=api_pb2.PodSandboxFilter(
            state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY)
        )
    )
    assert not (await api.list_pod_sandbox(ready_only, NO_CONTEXT)).items


def serializer_of(rpc: str, api: object) -> Any:
    """The response serializer the daemon's server uses for `rpc` of the RuntimeService."""
    method = generic_handler(RUNTIME_SERVICE, api).method(f"/runtime.v1.RuntimeService/{rpc}")
    assert method is not None
    return method.response_serializer


async def test_the_bytes_sent_follow_the_list_through_writes(store: Store) -> None:
    populate(store)
    api = containers_api(store)
    serialize = serializer_of("ListContainers", api)
    first = serialize(await list_containers(api))
    assert serialize(await list_containers(api)) is first  # unchanged: not serialized again
    store.write_sync(lambda s: sc.record_container_started(s, CIDS[0], 77))
    after = api_pb2.ListContainersResponse.FromString(serialize(await list_containers(api)))
    assert [(c.id, c.state) for c in after.containers] == [
        (CIDS[0], api_pb2.CONTAINER_RUNNING),
        (CIDS[1], api_pb2.CONTAINER_CREATED),
    ]
    # a filtered answer is another object: serialized for itself, and the next unfiltered
    # answer (the same object as before it) gives the same bytes again
    one = await list_containers(api, label_selector={"n": "1"})
    assert api_pb2.ListContainersResponse.FromString(serialize(one)) == one
    assert serialize(await list_containers(api)) == after.SerializeToString()


def test_only_the_reused_answers_keep_their_bytes() -> None:
    assert isinstance(serializer_of("ListPodSandbox", object()), LastSerialized)
    assert not isinstance(serializer_of("ContainerStatus", object()), LastSerialized)
    calls = []

    class Message:
        def SerializeToString(self) -> bytes:
            calls.append(self)
            return b"x"

    keep = LastSerialized()
    a, b = Message(), Message()
    assert [keep(a), keep(a), keep(b), keep(a)] == [b"x"] * 4
    assert calls == [a, b, a]
