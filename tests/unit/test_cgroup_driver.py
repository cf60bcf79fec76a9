"""The systemd cgroup driver: what this host (no systemd as PID 1) can only check in the specs
and requests crictld produces; live runs use cgroupfs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crictl import errors
from crictl.api.runtime_info import RuntimeInfo
from crictl.config import Config
from crictl.containerd.client import ContainerdClient
from crictl.gen.containerd.runtime.v2.runc.options import oci_pb2 as runc_options
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.oci.spec import (
    SandboxFiles,
    SandboxRef,
    User,
    cgroups_path,
    container_spec,
    sandbox_spec,
)

POD = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice"
FILES = SandboxFiles(Path("/h/hostname"), Path("/h/hosts"), None, None)


def test_cgroups_path_per_driver() -> None:
    assert cgroups_path("/kubepods/burstable/pod1", "abc") == "/kubepods/burstable/pod1/abc"
    assert cgroups_path("", "abc") == "/crictld/abc"
    assert (
        cgroups_path("/" + POD, "abc", systemd=True)
        == "kubepods-burstable-pod1234.slice:crictld:abc"
    )
    assert (
        cgroups_path(POD + "/", "abc", systemd=True)
        == "kubepods-burstable-pod1234.slice:crictld:abc"
    )
    assert cgroups_path("", "abc", systemd=True) == "system.slice:crictld:abc"


def _pod() -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="p", namespace="n", uid="u")
    )
    config.linux.cgroup_parent = "/" + POD
    return config


def test_specs_use_the_slice_form_with_systemd() -> None:
    pod = _pod()
    pause = sandbox_spec("sid", pod, {}, None, FILES, 0, systemd_cgroup=True)
    assert pause["linux"]["cgroupsPath"] == "kubepods-burstable-pod1234.slice:crictld:sid"
    app = container_spec(
        "cid",
        api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="c")),
        SandboxRef("sid", pod, 42, None, FILES),
        {"config": {"Cmd": ["true"]}},
        User(0, 0, []),
        0,
        systemd_cgroup=True,
    )
    assert app["linux"]["cgroupsPath"] == "kubepods-burstable-pod1234.slice:crictld:cid"
    plain = sandbox_spec("sid", pod, {}, None, FILES, 0)
    assert plain["linux"]["cgroupsPath"] == f"/{POD}/sid"


def test_containers_ask_runc_for_its_systemd_cgroup_manager() -> None:
    async def runtimes() -> tuple[object, object]:
        systemd = ContainerdClient("/nonexistent.sock", "crictld", systemd_cgroup=True)
        plain = ContainerdClient("/nonexistent.sock", "crictld")
        try:
            return systemd.runtime, plain.runtime
        finally:
            await systemd.close()
            await plain.close()

    systemd, plain = asyncio.run(runtimes())
    assert systemd.name == plain.name == "io.containerd.runc.v2"  # type: ignore[attr-defined]
    assert systemd.options.type_url == "containerd.runc.v1.Options"  # type: ignore[attr-defined]
    options = runc_options.Options.FromString(systemd.options.value)  # type: ignore[attr-defined]
    assert options.systemd_cgroup
    assert not plain.HasField("options")  # type: ignore[attr-defined]


def test_config_and_runtime_config_report_the_driver() -> None:
    assert Config().cgroup_driver == "cgroupfs" and not Config().systemd_cgroup
    assert Config().with_overrides({"cgroup_driver": "systemd"}).systemd_cgroup
    with pytest.raises(errors.InvalidArgument, match="cgroup_driver 'systemdd'"):
        Config().with_overrides({"cgroup_driver": "systemdd"})

    async def driver(systemd: bool) -> int:
        info = RuntimeInfo(health=None, verbose_info={}, systemd_cgroup=systemd)  # type: ignore[arg-type]
        resp = await info.runtime_config(api_pb2.RuntimeConfigRequest(), None)  # type: ignore[arg-type]
        return int(resp.linux.cgroup_driver)

    assert asyncio.run(driver(True)) == api_pb2.SYSTEMD
    assert asyncio.run(driver(False)) == api_pb2.CGROUPFS
