"""The Stream* list RPCs: the same items as the unary lists, in chunks. With 20 containers
carrying 250 KB of annotations each (5 MB, the size of thousands of plain containers'
rows), the unary ListContainers is more than gRPC's default 4 MiB and fails; the stream
brings every container."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2, api_pb2_grpc
from tests.integration.test_containers import Pod
from tests.integration.test_sandboxes import remove
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

BIG = 64 << 20


def big_channel(d: Daemon) -> grpc.Channel:
    return grpc.insecure_channel(d.endpoint, options=[("grpc.max_receive_message_length", BIG)])


def streamed(stub: Any, method: str, request: Any, field: str) -> tuple[list[Any], int]:
    """Every item of a Stream* RPC, and how many messages brought them."""
    messages = list(getattr(stub, method)(request, timeout=60))
    return list(itertools.chain.from_iterable(getattr(m, field) for m in messages)), len(messages)


def test_streams_bring_what_the_unary_list_cannot(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    note = "n" * 249_000
    cids = []
    for i in range(20):
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=f"c{i}"),
            image=api_pb2.ImageSpec(image=pod.image),
            command=["sleep", "3600"],
            annotations={"note": note},
        )
        resp = d.runtime_call(
            "CreateContainer",
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
            ),
        )
        cids.append(resp.container_id)

    with grpc.insecure_channel(d.endpoint) as channel:  # gRPC's default 4 MiB limit
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListContainers(api_pb2.ListContainersRequest(), timeout=60)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        items, messages = streamed(
            stub, "StreamContainers", api_pb2.StreamContainersRequest(), "containers"
        )
    assert sorted(c.id for c in items) == sorted(cids)
    assert messages >= 5  # 5 MB in chunks of at most 1 MiB
    assert all(c.annotations["note"] == note for c in items)

    with big_channel(d) as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        images = api_pb2_grpc.ImageServiceStub(channel)
        unary = stub.ListContainers(api_pb2.ListContainersRequest(), timeout=60).containers
        assert unary.__len__() == 20 and sorted(c.id for c in unary) == sorted(c.id for c in items)
        # filters apply as in the unary lists
        one = api_pb2.ContainerFilter(id=cids[3][:12])
        assert [
            c.id
            for c in streamed(
                stub, "StreamContainers", api_pb2.StreamContainersRequest(filter=one), "containers"
            )[0]
        ] == [cids[3]]
        pods, _ = streamed(
            stub, "StreamPodSandboxes", api_pb2.StreamPodSandboxesRequest(), "pod_sandboxes"
        )
        assert [p.id for p in pods] == [pod.id]
        none = api_pb2.PodSandboxFilter(label_selector={"app": "nothing"})
        assert streamed(
            stub,
            "StreamPodSandboxes",
            api_pb2.StreamPodSandboxesRequest(filter=none),
            "pod_sandboxes",
        ) == ([], 0)
        stats, _ = streamed(
            stub, "StreamContainerStats", api_pb2.StreamContainerStatsRequest(), "container_stats"
        )
        assert sorted(s.attributes.id for s in stats) == sorted(cids)
        pod_stats, _ = streamed(
            stub,
            "StreamPodSandboxStats",
            api_pb2.StreamPodSandboxStatsRequest(),
            "pod_sandbox_stats",
        )
        assert [p.attributes.id for p in pod_stats] == [pod.id]
        listed = images.ListImages(api_pb2.ListImagesRequest(), timeout=60).images
        got, _ = streamed(images, "StreamImages", api_pb2.StreamImagesRequest(), "images")
        assert sorted(i.id for i in got) == sorted(i.id for i in listed) and got
    remove(d, pod.id)
