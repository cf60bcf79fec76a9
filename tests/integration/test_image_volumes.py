"""Image volumes (KEP-4639): a Mount naming an image is that image's read-only snapshot inside
the container; its files are readable, nothing is writable, and its snapshot goes with the
container. An image not pulled is NOT_FOUND with nothing made."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from crictl.containerd.client import ContainerdClient
from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_containers import Pod
from tests.integration.test_images import failure, pull
from tests.integration.test_sandboxes import remove
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


def snapshots(d: Daemon) -> list[str]:
    async def keys() -> list[str]:
        c = ContainerdClient(d.containerd_address, d.namespace)
        try:
            from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2

            out = []
            async for resp in c.snapshots.List(
                snapshots_pb2.ListSnapshotsRequest(snapshotter="overlayfs"), metadata=c.metadata
            ):
                out += [i.name for i in resp.info]
            return out
        finally:
            await c.close()

    return asyncio.run(keys())


def test_an_image_volume_is_readable_and_read_only(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    volume_image = f"{registry.host}/k8s-staging-cri-tools/test-image-1:latest"

    def create(image: str) -> str:
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="vol"),
            image=api_pb2.ImageSpec(image=pod.image),
            command=["sleep", "3600"],
            mounts=[
                api_pb2.Mount(
                    container_path="/vol", image=api_pb2.ImageSpec(image=image), readonly=True
                )
            ],
        )
        resp = d.runtime_call(
            "CreateContainer",
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
            ),
        )
        return str(resp.container_id)

    code, message = failure(create, volume_image)  # not pulled yet
    assert code == grpc.StatusCode.NOT_FOUND and "config.mounts[0].image" in message, message
    assert not d.runtime_call("ListContainers", api_pb2.ListContainersRequest()).containers
    pull(d, volume_image)
    cid = create(volume_image)
    pod.start(cid)
    # both layers: the image's own marker file on top of busybox's files
    check = pod.exec(cid, ["sh", "-c", "test -f /vol/test-image-1 && head -c 4 /vol/bin/busybox"])
    assert check.exit_code == 0 and check.stdout == b"\x7fELF", check
    write = pod.exec(cid, ["sh", "-c", "echo x > /vol/new"])
    assert write.exit_code != 0 and b"Read-only file system" in write.stderr, write
    assert f"{cid}-vol0" in snapshots(d)
    remove(d, pod.id)
    assert not [k for k in snapshots(d) if k.startswith(cid)]
