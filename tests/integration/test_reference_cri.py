"""The reference runtime (containerd's own CRI plugin, tests/rig/reference.py) works with the
fixture images from the local registry: proof that the fixtures and the reference are sound, so
a later failure against crictld is crictld's."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.cni import CniNetwork, make_network
from tests.rig.images import DEFAULT_WORKDIR, build_images, push_images
from tests.rig.reference import ReferenceContainerd
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

BUSYBOX = "e2e-test-images/busybox:1.29-2"


@pytest.fixture(scope="module")
def registry_host() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (containerd, runc, netns, CNI)")
    with Registry() as reg:
        push_images(reg.host, build_images(DEFAULT_WORKDIR))
        yield reg.host


@pytest.fixture
def reference(registry_host: str, cni_network: CniNetwork) -> Iterator[ReferenceContainerd]:
    with ReferenceContainerd(cni_network, registry_host) as ref:
        yield ref


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_info_reports_runtime_and_network_ready(
    reference: ReferenceContainerd, crictl_path: Path
) -> None:
    info = json.loads(_ok(reference.crictl(crictl_path, "info")))
    conditions = {c["type"]: c["status"] for c in info["status"]["conditions"]}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}
    assert info["config"]["sandboxImage"] == reference.sandbox_image
    assert info["config"]["restrictOOMScoreAdj"] is True


def test_pull_list_inspect_remove_busybox(
    reference: ReferenceContainerd, crictl_path: Path, registry_host: str
) -> None:
    ref = f"{registry_host}/{BUSYBOX}"
    repo, _, tag = ref.rpartition(":")

    assert "Image is up to date for sha256:" in _ok(reference.crictl(crictl_path, "pull", ref))

    listed = json.loads(_ok(reference.crictl(crictl_path, "images", "-o", "json")))["images"]
    matching = [i for i in listed if ref in i["repoTags"]]
    assert len(matching) == 1, listed
    image_id = matching[0]["id"]
    assert image_id.startswith("sha256:")
    table = _ok(reference.crictl(crictl_path, "images"))
    assert any(line.split()[:2] == [repo, tag] for line in table.splitlines()), table

    inspected = json.loads(_ok(reference.crictl(crictl_path, "inspecti", ref)))
    assert inspected["status"]["id"] == image_id
    assert ref in inspected["status"]["repoTags"]
    assert inspected["info"]["imageSpec"]["config"]["Cmd"] == ["sh"]

    _ok(reference.crictl(crictl_path, "rmi", ref))
    listed = json.loads(_ok(reference.crictl(crictl_path, "images", "-o", "json")))["images"]
    assert not [i for i in listed if i["id"] == image_id], listed
    gone = reference.crictl(crictl_path, "inspecti", ref)
    assert gone.returncode != 0


def test_mirrored_upstream_pulls_from_local_registry_and_leaves_nothing(
    registry_host: str, short_tmp: Path, crictl_path: Path
) -> None:
    """`registry.k8s.io/...` resolves through hosts.toml to the local registry (critest without
    -registry-prefix); a pod runs with the local pause image; teardown leaves nothing behind."""
    net = make_network(short_tmp / "cni2")
    try:
        with ReferenceContainerd(net, registry_host, mirrors=["registry.k8s.io"]) as reference:
            _ok(reference.crictl(crictl_path, "pull", f"registry.k8s.io/{BUSYBOX}"))
            pod = short_tmp / "pod.json"
            pod.write_text(
                json.dumps(
                    {
                        "metadata": {"name": "ref-pod", "namespace": "default", "uid": "ref-uid"},
                        "log_directory": str(short_tmp / "logs"),
                        "linux": {},
                    }
                )
            )
            ctr = short_tmp / "ctr.json"
            ctr.write_text(
                json.dumps(
                    {
                        "metadata": {"name": "sleeper"},
                        "image": {"image": f"registry.k8s.io/{BUSYBOX}"},
                        "command": ["sleep", "600"],
                        "log_path": "sleeper.log",
                        "linux": {},
                    }
                )
            )
            _ok(reference.crictl(crictl_path, "run", str(ctr), str(pod)))
            pod_id = _ok(reference.crictl(crictl_path, "pods", "-q")).split()[0]
            status = json.loads(_ok(reference.crictl(crictl_path, "inspectp", pod_id)))
            assert status["status"]["network"]["ip"]
            directory = reference.directory
            assert directory is not None
        # The pod is still running at exit: teardown removes it and everything else.
        assert not directory.exists()
        assert not Path("/sys/class/net", net.bridge).exists()
        leftovers = subprocess.run(
            ["pgrep", "-f", str(directory)], capture_output=True, text=True, check=False
        )
        assert leftovers.stdout == ""
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(directory) not in mounts
    finally:
        net.remove()
