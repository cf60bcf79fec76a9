"""What the pause container is given, against what an app container of the pod is given."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.oci.seccomp import runtime_default
from crictl.oci.spec import (
    DEFAULT_CAPS,
    SandboxFiles,
    SandboxRef,
    User,
    _all_caps,
    container_capabilities,
    container_spec,
    host_devices,
    linux_resources,
    sandbox_spec,
    with_updated_resources,
)

FILES = SandboxFiles(Path("/p/hostname"), Path("/p/hosts"), Path("/p/resolv.conf"), Path("/p/shm"))


def _pod(readonly_rootfs: bool = False) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="p", namespace="n", uid="u"), hostname="p"
    )
    config.linux.security_context.readonly_rootfs = readonly_rootfs
    return config


def _app_spec(
    config: api_pb2.ContainerConfig,
    pod: api_pb2.PodSandboxConfig | None = None,
    files: SandboxFiles = FILES,
    **options: Any,
) -> dict[str, Any]:
    """An app container's spec in the pod (`_pod()` by default), image `Cmd ["true"]`, root."""
    return container_spec(
        "cid",
        config,
        SandboxRef("sid", pod or _pod(), 42, "/run/netns/x", files),
        {"config": {"Cmd": ["true"]}},
        User(0, 0, []),
        0,
        **options,
    )


def _destinations(spec: dict[str, object]) -> dict[str, dict[str, object]]:
    mounts = spec["mounts"]
    assert isinstance(mounts, list)
    return {m["destination"]: m for m in mounts}


def test_the_pause_gets_only_the_mounts_it_or_a_vm_runtime_reads() -> None:
    for readonly in (False, True):
        pause = sandbox_spec("sid", _pod(readonly), {}, "/run/netns/x", FILES, 0)
        mounts = _destinations(pause)
        assert "/sys/fs/cgroup" not in mounts
        assert "/etc/hostname" not in mounts and "/etc/hosts" not in mounts
        assert mounts["/etc/resolv.conf"]["source"] == "/p/resolv.conf"
        assert mounts["/dev/shm"]["source"] == "/p/shm"
        assert {"/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys"} <= set(mounts)
        assert pause["root"]["readonly"] is True
        assert pause["hostname"] == "p"


def test_app_containers_keep_the_pod_files_and_the_cgroup_filesystem() -> None:
    app = container_spec(
        "cid",
        api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="c")),
        SandboxRef("sid", _pod(), 42, "/run/netns/x", FILES),
        {"config": {"Cmd": ["true"]}},
        User(0, 0, []),
        0,
    )
    mounts = _destinations(app)
    assert mounts["/etc/hostname"]["source"] == "/p/hostname"
    assert mounts["/etc/hosts"]["source"] == "/p/hosts"
    assert mounts["/sys/fs/cgroup"]["type"] == "cgroup"
    assert app["root"]["readonly"] is False


def _app_mounts(files: SandboxFiles, readonly_rootfs: bool) -> dict[str, dict[str, object]]:
    config = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="c"))
    config.linux.security_context.readonly_rootfs = readonly_rootfs
    return _destinations(_app_spec(config, files=files))


def test_the_pod_files_are_writable_unless_the_root_is_read_only() -> None:
    """As containerd's CRI mounts them: the pod's own files, shared by its containers."""
    files = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
    writable = _app_mounts(FILES, readonly_rootfs=False)
    assert {f: writable[f]["options"] for f in files} == {f: ["rbind", "rw"] for f in files}
    readonly = _app_mounts(FILES, readonly_rootfs=True)
    assert {f: readonly[f]["options"] for f in files} == {f: ["rbind", "ro"] for f in files}
    assert writable["/dev/shm"]["options"] == readonly["/dev/shm"]["options"] == ["rbind", "rw"]
    pause = _destinations(sandbox_spec("sid", _pod(), {}, "/run/netns/x", FILES, 0))
    assert pause["/etc/resolv.conf"]["options"] == ["rbind", "ro"]


def test_the_nodes_resolv_conf_is_never_writable() -> None:
    """A pod an older crictld made without a DNS config has no resolv.conf of its own."""
    old_pod = SandboxFiles(Path("/p/hostname"), Path("/p/hosts"), None, Path("/p/shm"))
    mounts = _app_mounts(old_pod, readonly_rootfs=False)
    assert mounts["/etc/resolv.conf"]["source"] == "/etc/resolv.conf"
    assert mounts["/etc/resolv.conf"]["options"] == ["rbind", "ro"]
    assert mounts["/etc/hosts"]["options"] == ["rbind", "rw"]


def _env(pod: api_pb2.PodSandboxConfig, image_env: list[str], **envs: str) -> list[str]:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="c"),
        envs=[api_pb2.KeyValue(key=k, value=v.encode()) for k, v in envs.items()],
    )
    app = container_spec(
        "cid",
        config,
        SandboxRef("sid", pod, 42, "/run/netns/x", FILES),
        {"config": {"Cmd": ["true"], "Env": image_env}},
        User(0, 0, []),
        0,
    )
    env = app["process"]["env"]
    assert isinstance(env, list)
    return env


