"""Pod sandboxes for real: netns + CNI (bridge, host-local, portmap) + pause task on
a private containerd, driven with crictl and the CRI API, with leak counts after each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.reconciler.orphans import read_ipam
from tests.integration.test_images import failure
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.leaks import Holdings, holdings

pytestmark = pytest.mark.integration


def pod_config(
    name: str = "web", uid: str = "uid-1", attempt: int = 0, **extra: object
) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, namespace="default", uid=uid, attempt=attempt
        ),
        hostname=name,
        labels={"app": name, "io.kubernetes.pod.uid": uid},
        annotations={"note": "crictld-test"},
    )
    for key, value in extra.items():
        setattr(config, key, value)
    return config


def run(d: Daemon, config: api_pb2.PodSandboxConfig, timeout: float = 60) -> str:
    resp = d.runtime_call(
        "RunPodSandbox", api_pb2.RunPodSandboxRequest(config=config), timeout=timeout
    )
    return str(resp.pod_sandbox_id)


def status(d: Daemon, sid: str) -> api_pb2.PodSandboxStatusResponse:
    resp: api_pb2.PodSandboxStatusResponse = d.runtime_call(
        "PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sid, verbose=True)
    )
    return resp


def stop(d: Daemon, sid: str) -> None:
    d.runtime_call("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid))


def remove(d: Daemon, sid: str) -> None:
    d.runtime_call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid))


def addresses(ipam: Path) -> list[str]:
    """The addresses host-local holds in one network's dir (`ipam_dir / name`)."""
    return [a.ip for a in read_ipam(ipam)]


def held(d: Daemon, net: CniNetwork) -> Holdings:
    return holdings(d.containerd_address, d.namespace, d.state_dir.parent / "netns", net)


def assert_holds_exactly(d: Daemon, net: CniNetwork, sids: list[str]) -> None:
    """Each live sandbox: one netns, one IP, one container and task, one rw snapshot, one
    cgroup, one veth; nothing else."""
    h = held(d, net)
    ids = frozenset(sids)
    assert h.netns == ids, h
    assert h.containers == ids and h.tasks == ids and h.rw_snapshots == ids, h
    assert len(h.ips) == len(sids) and len(h.veths) == len(sids), h
    assert h.leases == frozenset(), h
    assert ids <= h.cgroups, h


def assert_nothing_held(d: Daemon, net: CniNetwork, sids: list[str]) -> None:
    h = held(d, net)
    assert (
        h.netns,
        h.ips,
        h.containers,
        h.tasks,
        h.rw_snapshots,
        h.leases,
        h.runc_states,
        h.veths,
    ) == (frozenset(),) * 8, h
    assert not (frozenset(sids) & h.cgroups), h


def ping(ip: str) -> bool:
    return subprocess.run(["ping", "-c", "1", "-W", "2", ip], capture_output=True).returncode == 0


