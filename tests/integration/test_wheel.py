"""The wheel is a working daemon: built from the repo, installed into a fresh venv, its
`crictld` (with the crictld-logger the wheel carries) runs a pod whose container logs reach
`crictl logs`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.integration.test_containers import Pod, wait_for
from tests.integration.test_sandboxes import remove
from tests.rig.cni import CniNetwork
from tests.rig.daemon import REPO, Daemon
from tests.rig.inventory import purge_namespace
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


def test_wheel_installs_a_daemon_that_logs(
    short_tmp: Path,
    crictl_path: Path,
    cni_network: CniNetwork,
    containerd_address: str,
    registry: Registry,
) -> None:
    dist = short_tmp / "dist"
    build_tmp = short_tmp / "build-tmp"
    build_tmp.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
        check=True,
        cwd=short_tmp,
        timeout=300,
        env={**os.environ, "TMPDIR": str(build_tmp)},
    )
    [wheel] = dist.glob("crictld-*.whl")
    # The build hook compiles the logger in a temporary dir and removes it with the build.
    assert not list(build_tmp.glob("crictld-logger-*"))
    names = zipfile.ZipFile(wheel).namelist()
    for data in (
        "crictl/_bin/crictld-logger",
        "crictl/oci/seccomp_default.json",
        "crictl/oci/apparmor_default.profile",
    ):
        assert data in names, data
    venv = short_tmp / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, timeout=600
    )
    assert not (venv / "bin" / "crictld-logger").exists()  # the one inside the package is used
    d = Daemon(
        state_dir=short_tmp / "state",
        socket=short_tmp / "crictld.sock",
        crictl_bin=crictl_path,
        cni_conf_dir=cni_network.conf_dir,
        cni_bin_dirs=cni_network.bin_dirs,
        containerd=containerd_address,
        namespace="crictld-wheel",
        extra_args=["--pause-image", f"{registry.host}/pause:3.10"],
        program=[str(venv / "bin" / "crictld")],
    )
    d.start()
    try:
        pod = Pod(d, registry, short_tmp / "logs")
        cid = pod.create("talker", ["sh", "-c", "echo from the wheel; sleep 3600"])
        pod.start(cid)
        wait_for("the line is logged", lambda: "from the wheel" in d.crictl("logs", cid).stdout)
        remove(d, pod.id)
    finally:
        d.stop()
        asyncio.run(purge_namespace(containerd_address, "crictld-wheel"))
