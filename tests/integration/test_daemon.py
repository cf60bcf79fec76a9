"""crictld as operators run it: a real daemon, real containerd, driven with cri-tools' crictl."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon

pytestmark = pytest.mark.integration


def _conditions(daemon: Daemon) -> dict[str, tuple[bool, str, str]]:
    st = daemon.status()
    return {c.type: (c.status, c.reason, c.message) for c in st.status.conditions}


def test_crictl_version_and_info(daemon: Daemon) -> None:
    r = daemon.crictl("version")
    assert r.returncode == 0, r.stderr
    assert "RuntimeName:  crictld" in r.stdout
    assert "RuntimeApiVersion:  v1" in r.stdout
    info = daemon.crictl("info")
    assert info.returncode == 0, info.stderr
    conditions = {c["type"]: c["status"] for c in json.loads(info.stdout)["status"]["conditions"]}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}


def test_socket_is_0660(daemon: Daemon) -> None:
    mode = daemon.socket.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_an_rpc_of_a_newer_cri_api_is_a_clear_unimplemented_not_a_crash(daemon: Daemon) -> None:
    """Every RPC of cri-api v0.37 is served; one a newer kubelet may call answers
    UNIMPLEMENTED at once, and the daemon keeps serving."""
    started = time.monotonic()
    with grpc.insecure_channel(daemon.endpoint) as channel:
        call = channel.unary_unary(
            "/runtime.v1.RuntimeService/SomeFutureRpc",
            request_serializer=api_pb2.VersionRequest.SerializeToString,
            response_deserializer=api_pb2.VersionResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(api_pb2.VersionRequest(), timeout=10)
    assert time.monotonic() - started < 5
    err = info.value
    assert isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert daemon.crictl("version").returncode == 0  # still serving


def test_network_not_ready_without_cni_config(daemon: Daemon, cni_network: CniNetwork) -> None:
    for f in cni_network.conf_dir.iterdir():
        f.unlink()
    status, reason, message = _conditions(daemon)["NetworkReady"]
    assert (status, reason) == (False, "NoCNIConfig")
    assert str(cni_network.conf_dir) in message


def test_status_answers_fast_while_containerd_hangs(
    managed_daemon: Daemon,
) -> None:
    managed_daemon.start()
    pid = int((managed_daemon.state_dir / "containerd" / "containerd.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        conditions = _conditions(managed_daemon)
        elapsed = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert conditions["RuntimeReady"][:2] == (False, "ContainerdUnresponsive")
    assert elapsed < 1.0, elapsed
    assert conditions["NetworkReady"][0] is True
    assert _conditions(managed_daemon)["RuntimeReady"][0] is True  # and recovers


def test_sql_against_a_running_daemon(daemon: Daemon) -> None:
    r = daemon.sql("--json", "SELECT object_kind, action FROM events")
    assert r.returncode == 0, r.stderr
    assert {"object_kind": "daemon", "action": "started"} in json.loads(r.stdout)
    db = daemon.state_dir / "crictld.db"
    before = subprocess.run(
        ["sqlite3", str(db), "SELECT count(*) FROM event"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    refused = daemon.sql("delete from pods")
    assert refused.returncode == 2
    assert "read-only" in refused.stderr
    refused = daemon.sql("delete from event")
    assert refused.returncode == 2
    after = subprocess.run(
        ["sqlite3", str(db), "SELECT count(*) FROM event"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert before == after


def test_the_event_log_keeps_its_newest_rows(daemon: Daemon) -> None:
    """A restarted daemon trims what is beyond --event-log-rows, its own start rows kept;
    rows younger than an hour stay whatever the bound, so every row here is made older."""
    assert daemon.stop() == 0
    db = daemon.state_dir / "crictld.db"
    two_hours = 2 * 3600 * 10**9
    subprocess.run(
        [
            "sqlite3",
            str(db),
            f"UPDATE event SET at = at - {two_hours};"
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50) "
            "INSERT INTO event (at, object_kind, object_id, action, reason, message) "
            f"SELECT (SELECT max(at) FROM event), 'container', printf('%064x', i), 'created', "
            "'', '' FROM n",
        ],
        check=True,
    )
    daemon.extra_args = ["--event-log-rows", "5"]
    daemon.start()
    deadline = time.monotonic() + 30
    while "event log trimmed" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = json.loads(daemon.sql("--json", "SELECT id, object_kind, action FROM events").stdout)
    assert len(rows) == 5, rows
    assert rows[-1]["object_kind"] == "daemon" and rows[-1]["action"] == "started"
    newest = rows[-1]["id"]
    assert newest > 51  # the first start's row and the 50 written here came before it
    assert [r["id"] for r in rows] == list(range(newest - 4, newest + 1))


def test_one_daemon_per_state_dir(daemon: Daemon) -> None:
    second = Daemon(
        **{
            **daemon.__dict__,
            "socket": daemon.socket.with_name("other.sock"),
            "process": None,
            "log_path": None,
        }
    )
    second.start(wait=False)
    assert second.process is not None
    assert second.process.wait(timeout=30) == 2
    assert "another crictld" in second.log()
    assert daemon.crictl("version").returncode == 0


def _containerd_pids(state_dir: Path) -> list[int]:
    config = str(state_dir / "containerd" / "config.toml")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if (
                config.encode() in cmdline
                and (proc / "stat").read_text().rsplit(")", 1)[1].split()[0].encode() != b"Z"
            ):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_sigkill_and_restart_reuses_managed_containerd(managed_daemon: Daemon) -> None:
    d = managed_daemon
    d.start()
    [containerd_pid] = _containerd_pids(d.state_dir)
    assert d.signal(signal.SIGKILL) == -signal.SIGKILL
    assert d.socket.exists()  # a stale socket and a stale lock file are left behind
    d.start()
    assert _containerd_pids(d.state_dir) == [containerd_pid]  # re-used, not duplicated
    assert '"containerd_mode": "adopted"' in d.log()
    assert d.crictl("version").returncode == 0
    events = d.sql("--json", "SELECT message FROM events WHERE action = 'started' ORDER BY id")
    messages = [e["message"] for e in json.loads(events.stdout)]
    assert messages[0].endswith("(started)") and messages[1].endswith("(adopted)")

    # A managed containerd that no longer answers within the daemon's patience is replaced,
    # still never duplicated.
    assert d.signal(signal.SIGKILL) == -signal.SIGKILL
    os.kill(containerd_pid, signal.SIGSTOP)
    d.extra_args += ["--containerd-start-timeout", "4"]
    began = time.monotonic()
    d.start()
    waited = time.monotonic() - began
    pids = _containerd_pids(d.state_dir)
    assert len(pids) == 1 and pids[0] != containerd_pid
    assert "managed containerd does not answer: replacing it" in d.log()
    assert '"containerd_mode": "started"' in d.log()
    # The silent one had its 4 s, not the default 30, before it was replaced.
    assert 4 <= waited < 25
    assert d.crictl("info").returncode == 0

    # SIGTERM stops the daemon and the containerd it owns.
    assert d.stop() == 0
    assert _containerd_pids(d.state_dir) == []
    assert not d.socket.exists()


def test_a_managed_containerd_the_pid_file_does_not_name_is_adopted(
    managed_daemon: Daemon,
) -> None:
    """A crictld SIGKILLed between starting its containerd and writing the pid file leaves a
    containerd nobody recorded. The next one adopts it rather than start a second beside it
    (which would wait forever on their shared metadata's lock), and stops any second one."""
    d = managed_daemon
    d.start()
    [containerd_pid] = _containerd_pids(d.state_dir)
    pid_file = d.state_dir / "containerd" / "containerd.pid"
    assert d.signal(signal.SIGKILL) == -signal.SIGKILL
    pid_file.unlink()
    d.start()
    assert _containerd_pids(d.state_dir) == [containerd_pid]
    assert '"containerd_mode": "adopted"' in d.log()
    assert pid_file.read_text().strip() == str(containerd_pid)
    assert d.crictl("version").returncode == 0

    # A second containerd on the same config (it waits on the metadata lock, never serving)
    # is stopped; the recorded one is kept.
    assert d.signal(signal.SIGKILL) == -signal.SIGKILL
    second = _another_containerd(d)
    try:
        d.start()
        assert second.wait(timeout=30) is not None
        assert _containerd_pids(d.state_dir) == [containerd_pid]
        assert d.crictl("info").returncode == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert d.stop() == 0
    assert _containerd_pids(d.state_dir) == []


def _another_containerd(d: Daemon) -> subprocess.Popen[bytes]:
    """A containerd started by hand on the managed one's config (its own session)."""
    return subprocess.Popen(
        ["containerd", "--config", str(d.state_dir / "containerd" / "config.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_a_managed_containerd_still_booting_is_waited_for_not_replaced(
    managed_daemon: Daemon,
) -> None:
    """A crictld killed just after it started its containerd leaves one that may still be
    booting (re-loading shims; its socket comes last). The next crictld waits for it to answer
    instead of killing it mid-boot, which would cut its shim clean-ups short."""
    d = managed_daemon
    d.start()
    [first] = _containerd_pids(d.state_dir)
    assert d.signal(signal.SIGKILL) == -signal.SIGKILL
    os.kill(first, signal.SIGKILL)
    booting = _another_containerd(d)
    try:
        (d.state_dir / "containerd" / "containerd.pid").write_text(f"{booting.pid}\n")
        os.kill(booting.pid, signal.SIGSTOP)  # a boot that takes a while
        resume = threading.Timer(3.0, os.kill, (booting.pid, signal.SIGCONT))
        resume.start()
        d.start()
        resume.join()
        assert _containerd_pids(d.state_dir) == [booting.pid]
        assert '"containerd_mode": "adopted"' in d.log()
        assert d.crictl("info").returncode == 0
        assert d.stop() == 0
        assert booting.wait(timeout=30) is not None
    finally:
        if booting.poll() is None:
            os.kill(booting.pid, signal.SIGCONT)
            booting.kill()
            booting.wait()


def test_no_migration_errors_on_restart(managed_daemon: Daemon) -> None:
    d = managed_daemon
    d.start()
    assert "migrated database" in d.log()
    d.signal(signal.SIGKILL)
    d.start()
    log = d.log()
    assert "migrated database" not in log
    assert '"level": "error"' not in log


def test_tells_systemd_when_it_serves(daemon: Daemon, short_tmp: Path) -> None:
    """Type=notify: READY=1 through $NOTIFY_SOCKET once the CRI socket serves, STOPPING=1 at
    shutdown (contrib/systemd/crictld.service)."""
    notify = short_tmp / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(30)
        daemon.stop()
        daemon.env["NOTIFY_SOCKET"] = str(notify)
        daemon.start(wait=False)
        message = listener.recv(4096).decode()
        assert message.startswith("READY=1"), message
        assert daemon.crictl("version").returncode == 0  # it serves when it says so
        daemon.stop()
        assert listener.recv(4096).decode() == "STOPPING=1"