def test_crictl_runp_pods_inspectp_stopp_rmp(
    image_daemon: Daemon, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = image_daemon
    pod = short_tmp / "pod.json"
    pod.write_text(
        json.dumps(
            {
                "metadata": {"name": "crictl-pod", "namespace": "default", "uid": "u-crictl"},
                "hostname": "crictl-pod",
                "labels": {"app": "crictl"},
                "dns_config": {"servers": ["10.0.0.10"], "searches": ["svc.local"]},
                "linux": {"sysctls": {"net.ipv4.ip_local_port_range": "20000 30000"}},
            }
        )
    )
    r = d.crictl("runp", str(pod))
    assert r.returncode == 0, r.stderr + d.log()[-3000:]
    sid = r.stdout.strip()
    pods = json.loads(d.crictl("pods", "-o", "json").stdout)["items"]
    assert [(p["id"], p["state"]) for p in pods] == [(sid, "SANDBOX_READY")]
    info = json.loads(d.crictl("inspectp", sid).stdout)
    ip = info["status"]["network"]["ip"]
    assert ip and ping(ip), ip
    assert info["status"]["labels"] == {"app": "crictl"}
    assert info["info"]["cniResult"]["ips"][0]["address"].startswith(ip + "/")
    pid = info["info"]["pid"]
    ns_sysctl = subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "cat", "/proc/sys/net/ipv4/ip_local_port_range"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert ns_sysctl == ["20000", "30000"]
    hostname = subprocess.run(
        ["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert hostname == "crictl-pod"
    resolv = (d.state_dir / "sandboxes" / sid / "resolv.conf").read_text()
    assert "nameserver 10.0.0.10" in resolv and "search svc.local" in resolv
    assert_holds_exactly(d, cni_network, [sid])

    assert d.crictl("stopp", sid).returncode == 0
    pods = json.loads(d.crictl("pods", "-o", "json").stdout)["items"]
    assert [(p["id"], p["state"]) for p in pods] == [(sid, "SANDBOX_NOTREADY")]
    assert not ping(ip)
    h = held(d, cni_network)
    assert h.ips == frozenset() and h.netns == frozenset() and h.tasks == frozenset()
    assert d.crictl("rmp", sid).returncode == 0
    assert json.loads(d.crictl("pods", "-o", "json").stdout)["items"] == []
    assert_nothing_held(d, cni_network, [sid])
    events = json.loads(
        d.sql(
            "--json",
            f"SELECT action, to_phase, reason FROM events WHERE object_id = '{sid}' ORDER BY id",
        ).stdout
    )
    assert [e["action"] for e in events] == [
        "created",
        "network",
        "transition",
        "desired",
        "transition",  # NOTREADY from the first step of the stop on
        "network-released",
        "desired",
        "removed",
    ]
    assert events[4]["reason"] == "Stopped"


def test_run_is_idempotent_and_conflicts_are_named(
    image_daemon: Daemon, cni_network: CniNetwork
) -> None:
    d = image_daemon
    sid = run(d, pod_config())
    assert run(d, pod_config()) == sid  # the same request again: the same sandbox
    code, message = failure(run, d, pod_config(hostname="other"))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert sid in message and "default/web" in message
    assert_holds_exactly(d, cni_network, [sid])
    for _ in range(2):  # stop and remove twice: idempotent
        stop(d, sid)
    for _ in range(2):
        remove(d, sid)
    stop(d, "f" * 64)  # missing: OK, as the CRI says
    remove(d, "f" * 64)
    code, message = failure(status, d, sid)
    assert code == grpc.StatusCode.NOT_FOUND and sid in message
    assert_nothing_held(d, cni_network, [sid])


def test_bad_input_changes_nothing(image_daemon: Daemon, cni_network: CniNetwork) -> None:
    d = image_daemon
    bad = pod_config()
    bad.metadata.uid = ""
    code, message = failure(run, d, bad)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "metadata.uid" in message
    code, message = failure(
        lambda: d.runtime_call(
            "RunPodSandbox",
            api_pb2.RunPodSandboxRequest(config=pod_config(), runtime_handler="kata"),
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "kata" in message
    code, _ = failure(status, d, "")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    rows = json.loads(d.sql("--json", "SELECT count(*) AS n FROM pods").stdout)
    assert rows == [{"n": 0}]
    assert_nothing_held(d, cni_network, [])


def test_list_filters_and_prefixes(image_daemon: Daemon, cni_network: CniNetwork) -> None:
    d = image_daemon
    a = run(d, pod_config("a", "ua"))
    b = run(d, pod_config("b", "ub"))
    stop(d, b)

    def ids(flt: api_pb2.PodSandboxFilter) -> list[str]:
        resp = d.runtime_call("ListPodSandbox", api_pb2.ListPodSandboxRequest(filter=flt))
        return [i.id for i in resp.items]

    assert sorted(ids(api_pb2.PodSandboxFilter())) == sorted([a, b])
    assert ids(api_pb2.PodSandboxFilter(label_selector={"app": "b"})) == [b]
    assert ids(
        api_pb2.PodSandboxFilter(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_READY))
    ) == [a]
    assert ids(
        api_pb2.PodSandboxFilter(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY))
    ) == [b]
    assert ids(api_pb2.PodSandboxFilter(id=a[:12])) == [a]
    assert status(d, a[:10]).status.id == a  # a unique prefix is enough
    for sid in (a, b):
        remove(d, sid)
    assert_nothing_held(d, cni_network, [a, b])


def test_the_pods_loopback_is_up_without_a_loopback_plugin(
    image_daemon: Daemon, cni_network: CniNetwork
) -> None:
    """Node network configurations (calico, flannel) carry no loopback plugin; the runtime
    brings lo up, or the pod's 127.0.0.1 is unreachable (to its containers, to port-forward)."""
    from crictl.network import netns

    conf = json.loads((cni_network.conf_dir / "10-crictld-test.conflist").read_text())
    assert "loopback" not in [p["type"] for p in conf["plugins"]]
    d = image_daemon
    sid = run(d, pod_config("lo", "ulo"))
    path = d.state_dir.parent / "netns" / sid
    addresses = netns.addresses(path)
    assert "127.0.0.1" in addresses["lo"], addresses
    inside = subprocess.run(
        ["nsenter", f"--net={path}", sys.executable, "-c", LOOPBACK_ECHO],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert inside.stdout.strip() == "ok", inside.stderr
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])


# listens on 127.0.0.1 and connects to itself there: fails while lo is down
LOOPBACK_ECHO = """
import socket
with socket.create_server(("127.0.0.1", 0)) as s:
    with socket.create_connection(s.getsockname(), timeout=5):
        print("ok")
"""


def test_host_network_pod_has_no_netns_and_no_ip(
    image_daemon: Daemon, cni_network: CniNetwork
) -> None:
    d = image_daemon
    config = pod_config("hostnet", "uh")
    config.linux.security_context.namespace_options.network = api_pb2.NODE
    sid = run(d, config)
    st = status(d, sid)
    assert st.status.state == api_pb2.SANDBOX_READY
    assert st.status.HasField("network") and st.status.network.ip == ""  # as containerd's CRI
    h = held(d, cni_network)
    assert h.netns == frozenset() and h.ips == frozenset() and h.tasks == frozenset({sid})
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])


