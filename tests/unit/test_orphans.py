"""The orphan sweep's decisions (classify: rows x world -> findings) on plain data, and the
parts that read the node (IPAM files, logger command lines, the read-only inventory) on
temporary files and databases."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, cast

import pytest

from crictl import errors
from crictl.cli import main
from crictl.containerd.client import ContainerdClient
from crictl.doctor import daemon_pid
from crictl.network.cni import NetworkConfig
from crictl.reconciler.orphans import (
    LONG_GRACE,
    MISSING_CONTAINER,
    MISSING_NETNS,
    MISSING_TASK,
    ORPHAN_CONTAINER,
    ORPHAN_IP,
    ORPHAN_KINDS,
    ORPHAN_LEASE,
    ORPHAN_LOGGER,
    ORPHAN_NETNS,
    ORPHAN_SNAPSHOT,
    ORPHAN_STATE_DIR,
    ORPHAN_TASK,
    STUCK,
    CtrContainer,
    CtrTask,
    Finding,
    IpAllocation,
    Lease,
    LoggerProcess,
    NetnsFile,
    Snapshot,
    StateDir,
    Survey,
    SweepSettings,
    World,
    classify,
    container_converged,
    ipam_dir_of,
    logger_pidfile,
    process_start_ns,
    read_ipam,
    remove_orphans,
    sandbox_converged,
)
from crictl.store.engine import Store
from crictl.store.inventory import ContainerRow, Rows, SandboxRow, read_rows, readonly_engine
from crictl.store.migrate import upgrade_to_head
from crictl.store.sandboxes import NewSandbox, create_sandbox
from tests.unit.rows import list_events

NOW = 1_800_000_000 * 10**9
S = 10**9
POD = "a" * 64
APP = "b" * 64
GHOST = "c" * 64  # an id no row has
NETNS_DIR = Path("/run/crictld/netns")
STATE = Path("/var/lib/crictld")


def sandbox(sid: str = POD, **kw: Any) -> SandboxRow:
    values: dict[str, Any] = {
        "id": sid,
        "desired": "READY",
        "phase": "READY",
        "generation": 1,
        "observed_generation": 1,
        "netns_path": str(NETNS_DIR / sid),
        "network_released": False,
        "updated_at": NOW - 600 * S,
    }
    values.update(kw)
    return SandboxRow(**values)


def container(cid: str = APP, **kw: Any) -> ContainerRow:
    values: dict[str, Any] = {
        "id": cid,
        "sandbox_id": POD,
        "desired": "RUNNING",
        "phase": "RUNNING",
        "generation": 2,  # CreateContainer, then StartContainer: nothing marks it observed
        "observed_generation": 0,
        "updated_at": NOW - 600 * S,
    }
    values.update(kw)
    return ContainerRow(**values)


def healthy_world(**kw: Any) -> World:
    """What a node with one ready pod and one running container holds."""
    old = NOW - 600 * S
    values: dict[str, Any] = {
        "containers": (
            CtrContainer(POD, "sandbox", POD, old),
            CtrContainer(APP, "container", APP, old),
        ),
        "tasks": (CtrTask(POD, "RUNNING", 100), CtrTask(APP, "RUNNING", 101)),
        "snapshots": (
            Snapshot("sha256:" + "1" * 64, "COMMITTED", old),
            Snapshot(POD, "ACTIVE", old),
            Snapshot(APP, "ACTIVE", old),
        ),
        "netns": (NetnsFile(POD, NETNS_DIR / POD, True, old),),
        "ips": (IpAllocation("10.88.0.2", POD, Path("/ipam/net/10.88.0.2"), old),),
        "state_dirs": (
            StateDir("sandboxes", POD, STATE / "sandboxes" / POD, old),
            StateDir("containers", APP, STATE / "containers" / APP, old),
        ),
        "loggers": (LoggerProcess(4242, APP, STATE / "containers" / APP / "logger.pid", old),),
        "network": "net",
        "observed_at": NOW,
    }
    values.update(kw)
    return World(**values)


HEALTHY = Rows((sandbox(),), (container(),))


def find(rows: Rows, world: World, **kw: Any) -> set[tuple[str, str]]:
    options: dict[str, Any] = {"grace": 60.0, "stuck_after": 120.0, "live": True}
    options.update(kw)
    return {(f.kind, f.name) for f in classify(rows, world, **options)}


def plus(world: World, **extra: tuple[Any, ...]) -> World:
    """`world` with more objects of the given kinds."""
    return dataclasses.replace(world, **{k: getattr(world, k) + v for k, v in extra.items()})


def test_a_healthy_node_has_no_findings() -> None:
    assert find(HEALTHY, healthy_world()) == set()


def test_an_empty_node_and_store_have_no_findings() -> None:
    assert find(Rows((), ()), World(observed_at=NOW)) == set()


def test_containerd_objects_no_row_owns() -> None:
    old = NOW - 120 * S
    world = plus(
        healthy_world(),
        containers=(CtrContainer(GHOST, "container", GHOST, old),),
        tasks=(CtrTask(GHOST, "RUNNING", 7),),
        snapshots=(Snapshot("d" * 64, "ACTIVE", old),),
    )
    assert find(HEALTHY, world) == {
        (ORPHAN_CONTAINER, GHOST),
        (ORPHAN_TASK, GHOST),
        (ORPHAN_SNAPSHOT, "d" * 64),
    }


def test_image_volume_views_go_with_their_container() -> None:
    old = NOW - 120 * S
    world = plus(
        healthy_world(),
        snapshots=(
            Snapshot(f"{APP}-vol0", "VIEW", old),  # its container's row exists: kept
            Snapshot(f"{'d' * 64}-vol1", "VIEW", old),  # no row, no container: an orphan
            Snapshot(f"{'d' * 64}-vol2", "VIEW", NOW - 10 * S),  # young: being made
        ),
    )
    assert find(HEALTHY, world) == {(ORPHAN_SNAPSHOT, f"{'d' * 64}-vol1")}


def test_what_is_not_crictlds_or_not_writable_is_left_alone() -> None:
    old = NOW - 600 * S
    world = plus(
        healthy_world(),
        # someone's `ctr run` in our namespace: no crictld label
        containers=(CtrContainer("mine", None, "mine", old),),
        tasks=(CtrTask("mine", "RUNNING", 9),),
        snapshots=(
            Snapshot("mine", "ACTIVE", old),  # held by that container, and not an id anyway
            Snapshot("e" * 64, "COMMITTED", old),  # an image layer
            Snapshot("f" * 64, "VIEW", old),
            Snapshot(f"extract-0123 sha256:{'1' * 64}", "ACTIVE", old),  # a pull's unpack
        ),
        netns=(NetnsFile("cni-1234", NETNS_DIR / "cni-1234", True, old),),  # not an id
        state_dirs=(StateDir("sandboxes", "notes", STATE / "sandboxes" / "notes", old),),
    )
    assert find(HEALTHY, world) == set()


def test_a_snapshot_held_by_a_container_is_the_containers() -> None:
    old = NOW - 600 * S
    world = plus(
        healthy_world(),
        containers=(CtrContainer("other", None, "d" * 64, old),),
        snapshots=(Snapshot("d" * 64, "ACTIVE", old),),
    )
    assert find(HEALTHY, world) == set()


def test_young_objects_are_being_made_not_orphans() -> None:
    young = NOW - 10 * S
    world = plus(
        healthy_world(),
        containers=(CtrContainer(GHOST, "sandbox", GHOST, young),),
        snapshots=(Snapshot(GHOST, "ACTIVE", young),),
        netns=(NetnsFile(GHOST, NETNS_DIR / GHOST, True, young),),
        ips=(IpAllocation("10.88.0.9", GHOST, Path("/ipam/net/10.88.0.9"), young),),
        state_dirs=(StateDir("sandboxes", GHOST, STATE / "sandboxes" / GHOST, young),),
        leases=(Lease("crictld-create-1", {"crictld.io/create": GHOST}, young),),
        loggers=(LoggerProcess(77, GHOST, STATE / "containers" / GHOST / "logger.pid", young),),
    )
    assert find(HEALTHY, world) == set()
    # (the snapshot is the orphan container's: it goes with it)
    assert {kind for kind, _ in find(HEALTHY, world, grace=5.0)} == {
        ORPHAN_CONTAINER,
        ORPHAN_NETNS,
        ORPHAN_IP,
        ORPHAN_STATE_DIR,
        ORPHAN_LEASE,
        ORPHAN_LOGGER,
    }


def test_leases() -> None:
    old = NOW - 600 * S
    pending = container(GHOST, phase="PENDING", desired="CREATED", generation=1)
    created = container("d" * 64, phase="CREATED", desired="CREATED", generation=1)
    rows = Rows((sandbox(),), (container(), pending, created))
    world = plus(
        healthy_world(),
        leases=(
            Lease("in-flight", {"crictld.io/create": GHOST}, old),  # its create still runs
            Lease("done", {"crictld.io/create": "d" * 64}, old),
            Lease("gone", {"crictld.io/create": "9" * 64}, old),
            Lease("pull", {"crictld.io/pull": "busybox:1"}, NOW - 600 * S),
            Lease("old-pull", {"crictld.io/pull": "busybox:1"}, NOW - 2 * int(LONG_GRACE) * S),
            Lease("someone-elses", {}, old),
        ),
    )
    leases = {name for kind, name in find(rows, world) if kind == ORPHAN_LEASE}
    assert leases == {"done", "gone", "old-pull"}
    # with no daemon running, no pull is in flight: only the grace applies
    leases = {name for kind, name in find(rows, world, live=False) if kind == ORPHAN_LEASE}
    assert leases == {"done", "gone", "old-pull", "pull"}


def test_exec_dirs_while_a_daemon_runs_and_while_none_does() -> None:
    recent = NOW - 600 * S
    ancient = NOW - 2 * int(LONG_GRACE) * S
    world = plus(
        healthy_world(),
        state_dirs=(
            StateDir("exec", "exec-1", STATE / "exec" / "exec-1", recent),
            StateDir("exec", "exec-2", STATE / "exec" / "exec-2", ancient),
        ),
    )
    assert find(HEALTHY, world) == {(ORPHAN_STATE_DIR, str(STATE / "exec" / "exec-2"))}
    assert find(HEALTHY, world, live=False) == {
        (ORPHAN_STATE_DIR, str(STATE / "exec" / "exec-1")),
        (ORPHAN_STATE_DIR, str(STATE / "exec" / "exec-2")),
    }


def test_exec_dirs_and_pulls_from_before_the_running_daemon_started_are_left_over() -> None:
    """The daemon sweeps beside itself from its start: what an earlier daemon's sessions and
    pulls left is swept past the grace; its own young ones are not, and the grace holds."""
    started = NOW - 300 * S
    world = plus(
        healthy_world(),
        state_dirs=(
            StateDir("exec", "exec-old", STATE / "exec" / "exec-old", started - 100 * S),
            StateDir("exec", "exec-mine", STATE / "exec" / "exec-mine", started + 1),
            StateDir("exec", "exec-just", STATE / "exec" / "exec-just", NOW - 10 * S),
        ),
        leases=(
            Lease("pull-old", {"crictld.io/pull": "busybox:1"}, started - 1),
            Lease("pull-mine", {"crictld.io/pull": "busybox:1"}, started + 1),
        ),
    )
    expected = {
        (ORPHAN_STATE_DIR, str(STATE / "exec" / "exec-old")),
        (ORPHAN_LEASE, "pull-old"),
    }
    assert find(HEALTHY, world, daemon_started=started) == expected
    # the grace still holds for what came just before the start
    assert find(HEALTHY, world, daemon_started=NOW) == expected | {
        (ORPHAN_STATE_DIR, str(STATE / "exec" / "exec-mine")),
        (ORPHAN_LEASE, "pull-mine"),
    }
    assert find(HEALTHY, world) == set()


def test_node_objects_no_row_owns() -> None:
    old = NOW - 600 * S
    world = plus(
        healthy_world(),
        netns=(
            NetnsFile(GHOST, NETNS_DIR / GHOST, True, old),
            NetnsFile("d" * 64, NETNS_DIR / ("d" * 64), False, old),  # a file, nothing mounted
        ),
        ips=(IpAllocation("10.88.0.9", GHOST, Path("/ipam/net/10.88.0.9"), old),),
        state_dirs=(
            StateDir("sandboxes", GHOST, STATE / "sandboxes" / GHOST, old),
            # a container dir named like the pod: the pod's id is no container's
            StateDir("containers", POD, STATE / "containers" / POD, old),
        ),
        loggers=(LoggerProcess(77, GHOST, STATE / "containers" / GHOST / "logger.pid", old),),
    )
    assert find(HEALTHY, world) == {
        (ORPHAN_NETNS, str(NETNS_DIR / GHOST)),
        (ORPHAN_NETNS, str(NETNS_DIR / ("d" * 64))),
        (ORPHAN_IP, "10.88.0.9"),
        (ORPHAN_STATE_DIR, str(STATE / "sandboxes" / GHOST)),
        (ORPHAN_STATE_DIR, str(STATE / "containers" / POD)),
        (ORPHAN_LOGGER, "77"),
    }


def test_an_ip_another_runtime_holds_is_not_ours() -> None:
    old = NOW - 600 * S
    world = plus(
        healthy_world(),
        ips=(IpAllocation("10.88.0.9", GHOST, Path("/ipam/net/10.88.0.9"), old),),
    )
    world = dataclasses.replace(world, foreign_ids=frozenset({GHOST}))
    assert find(HEALTHY, world) == set()


def test_loggers_of_exited_containers() -> None:
    world = healthy_world(tasks=(CtrTask(POD, "RUNNING", 100),))
    exited = Rows((sandbox(),), (container(phase="EXITED"),))
    # exited, task deleted: the logger should have ended with the task's pipes
    assert find(exited, world) == {(ORPHAN_LOGGER, "4242")}
    # exited a moment ago: it may still be writing the last lines
    just_exited = Rows((sandbox(),), (container(phase="EXITED", updated_at=NOW - S),))
    assert find(just_exited, world) == set()
    # exited, task not yet deleted: still draining
    with_task = plus(world, tasks=(CtrTask(APP, "STOPPED", 101),))
    assert find(exited, with_task) == set()
    # created, not started: a FIFO logger waits for its task
    created = Rows((sandbox(),), (container(phase="CREATED", desired="CREATED"),))
    assert find(created, world) == set()


def test_missing_task_netns_and_container() -> None:
    world = healthy_world(
        containers=(CtrContainer(POD, "sandbox", POD, NOW - 600 * S),),
        tasks=(CtrTask(POD, "STOPPED", 100),),
        netns=(NetnsFile(POD, NETNS_DIR / POD, False, NOW - 600 * S),),
    )
    assert find(HEALTHY, world) == {
        (MISSING_TASK, POD),
        (MISSING_NETNS, POD),
        (MISSING_TASK, APP),
        (MISSING_CONTAINER, APP),
    }


def test_what_a_row_may_lack() -> None:
    world = healthy_world(
        containers=(CtrContainer(POD, "sandbox", POD, NOW - 600 * S),),
        tasks=(),
        snapshots=(),
        netns=(),
        ips=(),
        loggers=(),
        state_dirs=(),
    )
    rows = Rows(
        (
            sandbox(netns_path=None),  # host network: no netns
            sandbox(
                "d" * 64,
                desired="NOTREADY",
                phase="NOTREADY",
                generation=2,
                observed_generation=2,
                network_released=True,
            ),
        ),
        (),
    )
    # a pod stopped before its setup finished has no containerd container, and needs none
    assert find(rows, world) == {(MISSING_TASK, POD)}
    ready_alone = Rows((sandbox("d" * 64),), ())
    assert find(ready_alone, world) == {
        (MISSING_TASK, "d" * 64),
        (MISSING_NETNS, "d" * 64),
        (MISSING_CONTAINER, "d" * 64),
        (ORPHAN_CONTAINER, POD),  # and the other pod's container is nobody's now
    }


def test_rows_that_changed_after_the_look_wait_for_the_next() -> None:
    world = healthy_world(tasks=())
    rows = Rows((sandbox(updated_at=NOW + S),), (container(updated_at=NOW + S),))
    assert find(rows, world) == set()


def test_convergence() -> None:
    assert sandbox_converged(sandbox())
    assert sandbox_converged(sandbox(phase="NOTREADY"))  # it died: the truth, not stuck
    assert not sandbox_converged(sandbox(phase="PENDING"))
    stopping = sandbox(desired="NOTREADY", phase="NOTREADY", generation=2, observed_generation=1)
    assert not sandbox_converged(stopping)
    assert sandbox_converged(dataclasses.replace(stopping, observed_generation=2))
    assert not sandbox_converged(sandbox(desired="REMOVED", phase="REMOVING"))

    assert container_converged(container())  # generation 2, observed 0: fine when running
    assert container_converged(container(desired="CREATED", phase="CREATED"))
    assert container_converged(container(phase="EXITED"))
    assert not container_converged(container(phase="CREATED"))
    assert not container_converged(container(phase="UNKNOWN"))
    assert not container_converged(container(desired="EXITED", generation=3))
    assert container_converged(
        container(desired="EXITED", phase="EXITED", generation=3, observed_generation=3)
    )
    assert not container_converged(container(desired="REMOVED", phase="EXITED"))


def test_stuck_rows() -> None:
    world = healthy_world()
    rows = Rows(
        (
            sandbox(),
            sandbox("d" * 64, phase="PENDING", netns_path=None, updated_at=NOW - 300 * S),
            sandbox("e" * 64, phase="PENDING", netns_path=None, updated_at=NOW - 30 * S),
        ),
        (
            container(),
            container(GHOST, phase="CREATED", updated_at=NOW - 300 * S),
            container(
                "9" * 64, desired="REMOVED", phase="EXITED", generation=4, updated_at=NOW - 200 * S
            ),
        ),
    )
    world = plus(
        world,
        containers=tuple(CtrContainer(i, "container", i, NOW - 600 * S) for i in (GHOST, "9" * 64)),
    )
    found = classify(rows, world, grace=60.0, stuck_after=120.0)
    assert {(f.kind, f.name) for f in found} == {
        (STUCK, "d" * 64),
        (STUCK, GHOST),
        (STUCK, "9" * 64),
    }
    detail = next(f.detail for f in found if f.name == GHOST)
    assert detail == "container wants RUNNING but is CREATED for 300 s (generation 2, observed 0)"
    assert {f.name for f in classify(rows, world, grace=60.0, stuck_after=10.0)} == {
        "d" * 64,
        "e" * 64,
        GHOST,
        "9" * 64,
    }


# -- reading the node ---------------------------------------------------------------------------


def test_logger_pidfile() -> None:
    pidfile = str(STATE / "containers" / APP / "logger.pid")
    shim_order = ["/x/crictld-logger", "--attach", "/d", "--log", "/l", "--pidfile", pidfile]
    assert logger_pidfile(shim_order) == pidfile
    assert logger_pidfile(["/x/crictld-logger", "--log", "--pidfile"]) is None  # a value
    assert logger_pidfile(["/bin/sleep", "--pidfile", pidfile]) is None
    assert logger_pidfile([]) is None


def test_process_start_time_of_this_process() -> None:
    started = process_start_ns(os.getpid())
    assert started is not None and started <= time.time_ns()
    assert process_start_ns(2**22 + 1) is None  # beyond pid_max


def test_read_ipam(tmp_path: Path) -> None:
    (tmp_path / "10.88.0.2").write_text(f"{POD}\r\neth0")
    (tmp_path / "fd00::3").write_text(f"{GHOST}\n")
    (tmp_path / "last_reserved_ip.0").write_text("10.88.0.2")
    (tmp_path / "lock").write_text("")
    found = {(a.ip, a.owner) for a in read_ipam(tmp_path)}
    assert found == {("10.88.0.2", POD), ("fd00::3", GHOST)}
    assert read_ipam(tmp_path / "missing") == ()


def test_ipam_dir_of() -> None:
    def net(plugins: list[dict[str, Any]]) -> NetworkConfig:
        return NetworkConfig(Path("/c"), "mynet", "1.0.0", plugins, {}, {})

    bridge: dict[str, Any] = {"type": "bridge", "ipam": {"type": "host-local", "dataDir": "/d"}}
    assert ipam_dir_of(net([bridge, {"type": "portmap"}])) == Path("/d/mynet")
    default = {"type": "bridge", "ipam": {"type": "host-local"}}
    assert ipam_dir_of(net([default])) == Path("/var/lib/cni/networks/mynet")
    assert ipam_dir_of(net([{"type": "bridge", "ipam": {"type": "dhcp"}}])) is None


def test_the_inventory_reads_rows_read_only(store: Store, tmp_path: Path) -> None:
    store.write_sync(
        lambda s: create_sandbox(
            s,
            NewSandbox(
                id=POD,
                name="web",
                namespace="default",
                uid="u",
                attempt=0,
                config="{}",
                config_digest="d",
                netns_path=str(NETNS_DIR / POD),
            ),
        )
    )
    reader = Store(readonly_engine(tmp_path / "crictld.db"))
    try:
        rows = reader.read_sync(read_rows)
        assert [(r.id, r.desired, r.phase, r.netns_path) for r in rows.sandboxes] == [
            (POD, "READY", "PENDING", str(NETNS_DIR / POD))
        ]
        assert rows.containers == () and rows.sandbox_ids == {POD}
        with pytest.raises(errors.Unavailable, match=r"cannot be written: it is read-only"):
            reader.write_sync(
                lambda s: create_sandbox(s, NewSandbox(GHOST, "x", "default", "u", 0, "{}", "d"))
            )
    finally:
        reader.close()
    with pytest.raises(errors.NotFound):
        readonly_engine(tmp_path / "nothing.db")


# -- removing -----------------------------------------------------------------------------------


def test_removal_order() -> None:
    assert ORPHAN_KINDS.index(ORPHAN_TASK) < ORPHAN_KINDS.index(ORPHAN_CONTAINER)
    assert ORPHAN_KINDS.index(ORPHAN_CONTAINER) < ORPHAN_KINDS.index(ORPHAN_SNAPSHOT)
    assert ORPHAN_KINDS.index(ORPHAN_SNAPSHOT) < ORPHAN_KINDS.index(ORPHAN_LEASE)
    assert ORPHAN_KINDS.index(ORPHAN_LOGGER) < ORPHAN_KINDS.index(ORPHAN_STATE_DIR)
    assert ORPHAN_KINDS.index(ORPHAN_IP) < ORPHAN_KINDS.index(ORPHAN_NETNS)


async def test_removals_are_logged_one_event_each(store: Store, tmp_path: Path) -> None:
    state = tmp_path / "state"
    gone = state / "sandboxes" / GHOST
    (gone / "sub").mkdir(parents=True)
    (gone / "hosts").write_text("x")
    settings = SweepSettings(state, tmp_path / "netns", tmp_path / "net.d", [])
    findings = [
        Finding(ORPHAN_STATE_DIR, str(gone), "state dir of a sandbox with no row"),
        Finding(ORPHAN_STATE_DIR, str(state / "sandboxes" / ("d" * 64)), "already gone"),
        Finding(STUCK, POD, "not removed by a sweep"),
    ]
    # state dirs need no containerd: none is given
    removed = await remove_orphans(
        store, cast(ContainerdClient, None), settings, Survey(World(), Rows((), ()), findings)
    )
    assert removed == findings[:1]  # what was gone already is no removal to log
    assert not gone.exists()
    events = store.read_sync(lambda s: list_events(s, "orphan"))
    assert [(e.object_id, e.action, e.reason, e.message) for e in events] == [
        (str(gone), "swept", ORPHAN_STATE_DIR, "state dir of a sandbox with no row"),
    ]


# -- the command ----------------------------------------------------------------------------------


def test_doctor_exits_2_when_it_cannot_read_the_database_or_reach_containerd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    base = ["doctor", "--config", str(config), "--state-dir", str(tmp_path)]
    assert main([*base, "--containerd", str(tmp_path / "none.sock")]) == 2
    out, err = capsys.readouterr()
    assert "cannot read the database" in out and "cannot read the database" in err
    upgrade_to_head(tmp_path / "crictld.db")
    assert main([*base, "--containerd", str(tmp_path / "none.sock"), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["containerd"]["connected"] is False
    assert "none.sock: no such socket" in doc["error"]
    assert main([*base, "--grace", "-1"]) == 2


def test_daemon_pid_reads_the_state_dirs_lock(tmp_path: Path) -> None:
    assert daemon_pid(tmp_path) is None
    lock = tmp_path / "crictld.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        assert daemon_pid(tmp_path) is None  # the file alone: no daemon
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert daemon_pid(tmp_path) == os.getpid()
    finally:
        os.close(fd)
    assert daemon_pid(tmp_path) is None


def test_a_shim_of_a_task_nobody_knows_is_an_orphan() -> None:
    from crictl.reconciler.orphans import ORPHAN_SHIM, ShimProcess

    old, sock = NOW - 120 * S, Path("/run/containerd/s/x")
    world = plus(
        healthy_world(),
        shims=(
            ShimProcess(101, "g" * 64, 0, old, sock),  # no task, no row: an orphan
            # the parent still of the `runc init` a create cut short left: an orphan too
            ShimProcess(102, "h" * 64, 1, old, sock),
            ShimProcess(103, POD, 0, old, sock),  # its task is known
            ShimProcess(104, "i" * 64, 0, NOW - 10 * S, sock),  # young: starting
        ),
    )
    assert find(HEALTHY, world) == {(ORPHAN_SHIM, "101"), (ORPHAN_SHIM, "102")}
    # a row names its task (containerd lists none: a create in flight or cut short, which
    # the row's own teardown deletes): not the sweep's
    bare = healthy_world(tasks=())
    owned = plus(bare, shims=(ShimProcess(105, POD, 1, old, sock),))
    assert ORPHAN_SHIM not in {kind for kind, _ in find(HEALTHY, owned)}


def test_a_task_cgroup_no_row_or_task_owns_is_an_orphan() -> None:
    from crictl.reconciler.orphans import ORPHAN_CGROUP, CgroupDir

    old = NOW - 120 * S

    def cg(name: str, procs: int, mtime: int = old) -> CgroupDir:
        return CgroupDir(name, (Path("/sys/fs/cgroup/memory/crictld"),), procs, mtime)

    made, other = "c" * 64, "d" * 64
    world = plus(
        healthy_world(),
        cgroups=(
            cg(POD, 1),  # its sandbox's
            cg(APP, 2),  # its container's
            cg("e" * 64, 0),  # empty, nobody's: an orphan
            cg("f" * 64, 0, NOW - 10 * S),  # empty but young: a create in flight
            # holding the `runc init` of a create cut short, of an id this database made
            cg(made, 1),
            # holding processes of an id this database never made: another crictld's
            cg(other, 1),
        ),
    )
    rows = Rows(HEALTHY.sandboxes, HEALTHY.containers, frozenset({made}))
    assert find(rows, world) == {(ORPHAN_CGROUP, "e" * 64), (ORPHAN_CGROUP, made)}
    # a task containerd lists owns its cgroup, row or not (the orphan task's finding ends it)
    task_only = plus(world, tasks=(CtrTask(made, "RUNNING", 9),))
    assert (ORPHAN_CGROUP, made) not in find(rows, task_only)


def test_task_cgroups_reads_every_hierarchy(tmp_path: Path) -> None:
    """cgroup v1: a task's cgroup in each hierarchy that has it, its processes summed over
    them, its dirs made from the hierarchies' parents; other entries are not tasks."""
    from crictl.reconciler.orphans import task_cgroups

    both, one = "a" * 64, "b" * 64
    for hierarchy, procs in (("memory", {both: "10\n11\n"}), ("pids", {both: "10\n", one: ""})):
        parent = tmp_path / hierarchy / "crictld"
        for name, text in procs.items():
            (parent / name).mkdir(parents=True)
            (parent / name / "cgroup.procs").write_text(text)
        (parent / "not-a-task-id").mkdir()
        (parent / ("c" * 64)).write_text("a file, not a cgroup")
    (tmp_path / "cpuset").mkdir()  # a hierarchy without crictld's parent
    found = {cg.name: cg for cg in task_cgroups(tmp_path)}
    assert set(found) == {both, one}
    assert found[both].procs == 3 and found[one].procs == 0
    assert found[both].paths == (
        tmp_path / "memory" / "crictld" / both,
        tmp_path / "pids" / "crictld" / both,
    )
    assert found[one].paths == (tmp_path / "pids" / "crictld" / one,)
    assert found[both].mtime > 0


