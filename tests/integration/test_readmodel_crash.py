"""The read model across kill -9: while a client keeps creating, starting, stopping and removing
containers and pods, the daemon is killed at random moments and started again; each time, once
the rows hold still, every list and status answered (from the in-memory model) equals the
rows in SQLite, field for field. At the end nothing is held."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_containers import Pod
from tests.integration.test_sandboxes import assert_nothing_held, pod_config, remove, run, stop
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

KILLS = 4
SETTLE_S = 60.0


def rows(d: Daemon) -> dict[str, Any]:
    """What the database holds, as CRI would report it."""
    out = d.sql(
        "--json",
        "SELECT id, state, phase, desired, ip, labels, created_at_ns FROM pods ORDER BY id",
    )
    assert out.returncode == 0, out.stderr
    pods = {
        p["id"]: (p["state"], p["ip"] or "", json.loads(p["labels"]), p["created_at_ns"])
        for p in json.loads(out.stdout)
        if not (p["phase"] == "PENDING" and p["desired"] == "READY")  # not created yet
    }
    out = d.sql(
        "--json",
        "SELECT id, sandbox_id, state, phase, exit_code, reason, labels, created_at_ns "
        "FROM containers ORDER BY id",
    )
    assert out.returncode == 0, out.stderr
    containers = {
        c["id"]: (
            c["sandbox_id"],
            c["state"],
            c["exit_code"] or 0,
            c["reason"] if c["phase"] == "EXITED" else "",
            json.loads(c["labels"]),
            c["created_at_ns"],
        )
        for c in json.loads(out.stdout)
        if c["phase"] != "PENDING"
    }
    return {"pods": pods, "containers": containers}


def answers(d: Daemon) -> dict[str, Any]:
    """What CRI answers: the lists, and the status of everything listed."""
    pods: dict[str, Any] = {}
    for p in d.runtime_call("ListPodSandbox", api_pb2.ListPodSandboxRequest()).items:
        s = d.runtime_call(
            "PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id=p.id)
        ).status
        assert (s.state, dict(s.labels), s.created_at) == (p.state, dict(p.labels), p.created_at)
        pods[p.id] = (
            api_pb2.PodSandboxState.Name(p.state),
            s.network.ip,
            dict(p.labels),
            p.created_at,
        )
    containers: dict[str, Any] = {}
    for c in d.runtime_call("ListContainers", api_pb2.ListContainersRequest()).containers:
        s = d.runtime_call(
            "ContainerStatus", api_pb2.ContainerStatusRequest(container_id=c.id)
        ).status
        assert s.state == c.state
        containers[c.id] = (
            c.pod_sandbox_id,
            api_pb2.ContainerState.Name(c.state),
            s.exit_code,
            s.reason,
            dict(c.labels),
            c.created_at,
        )
    return {"pods": dict(sorted(pods.items())), "containers": dict(sorted(containers.items()))}


def assert_answers_equal_rows(d: Daemon) -> None:
    """Once the rows are the same before and after the CRI reads, the answers must be them."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        before = rows(d)
        seen = answers(d)
        after = rows(d)
        if before == after:
            assert seen == before
            return
        assert time.monotonic() < deadline, "the rows never held still"
        time.sleep(0.2)


class Churn(threading.Thread):
    """A client doing lifecycles until told to stop; errors (the daemon dying) are expected."""

    def __init__(self, d: Daemon, pod: Pod, seed: int) -> None:
        super().__init__(daemon=True)
        self.d, self.pod, self.rng = d, pod, random.Random(seed)
        self.halt = threading.Event()
        self.calls = 0
        self.n = 0

    def run(self) -> None:
        while not self.halt.is_set():
            self.n += 1
            try:
                self.step()
            except grpc.RpcError:
                time.sleep(0.05)

    def step(self) -> None:
        pod = self.pod
        cid = pod.create(f"c{self.n}", ["sleep", "3600"])
        self.calls += 1
        if self.rng.random() < 0.7:
            pod.start(cid)
            self.calls += 1
        if self.rng.random() < 0.5:
            pod.stop(cid)
            self.calls += 1
        if self.rng.random() < 0.5:
            pod.remove(cid)
            self.calls += 1
        if self.rng.random() < 0.15:
            sid = run(self.d, pod_config(f"extra{self.n}", uid=f"uid-x{self.n}"))
            self.calls += 1
            if self.rng.random() < 0.5:
                stop(self.d, sid)
                self.calls += 1


def test_answers_equal_rows_after_kills(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    rng = random.Random(7)
    total = 0
    for kill in range(KILLS):
        churn = Churn(d, pod, seed=kill)
        churn.start()
        time.sleep(rng.uniform(0.5, 2.5))
        d.signal(signal.SIGKILL)
        assert d.process is not None
        d.process.wait(timeout=30)
        churn.halt.set()
        churn.join(timeout=60)
        total += churn.calls
        d.start()
        assert_answers_equal_rows(d)
    assert total > KILLS, "the client made no calls: nothing was tested"
    listed = d.runtime_call("ListPodSandbox", api_pb2.ListPodSandboxRequest()).items
    for p in listed:
        remove(d, p.id)
    assert_answers_equal_rows(d)
    assert rows(d) == {"pods": {}, "containers": {}}
    assert_nothing_held(d, cni_network, [p.id for p in listed])