def wait_notready(d: Daemon, sid: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while status(d, sid).status.state != api_pb2.SANDBOX_NOTREADY:
        assert time.monotonic() < deadline, f"{sid} stayed READY for {timeout}s"
        time.sleep(0.05)


def kill_pause(d: Daemon, sid: str) -> None:
    """SIGKILL to the pod's pause process, then wait for the daemon to make the pod NOTREADY."""
    os.kill(json.loads(status(d, sid).info["info"])["pid"], signal.SIGKILL)
    wait_notready(d, sid, 10)


def test_a_pause_task_that_dies_makes_the_sandbox_notready(
    image_daemon: Daemon, cni_network: CniNetwork
) -> None:
    d = image_daemon
    sid = run(d, pod_config())
    kill_pause(d, sid)
    info = json.loads(status(d, sid).info["info"])
    assert info["reason"] == "PauseExited"
    assert not_ready_logged(d) == {sid: "PauseExited"}
    stop(d, sid)
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])


def not_ready_logged(d: Daemon) -> dict[str, str]:
    """The pods the daemon's log says it marked NOTREADY itself, with the reason."""
    records = [json.loads(line) for line in d.log().splitlines() if '"pod not ready"' in line]
    return {r["sandbox"]: r["reason"] for r in records}


def network_checks(d: Daemon, timeout: float = 30) -> dict[str, int]:
    """The counts of the CNI CHECK this start of the daemon ran on the pods it re-adopted
    (in the background, once it serves), once it has logged them."""
    deadline = time.monotonic() + timeout
    while True:
        done = [json.loads(line) for line in d.log().splitlines() if "pod networks checked" in line]
        if done:
            return {k: done[0][k] for k in ("passed", "failed", "not_checked")}
        assert time.monotonic() < deadline, f"no pod networks checked within {timeout}s"
        time.sleep(0.05)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_restart_keeps_states_ips_and_created_at(
    image_daemon: Daemon, cni_network: CniNetwork, how: signal.Signals
) -> None:
    d = image_daemon
    ready = run(d, pod_config("ready", "u1"))
    notready = run(d, pod_config("notready", "u2"))
    stop(d, notready)
    before = {sid: status(d, sid).status for sid in (ready, notready)}
    pid = json.loads(status(d, ready).info["info"])["pid"]
    d.signal(how)
    d.start()
    after = {sid: status(d, sid).status for sid in (ready, notready)}
    assert after == before
    assert json.loads(status(d, ready).info["info"])["pid"] == pid  # re-adopted, not restarted
    assert network_checks(d) == {"passed": 1, "failed": 0, "not_checked": 0}
    assert status(d, ready).status.state == api_pb2.SANDBOX_READY
    assert not_ready_logged(d) == {}
    assert ping(after[ready].network.ip)
    for sid in (ready, notready):
        stop(d, sid)
        remove(d, sid)
    assert_nothing_held(d, cni_network, [ready, notready])


