"""`crictld doctor` and the orphan sweep on a real node: a clean node is clean, one orphan of
each kind is named, `--sweep` removes exactly those (one event each) and leaves the pod and its
running container alone."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crictl.containerd.client import ContainerdClient
from crictl.containerd.runc import RUNC_ROOT
from crictl.gen.containerd.api.services.leases.v1 import leases_pb2
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.network import cni, netns
from crictl.reconciler import orphans
from crictl.reconciler.orphans import OrphanSweeper, SweepSettings
from crictl.store.engine import Store, make_engine
from tests.integration.test_containers import Pod
from tests.integration.test_sandboxes import assert_nothing_held, remove, status
from tests.rig.cni import CniNetwork
from tests.rig.daemon import REPO, Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

LOGGER = Path(sys.executable).with_name("crictld-logger")


def doctor(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "crictl.cli",
        "doctor",
        "--state-dir",
        str(d.state_dir),
        "--containerd",
        d.containerd,
        "--containerd-namespace",
        d.namespace,
        "--netns-dir",
        str(d.state_dir.parent / "netns"),
        "--cni-conf-dir",
        str(d.cni_conf_dir),
    ]
    for b in d.cni_bin_dirs:
        cmd += ["--cni-bin-dir", str(b)]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


def report(d: Daemon, *args: str) -> tuple[int, dict[str, Any]]:
    done = doctor(d, "--json", *args)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, doc


def kinds_and_names(findings: list[dict[str, str]]) -> set[tuple[str, str]]:
    return {(f["kind"], f["name"]) for f in findings}


@dataclass
class Planted:
    expected: set[tuple[str, str]]
    logger_pid: int
    shim_pid: int
    paths: list[Path]
    containerd_ids: list[str]
    init_pid: int  # in the cgroup of an id the daemon made: the sweep kills it
    foreign_pid: int  # in the cgroup of an id it never made: another crictld's, kept
    foreign_cgroup: list[Path]
    foreign_runc_state: Path  # of an id it never made: another containerd's, kept


def _runc_state(d: Daemon, name: str) -> Path:
    """runc's state dir as a `runc create` killed before it recorded the container leaves it:
    the exec.fifo alone, no state.json."""
    path = RUNC_ROOT / d.namespace / name
    path.mkdir(parents=True)
    os.mkfifo(path / "exec.fifo", 0o622)
    return path


def _populated_cgroup(name: str) -> tuple[int, list[Path]]:
    """A task cgroup `crictld/<name>` holding a process, as a cut-short `runc create` leaves
    its `runc init` (a stand-in sleeping in it, in every hierarchy runc would use)."""
    dirs = [Path(f"/sys/fs/cgroup/{c}/crictld/{name}") for c in ("memory", "pids", "freezer")]
    proc = subprocess.Popen(["sleep", "600"])
    for path in dirs:
        path.mkdir(parents=True)
        (path / "cgroup.procs").write_text(str(proc.pid))
    return proc.pid, dirs


async def _plant_containerd(d: Daemon, pod_id: str, app_id: str) -> tuple[str, str, str]:
    """A running task in a crictld-labelled container no row owns (made from the app
    container's own spec and image), and the lease and snapshot of a create cut short."""
    c = ContainerdClient(d.containerd, d.namespace)
    try:
        md = c.metadata
        ghost = secrets.token_hex(32)
        spec: dict[str, Any] = await c.container_spec(app_id)
        spec["process"]["args"] = ["sleep", "3600"]
        linux = spec["linux"]
        linux["cgroupsPath"] = linux["cgroupsPath"].replace(app_id, ghost)
        info = await c.call(
            "stat",
            c.snapshots.Stat(
                snapshots_pb2.StatSnapshotRequest(snapshotter="overlayfs", key=app_id),
                metadata=md,
            ),
        )
        labels = {"crictld.io/kind": "container", "crictld.io/sandbox-id": pod_id}
        await c.create_container(ghost, "ghost", json.dumps(spec), "overlayfs", labels)
        mounts = await c.prepare_snapshot("overlayfs", ghost, info.info.parent)
        await c.create_task(ghost, mounts)
        await c.start_task(ghost)

        lease, cut_short = f"crictld-create-{secrets.token_hex(6)}", secrets.token_hex(32)
        await c.call(
            "create lease",
            c.leases.Create(
                leases_pb2.CreateRequest(id=lease, labels={"crictld.io/create": cut_short}),
                metadata=md,
            ),
        )
        await c.call(  # as an earlier crictld's create did: under its create lease
            "prepare snapshot",
            c.snapshots.Prepare(
                snapshots_pb2.PrepareSnapshotRequest(
                    snapshotter="overlayfs", key=cut_short, parent=info.info.parent
                ),
                metadata=(*md, ("containerd-lease", lease)),
            ),
        )
        return ghost, lease, cut_short
    finally:
        await c.close()


async def _plant_network(d: Daemon) -> tuple[Path, str]:
    """A netns and an IP (CNI ADD through crictld's own code) for a sandbox id no row has."""
    sid = secrets.token_hex(32)
    path = d.state_dir.parent / "netns" / sid
    await asyncio.to_thread(netns.create, path)
    net = cni.load_network_config(d.cni_conf_dir, d.cni_bin_dirs)
    result = await cni.add(net, sid, str(path), "IgnoreUnknown=1", {}, d.cni_bin_dirs)
    assert result.ip is not None
    return path, result.ip


def _plant_logger(d: Daemon, short_tmp: Path) -> tuple[int, Path]:
    cid = secrets.token_hex(32)
    directory = d.state_dir / "containers" / cid
    directory.mkdir(parents=True)
    fifo = directory / "stdout"
    os.mkfifo(fifo)
    pidfile = directory / "logger.pid"
    done = subprocess.run(
        [
            str(LOGGER),
            "--log",
            str(short_tmp / "orphan.log"),
            "--pidfile",
            str(pidfile),
            "--stdout-fifo",
            str(fifo),
            "--daemonize",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(pidfile.read_text()), directory


def _plant_shim(d: Daemon) -> tuple[int, Path]:
    """A runc shim of the daemon's containerd and namespace serving nothing, for a task
    containerd does not know (what containerd killed between a delete and the shim's shutdown
    leaves); a stand-in process with the shim's name and flags, and its socket file."""
    task = secrets.token_hex(32)
    proc = subprocess.Popen(
        [
            "bash",
            "-c",
            'exec -a /usr/bin/containerd-shim-runc-v2 "$@"',
            "shim",
            sys.executable,
            "-c",
            "import time; time.sleep(600)",
            "-namespace",
            d.namespace,
            "-id",
            task,
            "-address",
            d.containerd,
        ]
    )
    socket = orphans.shim_socket(d.containerd, d.namespace, task)
    socket.write_bytes(b"")
    for _ in range(100):
        if any(s.pid == proc.pid for s in orphans.find_shims(d.containerd, d.namespace)):
            break
        time.sleep(0.02)
    return proc.pid, socket


def plant(d: Daemon, pod: Pod, app_id: str, short_tmp: Path) -> Planted:
    # An id the daemon made and removed (its history stays), whose cgroup a cut-short
    # create left holding a process; and one it never made, holding one too.
    made = pod.create("made", ["true"])
    pod.remove(made)
    init_pid, init_cgroup = _populated_cgroup(made)
    foreign_pid, foreign_cgroup = _populated_cgroup(secrets.token_hex(32))
    ghost, lease, cut_short = asyncio.run(_plant_containerd(d, pod.id, app_id))
    netns_path, ip = asyncio.run(_plant_network(d))
    sandbox_dir = d.state_dir / "sandboxes" / secrets.token_hex(32)
    sandbox_dir.mkdir(parents=True)
    (sandbox_dir / "hostname").write_text("ghost\n")
    (sandbox_dir / "shm").mkdir()  # the pod's /dev/shm, mounted as the daemon mounts it
    subprocess.run(["mount", "-t", "tmpfs", "shm", str(sandbox_dir / "shm")], check=True)
    logger_pid, logger_dir = _plant_logger(d, short_tmp)
    shim_pid, shim_socket = _plant_shim(d)
    # The empty task cgroup runc leaves when a create is cut short.
    cgroup = secrets.token_hex(32)
    cgroup_dirs = [Path(f"/sys/fs/cgroup/{c}/crictld/{cgroup}") for c in ("memory", "pids")]
    for path in cgroup_dirs:
        path.mkdir(parents=True)
    runc_state = _runc_state(d, made)
    foreign_runc_state = _runc_state(d, secrets.token_hex(32))
    return Planted(
        expected={
            ("orphan-container", ghost),
            ("orphan-task", ghost),
            ("orphan-lease", lease),
            ("orphan-snapshot", cut_short),
            ("orphan-netns", str(netns_path)),
            ("orphan-ip", ip),
            ("orphan-state-dir", str(sandbox_dir)),
            ("orphan-state-dir", str(logger_dir)),
            ("orphan-logger", str(logger_pid)),
            ("orphan-cgroup", cgroup),
            ("orphan-cgroup", made),
            ("orphan-shim", str(shim_pid)),
            ("orphan-runc-state", str(runc_state)),
        },
        logger_pid=logger_pid,
        shim_pid=shim_pid,
        paths=[
            netns_path,
            sandbox_dir,
            logger_dir,
            *cgroup_dirs,
            *init_cgroup,
            shim_socket,
            runc_state,
        ],
        containerd_ids=[ghost, cut_short],
        init_pid=init_pid,
        foreign_pid=foreign_pid,
        foreign_cgroup=foreign_cgroup,
        foreign_runc_state=foreign_runc_state,
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_doctor_names_each_orphan_and_the_sweep_removes_only_them(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("app", ["sleep", "3600"])
    pod.start(cid)
    pid = pod.pid(cid)

    # a clean node
    done = doctor(d)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "connected" in done.stdout and "findings    none" in done.stdout
    code, doc = report(d)
    assert code == 0 and doc["ok"] and doc["findings"] == [], doc
    assert doc["daemon"]["running"] is True
    assert doc["store"]["pods_by_phase"] == {"READY": 1}
    assert doc["store"]["containers_by_phase"] == {"RUNNING": 1}
    node = doc["node"]
    assert node["containerd_containers_by_kind"] == {"container": 1, "sandbox": 1}
    assert node["tasks_by_status"] == {"RUNNING": 2}
    assert (node["netns"], node["ips"], node["loggers"]) == (1, 1, 1)

    planted = plant(d, pod, cid, short_tmp)
    try:
        # all young: being made, as far as a 60 s grace can tell
        code, doc = report(d)
        assert code == 0, doc["findings"]

        code, doc = report(d, "--grace", "0")
        assert code == 1
        assert kinds_and_names(doc["findings"]) == planted.expected
        human = doctor(d, "--grace", "0")
        assert human.returncode == 1
        for kind, name in planted.expected:
            assert any(kind in line and name in line for line in human.stdout.splitlines())

        code, doc = report(d, "--sweep", "--grace", "0")
        assert kinds_and_names(doc["swept"]) == planted.expected
        assert code == 0 and doc["findings"] == [], doc["findings"]
        code, doc = report(d)
        assert code == 0 and doc["findings"] == []
        # another crictld's container is not this one's to kill, nor its runc state to remove
        assert alive(planted.foreign_pid)
        assert (planted.foreign_runc_state / "exec.fifo").exists()
    finally:
        for leftover in (planted.logger_pid, planted.shim_pid, planted.init_pid):
            if alive(leftover):
                os.kill(leftover, 9)
        os.kill(planted.foreign_pid, 9)
        os.waitpid(planted.foreign_pid, 0)
        for path in planted.foreign_cgroup:
            path.rmdir()
        (planted.foreign_runc_state / "exec.fifo").unlink()
        planted.foreign_runc_state.rmdir()

    assert not alive(planted.logger_pid) and not alive(planted.shim_pid)
    assert not alive(planted.init_pid)
    assert not any(p.exists() for p in planted.paths)
    assert not (
        cni_network.ipam_dir
        / cni_network.name
        / next(n for k, n in planted.expected if k == "orphan-ip")
    ).exists()
    events = json.loads(
        d.sql(
            "--json", "SELECT object_id, action, reason FROM events WHERE object_kind = 'orphan'"
        ).stdout
    )
    assert {(e["reason"], e["object_id"]) for e in events} == planted.expected
    assert {e["action"] for e in events} == {"swept"}

    # the pod and its container never noticed
    assert status(d, pod.id).status.state == api_pb2.SANDBOX_READY
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING and pod.pid(cid) == pid
    time.sleep(0.2)
    assert pod.exec(cid, ["true"]).exit_code == 0

    pod.stop(cid)
    pod.remove(cid)
    remove(d, pod.id)
    assert_nothing_held(d, cni_network, [pod.id])


def test_the_daemons_sweeper_sweeps_at_start_and_then_periodically(
    image_daemon: Daemon, short_tmp: Path
) -> None:
    """OrphanSweeper as the daemon runs it, beside a live daemon: its first sweep, at once,
    takes every exec dir from before the daemon's start for a leftover; it and later sweeps
    leave the young exec dirs made since alone."""
    d = image_daemon
    settings = SweepSettings(
        state_dir=d.state_dir,
        netns_dir=d.state_dir.parent / "netns",
        cni_conf_dir=d.cni_conf_dir,
        cni_bin_dirs=d.cni_bin_dirs,
    )

    def dirs(*names: str) -> list[Path]:
        made = [d.state_dir / name for name in names]
        for path in made:
            path.mkdir(parents=True)
        return made

    async def go() -> None:
        store = Store(make_engine(d.state_dir / "crictld.db"))
        client = ContainerdClient(d.containerd, d.namespace)
        ghost = secrets.token_hex(32)
        await client.create_container(
            ghost, "ghost", '{"ociVersion": "1.0.2"}', "overlayfs", {"crictld.io/kind": "sandbox"}
        )
        at_start = dirs(f"sandboxes/{secrets.token_hex(32)}", "exec/exec-0123456789abcdef")
        sweeper = OrphanSweeper(
            store, client, settings, grace=0.0, interval=0.1, daemon_started=time.time_ns()
        )
        try:
            sweeper.start()
            await asyncio.wait_for(sweeper.first_done.wait(), 60)
            assert not any(p.exists() for p in at_start)
            assert [c.id for c in await client.list_containers()] == []
            later = dirs(f"containers/{secrets.token_hex(32)}", "exec/exec-fedcba9876543210")
            for _ in range(400):  # the sweeper runs every 0.1 s; a loaded machine is slow
                if not later[0].exists():
                    break
                await asyncio.sleep(0.05)
            assert not later[0].exists() and later[1].exists()  # a session may hold that one
        finally:
            await sweeper.stop()
            await client.close()
            store.close()

    asyncio.run(go())
    events = json.loads(
        d.sql("--json", "SELECT object_id, reason FROM events WHERE object_kind = 'orphan'").stdout
    )
    assert sorted(e["reason"] for e in events) == [
        "orphan-container",
        "orphan-state-dir",
        "orphan-state-dir",
        "orphan-state-dir",
    ]


def test_a_database_moved_aside_starts_empty_and_its_sweep_takes_the_old_pods(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    """docs/node.md: a corrupt database is refused at start and left as it is; moved aside
    (with its -wal and -shm), the daemon starts an empty store, and its first sweep removes
    every pod and container of the old one (crictld's labels, no row owning them), so the
    node holds nothing of them and pods are made again as before."""
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    running = pod.create("app", ["sleep", "3600"])
    pod.start(running)
    created = pod.create("created", ["sleep", "3600"])  # never started
    init = pod.pid(running)
    logger = int((d.state_dir / "containers" / running / "logger.pid").read_text())
    assert alive(init) and alive(logger)
    assert d.signal(signal.SIGKILL) == -signal.SIGKILL

    db, wal = d.state_dir / "crictld.db", d.state_dir / "crictld.db-wal"
    with db.open("r+b") as f:  # the header SQLite checks first
        f.write(b"\xde\xad" * 50)
    if wal.exists():
        # and the WAL's: a WAL that holds page 1 (each commit that grew the file wrote it
        # there) is where SQLite reads the header from; with its own header bad it is ignored
        with wal.open("r+b") as f:
            f.write(b"\xde\xad" * 16)
    corrupt = db.read_bytes(), wal.read_bytes() if wal.exists() else None
    d.start(wait=False)
    assert d.process is not None and d.process.wait(timeout=60) == 2
    assert "cannot be read" in d.log() and "SQLITE_NOTADB" in d.log(), d.log()[-2000:]
    # left as it was (its WAL too), for whoever restores or recovers it
    assert (db.read_bytes(), wal.read_bytes() if wal.exists() else None) == corrupt

    aside = d.state_dir / "aside"
    aside.mkdir()
    for name in ("crictld.db", "crictld.db-wal", "crictld.db-shm"):
        if (d.state_dir / name).exists():
            (d.state_dir / name).rename(aside / name)
    # 0: the old node's objects are taken at the first sweep, not after the default 60 s
    d.extra_args += ["--orphan-grace", "0"]
    d.start()
    deadline = time.monotonic() + 60
    while "first orphan sweep done" not in d.log():
        assert time.monotonic() < deadline, d.log()[-3000:]
        time.sleep(0.1)

    assert d.runtime_call("ListPodSandbox", api_pb2.ListPodSandboxRequest()).items == []
    assert d.runtime_call("ListContainers", api_pb2.ListContainersRequest()).containers == []
    assert_nothing_held(d, cni_network, [pod.id])
    assert not alive(init) and not alive(logger)
    for sub in ("sandboxes", "containers"):
        assert list((d.state_dir / sub).iterdir()) == [], sub
    events = json.loads(
        d.sql("--json", "SELECT object_id, reason FROM events WHERE object_kind = 'orphan'").stdout
    )
    swept = {(e["reason"], e["object_id"]) for e in events}
    assert {
        ("orphan-container", pod.id),
        ("orphan-container", running),
        ("orphan-container", created),
        ("orphan-task", pod.id),
        ("orphan-task", running),
        ("orphan-netns", str(d.state_dir.parent / "netns" / pod.id)),
        ("orphan-state-dir", str(d.state_dir / "sandboxes" / pod.id)),
        ("orphan-state-dir", str(d.state_dir / "containers" / running)),
    } <= swept, swept  # the logger ends with its task's output
    assert sum(reason == "orphan-ip" for reason, _ in swept) == 1, swept

    # kubelet makes its pods again: a new pod and container run on the empty store
    again = Pod(d, registry, short_tmp / "logs", name="again")
    cid = again.create("app", ["sleep", "3600"])
    again.start(cid)
    assert again.status(cid).state == api_pb2.CONTAINER_RUNNING
    assert status(d, again.id).status.state == api_pb2.SANDBOX_READY
    again.stop(cid)
    again.remove(cid)
    remove(d, again.id)
    assert_nothing_held(d, cni_network, [pod.id, again.id])