def test_runc_state_of_a_create_cut_short_is_an_orphan_only_if_this_daemon_made_it() -> None:
    from crictl.reconciler.orphans import ORPHAN_RUNC_STATE, RuncState

    old = NOW - 120 * S

    def state(name: str, alive: bool = False, mtime: int = old) -> RuncState:
        return RuncState(name, Path(f"/run/containerd/runc/crictld/{name}"), alive, mtime)

    made, young, running, other = "c" * 64, "d" * 64, "e" * 64, "f" * 64
    world = plus(
        healthy_world(),
        runc_states=(
            state(POD, alive=True),  # its sandbox's
            state(APP, alive=True),  # its container's
            state(made),  # a create cut short, of an id this database made: an orphan
            state(young, mtime=NOW - 10 * S),  # a create in flight
            state(running, alive=True),  # a process runs: the cgroup's finding ends it first
            state(other),  # of an id this database never made: another containerd's
        ),
    )
    rows = Rows(HEALTHY.sandboxes, HEALTHY.containers, frozenset({made, young, running}))
    assert find(rows, world) == {(ORPHAN_RUNC_STATE, f"/run/containerd/runc/crictld/{made}")}
    # a task containerd lists owns its runc state, whatever runc's state.json says
    assert ORPHAN_RUNC_STATE not in {
        kind for kind, _ in find(rows, plus(world, tasks=(CtrTask(made, "STOPPED", 0),)))
    }


def test_runc_states_are_read_with_whether_their_init_runs(tmp_path: Path) -> None:
    from crictl.reconciler.orphans import runc_states

    ns = tmp_path / "crictld"
    cut, running, reused, other = "c" * 64, "d" * 64, "e" * 64, "not-an-id"
    for name in (cut, running, reused, other):
        (ns / name).mkdir(parents=True)
    os.mkfifo(ns / cut / "exec.fifo")  # no state.json: runc create killed before it wrote one
    me = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    start = int(me[19])
    pid = os.getpid()
    (ns / running / "state.json").write_text(
        json.dumps({"init_process_pid": pid, "init_process_start": start})
    )
    # the pid runs, but it is not the process runc started (its start time differs)
    (ns / reused / "state.json").write_text(
        json.dumps({"init_process_pid": pid, "init_process_start": start - 1})
    )
    found = {(s.name, s.init_alive) for s in runc_states("crictld", tmp_path)}
    assert found == {(cut, False), (running, True), (reused, False)}
    assert runc_states("missing", tmp_path) == ()
