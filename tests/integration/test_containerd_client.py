"""The typed containerd client against a real containerd (the run's private one)."""

from __future__ import annotations

import hashlib
import math
import secrets
from pathlib import Path
from typing import Any

import pytest

from crictl import errors
from crictl.containerd import managed
from crictl.containerd.client import ContainerdClient
from crictl.containerd.managed import ManagedContainerd
from crictl.images import reference, spool
from crictl.images.mediatypes import OCI_MANIFEST
from crictl.images.pull import Puller
from crictl.images.registry import Descriptor, RegistryClient
from crictl.images.spool import SpoolFile
from crictl.metrics import REGISTRY
from tests.integration.test_images import BUSYBOX
from tests.rig.inventory import inventory, purge_namespace
from tests.rig.registry import Registry
from tests.rig.shims import kill_shims

pytestmark = pytest.mark.integration

NGINX = "e2e-test-images/nginx:1.14-2"


async def test_version(containerd: ContainerdClient) -> None:
    v = await containerd.version(timeout=5)
    assert v.version.startswith(("1.6", "v1.6")), v


async def test_the_managed_containerd_collects_after_deletions_and_rests_between(
    containerd: ContainerdClient,
) -> None:
    """The GC scheduler settings of the managed config reach containerd (it ignores a key it
    does not know): a fixed 1 s check in place of a timer re-armed every few ms, and a
    collection at once after a deletion (managed.containerd_config)."""
    from crictl.gen.containerd.api.services.introspection.v1 import introspection_pb2

    resp = await containerd.introspection.Plugins(
        introspection_pb2.PluginsRequest(filters=['type=="io.containerd.gc.v1",id=="scheduler"'])
    )
    assert len(resp.plugins) == 1
    exports = dict(resp.plugins[0].exports)
    assert exports["PauseThreshold"] == "0", exports
    assert exports["DeletionThreshold"] == "1", exports
    assert exports["MutationThreshold"] == "100", exports  # containerd's default, kept


async def test_the_managed_containerd_runs_no_restart_monitor(
    containerd: ContainerdClient,
) -> None:
    """containerd's restart monitor lists every container record, specs and all, every 10 s
    to restart those with its label; crictld sets none, and its containerd does not load it
    (managed.containerd_config)."""
    from crictl.gen.containerd.api.services.introspection.v1 import introspection_pb2

    internal = await containerd.introspection.Plugins(
        introspection_pb2.PluginsRequest(filters=['type=="io.containerd.internal.v1"'])
    )
    ids = {p.id for p in internal.plugins}
    assert "opt" in ids, ids  # the filter reads this containerd's internal plugins
    assert "restart" not in ids, ids


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
    client.answered_at = 1.0  # as if it had answered: the failure makes the supervisor ask
    try:
        with pytest.raises(errors.Unavailable):
            await client.version(timeout=2)
        assert client.answered_at == -math.inf
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


