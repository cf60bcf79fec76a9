"""A full disk, on small tmpfs mounts filled to the last byte.

crictld's state disk full while pods and a container run: every write CRI asks for is refused
with RESOURCE_EXHAUSTED naming the database and changes nothing; reads answer; what happens
meanwhile (a container's exit) is recorded once there is room again; the node then works as
before and nothing leaks. containerd's disk filling during a pull: RESOURCE_EXHAUSTED with
containerd's words, and no lease or ingest left over."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.conftest import BIG_IMAGE
from tests.integration.test_containers import Pod, exited, wait_for
from tests.integration.test_images import failure, pull
from tests.integration.test_images import status as image_status
from tests.integration.test_metrics import free_port, scrape
from tests.integration.test_sandboxes import (
    assert_nothing_held,
    held,
    pod_config,
    remove,
    run,
    status,
    stop,
)
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.inventory import inventory
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


def mount_tmpfs(directory: Path, size: str) -> None:
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        check=True,
    )


@pytest.fixture
def small_disk_daemon(image_daemon: Daemon) -> Iterator[Daemon]:
    """`image_daemon` with its state dir (database, pod and container files) on a 64 MiB tmpfs."""
    d = image_daemon
    d.stop()
    aside = d.state_dir.parent / "state-aside"
    shutil.move(d.state_dir, aside)
    d.state_dir.mkdir()
    mount_tmpfs(d.state_dir, "64m")
    try:
        subprocess.run(["cp", "-a", f"{aside}/.", str(d.state_dir)], check=True)
        d.start()
        yield d
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(d.state_dir)], check=False)
        d.state_dir.rmdir()
        shutil.move(aside, d.state_dir)  # image_daemon's teardown runs on its own state dir


def fill(directory: Path) -> Path:
    """Writes a file until the disk is full; removing it makes room again."""
    filler = directory / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
    assert os.statvfs(directory).f_bavail == 0
    return filler


def test_a_full_state_disk_refuses_writes_and_loses_nothing(
    small_disk_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = small_disk_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("sleeper", ["sleep", "3600"])
    pod.start(cid)
    filler = fill(d.state_dir)

    database = d.state_dir / "crictld.db"
    refused = f"crictld's state database {database} cannot be written: its disk is full"
    for call in (
        lambda: run(d, pod_config("other", "u2")),
        lambda: stop(d, pod.id),
        lambda: pod.create("second", ["true"]),
        lambda: pod.stop(cid),
    ):
        code, message = failure(call)
        assert (code, message.split(" (")[0]) == (grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
    assert status(d, pod.id).status.state == api_pb2.SANDBOX_READY  # reads answer
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING
    h = held(d, cni_network)  # nothing was made for the refused pod and container
    assert (h.netns, len(h.ips), h.containers) == (
        frozenset({pod.id}),
        1,
        frozenset({pod.id, cid}),
    ), h
    [stop_line] = d.call_lines("StopContainer")  # the last refused call's line
    assert stop_line["code"] == "RESOURCE_EXHAUSTED" and refused in stop_line["error"], stop_line

    os.kill(pod.pid(cid), signal.SIGKILL)  # an exit while no write can be made
    wait_for("the exit refused", lambda: '"an exit event was not recorded"' in d.log())
    time.sleep(1)  # a retry or two of the resync, refused too
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING
    filler.unlink()
    wait_for("the exit recorded once there is room", partial(exited, pod, cid), timeout=30)
    assert pod.status(cid).exit_code == 137
    assert "event stream broke" not in d.log()  # the stream was kept: the resync was retried

    other = run(d, pod_config("other", "u2"))
    pod.remove(cid)
    for sid in (pod.id, other):
        stop(d, sid)
        remove(d, sid)
    assert_nothing_held(d, cni_network, [pod.id, other])
    check = subprocess.run(
        ["sqlite3", str(database), "PRAGMA integrity_check"], capture_output=True, text=True
    )
    assert check.stdout.strip() == "ok", check


@pytest.mark.parametrize("path", ["store", "api"])
def test_a_pull_that_fills_containerds_disk_says_so_and_leaves_nothing(
    managed_daemon: Daemon, registry: Registry, path: str
) -> None:
    """A crictld and its managed containerd on one 128 MiB disk with 20 MiB left, and a
    48 MiB layer to pull. `store`: the layer is downloaded into the spool beside containerd's
    content store (crictl/images/spool.py), whose write fails part-way with the spool file
    named. `api`: the spool on a disk of its own, so the layer goes through containerd's
    content API, and containerd's write fails part-way. grpc's client replaces containerd's
    status with its own when the stream ends while a piece is being sent; the pull asks once
    more, one piece at a time, so the error carries containerd's words."""
    d = managed_daemon
    metrics = f"127.0.0.1:{free_port()}"
    d.extra_args = ["--pause-image", f"{registry.host}/pause:3.10", "--metrics-address", metrics]
    d.state_dir.mkdir(parents=True)
    mount_tmpfs(d.state_dir, "128m")
    spool = d.state_dir / "pulls"
    if path == "api":
        spool.mkdir()
        mount_tmpfs(spool, "1m")
    try:
        d.start()
        filler = fill(d.state_dir)
        subprocess.run(["truncate", "-s", "-20M", str(filler)], check=True)
        repo, tag, _ = BIG_IMAGE
        ref = f"{registry.host}/{repo}:{tag}"
        code, message = failure(lambda: pull(d, ref))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, message
        if path == "store":
            assert message.startswith(f"pull {ref}: write blob sha256:"), message
            assert f" to {spool}/" in message, message
            assert message.endswith(": no space left on device"), message
        else:
            assert message.startswith("containerd write blob sha256:"), message
            assert message.endswith("/data: no space left on device"), message
        assert not image_status(d, ref).HasField("image")
        inv = asyncio.run(inventory(d.containerd_address, d.namespace))
        assert (inv.leases, inv.ingests) == (frozenset(), frozenset()), inv
        assert not any(spool.iterdir())
        filler.unlink()
        pull(d, ref)
        inv = asyncio.run(inventory(d.containerd_address, d.namespace))
        assert (inv.leases, inv.ingests) == (frozenset(), frozenset()), inv
        assert not any(spool.iterdir())
        pulled = {
            labels["path"]: v
            for labels, v, name in scrape(metrics)["crictld_image_pull_bytes"]
            if name.endswith("_total")
        }
        other = {"store": "api", "api": "store"}[path]
        assert pulled.get(path, 0) >= BIG_IMAGE[2], pulled  # this path took the layer...
        assert pulled.get(other, 0) == 0, pulled  # ...and every other one
    finally:
        d.stop()
        if path == "api":
            subprocess.run(["umount", "-l", str(spool)], check=False)
        subprocess.run(["umount", "-l", str(d.state_dir)], check=False)
