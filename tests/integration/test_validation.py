"""Bad RunPodSandbox and CreateContainer requests on a real daemon (issue 11, item 2): absolute
and `..` log paths, a negative memory limit, an unsafe sysctl, a privileged container in a pod
that is not, metadata CNI cannot take. Each is INVALID_ARGUMENT naming the field, and changes
nothing: no row, no event, no file, nothing held in containerd or the network. A valid request
next to the refused ones still works."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_containers import BUSYBOX, Pod, exited, wait_for
from tests.integration.test_images import failure, pull
from tests.integration.test_sandboxes import assert_nothing_held, pod_config, run
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration


def counts(d: Daemon) -> dict[str, int]:
    """Rows in the store: pods, containers, events."""
    out = {}
    for view in ("pods", "containers", "events"):
        r = d.sql("--json", f"SELECT count(*) AS n FROM {view}")
        assert r.returncode == 0, r.stderr
        out[view] = json.loads(r.stdout)[0]["n"]
    return out


def create(pod: Pod, config: api_pb2.ContainerConfig) -> str:
    resp = pod.d.runtime_call(
        "CreateContainer",
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
        ),
    )
    return str(resp.container_id)


def container(
    pod: Pod, name: str, command: tuple[str, ...] = ("sh", "-c", "echo hello"), **fields: object
) -> api_pb2.ContainerConfig:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name),
        image=api_pb2.ImageSpec(image=pod.image),
        command=command,
        log_path=f"{name}.log",
    )
    for key, value in fields.items():
        setattr(config, key, value)
    return config


def invalid(fn: Callable[..., object], *args: object, field: str) -> str:
    code, message = failure(fn, *args)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert field in message, message
    return message


def test_refused_containers_change_nothing(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = image_daemon
    logs = short_tmp / "logs"
    pod = Pod(d, registry, logs)
    outside = short_tmp / "outside"
    outside.mkdir()
    before = counts(d)
    assert before["containers"] == 0

    # absolute, climbing out with '..', through a symbolic link the log directory holds
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "link").symlink_to(outside)
    for name, log_path in (
        ("abs", str(outside / "abs.log")),
        ("up", "../outside/up.log"),
        ("deep", "a/../../../x.log"),
        ("link", "link/l.log"),
    ):
        invalid(create, pod, container(pod, name, log_path=log_path), field="config.log_path")
    # a log directory that is not the pod's
    other = api_pb2.PodSandboxConfig()
    other.CopyFrom(pod.config)
    other.log_directory = str(outside)
    invalid(
        lambda: d.runtime_call(
            "CreateContainer",
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod.id,
                config=container(pod, "other"),
                sandbox_config=other,
            ),
        ),
        field="sandbox_config.log_directory",
    )

    # a negative memory limit: refused here, not an opaque StartError later
    negative = container(pod, "neg")
    negative.linux.resources.memory_limit_in_bytes = -1
    message = invalid(create, pod, negative, field="memory_limit_in_bytes")
    assert "-1 is negative" in message

    # privileged in a pod that is not
    privileged = container(pod, "priv")
    privileged.linux.security_context.privileged = True
    message = invalid(create, pod, privileged, field="security_context.privileged")
    assert pod.id in message

    # the host's PID namespace in a pod that does not have it
    host_pid = container(pod, "hostpid")
    host_pid.linux.security_context.namespace_options.pid = api_pb2.NODE
    invalid(create, pod, host_pid, field="namespace_options.pid")

    # what the fuzzer found failing inside runc or Python
    for name, fields, field in (
        ("cwd", {"working_dir": "relative"}, "config.working_dir"),
        ("nul", {"command": ("sh", "-c", "echo \0")}, "config.command[2]"),
    ):
        invalid(create, pod, container(pod, name, **fields), field=field)
    device = container(pod, "dev")
    device.devices.append(api_pb2.Device(host_path="/dev/nu\0ll", container_path="/dev/x"))
    invalid(create, pod, device, field="config.devices[0].host_path")
    groups = container(pod, "groups")
    groups.linux.security_context.supplemental_groups.append(-1)
    invalid(create, pod, groups, field="supplemental_groups[0]")
    armor = container(pod, "armor")
    armor.linux.security_context.apparmor_profile = "docker-default"
    invalid(create, pod, armor, field="config.linux.security_context.apparmor_profile")

    assert counts(d) == before
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in logs.iterdir()) == ["link"]
    assert not (short_tmp / "x.log").exists()

    # the valid neighbour works, and logs where it should
    cid = create(pod, container(pod, "ok"))
    pod.start(cid)
    wait_for("ok exits", partial(exited, pod, cid))
    wait_for("its log", lambda: "hello" in (logs / "ok.log").read_text())
    assert pod.status(cid).log_path == str(logs / "ok.log")


class PrivilegedPod(Pod):
    def __init__(self, d: Daemon, registry: Registry, logs: Path) -> None:
        self.d = d
        self.image = f"{registry.host}/{BUSYBOX}"
        pull(d, self.image)
        self.config = pod_config("priv", uid="u-priv")
        self.config.log_directory = str(logs)
        self.config.linux.security_context.privileged = True
        self.id = run(d, self.config)


def test_privileged_container_in_a_privileged_pod(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    pod = PrivilegedPod(image_daemon, registry, short_tmp / "logs")
    c = container(pod, "priv", command=("sh", "-c", "mkdir /t && mount -t tmpfs none /t"))
    c.linux.security_context.privileged = True
    cid = create(pod, c)
    pod.start(cid)
    wait_for("priv exits", partial(exited, pod, cid))
    assert pod.status(cid).exit_code == 0
    # the node's devices, as containerd's CRI gives a privileged container; none without
    node = sorted(p.name for p in Path("/dev").iterdir() if p.is_char_device())
    listing = {}
    for name, privileged in (("devs", True), ("plain", False)):
        c = container(pod, name, command=("sleep", "3600"))
        c.linux.security_context.privileged = privileged
        cid = create(pod, c)
        pod.start(cid)
        listing[name] = set(pod.exec(cid, ["ls", "/dev"]).stdout.decode().split())
    extra = {"kmsg", "loop-control", "fuse", "kvm"} & set(node)
    assert extra and extra <= listing["devs"], (node, listing["devs"])
    assert not extra & listing["plain"], listing["plain"]


def test_refused_sandboxes_change_nothing(
    image_daemon: Daemon, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = image_daemon
    before = counts(d)

    def refuse(config: api_pb2.PodSandboxConfig, field: str) -> str:
        return invalid(run, d, config, field=field)

    unsafe = pod_config("unsafe", uid="u-unsafe")
    unsafe.linux.sysctls["kernel.panic"] = "1"
    assert "kernel.panic" in refuse(unsafe, "config.linux.sysctls")
    host_net = pod_config("hostnet", uid="u-hostnet")
    host_net.linux.security_context.namespace_options.network = api_pb2.NODE
    host_net.linux.sysctls["net.ipv4.ip_forward"] = "1"
    refuse(host_net, "host's network namespace")
    for field, value in (("uid", "a=b"), ("uid", "a\0b"), ("name", "n" * 140_000)):
        bad = pod_config("meta", uid="u-meta")
        setattr(bad.metadata, field, value)
        message = refuse(bad, f"config.metadata.{field}")
        assert len(message) < 300
    refuse(pod_config("badhost", uid="u-badhost", hostname="a\nb"), "config.hostname")
    refuse(pod_config("logs", uid="u-logs", log_directory="relative"), "config.log_directory")
    groups = pod_config("groups", uid="u-groups")
    groups.linux.security_context.run_as_group.value = -5
    refuse(groups, "run_as_group")
    dns = pod_config("dns", uid="u-dns")
    dns.dns_config.searches.append("x\nnameserver 6.6.6.6")
    refuse(dns, "config.dns_config.searches[0]")

    assert counts(d) == before
    assert_nothing_held(d, cni_network, [])
    assert not (short_tmp / "relative").exists()

    # the same pod with a namespaced sysctl from each namespace runs
    ok = pod_config("ok", uid="u-ok")
    ok.linux.sysctls.update({"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "1"})
    assert run(d, ok)
