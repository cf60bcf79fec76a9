"""Checkpoint and restore: bad requests refused precisely; otherwise the answer says exactly
why it cannot be done here, in CRIU's own words (this machine's kernel fails `criu check`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_containers import Pod
from tests.integration.test_images import failure
from tests.integration.test_sandboxes import remove
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


def criu_works() -> bool:
    criu = shutil.which("criu")
    assert criu, "criu is missing: run hack/install-deps.sh"
    return subprocess.run([criu, "check"], capture_output=True).returncode == 0


def test_checkpoint_rpcs_refuse_precisely(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    cid = pod.create("app", ["sleep", "3600"])

    def checkpoint(container: str, location: str) -> None:
        d.runtime_call(
            "CheckpointContainer",
            api_pb2.CheckpointContainerRequest(container_id=container, location=location),
        )

    archive = str(short_tmp / "app.tar")
    assert failure(checkpoint, cid, "")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert failure(checkpoint, cid, "relative.tar")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert failure(checkpoint, "f" * 64, archive)[0] == grpc.StatusCode.NOT_FOUND
    code, message = failure(checkpoint, cid, archive)  # created, not running
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not RUNNING" in message, message
    pod.start(cid)
    code, message = failure(checkpoint, cid, archive)
    assert code == grpc.StatusCode.FAILED_PRECONDITION, message
    if criu_works():
        assert "does not write or read checkpoint archives yet" in message, message
    else:
        assert "needs CRIU, which cannot run here: criu check failed" in message, message
    assert not Path(archive).exists()

    code, message = failure(
        d.runtime_call,
        "CheckpointPod",
        api_pb2.CheckpointPodRequest(pod_sandbox_id=pod.id, output_path=str(short_tmp / "p")),
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "CheckpointPod" in message, message
    code, message = failure(
        d.runtime_call,
        "RestorePod",
        api_pb2.RestorePodRequest(checkpoint_path=str(short_tmp / "missing.tar")),
    )
    assert code == grpc.StatusCode.NOT_FOUND, message
    (short_tmp / "some.tar").write_bytes(b"x")
    code, message = failure(
        d.runtime_call,
        "RestorePod",
        api_pb2.RestorePodRequest(checkpoint_path=str(short_tmp / "some.tar")),
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "RestorePod" in message, message
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING  # untouched
    remove(d, pod.id)