def test_a_pod_whose_network_check_fails_after_a_restart_is_notready(
    image_daemon: Daemon, cni_network: CniNetwork
) -> None:
    """The CNI CHECK of a re-adopted pod (run once the daemon serves) fails when the network
    lost what CNI set up while crictld was down: here host-local's record of the pod's
    address. The pod is NOTREADY, with the reason, in its status and in the log."""
    d = image_daemon
    sid = run(d, pod_config())
    ip = status(d, sid).status.network.ip
    d.signal(signal.SIGKILL)
    (cni_network.ipam_dir / cni_network.name / ip).unlink()
    d.start()
    assert network_checks(d) == {"passed": 0, "failed": 1, "not_checked": 0}
    assert status(d, sid).status.state == api_pb2.SANDBOX_NOTREADY
    assert json.loads(status(d, sid).info["info"])["reason"] == "NetworkCheckFailed"
    assert not_ready_logged(d) == {sid: "NetworkCheckFailed"}
    stop(d, sid)
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])


def test_a_bridge_mac_that_moved_while_down_fails_no_pod_check(
    image_daemon: Daemon, cni_network: CniNetwork
) -> None:
    """The bridge's MAC is not what the pod's ADD recorded (the bridge plugin records a stale
    one when the first pods of a new bridge are added at once; here it is set while crictld
    is down): the pod's network is whole, its CHECK passes, the log says what moved. The
    bridge plugin's own CHECK fails this pod when given the result as its ADD returned it."""
    d = image_daemon
    sid = run(d, pod_config())
    ip = status(d, sid).status.network.ip
    address = Path("/sys/class/net", cni_network.bridge, "address")
    added = address.read_text().strip()
    d.signal(signal.SIGKILL)
    moved = "02:c0:ff:ee:00:01" if added != "02:c0:ff:ee:00:01" else "02:c0:ff:ee:00:02"
    subprocess.run(["ip", "link", "set", "dev", cni_network.bridge, "address", moved], check=True)
    d.start()
    assert network_checks(d) == {"passed": 1, "failed": 0, "not_checked": 0}
    assert status(d, sid).status.state == api_pb2.SANDBOX_READY
    assert not_ready_logged(d) == {}
    logged = [json.loads(line) for line in d.log().splitlines() if "MAC moved" in line]
    assert [(e["sandbox"], e["interface"], e["added"], e["now"]) for e in logged] == [
        (sid, cni_network.bridge, added, moved)
    ]
    assert ping(ip)
    stop(d, sid)
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])


def test_a_network_renamed_while_down_keeps_its_pods_and_releases_their_ips(
    image_daemon: Daemon, cni_network: CniNetwork
) -> None:
    """The config dir's network renamed while crictld is down (an add-on upgrade may do it):
    the pods it re-adopts are checked, then released, with the configuration their ADD ran
    with (their row keeps it; host-local keeps their addresses under the network's old name).
    They stay READY, and their IPs are released at their stop; a new pod joins the renamed
    network."""
    d = image_daemon
    old = run(d, pod_config("old", "u1"))
    ip = status(d, old).status.network.ip
    (conflist,) = cni_network.conf_dir.iterdir()
    conf = json.loads(conflist.read_text())
    (row,) = json.loads(
        d.sql("--json", f"SELECT cni_config FROM pod_sandbox WHERE id = '{old}'").stdout
    )
    assert json.loads(row["cni_config"]) == conf  # what an operator reads of the pod's network
    d.signal(signal.SIGKILL)
    renamed = f"{cni_network.name}-renamed"
    conflist.write_text(json.dumps({**conf, "name": renamed}))
    d.start()
    assert network_checks(d) == {"passed": 1, "failed": 0, "not_checked": 0}
    assert status(d, old).status.state == api_pb2.SANDBOX_READY
    assert not_ready_logged(d) == {}
    assert ping(ip)
    new = run(d, pod_config("new", "u2"))
    new_ip = status(d, new).status.network.ip
    assert addresses(cni_network.ipam_dir / renamed) == [new_ip]
    stop(d, old)
    assert not (cni_network.ipam_dir / cni_network.name / ip).exists()  # released by DEL
    stop(d, new)
    assert not (cni_network.ipam_dir / renamed / new_ip).exists()
    for sid in (old, new):
        remove(d, sid)
    assert_nothing_held(d, cni_network, [old, new])