def test_containers_get_the_pods_hostname_as_hostname_unless_overridden() -> None:
    pod = _pod()
    assert _env(pod, ["PATH=/bin"]) == ["HOSTNAME=p", "PATH=/bin"]
    assert _env(pod, ["HOSTNAME=img"]) == ["HOSTNAME=img"]
    assert _env(pod, ["HOSTNAME=img"], HOSTNAME="cfg", A="1") == ["HOSTNAME=cfg", "A=1"]
    host = _pod()
    host.linux.security_context.namespace_options.network = api_pb2.NODE
    assert _env(host, []) == [f"HOSTNAME={os.uname().nodename}"]
    unnamed = _pod()
    unnamed.hostname = ""
    assert _env(unnamed, []) == [f"HOSTNAME={os.uname().nodename}"]


def test_app_containers_name_their_pod_in_annotations_as_containerd_does() -> None:
    app = container_spec(
        "cid",
        api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="c"), image=api_pb2.ImageSpec(image="img")
        ),
        SandboxRef("sid", _pod(), 42, "/run/netns/x", FILES),
        {"config": {"Cmd": ["true"]}},
        User(0, 0, []),
        0,
    )
    assert app["annotations"] == {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": "c",
        "io.kubernetes.cri.sandbox-id": "sid",
        "io.kubernetes.cri.sandbox-name": "p",
        "io.kubernetes.cri.sandbox-namespace": "n",
        "io.kubernetes.cri.sandbox-uid": "u",
        "io.kubernetes.cri.image-name": "img",
    }
    by_id = _app_spec(
        api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="c"),
            image=api_pb2.ImageSpec(image="sha256:" + "a" * 64),  # as kubelet asks
        ),
        image_name="registry.example/img:1",
    )
    assert by_id["annotations"]["io.kubernetes.cri.image-name"] == "registry.example/img:1"


def test_a_memory_limit_holds_swap_to_it_where_the_kernel_accounts_swap() -> None:
    """As containerd's CRI: swap (memory and swap together) as given, else equal to the
    memory limit where swap is accounted per cgroup, so the container cannot swap past it."""
    limited = api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 << 20)
    assert linux_resources(limited, swap_controller=True)["memory"] == {
        "limit": 64 << 20,
        "swap": 64 << 20,
    }
    assert linux_resources(limited, swap_controller=False)["memory"] == {"limit": 64 << 20}
    given = api_pb2.LinuxContainerResources(
        memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=96 << 20
    )
    assert linux_resources(given, swap_controller=True)["memory"]["swap"] == 96 << 20
    unlimited = api_pb2.LinuxContainerResources(
        memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=-1
    )
    assert linux_resources(unlimited, swap_controller=True)["memory"]["swap"] == -1
    assert "memory" not in linux_resources(api_pb2.LinuxContainerResources(), True)


def test_an_update_replaces_the_values_it_gives_and_keeps_the_rest() -> None:
    """UpdateContainerResources on the spec, as runc on the cgroups: what the update gives
    replaces, what it leaves out (the device rules, a quota not given) stays; the spec it was
    made from is not changed."""
    created: dict[str, Any] = {
        "process": {"args": ["sleep"]},
        "linux": {
            "namespaces": [{"type": "pid"}],
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "cpu": {"shares": 2, "quota": 50000, "period": 100000},
                "memory": {"limit": 64 << 20, "swap": 64 << 20},
            },
        },
    }
    update = linux_resources(
        api_pb2.LinuxContainerResources(memory_limit_in_bytes=96 << 20, cpu_shares=512), True
    )
    updated = with_updated_resources(created, update)
    assert updated["linux"]["resources"] == {
        "devices": [{"allow": False, "access": "rwm"}],
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
        "memory": {"limit": 96 << 20, "swap": 96 << 20},
    }
    assert updated["process"] == created["process"]
    assert updated["linux"]["namespaces"] == [{"type": "pid"}]
    assert created["linux"]["resources"]["memory"] == {"limit": 64 << 20, "swap": 64 << 20}
    assert with_updated_resources({}, update)["linux"]["resources"] == update


def test_cgroup_v2_files_go_to_the_spec_and_hugepages_do_not() -> None:
    res = api_pb2.LinuxContainerResources(
        unified={"memory.swap.max": "0", "memory.high": "max"},
        hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=1 << 21)],
    )
    out = linux_resources(res)
    assert out["unified"] == {"memory.swap.max": "0", "memory.high": "max"}
    assert "hugepageLimits" not in out
    app = _app_spec(
        api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="c"),
            linux=api_pb2.LinuxContainerConfig(
                resources=api_pb2.LinuxContainerResources(memory_limit_in_bytes=1 << 26)
            ),
        ),
        swap_controller=True,
    )
    assert app["linux"]["resources"]["memory"] == {"limit": 1 << 26, "swap": 1 << 26}


