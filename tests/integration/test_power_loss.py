"""A power loss with `synchronous=NORMAL`: the database comes back intact but without its last
commits, while containerd (which syncs its own metadata) still holds what they made. Played
here: a consistent copy of the database is taken, more work is committed (a second pod with a
running container, the removal of a container), then the machine "loses power": the daemon is
killed, every task dies, /run's network namespaces are gone, and the database is put back to
the copy. After the restart:

- what the copy knows is reported as the reboot left it (pod NOTREADY, containers EXITED, the
  removed container back, as an exited one);
- what only the lost commits knew (the second pod, its container, netns, IP, snapshot) is an
  orphan: `crictld doctor --sweep` (the daemon's own sweep once the grace has passed) removes it;
- kubelet's clean-up (stop and remove the pods) then leaves nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.network import netns
from tests.integration.test_containers import Pod, wait_for
from tests.integration.test_doctor import report
from tests.integration.test_sandboxes import assert_nothing_held, held, remove, status, stop
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


def copy_database(db: Path, to: Path) -> None:
    """What the disk held at this moment: a consistent copy (SQLite's backup API)."""
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    dst = sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def task_pids(d: Daemon) -> list[int]:
    pids = []
    for view in ("pods", "containers"):
        rows = json.loads(d.sql("--json", f"SELECT task_pid FROM {view}").stdout)
        pids += [r["task_pid"] for r in rows if r["task_pid"]]
    return pids


def lose_power(d: Daemon, saved: Path) -> None:
    """The daemon dies, so does every task; /run's netns mounts are gone; the database is what
    the disk held (the copy, without a WAL: its unsynced tail is lost)."""
    pids = task_pids(d)
    assert pids
    d.signal(signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    netns_dir = d.state_dir.parent / "netns"
    for path in netns_dir.iterdir():
        netns.remove(path)
    db = d.state_dir / "crictld.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    saved.replace(db)


def exited_check(pod: Pod, cid: str) -> Callable[[], bool]:
    return lambda: pod.status(cid).state == api_pb2.CONTAINER_EXITED


def test_the_tail_a_power_loss_rolls_back_is_absorbed(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = image_daemon
    logs = short_tmp / "logs"
    a = Pod(d, registry, logs, name="a")
    a1 = a.create("a1", ["sleep", "3600"])
    a.start(a1)
    a2 = a.create("a2", ["sleep", "3600"])
    a.start(a2)
    saved = short_tmp / "saved.db"
    copy_database(d.state_dir / "crictld.db", saved)

    # committed after the copy: lost with the power
    b = Pod(d, registry, logs, name="b")
    b1 = b.create("b1", ["sleep", "3600"])
    b.start(b1)
    a.stop(a2)
    a.remove(a2)
    before = held(d, cni_network)
    assert b.id in before.containers and b.id in before.netns

    lose_power(d, saved)
    d.start()

    # what the database knows, as the reboot left it
    wait_for("pod a not ready", lambda: status(d, a.id).status.state == api_pb2.SANDBOX_NOTREADY)
    for cid in (a1, a2):
        wait_for(f"{cid} exited", exited_check(a, cid))
    listed = d.runtime_call("ListPodSandbox", api_pb2.ListPodSandboxRequest()).items
    assert [p.id for p in listed] == [a.id]  # pod b is unknown: its commits were lost
    names = {
        c.metadata.name
        for c in d.runtime_call("ListContainers", api_pb2.ListContainersRequest()).containers
    }
    assert names == {"a1", "a2"}  # a2's removal was lost: it is back, exited

    # pod b is an orphan: the sweep (here at once, not after its grace) removes all of it
    code, doc = report(d, "--grace", "0")
    assert code == 1
    found = {(f["kind"], f["name"]) for f in doc["findings"]}
    assert ("orphan-container", b.id) in found and ("orphan-container", b1) in found, found
    code, doc = report(d, "--sweep", "--grace", "0")
    assert code == 0 and doc["findings"] == [], doc["findings"]
    after = held(d, cni_network)
    assert not {b.id, b1} & (after.containers | after.tasks | after.rw_snapshots | after.netns)

    # kubelet's clean-up after the reboot leaves nothing
    a.remove(a1)
    a.remove(a2)
    stop(d, a.id)
    remove(d, a.id)
    deadline = time.monotonic() + 30
    while held(d, cni_network).total() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert_nothing_held(d, cni_network, [a.id, b.id, a1, a2, b1])
