"""containerd is a dependency that fails: kill -9 of the managed containerd (crictld restarts
it) and of an external one (the test restarts it), with a container that keeps running and one
that exits during the outage; plus the undo of a failed setup cut short by a crash."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crictl.containerd.managed import ManagedContainerd
from crictl.containerd.runc import RUNC_ROOT
from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_containers import Pod, wait_for
from tests.integration.test_images import failure
from tests.integration.test_sandbox_crashes import arm, restart_after_fault
from tests.integration.test_sandboxes import assert_nothing_held, pod_config, remove, run, stop
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry
from tests.rig.shims import kill_shims

pytestmark = pytest.mark.integration

# Waits for a file that the test creates from the host (through /proc/PID/root) while
# containerd is down, then exits 42: an exit nobody can hear at that moment.
EXIT_ON_SIGNAL = ["sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 42"]


def containerd_processes(config: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd") and str(config).encode() in argv:
                pids.append(int(proc.name))
    return pids


def daemon_info(d: Daemon) -> dict[str, object]:
    info: dict[str, object] = json.loads(d.status().info["daemon"])
    return info


def runtime_condition(d: Daemon) -> api_pb2.RuntimeCondition:
    conditions = {c.type: c for c in d.status().status.conditions}
    return conditions["RuntimeReady"]


def _two_containers(pod: Pod) -> tuple[str, str, int, int]:
    sleeper = pod.create("sleeper", ["sleep", "3600"])
    exiter = pod.create("exiter", EXIT_ON_SIGNAL)
    pod.start(sleeper)
    pod.start(exiter)
    return sleeper, exiter, pod.pid(sleeper), pod.pid(exiter)


def _after_outage(pod: Pod, sleeper: str, exiter: str, sleeper_pid: int) -> None:
    wait_for(
        "the exit during the outage is harvested",
        lambda: pod.status(exiter).state == api_pb2.CONTAINER_EXITED,
        30,
    )
    status = pod.status(exiter)
    assert (status.exit_code, status.reason) == (42, "Error"), status
    assert pod.status(sleeper).state == api_pb2.CONTAINER_RUNNING
    assert pod.pid(sleeper) == sleeper_pid


@pytest.fixture
def managed_image_daemon(managed_daemon: Daemon, registry: Registry) -> Iterator[Daemon]:
    managed_daemon.extra_args += ["--pause-image", f"{registry.host}/pause:3.10"]
    managed_daemon.start()
    yield managed_daemon


def test_managed_containerd_killed(
    managed_image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = managed_image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    sleeper, exiter, sleeper_pid, exiter_pid = _two_containers(pod)
    config = d.state_dir / "containerd" / "config.toml"
    [old] = containerd_processes(config)
    started = time.monotonic()
    os.kill(old, signal.SIGKILL)
    Path(f"/proc/{exiter_pid}/root/tmp/go").touch()  # exits while containerd is gone
    wait_for("a new managed containerd", lambda: containerd_processes(config) not in ([], [old]))
    _after_outage(pod, sleeper, exiter, sleeper_pid)
    assert time.monotonic() - started < 30
    assert len(containerd_processes(config)) == 1
    assert runtime_condition(d).status
    # The exit may be seen (ContainerStatus reads the task) before the marker of the new
    # subscription comes back: the resubscription is waited for, not raced.
    wait_for(
        "the event stream resubscribed",
        lambda: int(str(daemon_info(d)["eventSubscriptions"])) >= 2,
        10,
    )
    info = daemon_info(d)
    assert info["containerdRestarts"] == 1 and info["containerdConnected"] is True, info
    # The node goes on working: the pod stops and is removed cleanly.
    remove(d, pod.id)
    assert_nothing_held(d, cni_network, [pod.id, sleeper, exiter])


def test_external_containerd_restarted(
    short_tmp: Path,
    crictl_path: Path,
    cni_network: CniNetwork,
    registry: Registry,
) -> None:
    external = ManagedContainerd(short_tmp / "external")  # started and stopped by the test
    asyncio.run(external.ensure_running())
    d = Daemon(
        state_dir=short_tmp / "state",
        socket=short_tmp / "crictld.sock",
        crictl_bin=crictl_path,
        cni_conf_dir=cni_network.conf_dir,
        cni_bin_dirs=cni_network.bin_dirs,
        containerd=external.address,
        extra_args=["--pause-image", f"{registry.host}/pause:3.10"],
    )
    try:
        d.start()
        pod = Pod(d, registry, short_tmp / "logs")
        sleeper, exiter, sleeper_pid, exiter_pid = _two_containers(pod)
        assert external.pid is not None
        os.kill(external.pid, signal.SIGKILL)
        Path(f"/proc/{exiter_pid}/root/tmp/go").touch()
        # While it is away: the node is NotReady with a reason, calls that need containerd
        # say it is unreachable, reads of the store go on.
        wait_for("RuntimeReady=false", lambda: not runtime_condition(d).status, 10)
        condition = runtime_condition(d)
        assert condition.reason == "ContainerdUnreachable", condition
        code, message = failure(pod.create, "later", ["true"])
        assert code == grpc.StatusCode.UNAVAILABLE and "unreachable" in message, message
        assert [
            p.id for p in d.runtime_call("ListPodSandbox", api_pb2.ListPodSandboxRequest()).items
        ] == [pod.id]
        wait_for("the outage is seen", lambda: daemon_info(d)["containerdConnected"] is False, 10)
        external.pid = None
        asyncio.run(external.ensure_running())  # what an operator's init system would do
        wait_for("RuntimeReady=true", lambda: runtime_condition(d).status, 30)
        _after_outage(pod, sleeper, exiter, sleeper_pid)
        remove(d, pod.id)
        assert_nothing_held(d, cni_network, [pod.id, sleeper, exiter])
    finally:
        d.stop()
        asyncio.run(external.stop_recorded())
        kill_shims(external.address)


def test_undo_of_a_failed_setup_survives_a_crash(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork
) -> None:
    """A RunPodSandbox whose setup fails (here: a pause image no registry has) is undone; the
    undo is recorded before it starts, so a crash in it is finished by the next start."""
    d = image_daemon
    good = d.extra_args[d.extra_args.index("--pause-image") + 1]
    d.extra_args[d.extra_args.index("--pause-image") + 1] = f"{registry.host}/no-such-pause:1"
    arm(d, "sandbox-undo:after-desired")
    code, _ = failure(run, d, pod_config())
    assert code == grpc.StatusCode.UNAVAILABLE  # the daemon died in the undo
    d.extra_args[d.extra_args.index("--pause-image") + 1] = good
    restart_after_fault(d)
    wait_for(
        "the undo is finished",
        lambda: (
            not d.runtime_call("ListPodSandbox", api_pb2.ListPodSandboxRequest()).items
            and json.loads(d.sql("--json", "SELECT id FROM pods").stdout) == []
        ),
        30,
    )
    events = json.loads(
        d.sql("--json", "SELECT action, reason FROM events WHERE action = 'removed'").stdout
    )
    assert [e["reason"] for e in events] == ["SetupFailed"], events
    sid = run(d, pod_config())  # a retry starts afresh and works
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])


def test_resync_checks_the_pod_network_over_netlink(
    managed_image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    """The resync after a containerd restart reads each ready pod's interfaces inside its
    netns (pyroute2, no fork): a pod whose IP went away is NOTREADY with the reason."""
    d = managed_image_daemon
    healthy = run(d, pod_config("healthy", uid="u-healthy"))
    broken = run(d, pod_config("broken", uid="u-broken"))
    netns_path = d.state_dir.parent / "netns" / broken
    subprocess.run(["nsenter", f"--net={netns_path}", "ip", "link", "del", "eth0"], check=True)
    config = d.state_dir / "containerd" / "config.toml"
    [old] = containerd_processes(config)
    os.kill(old, signal.SIGKILL)

    def state(sid: str) -> api_pb2.PodSandboxStatus:
        resp: api_pb2.PodSandboxStatusResponse = d.runtime_call(
            "PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid)
        )
        return resp.status

    wait_for("the lost network is seen", lambda: state(broken).state == api_pb2.SANDBOX_NOTREADY)
    reason = json.loads(
        d.sql("--json", f"SELECT reason, message FROM pods WHERE id = '{broken}'").stdout
    )[0]
    assert reason["reason"] == "NetworkLost", reason
    assert state(healthy).state == api_pb2.SANDBOX_READY
    remove(d, healthy)
    remove(d, broken)
    assert_nothing_held(d, cni_network, [healthy, broken])


def test_a_task_bundle_left_by_a_killed_containerd_is_cleared(
    managed_image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """containerd 1.6 killed while it makes a task's bundle leaves the directory, and every
    later create of that task failed on its mkdir ("file exists", seen in the long chaos run).
    The bundle is planted as such a kill leaves it; the start goes through."""
    d = managed_image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("app", ["sleep", "3600"])
    bundle = (
        d.state_dir / "containerd" / "state" / "io.containerd.runtime.v2.task" / d.namespace / cid
    )
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "work").symlink_to(short_tmp / "nowhere")
    pod.start(cid)
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING
    assert pod.exec(cid, ["echo", "ok"]).stdout == b"ok\n"
    assert "removing a task bundle a crash left" in d.log()
    remove(d, pod.id)


def test_a_snapshot_directory_left_by_a_killed_containerd_is_cleaned(
    managed_image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """containerd killed while its overlay snapshotter made a snapshot leaves the directory of
    an id its metadata never recorded, and the next snapshot made gets that id and failed
    ("rename .../new-N .../snapshots/<n>: file exists", seen in the long chaos run); containerd
    removes the directory as that create fails. Planted for the next ids; the prepare is asked
    for again and the create goes through."""
    d = managed_image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    snapshots = (
        d.state_dir / "containerd" / "root" / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    )
    top = max(int(p.name) for p in snapshots.iterdir() if p.name.isdigit())
    planted = [snapshots / str(top + i) for i in range(1, 6)]
    for p in planted:
        (p / "fs").mkdir(parents=True)
    try:
        cid = pod.create("app", ["sleep", "3600"])
        pod.start(cid)
        assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING
        lines = [x for x in d.log().splitlines() if "a snapshot directory a crash left" in x]
        in_the_way = [p for p in planted if any(str(p) in x for x in lines)]
        assert in_the_way, lines  # (its id is then the new snapshot's: the path is in use again)
        remove(d, pod.id)
    finally:
        for p in planted:
            shutil.rmtree(p, ignore_errors=True)


def test_runc_state_left_by_a_create_containerd_was_killed_in_is_cleared(
    managed_image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """containerd killed while its shim ran `runc create` leaves runc's state dir (the fifo,
    no state.json) and no task, and every later create failed "container with given ID
    already exists" (the 1000-kill chaos run: the start became a StartError). The dir is
    planted as such a kill leaves it; the start goes through."""
    d = managed_image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("app", ["sleep", "3600"])
    left = RUNC_ROOT / d.namespace / cid
    left.mkdir(parents=True)
    os.mkfifo(left / "exec.fifo")
    pod.start(cid)
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING
    assert pod.exec(cid, ["echo", "ok"]).stdout == b"ok\n"
    # runc's own state of the task now, not the one planted (cleared by containerd's delete
    # of the task, else by crictld: crictl/containerd/runc.py `remove_stale_state`)
    assert (left / "state.json").exists() and not (left / "exec.fifo").exists()
    remove(d, pod.id)
    assert not left.exists()


def test_the_cgroup_left_by_a_create_containerd_was_killed_in_goes_with_its_object(
    managed_image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """containerd killed while its shim ran `runc create` ends the create after runc made the
    task's cgroup and before it wrote its state, so no delete takes the cgroup: after the
    1000-kill chaos run the sweep found such empty cgroups, of pods whose setup had been
    undone, left until its next round (5 minutes). Planted as such a kill leaves them, for a
    stopped pod and a container never started; each one's removal takes its own."""
    d = managed_image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("app", ["sleep", "3600"])
    stop(d, pod.id)  # the pause task deleted: runc took its cgroup
    hierarchies = [
        h / "crictld"
        for h in Path("/sys/fs/cgroup").iterdir()
        if not h.is_symlink() and (h / "crictld").is_dir()
    ]
    assert len(hierarchies) >= 3, hierarchies  # cgroup v1: memory, cpu, pids at least

    def left(object_id: str) -> list[Path]:
        return [p for p in (h / object_id for h in hierarchies) if p.is_dir()]

    for object_id in (pod.id, cid):
        assert left(object_id) == []
        for h in hierarchies:
            (h / object_id).mkdir()
    try:
        pod.remove(cid)  # answered once recorded; the teardown follows
        wait_for("the container's left cgroup removed", lambda: left(cid) == [], 20)
        assert len(left(pod.id)) == len(hierarchies)
        remove(d, pod.id)
        assert left(pod.id) == []
    finally:  # what a failure left of the planted dirs is not the node's to keep
        for p in left(pod.id) + left(cid):
            p.rmdir()
    lines = [x for x in d.log().splitlines() if "a task's create cut short left" in x]
    assert any(pod.id in x for x in lines) and any(cid in x for x in lines), lines


