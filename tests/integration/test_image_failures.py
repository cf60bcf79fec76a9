"""Pulls that go wrong: a registry that dies mid-layer, one that stalls, bytes that arrive
corrupted, credentials, and a daemon killed mid-pull. Each must fail clearly and leave nothing
in containerd (content, ingests, snapshots, leases), and a retry must then succeed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crictl.containerd.client import ContainerdClient
from crictl.gen.cri.runtime.v1 import api_pb2
from tests.conftest import BIG_IMAGE
from tests.integration.test_images import BUSYBOX, assert_nothing_left, failure, inv, pull
from tests.rig.daemon import Daemon
from tests.rig.images import FixtureImage, push_images
from tests.rig.proxy import Proxy
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

REPO, TAG, SIZE = BIG_IMAGE


@pytest.fixture
def own_registry(short_tmp: Path, fixture_images: list[FixtureImage]) -> Iterator[Registry]:
    """A registry of the test's own (it will be stopped), with busybox and the big image."""
    wanted = [i for i in fixture_images if i.repository in (REPO, BUSYBOX.split(":")[0])]
    reg = Registry(short_tmp / "registry")
    reg.start()
    push_images(reg.host, wanted)
    try:
        yield reg
    finally:
        reg.stop()


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _big_layer_digest(images: list[FixtureImage]) -> str:
    big = next(i for i in images if i.repository == REPO)
    return big.manifest_for().layers[0].descriptor.digest


def test_registry_stopped_mid_layer(
    image_daemon: Daemon, own_registry: Registry, fixture_images: list[FixtureImage]
) -> None:
    d = image_daemon
    with Proxy(own_registry.port) as proxy:
        proxy.faults.rate = 8 << 20
        ref = f"{proxy.host}/{REPO}:{TAG}"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pulling = pool.submit(failure, pull, d, ref)
            _wait_for(lambda: proxy.forwarded > 12 << 20, 30, "the layer never started")
            port = own_registry.port
            own_registry.stop()
            proxy.cut_all()
            code, message = pulling.result(timeout=120)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert ref in message and proxy.host in message
    assert _big_layer_digest(fixture_images) in message or "cannot connect" in message
    assert_nothing_left(d)

    restarted = Registry(own_registry.root, port=port)
    restarted.start()
    try:
        with Proxy(restarted.port) as proxy2:
            image_id = pull(d, f"{proxy2.host}/{REPO}:{TAG}")
        assert image_id.startswith("sha256:")
    finally:
        restarted.stop()


def test_a_layer_cut_off_midway_resumes_where_containerd_stands(
    image_daemon: Daemon, own_registry: Registry, fixture_images: list[FixtureImage]
) -> None:
    """The connection breaks mid-layer while the registry stays up: the pull asks for the
    rest (HTTP Range) from the bytes containerd was sent, and containerd's digest check at
    commit accepts the layer, so no byte was lost or sent twice."""
    d = image_daemon
    with Proxy(own_registry.port) as proxy:
        proxy.faults.rate = 8 << 20
        ref = f"{proxy.host}/{REPO}:{TAG}"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pulling = pool.submit(pull, d, ref)
            _wait_for(lambda: proxy.forwarded > 12 << 20, 30, "the layer never started")
            proxy.cut_all()
            image_id = pulling.result(timeout=120)
    assert image_id.startswith("sha256:")
    resumed = [
        json.loads(line)
        for line in d.log().splitlines()
        if "blob download broke off, resuming" in line
    ]
    big = next(i for i in fixture_images if i.repository == REPO).manifest_for().layers[0]
    assert [r["digest"] for r in resumed] == [big.descriptor.digest]
    assert 0 < resumed[0]["offset"] < big.descriptor.size


def test_a_stalled_transfer_times_out_naming_the_blob(
    image_daemon: Daemon, own_registry: Registry, fixture_images: list[FixtureImage]
) -> None:
    d = image_daemon
    d.stop()
    d.extra_args += ["--image-pull-progress-timeout", "2"]
    d.start()
    with Proxy(own_registry.port) as proxy:
        proxy.faults.stall_after = 6 << 20
        ref = f"{proxy.host}/{REPO}:{TAG}"
        started = time.monotonic()
        code, message = failure(pull, d, ref)
        elapsed = time.monotonic() - started
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "stalled" in message and _big_layer_digest(fixture_images) in message
    assert ref in message and proxy.host in message
    assert elapsed < 30
    assert_nothing_left(d)


def test_corrupt_bytes_never_become_content(image_daemon: Daemon, own_registry: Registry) -> None:
    d = image_daemon
    with Proxy(own_registry.port) as proxy:
        proxy.faults.corrupt_large = 1 << 20  # flips a byte of the big layer
        ref = f"{proxy.host}/{REPO}:{TAG}"
        code, message = failure(pull, d, ref)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "failed verification" in message and ref in message
        assert_nothing_left(d)
        proxy.faults.corrupt_large = 0
        assert pull(d, ref).startswith("sha256:")


