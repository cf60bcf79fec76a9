"""ImageService against the real thing: crictld, a private containerd, Debian's docker-registry
and cri-tools' crictl. Each test's daemon has a containerd namespace of its own."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from crictl.containerd.client import ContainerdClient
from crictl.gen.containerd.api.services.content.v1 import content_pb2
from crictl.gen.containerd.api.services.images.v1 import images_pb2
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2
from crictl.gen.cri.runtime.v1 import api_pb2
from tests.conftest import BIG_IMAGE
from tests.rig.daemon import Daemon
from tests.rig.images import FixtureImage
from tests.rig.inventory import Inventory, inventory
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

BUSYBOX = "e2e-test-images/busybox:1.29-2"


def _image(images: list[FixtureImage], ref: str) -> FixtureImage:
    repo, _, tag = ref.rpartition(":")
    return next(i for i in images if i.repository == repo and tag in i.tags)


def pull(d: Daemon, ref: str, timeout: float = 120.0, **auth: str) -> str:
    req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
    if auth:
        req.auth.CopyFrom(api_pb2.AuthConfig(**auth))
    resp: api_pb2.PullImageResponse = d.image_call("PullImage", req, timeout=timeout)
    return resp.image_ref


def status(d: Daemon, ref: str) -> api_pb2.ImageStatusResponse:
    resp: api_pb2.ImageStatusResponse = d.image_call(
        "ImageStatus", api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))
    )
    return resp


def failure(fn: Callable[..., object], *args: object) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    err = info.value
    assert isinstance(err, grpc.Call)
    return err.code(), err.details() or ""


def inv(d: Daemon) -> Inventory:
    return asyncio.run(inventory(d.containerd, d.namespace))


def assert_nothing_left(d: Daemon) -> None:
    spool = d.state_dir / "pulls"  # layers downloaded beside containerd's content store
    assert not spool.exists() or not any(spool.iterdir()), list(spool.iterdir())
    i = inv(d)
    assert (i.images, i.content, i.ingests, i.snapshots, i.leases) == (
        frozenset(),
        frozenset(),
        frozenset(),
        frozenset(),
        frozenset(),
    ), i


def test_crictl_pull_images_inspecti_rmi(
    image_daemon: Daemon, registry: Registry, fixture_images: list[FixtureImage]
) -> None:
    d, ref = image_daemon, f"{registry.host}/{BUSYBOX}"
    r = d.crictl("pull", ref)
    assert r.returncode == 0, r.stderr
    fixture = _image(fixture_images, BUSYBOX)
    manifest = fixture.manifest_for()
    image_id = manifest.config.digest
    assert image_id in r.stdout

    listed = json.loads(d.crictl("images", "-o", "json").stdout)["images"]
    [img] = [i for i in listed if i["id"] == image_id]
    assert img["repoTags"] == [ref]
    repo_digest = f"{registry.host}/e2e-test-images/busybox@{fixture.digest}"
    assert img["repoDigests"] == [repo_digest]
    # one record in containerd, the tag's: its repository digest is derived, in SQL too
    assert inv(d).images == frozenset({ref})
    q = d.sql("--json", "SELECT repo_tags, repo_digests FROM images")
    assert q.returncode == 0, q.stderr
    [row] = json.loads(q.stdout)
    assert (json.loads(row["repo_tags"]), json.loads(row["repo_digests"])) == (
        [ref],
        [repo_digest],
    )
    assert status(d, repo_digest).image.id == image_id
    expected_size = (
        manifest.descriptor.size
        + manifest.config.size
        + sum(layer.descriptor.size for layer in manifest.layers)
    )
    assert int(img["size"]) == expected_size

    info = json.loads(d.crictl("inspecti", ref).stdout)
    assert info["status"]["id"] == image_id
    assert info["info"]["imageSpec"]["rootfs"]["diff_ids"] == [
        layer.diff_id for layer in manifest.layers
    ]

    fs = json.loads(d.crictl("imagefsinfo", "-o", "json").stdout)["status"]["imageFilesystems"][0]
    assert fs["fsId"]["mountpoint"].endswith("io.containerd.snapshotter.v1.overlayfs")
    assert int(fs["usedBytes"]["value"]) > 0 and int(fs["inodesUsed"]["value"]) > 0

    r = d.crictl("rmi", ref)
    assert r.returncode == 0, r.stderr
    assert json.loads(d.crictl("images", "-o", "json").stdout)["images"] == []
    assert_nothing_left(d)


def test_status_by_every_kind_of_reference(image_daemon: Daemon, registry: Registry) -> None:
    d = image_daemon
    ref = f"{registry.host}/k8s-staging-cri-tools/test-image-tag:all"  # an OCI index
    image_id = pull(d, ref)
    st = status(d, ref).image
    assert st.id == image_id
    [digest_ref] = st.repo_digests
    for spec in (
        image_id,
        image_id.removeprefix("sha256:"),
        image_id[:19],
        digest_ref,
        image_id.removeprefix("sha256:")[:12],
    ):
        assert status(d, spec).image == st, spec
    assert not status(d, f"{registry.host}/nope:1").HasField("image")  # absent: no error
    assert not status(d, "sha256:" + "0" * 64).HasField("image")
    listed = d.image_call(
        "ListImages",
        api_pb2.ListImagesRequest(
            filter=api_pb2.ImageFilter(image=api_pb2.ImageSpec(image=digest_ref))
        ),
    )
    assert [i.id for i in listed.images] == [image_id]


def test_user_and_pinned(image_daemon: Daemon, registry: Registry) -> None:
    d, h = image_daemon, registry.host
    cases = {
        "k8s-staging-cri-tools/test-image-user-uid:latest": (1002, ""),
        "k8s-staging-cri-tools/test-image-user-username:latest": (None, "www-data"),
        "k8s-staging-cri-tools/test-image-user-uid-group:latest": (1003, ""),
        "k8s-staging-cri-tools/test-image-user-username-group:latest": (None, "www-data"),
    }
    for name, (uid, username) in cases.items():
        pull(d, f"{h}/{name}")
        st = status(d, f"{h}/{name}").image
        assert (st.uid.value if st.HasField("uid") else None, st.username) == (uid, username)
        assert not st.pinned
    pull(d, f"{h}/pause:3.10")
    assert status(d, f"{h}/pause:3.10").image.pinned  # the configured pause image


def test_image_pulled_by_crictld_runs_with_ctr(image_daemon: Daemon, registry: Registry) -> None:
    d, ref = image_daemon, f"{registry.host}/{BUSYBOX}"
    pull(d, ref)
    out = subprocess.run(
        [
            "ctr",
            "--address",
            d.containerd,
            "--namespace",
            d.namespace,
            "run",
            "--rm",
            # One level, which runc removes with the container: ctr's default, /<ns>/<id>,
            # left a /<ns> directory in every hierarchy after each run.
            "--cgroup",
            f"/{d.namespace}-ctr-run",
            ref,
            "crictld-ctr-run",
            "/bin/sh",
            "-c",
            "echo ran-from-crictld-pull; id -u",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ran-from-crictld-pull", "0"]


def test_remove_by_tag_keeps_other_tags_by_id_removes_all(
    image_daemon: Daemon, registry: Registry
) -> None:
    d, h = image_daemon, registry.host
    tags = [f"{h}/k8s-staging-cri-tools/test-image-tags:{t}" for t in ("1", "2", "3")]
    ids = {pull(d, t) for t in tags}
    assert len(ids) == 1
    [image_id] = ids
    assert sorted(status(d, tags[0]).image.repo_tags) == sorted(tags)
    d.image_call("RemoveImage", api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=tags[0])))
    assert not status(d, tags[0]).HasField("image")
    assert sorted(status(d, image_id).image.repo_tags) == sorted(tags[1:])
    d.image_call("RemoveImage", api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image_id)))
    for spec in (*tags, image_id):
        assert not status(d, spec).HasField("image")
    # Idempotent: removing what is gone is fine.
    d.image_call("RemoveImage", api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image_id)))
    d.image_call("RemoveImage", api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=tags[1])))
    assert_nothing_left(d)


def test_concurrent_pulls_share_one_transfer(image_daemon: Daemon, registry: Registry) -> None:
    d, h = image_daemon, registry.host
    same = f"{h}/e2e-test-images/nginx:1.14-2"
    others = [f"{h}/k8s-staging-cri-tools/test-image-{n}:latest" for n in (1, 2, 3)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        same_ids = list(pool.map(lambda _: pull(d, same), range(5)))
        other_ids = list(pool.map(lambda r: pull(d, r), others))
    assert len(set(same_ids)) == 1
    assert len(set(other_ids)) == 3
    pulled = [json.loads(line) for line in d.log().splitlines() if '"pulled image"' in line]
    assert [p["ref"] for p in pulled].count(same) == 1  # five callers, one pull
    assert sorted(
        i.id for i in d.image_call("ListImages", api_pb2.ListImagesRequest()).images
    ) == sorted({*same_ids, *other_ids})


def test_bad_references_and_registries_fail_clearly(
    image_daemon: Daemon, registry: Registry
) -> None:
    d, h = image_daemon, registry.host
    for bad in ("", "Busybox", "library/UPPER", "busybox:bad tag", "x@sha256:123", "a//b"):
        code, _ = failure(pull, d, bad)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, bad
    code, message = failure(pull, d, f"{h}/no/such-image:1")
    assert code == grpc.StatusCode.NOT_FOUND
    assert f"{h}/no/such-image:1" in message and "manifest unknown" in message
    closed = "127.0.0.1:9"  # discard port: nothing listens
    code, message = failure(pull, d, f"{closed}/x:1")
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "cannot connect" in message and closed in message
    assert_nothing_left(d)


def test_tls_to_a_plain_http_registry_is_named(
    short_tmp: Path,
    crictl_path: Path,
    registry: Registry,
    containerd_address: str,
    image_daemon: Daemon,
) -> None:
    d = image_daemon
    d.stop()
    d.extra_args += ["--registry-mirror", f"mirror.test=https://{registry.host}"]
    d.start()
    code, message = failure(pull, d, "mirror.test/e2e-test-images/busybox:1.29-2")
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "TLS handshake failed" in message and "--insecure-registry" in message


def test_mirror_serves_an_upstream_name(image_daemon: Daemon, registry: Registry) -> None:
    d = image_daemon
    d.stop()
    d.extra_args += ["--registry-mirror", f"registry.k8s.io=http://{registry.host}"]
    d.start()
    image_id = pull(d, "registry.k8s.io/pause:3.9")
    assert status(d, "registry.k8s.io/pause:3.9").image.repo_tags == ["registry.k8s.io/pause:3.9"]
    assert status(d, image_id).image.id == image_id


def test_images_added_and_removed_with_ctr_are_seen(
    image_daemon: Daemon, registry: Registry
) -> None:
    d, ref = image_daemon, f"{registry.host}/{BUSYBOX}"
    image_id = pull(d, ref)
    ctr = ["ctr", "--address", d.containerd, "--namespace", d.namespace]
    subprocess.run(
        [*ctr, "images", "tag", ref, "example.test/retagged:v1"], check=True, capture_output=True
    )
    deadline = time.monotonic() + 10
    while "example.test/retagged:v1" not in status(d, image_id).image.repo_tags:
        assert time.monotonic() < deadline, "the ctr tag never showed up\n" + d.log()[-3000:]
        time.sleep(0.05)
    # the tag ctr made stands for a repository digest too, as crictld's pull's tag does
    digest = status(d, ref).image.repo_digests[0].split("@")[1]
    assert f"example.test/retagged@{digest}" in status(d, image_id).image.repo_digests
    subprocess.run(
        [*ctr, "images", "rm", "example.test/retagged:v1", ref], check=True, capture_output=True
    )
    deadline = time.monotonic() + 10
    while status(d, image_id).HasField("image"):
        assert time.monotonic() < deadline, "the ctr removal never showed up"
        time.sleep(0.05)


def test_a_pull_never_blocks_other_calls(image_daemon: Daemon, registry: Registry) -> None:
    """While a big pull runs, Status and ListImages still answer at once."""
    from tests.rig.proxy import Proxy

    d = image_daemon
    repo, tag, _ = BIG_IMAGE
    with Proxy(registry.port) as proxy:
        proxy.faults.rate = 4 << 20  # 4 MiB/s: the 48 MiB layer takes ~12 s
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pulling = pool.submit(pull, d, f"{proxy.host}/{repo}:{tag}")
            time.sleep(1.0)
            assert not pulling.done()
            for _ in range(5):
                started = time.monotonic()
                d.status(timeout=2)
                d.image_call("ListImages", api_pb2.ListImagesRequest(), timeout=2)
                assert time.monotonic() - started < 0.5
            assert not pulling.done()  # the checks ran while the pull did
            proxy.faults.rate = 0  # the rest of the layer at full speed
            assert pulling.result(timeout=120).startswith("sha256:")


def test_a_pull_of_an_image_the_node_has_holds_it_whole_again(
    image_daemon: Daemon, registry: Registry, fixture_images: list[FixtureImage]
) -> None:
    """Pulled again, an image the cache holds takes its config from the cache (no read of the
    blob) and finds its snapshot first; a config or layer blob gone from containerd meanwhile
    is fetched again before the pull answers, and every blob and the snapshot are there
    with no lease or ingest left."""
    d = image_daemon
    ref = f"{registry.host}/{BUSYBOX}"
    pull(d, ref)
    image_id = status(d, ref).image.id
    before = inv(d)
    layers = [
        layer.descriptor.digest for layer in _image(fixture_images, BUSYBOX).manifests[0].layers
    ]
    assert image_id in before.content and set(layers) <= before.content

    async def delete(digests: list[str]) -> None:
        c = ContainerdClient(d.containerd, d.namespace)
        try:
            for digest in digests:
                await c.call(
                    "delete content",
                    c.content.Delete(
                        content_pb2.DeleteContentRequest(digest=digest), metadata=c.metadata
                    ),
                )
        finally:
            await c.close()

    pull(d, ref)  # the node has it all
    assert inv(d) == before
    asyncio.run(delete([image_id, *layers]))
    assert not ({image_id, *layers} & inv(d).content)
    pull(d, ref)  # its config and layer fetched from the registry again, the snapshot kept
    after = inv(d)
    assert after == before, (before, after)
    assert status(d, ref).image.id == image_id


def _containerd(d: Daemon) -> ContainerdClient:
    return ContainerdClient(d.containerd, d.namespace)


async def _records(d: Daemon, names: list[str]) -> dict[str, images_pb2.Image | None]:
    c = _containerd(d)
    try:
        return {name: await c.get_image(name) for name in names}
    finally:
        await c.close()


@pytest.mark.parametrize("path", [BUSYBOX, "pause:3.10"], ids=["manifest", "index"])
def test_a_pull_of_an_image_the_node_has_whole_writes_nothing(
    image_daemon: Daemon, registry: Registry, path: str
) -> None:
    """kubelet's `imagePullPolicy: Always`: the records, blobs and snapshot of an image the
    node has are checked, not written again: no record is updated, no lease made."""
    d = image_daemon
    ref = f"{registry.host}/{path}"
    image_id = pull(d, ref)
    names = [ref]  # the one record a pull by tag makes
    before, held = inv(d), asyncio.run(_records(d, names))
    assert all(r is not None for r in held.values()), held
    assert pull(d, ref) == image_id
    assert asyncio.run(_records(d, names)) == held  # updated_at too: nothing was written
    assert inv(d) == before


async def _break(d: Daemon, broken: str, ref: str, image_id: str) -> None:
    """Breaks one part of a pulled image: the record's crictld label, the config's reference
    to its snapshot (which holds the snapshot from containerd's collection), the snapshot."""
    c = _containerd(d)
    try:
        if broken == "record label":
            image = await c.get_image(ref)
            assert image is not None
            del image.labels["crictld.io/managed"]
            await c.call(
                "update image",
                c.images.Update(
                    images_pb2.UpdateImageRequest(
                        image=image, update_mask=FieldMask(paths=["labels.crictld.io/managed"])
                    ),
                    metadata=c.metadata,
                ),
            )
            return
        info = await c.call(
            "content info",
            c.content.Info(content_pb2.InfoRequest(digest=image_id), metadata=c.metadata),
        )
        label = "containerd.io/gc.ref.snapshot.overlayfs"
        if broken == "config label":
            await c.call(
                "update content",
                c.content.Update(
                    content_pb2.UpdateRequest(
                        info=content_pb2.Info(digest=image_id),
                        update_mask=FieldMask(paths=[f"labels.{label}"]),
                    ),
                    metadata=c.metadata,
                ),
            )
            return
        await c.call(
            "remove snapshot",
            c.snapshots.Remove(
                snapshots_pb2.RemoveSnapshotRequest(
                    snapshotter="overlayfs", key=info.info.labels[label]
                ),
                metadata=c.metadata,
            ),
        )
    finally:
        await c.close()


async def _labels(d: Daemon, ref: str, image_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """The labels of the image's record and of its config."""
    c = _containerd(d)
    try:
        image = await c.get_image(ref)
        assert image is not None
        info = await c.call(
            "content info",
            c.content.Info(content_pb2.InfoRequest(digest=image_id), metadata=c.metadata),
        )
        return dict(image.labels), dict(info.info.labels)
    finally:
        await c.close()


@pytest.mark.parametrize("broken", ["record label", "config label", "snapshot"])
def test_a_pull_of_an_image_the_node_has_mends_what_differs(
    image_daemon: Daemon, registry: Registry, broken: str
) -> None:
    """What the check of an image the node has finds changed or missing (the record's label,
    the config's reference to its snapshot, the snapshot itself) the pull writes again, and
    then leaves the node as the first pull did."""
    d = image_daemon
    ref = f"{registry.host}/{BUSYBOX}"
    image_id = pull(d, ref)
    view = status(d, ref).image
    before, held = inv(d), asyncio.run(_labels(d, ref, image_id))
    asyncio.run(_break(d, broken, ref, image_id))
    if broken == "snapshot":
        assert inv(d).snapshots < before.snapshots
    else:
        assert asyncio.run(_labels(d, ref, image_id)) != held
    assert pull(d, ref) == image_id
    assert asyncio.run(_labels(d, ref, image_id)) == held
    assert inv(d) == before
    assert status(d, ref).image == view
