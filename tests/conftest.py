"""Fixtures shared by every test. Integration fixtures start real components: a private
containerd (CRI plugin disabled), CNI networks with their own bridge and subnet, crictld daemons;
each removes everything it created."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from crictl.containerd.client import ContainerdClient
from crictl.containerd.managed import ManagedContainerd
from tests.rig.cni import CniNetwork, make_network
from tests.rig.daemon import REPO, Daemon, crictl_bin
from tests.rig.images import FixtureImage, build_images, push_images, random_layer_image
from tests.rig.inventory import purge_namespace
from tests.rig.registry import Registry
from tests.rig.shims import kill_shims, remove_runc_states

# A layer large enough that a pull can be interrupted in the middle of it.
BIG_IMAGE = ("crictld-test/big", "1", 48 << 20)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (containerd, runc, netns, CNI)")


def _remove_tree(path: Path) -> None:
    """rm -rf that first unmounts whatever containerd left mounted below `path`."""
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(str(path) + "/")
    ]
    for mountpoint in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_tmp(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A temp dir with a short path: unix socket paths must stay under 108 bytes.
    CRICTLD_KEEP_LOGS=<dir> copies its *.log files there first (the daemon's and managed
    containerd's logs of a long run that failed are otherwise gone with it)."""
    path = Path(tempfile.mkdtemp(prefix="crd-", dir="/tmp"))
    yield path
    keep = os.environ.get("CRICTLD_KEEP_LOGS")
    if keep:
        dest = Path(keep) / f"{request.node.name}-{path.name}"
        for log in [*path.glob("*.log"), *path.glob("state/containerd/*.log")]:
            target = dest / log.relative_to(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, target)
    _remove_tree(path)


@pytest.fixture(scope="session")
def crictl_path() -> Path:
    return crictl_bin() / "crictl"


@pytest.fixture(scope="session")
def session_containerd() -> Iterator[ManagedContainerd]:
    """A private containerd for the whole run, its CRI plugin disabled. A test that kills it
    starts it again (`ensure_running`), as a node's init system would."""
    _require_root()
    root = Path(tempfile.mkdtemp(prefix="crd-ctd-", dir="/tmp"))
    managed = ManagedContainerd(root / "containerd")
    asyncio.run(managed.ensure_running())
    try:
        yield managed
    finally:
        asyncio.run(managed.stop())
        kill_shims(managed.address)
        _remove_tree(root)


@pytest.fixture(scope="session")
def containerd_address(session_containerd: ManagedContainerd) -> str:
    return session_containerd.address


@pytest.fixture
async def containerd(containerd_address: str) -> AsyncIterator[ContainerdClient]:
    client = ContainerdClient(containerd_address)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def cni_network(short_tmp: Path) -> Iterator[CniNetwork]:
    _require_root()
    net = make_network(short_tmp / "cni")
    try:
        yield net
    finally:
        net.remove()


@pytest.fixture
def daemon(
    short_tmp: Path, crictl_path: Path, cni_network: CniNetwork, containerd_address: str
) -> Iterator[Daemon]:
    """A running crictld against the run's private containerd."""
    d = Daemon(
        state_dir=short_tmp / "state",
        socket=short_tmp / "crictld.sock",
        crictl_bin=crictl_path,
        cni_conf_dir=cni_network.conf_dir,
        cni_bin_dirs=cni_network.bin_dirs,
        containerd=containerd_address,
    )
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def managed_daemon(short_tmp: Path, crictl_path: Path, cni_network: CniNetwork) -> Iterator[Daemon]:
    """A crictld that starts and owns its own private containerd (not yet started)."""
    _require_root()
    d = Daemon(
        state_dir=short_tmp / "state",
        socket=short_tmp / "crictld.sock",
        crictl_bin=crictl_path,
        cni_conf_dir=cni_network.conf_dir,
        cni_bin_dirs=cni_network.bin_dirs,
        containerd="managed",
    )
    try:
        yield d
    finally:
        d.stop()
        # A daemon killed by a test leaves its containerd behind on purpose; end it here,
        # and the shims (with their containers) of a test that failed halfway.
        managed = ManagedContainerd(d.state_dir / "containerd")
        asyncio.run(managed.stop_recorded())
        kill_shims(managed.address)
        remove_runc_states(d.namespace)  # what the killed shims' tasks left (a failed test)


@pytest.fixture(scope="session")
def fixture_images() -> list[FixtureImage]:
    """Every fixture image (critest's set), built offline; blobs are cached in .cache/."""
    work = REPO / ".cache" / "rig-images"
    images = build_images(work)
    repo, tag, size = BIG_IMAGE
    return [*images, random_layer_image(work, repo, tag, size)]


@pytest.fixture(scope="session")
def registry(fixture_images: list[FixtureImage]) -> Iterator[Registry]:
    """A private docker-registry on loopback holding every fixture image."""
    _require_root()
    with Registry() as reg:
        push_images(reg.host, fixture_images)
        yield reg


@pytest.fixture
def image_daemon(
    short_tmp: Path,
    crictl_path: Path,
    cni_network: CniNetwork,
    containerd_address: str,
    registry: Registry,
) -> Iterator[Daemon]:
    """A crictld whose pause image is the local registry's, in a containerd namespace of its
    own that is emptied and deleted afterwards."""
    namespace = f"crictld-test-{secrets.token_hex(4)}"
    d = Daemon(
        state_dir=short_tmp / "state",
        socket=short_tmp / "crictld.sock",
        crictl_bin=crictl_path,
        cni_conf_dir=cni_network.conf_dir,
        cni_bin_dirs=cni_network.bin_dirs,
        containerd=containerd_address,
        namespace=namespace,
        extra_args=["--pause-image", f"{registry.host}/pause:3.10"],
    )
    d.start()
    try:
        yield d
    finally:
        d.stop()
        asyncio.run(purge_namespace(containerd_address, namespace))
        # runc's state root for the namespace: empty unless a failed test left a shim that
        # could not delete its tasks (assert_nothing_held reports such leftovers)
        remove_runc_states(namespace)
        with contextlib.suppress(OSError):
            Path("/run/containerd/runc", namespace).rmdir()