def test_the_managed_containerds_state_dir_moves_once_no_task_is_in_the_old_one(
    managed_image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    """A node whose managed containerd kept its state dir under <state dir>/containerd/state
    (the default for a state dir of the daemon's own, and crictld's only layout before
    `--containerd-state-dir`) is given another: containerd, started again while tasks run,
    keeps the old dir, where their bundles are, and finds their shims; it moves once a start
    finds no task there."""
    d = managed_image_daemon
    legacy = d.state_dir / "containerd" / "state"
    run = short_tmp / "run"
    config = d.state_dir / "containerd" / "config.toml"

    def state_in_config() -> str:
        return str(tomllib.loads(config.read_text())["state"])

    def bundles(state: Path) -> set[str]:
        tasks = state / "io.containerd.runtime.v2.task" / d.namespace
        return {p.name for p in tasks.iterdir()} if tasks.is_dir() else set()

    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("app", ["sleep", "3600"])
    pod.start(cid)
    assert state_in_config() == str(legacy)
    assert {pod.id, cid} <= bundles(legacy)

    d.stop()  # its containerd too; the shims run on
    d.extra_args += ["--containerd-state-dir", str(run)]
    d.start()
    assert state_in_config() == str(legacy)
    assert "keeps its state dir where it had it" in d.log()
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING
    assert pod.exec(cid, ["echo", "ok"]).stdout == b"ok\n"
    remove(d, pod.id)

    d.stop()
    d.start()
    assert state_in_config() == str(run)
    second = Pod(d, registry, short_tmp / "logs2", name="second")
    cid2 = second.create("app", ["sleep", "3600"])
    second.start(cid2)
    assert {second.id, cid2} <= bundles(run) and not bundles(legacy)
    remove(d, second.id)
    assert_nothing_held(d, cni_network, [pod.id, cid, second.id, cid2])
