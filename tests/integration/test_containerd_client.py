"""The typed containerd client against a real containerd (the run's private one)."""

from __future__ import annotations

import secrets

import pytest

from crictl import errors
from crictl.containerd.client import ContainerdClient
from crictl.images.mediatypes import OCI_MANIFEST
from crictl.images.pull import Puller
from crictl.images.registry import Descriptor, RegistryClient
from tests.rig.inventory import purge_namespace

pytestmark = pytest.mark.integration


async def test_version(containerd: ContainerdClient) -> None:
    v = await containerd.version(timeout=5)
    assert v.version.startswith(("1.6", "v1.6")), v


async def test_namespace_create_is_idempotent(containerd_address: str) -> None:
    ns = f"crictld-test-{secrets.token_hex(3)}"
    client = ContainerdClient(containerd_address, ns)
    try:
        assert await client.ensure_namespace({"crictld.io/test": "1"}) is True
        assert await client.ensure_namespace() is False
        assert ns in await client.list_namespaces()
        assert await client.list_containers() == []
    finally:
        await client.delete_namespace()
        await client.close()
    check = ContainerdClient(containerd_address)
    try:
        assert ns not in await check.list_namespaces()
    finally:
        await check.close()


async def test_errors_are_translated(containerd: ContainerdClient) -> None:
    from crictl.gen.containerd.api.services.containers.v1 import containers_pb2

    with pytest.raises(errors.NotFound, match="containerd get container"):
        await containerd.call(
            "get container",
            containerd.containers.Get(
                containers_pb2.GetContainerRequest(id="no-such-container"),
                metadata=containerd.metadata,
            ),
        )


async def test_k8s_io_namespace_is_refused(containerd_address: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="CRI plugin"):
        ContainerdClient(containerd_address, "k8s.io")


async def test_unreachable_containerd_is_unavailable(short_tmp: object) -> None:
    client = ContainerdClient("/tmp/crictld-no-such.sock")
    try:
        with pytest.raises(errors.Unavailable):
            await client.version(timeout=2)
    finally:
        await client.close()


async def test_an_image_record_is_put_whether_or_not_its_name_was_thought_there(
    containerd_address: str,
) -> None:
    """`Puller.put_image` re-points a name it is told is there (one round trip) and creates
    one it is told is not; told wrong either way, it does the other."""
    namespace = f"crictld-test-{secrets.token_hex(4)}"
    client = ContainerdClient(containerd_address, namespace)
    puller = Puller(client, RegistryClient())
    a, b = (Descriptor(OCI_MANIFEST, f"sha256:{c * 64}", 10) for c in "ab")

    async def target() -> str:
        image = await client.get_image("r/x:1")
        assert image is not None
        return str(image.target.digest)

    try:
        await puller.put_image("r/x:1", a, exists=True)  # thought there, is not: created
        assert await target() == a.digest
        await puller.put_image("r/x:1", b, exists=False)  # thought absent, is there
        assert await target() == b.digest
        await puller.put_image("r/x:1", a, exists=True)
        assert await target() == a.digest
    finally:
        await client.close()
        await purge_namespace(containerd_address, namespace)
