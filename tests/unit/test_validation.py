"""Request validation for RunPodSandbox and CreateContainer (issue 11, item 2): one test per
rule, calling the validators with protobuf messages; each refusal names its field."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from crictl.api.validation import (
    MAX_ARG,
    SAFE_SYSCTLS,
    container_log_path,
    normal_path,
    page_size_bytes,
    sysctl_namespace,
    validate_container_in_sandbox,
    validate_container_request,
    validate_container_resources,
    validate_resources,
    validate_sandbox_config,
)
from crictl.errors import InvalidArgument
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.reconciler import cgroups

SID = "a" * 64


def pod(**extra: object) -> api_pb2.PodSandboxConfig:
    """What kubelet sends for an ordinary pod."""
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name="web-5d8f7c9b4-x2x7k",
            namespace="default",
            uid="0f3c1c2e-9d1b-4f7a-8a53-6a2d5b1e4c11",
            attempt=0,
        ),
        hostname="web-5d8f7c9b4-x2x7k",
        log_directory="/var/log/pods/default_web_0f3c1c2e-9d1b-4f7a-8a53-6a2d5b1e4c11",
        dns_config=api_pb2.DNSConfig(
            servers=["10.96.0.10"],
            searches=["default.svc.cluster.local", "svc.cluster.local"],
            options=["ndots:5"],
        ),
        port_mappings=[api_pb2.PortMapping(container_port=8080, host_port=0)],
        labels={"io.kubernetes.pod.name": "web", "app": "web"},
        annotations={"kubernetes.io/config.source": "api"},
    )
    config.linux.cgroup_parent = "/kubepods/besteffort/pod0f3c1c2e"
    for key, value in extra.items():
        if key == "port_mappings":
            del config.port_mappings[:]
            config.port_mappings.extend(cast("list[api_pb2.PortMapping]", value))
        else:
            setattr(config, key, value)
    return config


def container(**extra: object) -> api_pb2.CreateContainerRequest:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="app", attempt=0),
        image=api_pb2.ImageSpec(image="registry.local/app:1"),
        command=["/bin/app"],
        args=["--port", "8080"],
        working_dir="/srv",
        envs=[api_pb2.KeyValue(key="MODE", value=b"prod")],
        log_path="app/0.log",
        labels={"io.kubernetes.container.name": "app"},
    )
    for key, value in extra.items():
        setattr(config, key, value)
    return api_pb2.CreateContainerRequest(pod_sandbox_id=SID, config=config, sandbox_config=pod())


def refused(match: str, call: Callable[[], object]) -> str:
    with pytest.raises(InvalidArgument, match=match) as e:
        call()
    return str(e.value)


def sandbox_refused(config: api_pb2.PodSandboxConfig, match: str) -> str:
    return refused(match, lambda: validate_sandbox_config(config, ""))


def request_refused(request: api_pb2.CreateContainerRequest, match: str) -> str:
    return refused(match, lambda: validate_container_request(request))


# -- what kubelet and critest send passes ------------------------------------------------------


def test_ordinary_requests_pass() -> None:
    validate_sandbox_config(pod(), "")
    validate_sandbox_config(pod(), "runc")
    request = container()
    validate_container_request(request)
    validate_container_in_sandbox(request, pod(), SID)


def test_critest_shapes_pass() -> None:
    """Upper-case names (critest's "PodSandbox-for-create-test-<uuid>"), no hostname, a sysctl
    from each namespace, a privileged pod with a privileged container, host PID on both."""
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name="NamespaceOption-PodSandbox-2b6a8f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            namespace="cri-test-namespace2b6a8f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            uid="cri-test-uid2b6a8f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            attempt=2,
        ),
    )
    config.linux.sysctls.update({"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100"})
    config.linux.security_context.privileged = True
    config.linux.security_context.namespace_options.pid = api_pb2.NODE
    validate_sandbox_config(config, "")
    request = container()
    request.config.metadata.name = "container-with-HostPID-test-2b6a8f3e"
    request.config.ClearField("log_path")
    request.config.linux.security_context.privileged = True
    request.config.linux.security_context.namespace_options.pid = api_pb2.NODE
    request.config.linux.resources.CopyFrom(
        api_pb2.LinuxContainerResources(
            cpu_period=100000,
            cpu_quota=20000,
            cpu_shares=1024,
            memory_limit_in_bytes=64 << 20,
            memory_swap_limit_in_bytes=64 << 20,
        )
    )
    validate_container_request(request)
    validate_container_in_sandbox(request, config, SID)


# -- RunPodSandbox -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["name", "namespace", "uid"])
def test_metadata_empty(field: str) -> None:
    config = pod()
    setattr(config.metadata, field, "")
    sandbox_refused(config, f"config.metadata.{field} is empty")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("uid", "a=b"),  # K8S_POD_UID=a=b breaks CNI_ARGS
        ("uid", "a;K8S_POD_NAME=other"),
        ("uid", "a\0b"),
        ("uid", "a b"),
        ("name", "web;x"),
        ("name", "web=x"),
        ("name", "web/x"),
        ("name", "wéb"),
        ("namespace", "de fault"),
        ("namespace", "ns\n"),
    ],
)
def test_metadata_that_cni_args_cannot_take(field: str, value: str) -> None:
    config = pod()
    setattr(config.metadata, field, value)
    sandbox_refused(config, f"config.metadata.{field}: .* may hold only")


def test_metadata_length_bounded() -> None:
    config = pod()
    config.metadata.name = "n" * 140_000
    message = sandbox_refused(config, "config.metadata.name: .* longer than 253")
    assert len(message) < 300  # the value does not come back whole
    config = pod()
    config.metadata.namespace = "n" * 64
    sandbox_refused(config, "config.metadata.namespace: .* longer than 63")
    config = pod()
    config.metadata.uid = "u" * 254
    sandbox_refused(config, "config.metadata.uid: .* longer than 253")


def test_runtime_handler() -> None:
    refused("runtime_handler 'kata'", lambda: validate_sandbox_config(pod(), "kata"))


@pytest.mark.parametrize(
    "hostname", ["a" * 65, "under_score", "-lead", "trail-", "a..b", "host\nname", "a b"]
)
def test_hostname(hostname: str) -> None:
    sandbox_refused(pod(hostname=hostname), "config.hostname")


def test_hostname_rfc1123_passes() -> None:
    for hostname in ("", "a", "Web-1", "0web", "a.b.c", "x" * 63, "a." * 31 + "bc"):
        validate_sandbox_config(pod(hostname=hostname), "")


@pytest.mark.parametrize("log_directory", ["var/log/pods/x", "/var/log/../../etc", "/a\0b"])
def test_sandbox_log_directory(log_directory: str) -> None:
    sandbox_refused(pod(log_directory=log_directory), "config.log_directory")


def test_dns_config_lines() -> None:
    config = pod()
    config.dns_config.servers.append("10.0.0.1\nnameserver 6.6.6.6")
    sandbox_refused(config, r"config.dns_config.servers\[1\]: .* not an IP address")
    config = pod()
    config.dns_config.searches.append("evil.com\noptions debug")
    sandbox_refused(config, r"config.dns_config.searches\[2\]")
    config = pod()
    config.dns_config.options.append("ndots:5 debug")
    sandbox_refused(config, r"config.dns_config.options\[1\]")
    config = pod()
    config.dns_config.searches.extend(f"s{i}.local" for i in range(40))
    sandbox_refused(config, "config.dns_config.searches: more than 32")


def test_port_mappings() -> None:
    sandbox_refused(
        pod(port_mappings=[api_pb2.PortMapping(container_port=0, host_port=80)]), "bad port"
    )
    sandbox_refused(
        pod(port_mappings=[api_pb2.PortMapping(container_port=80, host_port=70000)]), "bad port"
    )
    bad_ip = api_pb2.PortMapping(container_port=80, host_port=80, host_ip="1.2.3")
    sandbox_refused(pod(port_mappings=[bad_ip]), r"config.port_mappings\[0\].host_ip")
    protocol = cast("api_pb2.Protocol.ValueType", 9)
    bad_protocol = api_pb2.PortMapping(container_port=80, protocol=protocol)
    sandbox_refused(pod(port_mappings=[bad_protocol]), r"config.port_mappings\[0\].protocol")


def test_labels_and_annotations() -> None:
    config = pod()
    config.labels[""] = "x"
    sandbox_refused(config, "config.labels: has an empty key")
    config = pod()
    config.annotations["a\0b"] = "x"
    sandbox_refused(config, "config.annotations key")
    config = pod()
    config.annotations["big"] = "x" * (256 * 1024)
    sandbox_refused(config, "config.annotations: .* more than 262144")


def test_bandwidth_annotation_must_parse() -> None:
    config = pod()
    config.annotations["kubernetes.io/ingress-bandwidth"] = "lots"
    sandbox_refused(config, "ingress-bandwidth")


@pytest.mark.parametrize("parent", ["/kubepods/../../system.slice", "/kube\0pods", "/a\nb"])
def test_cgroup_parent(parent: str) -> None:
    config = pod()
    config.linux.cgroup_parent = parent
    sandbox_refused(config, "config.linux.cgroup_parent")


@pytest.mark.parametrize(
    "name",
    ["kernel.panic", "vm.overcommit_memory", "kernel.hostname", "kernel.domainname", "fs.file-max"],
)
def test_sysctl_not_namespaced(name: str) -> None:
    config = pod()
    config.linux.sysctls[name] = "1"
    message = sandbox_refused(config, rf"config.linux.sysctls\['{name}'\]: is not a namespaced")
    assert name in message


def test_sysctl_namespaces_as_kubelet_knows_them() -> None:
    ipc = ["kernel.shm_rmid_forced", "kernel.shmmax", "kernel.msgmax", "kernel.sem"]
    ipc += ["fs.mqueue.msg_max"]
    net = ["net.ipv4.ip_forward", "net.core.somaxconn", "net/ipv4/conf/eth0.100/rp_filter"]
    assert {sysctl_namespace(n) for n in ipc} == {"IPC"}
    assert {sysctl_namespace(n) for n in net} == {"network"}
    assert sysctl_namespace("kernel.shm") is None  # a pattern's stem, not a sysctl
    assert sysctl_namespace("kernel.shmfoo") is None
    assert sysctl_namespace("network.x") is None
    assert all(sysctl_namespace(n) is not None for n in SAFE_SYSCTLS)
    config = pod()
    config.linux.sysctls.update(dict.fromkeys(ipc + net[:2], "1"))
    validate_sandbox_config(config, "")


def test_sysctl_refused_with_the_hosts_namespace() -> None:
    config = pod()
    config.linux.security_context.namespace_options.network = api_pb2.NODE
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "0"
    sandbox_refused(config, "host's network namespace")
    config = pod()
    config.linux.security_context.namespace_options.ipc = api_pb2.NODE
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    sandbox_refused(config, "host's IPC namespace")
    config = pod()  # host IPC, a network sysctl: fine
    config.linux.security_context.namespace_options.ipc = api_pb2.NODE
    config.linux.sysctls["net.ipv4.tcp_syncookies"] = "1"
    validate_sandbox_config(config, "")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Net.ipv4.ip_forward", "1"),
        ("net..x", "1"),
        ("net.ipv4.ip_forward", "1\0"),
        ("net.ipv4.ip_forward", "1\n0"),
        ("n" * 254, ""),
    ],
)
def test_sysctl_names_and_values(name: str, value: str) -> None:
    config = pod()
    config.linux.sysctls[name] = value
    sandbox_refused(config, "config.linux.sysctls")


def test_sandbox_ids() -> None:
    for field in ("run_as_user", "run_as_group"):
        config = pod()
        getattr(config.linux.security_context, field).value = -1
        sandbox_refused(config, f"config.linux.security_context.{field}: -1 is not a uid/gid")
    config = pod()
    config.linux.security_context.run_as_user.value = 2**32 - 1
    sandbox_refused(config, "run_as_user")
    config = pod()
    config.linux.security_context.supplemental_groups.extend([5, -3])
    sandbox_refused(config, r"supplemental_groups\[1\]: -3")


def test_sandbox_namespace_modes() -> None:
    config = pod()
    config.linux.security_context.namespace_options.pid = api_pb2.TARGET
    sandbox_refused(config, "namespace_options.pid: TARGET")
    config = pod()
    config.linux.security_context.namespace_options.network = cast(
        "api_pb2.NamespaceMode.ValueType", 7
    )
    sandbox_refused(config, "namespace_options.network: 7 is not a namespace mode")


def test_user_namespaces_only_the_hosts() -> None:
    config = pod()
    userns = config.linux.security_context.namespace_options.userns_options
    userns.mode = api_pb2.POD
    userns.uids.append(api_pb2.IDMapping(host_id=1000, container_id=0, length=65536))
    sandbox_refused(config, "userns_options: POD with mappings")
    userns.mode = api_pb2.CONTAINER
    del userns.uids[:]
    sandbox_refused(config, "userns_options: CONTAINER")
    userns.mode = api_pb2.NODE
    validate_sandbox_config(config, "")


def test_sandbox_resources_validated() -> None:
    config = pod()
    config.linux.overhead.memory_limit_in_bytes = -5
    sandbox_refused(config, "config.linux.overhead.memory_limit_in_bytes: -5 is negative")
    config = pod()
    config.linux.resources.cpu_shares = -2
    sandbox_refused(config, "config.linux.resources.cpu_shares")


# -- resources ---------------------------------------------------------------------------------

R = "config.linux.resources"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("memory_limit_in_bytes", -1, "memory_limit_in_bytes: -1 is negative"),
        ("memory_swap_limit_in_bytes", -2, "memory_swap_limit_in_bytes: -2 is negative"),
        ("memory_swap_limit_in_bytes", 1 << 20, "memory_swap_limit_in_bytes: is set without"),
        ("cpu_shares", -1, r"cpu_shares: -1 is out of range \(2-262144\)"),
        ("cpu_shares", 1, "cpu_shares: 1 is out of range"),
        ("cpu_shares", 262145, "cpu_shares: 262145"),
        ("cpu_period", -100000, "cpu_period: -100000"),
        ("cpu_period", 999, "cpu_period: 999"),
        ("cpu_period", 1000001, "cpu_period: 1000001"),
        ("cpu_quota", -2, "cpu_quota: -2"),
        ("cpu_quota", 999, "cpu_quota: 999"),
        ("cpu_quota", 2**63 - 1, "cpu_quota"),
        ("oom_score_adj", -1001, "oom_score_adj: -1001"),
        ("oom_score_adj", 1001, "oom_score_adj: 1001"),
        ("cpuset_cpus", "0-", "cpuset_cpus"),
        ("cpuset_cpus", "3-1", "cpuset_cpus: .* bad range 3-1"),
        ("cpuset_cpus", "0,,1", "cpuset_cpus"),
        ("cpuset_cpus", "0-3 ", "cpuset_cpus"),
        ("cpuset_cpus", "99999999999999999999", "cpuset_cpus"),
        ("cpuset_mems", "a", "cpuset_mems"),
    ],
)
def test_resources_out_of_range(field: str, value: object, match: str) -> None:
    res = api_pb2.LinuxContainerResources()
    setattr(res, field, value)
    refused(f"{R}.{match}", lambda: validate_resources(res, R))
    request = container()
    setattr(request.config.linux.resources, field, value)
    request_refused(request, f"{R}.{field}")


def test_resources_in_range_pass() -> None:
    for res in (
        api_pb2.LinuxContainerResources(),
        api_pb2.LinuxContainerResources(cpu_quota=-1, memory_swap_limit_in_bytes=-1),
        api_pb2.LinuxContainerResources(
            cpu_shares=2,
            cpu_period=1000,
            cpu_quota=1000,
            memory_limit_in_bytes=1,
            memory_swap_limit_in_bytes=2,
            oom_score_adj=-998,
            cpuset_cpus="0-3,5,7-8",
            cpuset_mems="0",
            hugepage_limits=[
                api_pb2.HugepageLimit(page_size="2MB", limit=0),
                api_pb2.HugepageLimit(page_size="1GB", limit=1 << 30),
            ],
            unified={"memory.high": "max", "io.weight": "default 100", "hugetlb.2MB.max": "0"},
        ),
    ):
        validate_resources(res, R)


def test_swap_below_memory() -> None:
    res = api_pb2.LinuxContainerResources(
        memory_limit_in_bytes=64 << 20, memory_swap_limit_in_bytes=32 << 20
    )
    refused(
        "memory_swap_limit_in_bytes: .* below memory_limit_in_bytes",
        lambda: validate_resources(res, R),
    )


@pytest.mark.parametrize("size", ["2M", "3MB", "0MB", "2mb", "1.5GB", "", "2MiB"])
def test_hugepage_sizes(size: str) -> None:
    res = api_pb2.LinuxContainerResources(hugepage_limits=[api_pb2.HugepageLimit(page_size=size)])
    refused(r"hugepage_limits\[0\].page_size", lambda: validate_resources(res, R))


def test_hugepage_size_given_twice() -> None:
    res = api_pb2.LinuxContainerResources(
        hugepage_limits=[
            api_pb2.HugepageLimit(page_size="2048KB"),
            api_pb2.HugepageLimit(page_size="2MB"),
        ]
    )
    refused("given twice", lambda: validate_resources(res, R))
    assert page_size_bytes("2MB") == page_size_bytes("2048KB") == 2 << 20
    assert page_size_bytes("64KB") == 64 << 10


@pytest.mark.parametrize("key", ["../../cgroup.procs", "cgroup.procs", "memory", "a/b.max", ""])
def test_unified_keys(key: str) -> None:
    res = api_pb2.LinuxContainerResources(unified={key: "1"})
    refused(r"unified\[", lambda: validate_resources(res, R))


# -- CreateContainer, without the pod ----------------------------------------------------------


def test_container_metadata_image_and_sandbox_id() -> None:
    request = container()
    request.config.ClearField("metadata")
    request_refused(request, "config.metadata.name is empty")
    request = container()
    request.config.metadata.name = "app;x"
    request_refused(request, "config.metadata.name: .* may hold only")
    request = container()
    request.config.image.image = ""
    request_refused(request, "config.image.image is empty")
    request = container()
    request.pod_sandbox_id = ""
    request_refused(request, "pod_sandbox_id is empty")


def test_nul_in_command_args_and_env() -> None:
    request = container()
    request.config.command.append("a\0b")
    request_refused(request, r"config.command\[1\]: .* NUL")
    request = container()
    request.config.args.append("\0")
    request_refused(request, r"config.args\[2\]")
    request = container()
    request.config.envs.append(api_pb2.KeyValue(key="K", value=b"v\0"))
    request_refused(request, r"config.envs\[1\].value")
    request = container()
    request.config.envs.append(api_pb2.KeyValue(key="K\0", value=b"v"))
    request_refused(request, r"config.envs\[1\].key")


def test_env_keys() -> None:
    request = container()
    request.config.envs.append(api_pb2.KeyValue(key="", value=b"v"))
    request_refused(request, r"config.envs\[1\].key: is empty")
    request = container()
    request.config.envs.append(api_pb2.KeyValue(key="A=B", value=b"v"))
    request_refused(request, r"config.envs\[1\].key: .* holds '='")
    request = container()  # kubelet's relaxed names pass
    request.config.envs.append(api_pb2.KeyValue(key="my.var-1", value=b"x=y"))
    validate_container_request(request)


def test_argument_sizes() -> None:
    request = container()
    request.config.args.append("x" * (MAX_ARG + 1))
    request_refused(request, r"config.args\[2\]: 131072 bytes")
    request = container()
    request.config.args.extend(["x" * 100_000] * 25)
    request_refused(request, "config: command, args and envs take")


@pytest.mark.parametrize("cwd", ["srv", "./srv", "/s\0rv"])
def test_working_dir(cwd: str) -> None:
    request_refused(container(working_dir=cwd), "config.working_dir")


@pytest.mark.parametrize("log_path", ["/etc/passwd", "../../etc/cron.d/x", "a/../../b", "a\0b"])
def test_log_path_absolute_or_escaping(log_path: str) -> None:
    message = request_refused(container(log_path=log_path), "config.log_path")
    assert ("absolute" in message) == log_path.startswith("/")


@pytest.mark.parametrize("log_path", [".", "dir/", "./", "x/" + "n" * 256])
def test_log_path_not_a_file(log_path: str) -> None:
    request_refused(container(log_path=log_path), "config.log_path")


def test_mounts_absolute_and_normalised() -> None:
    request = container()
    request.config.mounts.append(api_pb2.Mount(container_path="data", host_path="/srv/data"))
    request_refused(request, r"config.mounts\[0\].container_path: 'data' is not an absolute")
    request = container()
    request.config.mounts.append(api_pb2.Mount(container_path="/data", host_path="srv/data"))
    request_refused(request, r"config.mounts\[0\].host_path")
    request = container()
    request.config.mounts.append(api_pb2.Mount(container_path="/data", host_path=""))
    request_refused(request, r"config.mounts\[0\].host_path: is empty")
    request = container()
    request.config.mounts.append(api_pb2.Mount(container_path="/d\0", host_path="/srv"))
    request_refused(request, r"config.mounts\[0\].container_path")
    request = container()
    request.config.mounts.extend(
        [
            api_pb2.Mount(container_path="/etc/hosts/", host_path="//srv/./x/../hosts"),
            api_pb2.Mount(container_path="/data//a/../b", host_path="/srv/data/"),
        ]
    )
    validate_container_request(request)
    assert [(m.container_path, m.host_path) for m in request.config.mounts] == [
        ("/etc/hosts", "/srv/hosts"),
        ("/data/b", "/srv/data"),
    ]
    assert normal_path("/") == "/" and normal_path("//x//") == "/x"


def test_mount_propagation_and_rro() -> None:
    request = container()
    mode = cast("api_pb2.MountPropagation.ValueType", 5)
    request.config.mounts.append(
        api_pb2.Mount(container_path="/d", host_path="/s", propagation=mode)
    )
    request_refused(request, r"config.mounts\[0\].propagation")
    request = container()
    request.config.mounts.append(
        api_pb2.Mount(container_path="/d", host_path="/s", recursive_read_only=True)
    )
    request_refused(request, "recursive_read_only: needs readonly")


def test_image_volumes() -> None:
    def volume(host_path: str = "", propagation: int = 0) -> api_pb2.CreateContainerRequest:
        request = container()
        mount = api_pb2.Mount(
            container_path="/d",
            image=api_pb2.ImageSpec(image="registry.local/data:1"),
            readonly=True,
            host_path=host_path,
        )
        mount.propagation = propagation  # type: ignore[assignment]
        request.config.mounts.append(mount)
        return request

    validate_container_request(volume())  # no host path: none is needed
    request_refused(volume(host_path="/s"), r"config.mounts\[0\].host_path: an image volume")
    request_refused(
        volume(propagation=api_pb2.PROPAGATION_BIDIRECTIONAL),
        r"config.mounts\[0\].propagation: an image volume",
    )


def test_devices() -> None:
    def device(**kw: str) -> api_pb2.CreateContainerRequest:
        request = container()
        request.config.devices.append(api_pb2.Device(**kw))
        return request

    validate_container_request(
        device(host_path="/dev/null", container_path="/dev/x", permissions="rw")
    )
    validate_container_request(device(host_path="/dev/null"))
    request_refused(device(host_path="/dev/nu\0ll"), r"config.devices\[0\].host_path: .* NUL")
    request_refused(device(host_path="dev/null"), r"config.devices\[0\].host_path")
    request_refused(
        device(host_path="/dev/null", container_path="dev/x"), r"config.devices\[0\].container_path"
    )
    request_refused(
        device(host_path="/dev/null", permissions="rwx"), r"config.devices\[0\].permissions"
    )
    request_refused(device(host_path="/nonexistent-device"), "No such file")
    request_refused(device(host_path="/etc/hostname"), "is not a device node")


def test_container_ids() -> None:
    request = container()
    sc = request.config.linux.security_context
    sc.run_as_group.value = 5
    request_refused(request, "run_as_group needs run_as_user or run_as_username")
    sc.run_as_user.value = -1
    request_refused(request, "run_as_user: -1 is not a uid/gid")
    sc.run_as_user.value = 1000
    sc.run_as_group.value = 2**32
    request_refused(request, f"run_as_group: {2**32}")
    sc.run_as_group.value = 1000
    sc.supplemental_groups.extend([1, -1])
    request_refused(request, r"supplemental_groups\[1\]: -1")


def test_capabilities() -> None:
    request = container()
    request.config.linux.security_context.capabilities.add_capabilities.extend(
        ["NET_ADMIN", "cap_sys_time", "ALL"]
    )
    request.config.linux.security_context.capabilities.drop_capabilities.append("all")
    validate_container_request(request)
    request.config.linux.security_context.capabilities.add_capabilities.append("CAP_GODMODE")
    request_refused(request, r"capabilities.add_capabilities\[3\]: 'CAP_GODMODE' is unknown")


def test_masked_and_readonly_paths() -> None:
    request = container()
    request.config.linux.security_context.masked_paths.append("proc/kcore")
    request_refused(request, r"masked_paths\[0\]")
    request = container()
    request.config.linux.security_context.readonly_paths.append("/proc/\0")
    request_refused(request, r"readonly_paths\[0\]")


def test_pid_target_needs_a_target() -> None:
    request = container()
    request.config.linux.security_context.namespace_options.pid = api_pb2.TARGET
    request_refused(request, "target_id: is empty with pid TARGET")
    request.config.linux.security_context.namespace_options.target_id = "b" * 64
    validate_container_request(request)


# -- CreateContainer, with the pod -------------------------------------------------------------


def in_sandbox_refused(
    request: api_pb2.CreateContainerRequest, the_pod: api_pb2.PodSandboxConfig, match: str
) -> str:
    return refused(match, lambda: validate_container_in_sandbox(request, the_pod, SID))


def test_privileged_container_needs_a_privileged_pod() -> None:
    request = container()
    request.config.linux.security_context.privileged = True
    message = in_sandbox_refused(request, pod(), "config.linux.security_context.privileged")
    assert SID in message
    privileged = pod()
    privileged.linux.security_context.privileged = True
    validate_container_in_sandbox(request, privileged, SID)


@pytest.mark.parametrize("ns", ["network", "pid", "ipc"])
def test_host_namespaces_only_as_the_pod_has_them(ns: str) -> None:
    request = container()
    setattr(request.config.linux.security_context.namespace_options, ns, api_pb2.NODE)
    in_sandbox_refused(request, pod(), f"namespace_options.{ns}: NODE, but pod sandbox")
    host = pod()
    setattr(host.linux.security_context.namespace_options, ns, api_pb2.NODE)
    validate_container_in_sandbox(request, host, SID)
    # less than the pod has is fine: POD in a host-network pod gets the pod's (the host's)
    validate_container_in_sandbox(container(), host, SID)


def test_log_directory_must_be_the_pods() -> None:
    request = container()
    request.sandbox_config.log_directory = "/etc"
    message = in_sandbox_refused(request, pod(), "sandbox_config.log_directory: '/etc' is not")
    assert SID in message
    request.sandbox_config.log_directory = "relative"
    in_sandbox_refused(request, pod(log_directory="relative"), "not an absolute path")
    request = container()  # a trailing slash is the same directory
    request.sandbox_config.log_directory += "/"
    validate_container_in_sandbox(request, pod(), SID)
    request = container()  # no log path: the directory is not used
    request.config.log_path = ""
    request.sandbox_config.log_directory = "/elsewhere"
    validate_container_in_sandbox(request, pod(), SID)


def test_log_path_through_a_symlink(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "app").mkdir(parents=True)
    config = container(log_path="app/0.log").config
    assert container_log_path(config, str(logs)) == str(logs / "app" / "0.log")
    (logs / "app" / "0.log").symlink_to("/etc/passwd")
    refused(
        "config.log_path: .*0.log' is a symbolic link",
        lambda: container_log_path(config, str(logs)),
    )
    os.unlink(logs / "app" / "0.log")
    (logs / "link").symlink_to("/etc")
    config = container(log_path="link/cron.d/x.log").config
    refused("link' is a symbolic link", lambda: container_log_path(config, str(logs)))
    # the log directory itself may be a link (/var/log on another disk)
    (tmp_path / "alias").symlink_to(logs)
    config = container(log_path="app/1.log").config
    assert container_log_path(config, str(tmp_path / "alias")) == str(tmp_path / "alias/app/1.log")
    assert container_log_path(container(log_path="").config, str(logs)) is None
    assert container_log_path(config, "") is None


def test_a_label_selector_is_bounded() -> None:
    from crictl.api.validation import MAX_SELECTOR, label_selector

    ok = {f"k{i}": "v" for i in range(MAX_SELECTOR)}
    assert label_selector(ok, "filter.label_selector") == ok
    with pytest.raises(InvalidArgument, match=r"filter\.label_selector: 1000 labels"):
        label_selector({f"k{i}": "v" for i in range(1000)}, "filter.label_selector")


def test_cgroup_v2_files_for_a_container_are_refused_on_cgroup_v1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    res = api_pb2.LinuxContainerResources(unified={"memory.swap.max": "0"})
    monkeypatch.setattr(cgroups, "unified", lambda: False)
    refused(
        r"linux\.unified\['memory\.swap\.max'\]: sets cgroup v2 files; this node runs cgroup v1",
        lambda: validate_container_resources(res, "linux"),
    )
    validate_resources(res, "linux")  # a pod's resources are recorded, not applied
    monkeypatch.setattr(cgroups, "unified", lambda: True)
    validate_container_resources(res, "linux")