def test_the_pause_runs_under_the_profile_kubelet_asks_for_the_sandbox() -> None:
    """kubelet asks RuntimeDefault for every sandbox (kubernetes#84623)."""
    pod = _pod()
    pod.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.RuntimeDefault
    seccomp = sandbox_spec("sid", pod, {}, "/run/netns/x", FILES, 0)["linux"]["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    assert any("nanosleep" in rule["names"] for rule in seccomp["syscalls"])
    # the node's own architecture alone for the pause; an app container keeps the compat ones
    native = runtime_default(set())["architectures"]
    assert seccomp["architectures"] == native[:1]
    config = api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="c"))
    config.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.RuntimeDefault
    app = _app_spec(config, pod)
    assert app["linux"]["seccomp"]["architectures"] == native
    pod.linux.security_context.privileged = True
    assert "seccomp" not in sandbox_spec("sid", pod, {}, "/run/netns/x", FILES, 0)["linux"]
    unconfined = _pod()
    unconfined.linux.security_context.seccomp.profile_type = api_pb2.SecurityProfile.Unconfined
    assert "seccomp" not in sandbox_spec("sid", unconfined, {}, "/run/netns/x", FILES, 0)["linux"]
    assert "seccomp" not in sandbox_spec("sid", _pod(), {}, "/run/netns/x", FILES, 0)["linux"]


def test_the_pods_initial_resources_are_annotated_as_containerd_does() -> None:
    pod = _pod()
    assert (
        "io.kubernetes.cri.sandbox-memory"
        not in sandbox_spec("sid", pod, {}, "/run/netns/x", FILES, 0)["annotations"]
    )
    pod.linux.resources.CopyFrom(
        api_pb2.LinuxContainerResources(
            cpu_period=100_000, cpu_quota=50_000, cpu_shares=102, memory_limit_in_bytes=1 << 26
        )
    )
    annotations = sandbox_spec("sid", pod, {}, "/run/netns/x", FILES, 0)["annotations"]
    assert {k: v for k, v in annotations.items() if "sandbox-cpu" in k or "memory" in k} == {
        "io.kubernetes.cri.sandbox-cpu-period": "100000",
        "io.kubernetes.cri.sandbox-cpu-quota": "50000",
        "io.kubernetes.cri.sandbox-cpu-shares": "102",
        "io.kubernetes.cri.sandbox-memory": str(1 << 26),
    }


def _caps(add: list[str], drop: list[str], privileged: bool = False) -> set[str]:
    sc = api_pb2.LinuxContainerSecurityContext(privileged=privileged)
    sc.capabilities.add_capabilities.extend(add)
    sc.capabilities.drop_capabilities.extend(drop)
    return container_capabilities(sc)


def test_capabilities_are_added_and_dropped_in_containerds_order() -> None:
    """ALL added, ALL dropped, then each named one added, then each named one dropped."""
    assert _caps(["NET_BIND_SERVICE"], ["ALL"]) == {"CAP_NET_BIND_SERVICE"}  # PSS restricted
    assert _caps(["net_bind_service"], ["all"]) == {"CAP_NET_BIND_SERVICE"}
    assert _caps([], ["ALL"]) == set()
    assert _caps(["ALL"], ["CHOWN"]) == set(_all_caps()) - {"CAP_CHOWN"}
    assert _caps(["ALL"], ["ALL"]) == set()
    assert _caps(["SYS_ADMIN"], ["SYS_ADMIN"]) == set(DEFAULT_CAPS)  # the drop wins
    assert _caps(["SYS_ADMIN"], ["CHOWN"]) == set(DEFAULT_CAPS) - {"CAP_CHOWN"} | {"CAP_SYS_ADMIN"}
    assert _caps([], ["ALL"], privileged=True) == set(_all_caps())


def test_host_devices_walk_dev_as_containerd_does(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "sub" / "fifo")
    for skipped in ("pts", "shm", "mqueue"):
        (tmp_path / skipped).mkdir()
        os.mkfifo(tmp_path / skipped / "x")
    os.mkfifo(tmp_path / "console")
    (tmp_path / "regular").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "sub" / "fifo")
    found = host_devices(str(tmp_path))
    assert [(d["path"], d["type"]) for d in found] == [(str(tmp_path / "sub" / "fifo"), "p")]
    null = next(d for d in host_devices() if d["path"] == "/dev/null")
    assert (null["type"], null["major"], null["minor"]) == ("c", 1, 3)


def test_a_privileged_container_gets_the_nodes_devices() -> None:
    pod = _pod()
    pod.linux.security_context.privileged = True

    def devices(privileged: bool) -> list[str]:
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="c"),
            devices=[api_pb2.Device(container_path="/dev/null", host_path="/dev/zero")],
        )
        config.linux.security_context.privileged = privileged
        listed = _app_spec(config, pod)["linux"].get("devices", [])
        # the request's /dev/null (the node's /dev/zero) keeps its place
        assert next(d for d in listed if d["path"] == "/dev/null")["minor"] == 5
        return [d["path"] for d in listed]

    assert devices(False) == ["/dev/null"]
    privileged = devices(True)
    assert privileged.count("/dev/null") == 1
    assert set(privileged) == {d["path"] for d in host_devices()}