def test_basic_auth_registry(image_daemon: Daemon, own_registry: Registry, short_tmp: Path) -> None:
    d = image_daemon
    htpasswd = short_tmp / "htpasswd"
    htpasswd.write_text(
        subprocess.run(
            ["htpasswd", "-Bbn", "alice", "s3cret"], capture_output=True, text=True, check=True
        ).stdout
    )
    port = own_registry.port
    own_registry.stop()
    locked = Registry(own_registry.root, port=port, htpasswd=htpasswd)
    locked.start()
    try:
        ref = f"{locked.host}/{BUSYBOX}"
        code, message = failure(pull, d, ref)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert ref in message and "no credentials" in message
        code, message = failure(lambda: pull(d, ref, username="alice", password="wrong"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert pull(d, ref, username="alice", password="s3cret").startswith("sha256:")
        r = d.crictl("rmi", ref)
        assert r.returncode == 0, r.stderr
        r = d.crictl("pull", "--creds", "alice:s3cret", ref)
        assert r.returncode == 0, r.stderr

        # Credentials from the config file.
        d.stop()
        config = short_tmp / "crictld.toml"
        config.write_text(
            f'[registry_auths."{locked.host}"]\nusername = "alice"\npassword = "s3cret"\n'
        )
        d.extra_args += ["--config", str(config)]
        d.start()
        d.crictl("rmi", ref)
        assert pull(d, ref).startswith("sha256:")
    finally:
        locked.stop()


def test_a_daemon_killed_mid_pull_leaves_nothing_after_restart(
    image_daemon: Daemon, own_registry: Registry
) -> None:
    d = image_daemon
    with Proxy(own_registry.port) as proxy:
        proxy.faults.rate = 4 << 20
        ref = f"{proxy.host}/{REPO}:{TAG}"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pulling = pool.submit(failure, pull, d, ref)
            _wait_for(lambda: proxy.forwarded > 8 << 20, 30, "the layer never started")
            d.signal(signal.SIGKILL)
            assert pulling.result(timeout=30)[0] == grpc.StatusCode.UNAVAILABLE
        left = inv(d)
        # What the killed pull left behind: its lease, and the layer's download in the spool
        # (the test's containerd keeps its store on the spool's filesystem, /tmp)...
        spooled = {p.name for p in (d.state_dir / "pulls").iterdir()}
        assert left.leases and spooled and not left.ingests, (left, spooled)
        d.start()
        assert_nothing_left(d)  # ...is gone once the daemon is back
        assert not any((d.state_dir / "pulls").iterdir())
        cleanups = json.loads(
            d.sql("--json", "SELECT object_id, reason FROM events WHERE action = 'cleanup'").stdout
        )
        assert {c["reason"] for c in cleanups} == {"PullInterrupted"}
        assert {c["object_id"] for c in cleanups} >= set(left.leases) | spooled
        proxy.faults.rate = 0
        assert pull(d, ref).startswith("sha256:")
        st = d.image_call(
            "ImageStatus", api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref))
        )
        assert st.image.repo_tags == [ref]


def test_a_blob_linked_into_containerds_store_by_a_killed_pull_is_collected_at_start(
    image_daemon: Daemon,
) -> None:
    """A pull killed between linking a layer it downloaded into containerd's content store
    and committing it (crictl/images/spool.py) leaves a blob no namespace holds, which
    containerd's collector removes only in a collection that removes content. The on-disk
    state such a kill leaves is made by hand (random bytes: no other namespace of the run's
    containerd holds them), beside a download cut short before its link: the next start
    removes both spool files, says so, and the linked blob is gone from containerd's store."""
    d = image_daemon
    d.stop()

    async def content_root() -> str | None:
        client = ContainerdClient(d.containerd_address, d.namespace)
        try:
            return await client.content_root()
        finally:
            await client.close()

    root = asyncio.run(content_root())
    assert root
    data = os.urandom(300_000)
    hexdigest = hashlib.sha256(data).hexdigest()
    spool_dir = d.state_dir / "pulls"
    linked = spool_dir / f"{hexdigest}.0badf00d"
    linked.write_bytes(data)
    blob = Path(root) / "blobs" / "sha256" / hexdigest
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.link(linked, blob)
    cut = spool_dir / f"{'cd' * 32}.0badf00d"
    cut.write_bytes(data[:1000])
    d.start()
    assert not blob.exists()  # containerd's collector took it
    assert not any(spool_dir.iterdir())
    assert_nothing_left(d)
    cleanups = json.loads(
        d.sql("--json", "SELECT object_id, message FROM events WHERE action = 'cleanup'").stdout
    )
    assert {c["object_id"] for c in cleanups} >= {linked.name, cut.name}, cleanups