def test_a_pod_from_before_its_network_config_was_kept_is_checked_and_released(
    image_daemon: Daemon, cni_network: CniNetwork
) -> None:
    """The upgrade to revision 0005 with a pod running: its row keeps no network configuration,
    so its CHECK and DEL use the config dir's network, as before."""
    from alembic import command
    from crictl.store.migrate import HEAD, alembic_config, current_revision

    d = image_daemon
    sid = run(d, pod_config())
    ip = status(d, sid).status.network.ip
    d.signal(signal.SIGTERM)
    db = d.state_dir / "crictld.db"
    command.downgrade(alembic_config(db), "0004")
    d.start()
    assert current_revision(db) == HEAD
    assert network_checks(d) == {"passed": 1, "failed": 0, "not_checked": 0}
    (row,) = json.loads(
        d.sql("--json", f"SELECT cni_config FROM pod_sandbox WHERE id = '{sid}'").stdout
    )
    assert row["cni_config"] is None
    assert status(d, sid).status.state == api_pb2.SANDBOX_READY
    stop(d, sid)
    assert not (cni_network.ipam_dir / cni_network.name / ip).exists()
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])


def test_what_vanished_while_down_is_notready_and_still_cleaned(
    image_daemon: Daemon, cni_network: CniNetwork
) -> None:
    from crictl.network import netns

    d = image_daemon
    killed = run(d, pod_config("killed", "u1"))
    lost_netns = run(d, pod_config("lostns", "u2"))
    pid = json.loads(status(d, killed).info["info"])["pid"]
    d.signal(signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    netns.remove(d.state_dir.parent / "netns" / lost_netns)
    d.start()
    for sid, reason in ((killed, "PauseExited"), (lost_netns, "NetnsVanished")):
        st = status(d, sid)
        assert st.status.state == api_pb2.SANDBOX_NOTREADY, sid
        assert json.loads(st.info["info"])["reason"] == reason
    assert not_ready_logged(d) == {killed: "PauseExited", lost_netns: "NetnsVanished"}
    assert len(held(d, cni_network).ips) == 2  # both IPs are still allocated...
    for sid in (killed, lost_netns):
        stop(d, sid)
    assert held(d, cni_network).ips == frozenset()  # ...until Stop released them
    for sid in (killed, lost_netns):
        remove(d, sid)
    assert_nothing_held(d, cni_network, [killed, lost_netns])


def _removal_spans(d: Daemon) -> dict[str, list[float]]:
    """The spans of the last RemovePodSandbox's "cri call" line in the daemon's log."""
    spans: dict[str, list[float]] = d.call_lines("RemovePodSandbox")[-1].get("spans", {})
    return spans


def test_a_pod_stopped_by_this_daemon_is_removed_without_asking_for_its_task(
    image_daemon: Daemon, cni_network: CniNetwork
) -> None:
    """The stop deleted the pause task, and nothing makes it again: the removal sends no task
    call (two round trips fewer), and nothing is left."""
    d = image_daemon
    sid = run(d, pod_config("first", "u-first"))
    stop(d, sid)
    remove(d, sid)
    spans = _removal_spans(d)
    assert not [name for name in spans if "task" in name], spans
    assert "containerd delete container" in spans, spans
    assert_nothing_held(d, cni_network, [sid])
