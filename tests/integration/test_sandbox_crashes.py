"""Crash safety: for every named fault point of RunPodSandbox, StopPodSandbox and
RemovePodSandbox, the daemon dies right there (as SIGKILL would), is started again, the same
call is retried, and it succeeds with the same sandbox; a live sandbox then holds exactly one
netns, IP, veth, container, task, snapshot and cgroup, and after Stop and Remove nothing."""

from __future__ import annotations

import json

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.reconciler.faults import POINTS
from tests.integration.test_images import failure
from tests.integration.test_sandboxes import (
    addresses,
    assert_holds_exactly,
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

pytestmark = pytest.mark.integration


def restart_after_fault(d: Daemon) -> None:
    assert d.process is not None
    assert d.process.wait(timeout=30) == -9, "the daemon did not die at the fault point"
    assert "fault point reached" in d.log()
    i = d.extra_args.index("--fault-point")
    del d.extra_args[i : i + 2]
    d.start()


def arm(d: Daemon, point: str) -> None:
    d.stop()
    d.extra_args += ["--fault-point", point]
    d.start()


@pytest.mark.parametrize("point", sorted(p for p in POINTS if p.startswith("sandbox-run:")))
def test_run_survives_a_crash_at(image_daemon: Daemon, cni_network: CniNetwork, point: str) -> None:
    d = image_daemon
    arm(d, point)
    code, _ = failure(run, d, pod_config())
    assert code == grpc.StatusCode.UNAVAILABLE  # the connection died with the daemon
    restart_after_fault(d)
    sid = run(d, pod_config())
    assert run(d, pod_config()) == sid
    rows = d.sql("--json", "SELECT id FROM pods").stdout
    assert sid in rows and rows.count('"id"') == 1  # never two sandboxes for one request
    assert_holds_exactly(d, cni_network, [sid])
    stop(d, sid)
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])


@pytest.mark.parametrize("point", sorted(p for p in POINTS if p.startswith("sandbox-stop:")))
def test_stop_survives_a_crash_at(
    image_daemon: Daemon, cni_network: CniNetwork, point: str
) -> None:
    d = image_daemon
    arm(d, point)
    sid = run(d, pod_config())
    code, _ = failure(stop, d, sid)
    assert code == grpc.StatusCode.UNAVAILABLE
    restart_after_fault(d)
    stop(d, sid)
    assert_stopped(d, cni_network, sid)
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])


def assert_stopped(d: Daemon, net: CniNetwork, sid: str) -> None:
    """Stopped: NOTREADY, and no task, netns, veth or IP left (the container record and its
    snapshot stay until Remove)."""
    st = status(d, sid).status
    assert st.state == api_pb2.SANDBOX_NOTREADY
    h = held(d, net)
    assert (h.netns, h.tasks, h.veths, h.ips) == (frozenset(),) * 4, h
    assert h.containers == frozenset({sid}), h


@pytest.mark.parametrize("point", sorted(p for p in POINTS if p.startswith("sandbox-remove:")))
def test_remove_survives_a_crash_at(
    image_daemon: Daemon, cni_network: CniNetwork, point: str
) -> None:
    d = image_daemon
    arm(d, point)
    sid = run(d, pod_config())
    stop(d, sid)
    code, _ = failure(remove, d, sid)
    assert code == grpc.StatusCode.UNAVAILABLE
    restart_after_fault(d)
    remove(d, sid)
    assert sid not in d.sql("--json", "SELECT id FROM pods").stdout
    assert_nothing_held(d, cni_network, [sid])


def test_an_add_cut_short_is_undone_with_its_configuration_after_a_rename(
    image_daemon: Daemon, cni_network: CniNetwork
) -> None:
    """The daemon dies right after CNI ADD, before its result is in the row, and the network
    is renamed before it starts again. The retried setup undoes that ADD with the
    configuration it ran with (kept in the pod's dir before the ADD), so host-local's address
    under the old name is released, and the pod is added to the renamed network."""
    d = image_daemon
    arm(d, "sandbox-run:after-cni-add")
    code, _ = failure(run, d, pod_config())
    assert code == grpc.StatusCode.UNAVAILABLE
    old = cni_network.ipam_dir / cni_network.name
    assert addresses(old)  # the cut-short ADD's
    (conflist,) = cni_network.conf_dir.iterdir()
    renamed = f"{cni_network.name}-renamed"
    conflist.write_text(json.dumps({**json.loads(conflist.read_text()), "name": renamed}))
    restart_after_fault(d)
    sid = run(d, pod_config())
    ip = status(d, sid).status.network.ip
    assert addresses(old) == []
    assert (cni_network.ipam_dir / renamed / ip).exists()
    stop(d, sid)
    remove(d, sid)
    assert_nothing_held(d, cni_network, [sid])
    assert addresses(cni_network.ipam_dir / renamed) == []
