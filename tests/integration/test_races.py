"""Races kubelet makes: a pod's teardown concurrent with its containers' calls, and a second,
shorter StopContainer while a longer one waits (kubelet's delete with --grace-period=1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_containers import Pod
from tests.integration.test_sandboxes import assert_nothing_held
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

ALLOWED = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}


def concurrently(*calls: Callable[[], object]) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def test_pod_teardown_races_container_calls(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = image_daemon
    seen: set[str] = set()
    for i in range(8):
        pod = Pod(d, registry, short_tmp / "logs", name=f"race{i}")
        a = pod.create("a", ["sleep", "3600"])
        b = pod.create("b", ["sleep", "3600"])
        c = pod.create("c", ["sleep", "3600"])
        pod.start(b)
        pod.start(c)
        stop_pod = api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id)
        remove_pod = api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id)
        calls: list[Callable[[], object]] = [
            partial(d.runtime_call, "StopPodSandbox", stop_pod),
            partial(pod.start, a),
            partial(pod.stop, b, timeout=2),
            partial(pod.remove, c),
        ]
        if i % 2:
            calls.append(partial(d.runtime_call, "RemovePodSandbox", remove_pod))
        errors = concurrently(*calls)
        for e in errors:
            assert isinstance(e, grpc.RpcError) and e.code() in ALLOWED, e
            seen.add(e.code().name)
        d.runtime_call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
        assert not d.runtime_call("ListContainers", api_pb2.ListContainersRequest()).containers
        assert_nothing_held(d, cni_network, [pod.id, a, b, c])
    assert "UNKNOWN" not in d.log() and '"code": "INTERNAL"' not in d.log()


def test_a_shorter_stop_timeout_wins(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    """PID 1 ignores SIGTERM: only SIGKILL ends it. StopContainer with 30 s, then after 1 s
    one with 1 s: both return within 3 s of the first, as with containerd's CRI."""
    pod = Pod(image_daemon, registry, short_tmp / "logs")
    cid = pod.create("stubborn", ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"])
    pod.start(cid)
    started = time.monotonic()
    done: dict[str, float] = {}

    def stop(name: str, timeout: int) -> None:
        pod.stop(cid, timeout=timeout)
        done[name] = time.monotonic() - started

    long = threading.Thread(target=stop, args=("long", 30))
    long.start()
    time.sleep(1)
    stop("short", 1)
    long.join(60)
    assert done["short"] < 3.0 and done["long"] < 3.0, done
    status = pod.status(cid)
    assert status.state == api_pb2.CONTAINER_EXITED and status.exit_code == 137, status
    d = image_daemon
    d.runtime_call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
    assert_nothing_held(d, cni_network, [pod.id, cid])