async def test_a_pull_writes_its_manifest_and_config_once_its_layers_are_in(
    containerd_address: str, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The small blobs (manifest, config) are written into containerd after every layer's
    download has ended, off the first layer's way to its unpacking, and the image ends whole:
    each blob in the namespace with the labels that hold the next (the manifest its config
    and layers, the config its top snapshot), no lease or ingest left."""
    namespace = f"crictld-test-{secrets.token_hex(4)}"
    client = ContainerdClient(containerd_address, namespace)
    puller = Puller(client, RegistryClient())
    order: list[tuple[str, str]] = []
    ensure_blob, put_small = Puller._ensure_blob, Puller._put_small

    async def layer(self: Puller, *args: Any) -> bool:
        try:
            return await ensure_blob(self, *args)
        finally:
            order.append(("layer in", args[3].digest))

    async def small(self: Puller, desc: Descriptor, *args: Any) -> None:
        order.append(("small written", desc.digest))
        await put_small(self, desc, *args)

    monkeypatch.setattr(Puller, "_ensure_blob", layer)
    monkeypatch.setattr(Puller, "_put_small", small)
    try:
        content, names = await puller.pull(reference.parse(f"{registry.host}/{NGINX}"))
        assert names and len(content.layers) > 1
        kinds = [kind for kind, _ in order]
        assert kinds.count("layer in") == len(content.layers)
        assert kinds == sorted(kinds), order  # every "layer in" before any "small written"
        assert {d for k, d in order if k == "small written"} == {
            content.manifest.digest,
            content.config.digest,
        }
        manifest = await puller.content_info(content.manifest.digest)
        assert manifest is not None
        assert manifest.labels["containerd.io/gc.ref.content.config"] == content.config.digest
        assert {v for k, v in manifest.labels.items() if ".content.l." in k} == {
            d.digest for d in content.layers
        }
        config = await puller.content_info(content.config.digest)
        assert config is not None and any(".snapshot." in k for k in config.labels), config
        inv = await inventory(containerd_address, namespace)
        assert (inv.ingests, inv.leases) == (frozenset(), frozenset()), inv
    finally:
        await client.close()
        await purge_namespace(containerd_address, namespace)


async def test_a_spooled_layer_containerd_no_longer_finds_is_sent_through_its_api(
    short_tmp: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer is downloaded into the spool and linked into containerd's content store
    (crictl/images/spool.py); if the link is gone before the commit's write opens (as
    containerd's collector removes a blob no namespace holds), the commit finds nothing to
    share, and the spooled bytes go through the content API: the pull ends whole, with nothing
    left in the spool, no ingest and no lease. A containerd of its own: its store holds no
    other test's blobs, which the injected removal would take from them."""
    managed = ManagedContainerd(short_tmp / "containerd")
    await managed.ensure_running()
    client = ContainerdClient(managed.address, "crictld-test")
    spool_dir = short_tmp / "containerd" / "pulls"  # on the store's filesystem
    spool.leftovers(spool_dir, None)  # the dir, made
    puller = Puller(client, RegistryClient(), spool=spool_dir)
    collected: list[Path] = []
    link = SpoolFile.link

    def linked_then_collected(self: SpoolFile) -> None:
        link(self)
        target = self.content.blob_path(self.digest)
        assert target is not None and target.exists()
        target.unlink()
        collected.append(target)

    monkeypatch.setattr(SpoolFile, "link", linked_then_collected)
    try:
        content, names = await puller.pull(reference.parse(f"{registry.host}/{BUSYBOX}"))
        assert names and content.layers
        assert [p.name for p in collected] == [d.digest[7:] for d in content.layers]
        for layer, blob in zip(content.layers, collected, strict=True):
            info = await puller.content_info(layer.digest)
            assert info is not None and info.size == layer.size, info
            data = blob.read_bytes()  # written by containerd from what the API brought
            assert f"sha256:{hashlib.sha256(data).hexdigest()}" == layer.digest
        inv = await inventory(managed.address, "crictld-test")
        assert (inv.ingests, inv.leases) == (frozenset(), frozenset()), inv
        assert not any(spool_dir.iterdir())
    finally:
        await client.close()
        await managed.stop()
        kill_shims(managed.address)


async def test_a_containerd_that_does_not_share_blobs_gets_layers_through_its_api(
    short_tmp: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A containerd whose content sharing is off ("isolated") does not take a blob linked into
    its store: the first layer is sent from the spool through the content API, and every
    later layer goes through the API without the spool. Both images end whole."""
    isolated = (
        '\n[plugins."io.containerd.metadata.v1.bolt"]\n  content_sharing_policy = "isolated"\n'
    )
    config = managed.containerd_config
    monkeypatch.setattr(managed, "containerd_config", lambda d, s: config(d, s) + isolated)
    ctd = managed.ManagedContainerd(short_tmp / "containerd")
    await ctd.ensure_running()
    client = ContainerdClient(ctd.address, "crictld-test")
    spool_dir = short_tmp / "containerd" / "pulls"
    puller = Puller(client, RegistryClient(), spool=spool_dir)

    def pulled(path: str) -> float:
        value = REGISTRY.get_sample_value("crictld_image_pull_bytes_total", {"path": path})
        return value or 0.0

    try:
        before = {p: pulled(p) for p in ("store", "api")}
        first, _ = await puller.pull(reference.parse(f"{registry.host}/{BUSYBOX}"))
        layers = sum(d.size for d in first.layers)
        # downloaded into the spool, then sent from it (not counted twice)
        assert pulled("store") - before["store"] == layers
        assert pulled("api") == before["api"]
        second, _ = await puller.pull(reference.parse(f"{registry.host}/{NGINX}"))
        had = {d.digest for d in first.layers}
        new = {d.digest: d.size for d in second.layers if d.digest not in had}
        assert new
        assert pulled("store") - before["store"] == layers
        assert pulled("api") - before["api"] == sum(new.values())
        for layer in (*first.layers, *second.layers):
            info = await puller.content_info(layer.digest)
            assert info is not None and info.size == layer.size, info
        inv = await inventory(ctd.address, "crictld-test")
        assert (inv.ingests, inv.leases) == (frozenset(), frozenset()), inv
        assert not any(spool_dir.iterdir())
    finally:
        await client.close()
        await ctd.stop()
        kill_shims(ctd.address)
