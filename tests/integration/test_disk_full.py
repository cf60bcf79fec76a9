"""The state disk full: crictld's database on a small tmpfs filled to the last byte while pods
and a container run. Every write CRI asks for is refused with RESOURCE_EXHAUSTED naming the
database and changes nothing; reads answer; what happens meanwhile (a container's exit) is
recorded once there is room again; the node then works as before and nothing leaks."""

from __future__ import annotations

import json
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
from tests.integration.test_containers import Pod, exited, wait_for
from tests.integration.test_images import failure
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
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk_daemon(image_daemon: Daemon) -> Iterator[Daemon]:
    """`image_daemon` with its state dir (database, pod and container files) on a 64 MiB tmpfs."""
    d = image_daemon
    d.stop()
    aside = d.state_dir.parent / "state-aside"
    shutil.move(d.state_dir, aside)
    d.state_dir.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(d.state_dir)], check=True
    )
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
    calls = [json.loads(line) for line in d.log().splitlines() if '"cri call"' in line]
    assert any(c["code"] == "RESOURCE_EXHAUSTED" and refused in c["error"] for c in calls)

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
