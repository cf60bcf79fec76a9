"""Container features kubelet 1.3x sends: a TARGET PID namespace (kubectl debug --target),
mounts applied parents first, recursive read-only mounts (advertised in Status), propagation
that needs a shared or slave source mount."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
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


def create(pod: Pod, config: api_pb2.ContainerConfig) -> str:
    resp = pod.d.runtime_call(
        "CreateContainer",
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
        ),
    )
    return str(resp.container_id)


def container(pod: Pod, name: str, *mounts: api_pb2.Mount) -> api_pb2.ContainerConfig:
    """A container with a PID namespace of its own, as kubelet makes them by default."""
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name),
        image=api_pb2.ImageSpec(image=pod.image),
        command=["sleep", "3600"],
        mounts=list(mounts),
    )
    config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
    return config


@pytest.fixture
def tmpfs(short_tmp: Path) -> Iterator[Path]:
    """A private tmpfs mount point of the test's own."""
    point = short_tmp / "tmpfs"
    point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "crictld-test", str(point)], check=True
    )
    subprocess.run(["mount", "--make-private", str(point)], check=True)
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_debug_container_sees_its_target_processes(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    pod = Pod(image_daemon, registry, short_tmp / "logs")
    target = create(pod, container(pod, "app"))
    pod.start(target)
    debug = container(pod, "debugger")
    debug.command[:] = ["sleep", "3601"]
    debug.linux.security_context.namespace_options.pid = api_pb2.TARGET
    debug.linux.security_context.namespace_options.target_id = target
    cid = create(pod, debug)
    pod.start(cid)
    ps = pod.exec(cid, ["ps", "-o", "args"]).stdout.decode()
    assert "sleep 3600" in ps and "sleep 3601" in ps, ps
    lone = container(pod, "alone")
    lone.command[:] = ["sleep", "3602"]
    alone = create(pod, lone)
    pod.start(alone)
    ps = pod.exec(alone, ["ps", "-o", "args"]).stdout.decode()
    assert "sleep 3602" in ps and "sleep 3600" not in ps and "sleep 3601" not in ps, ps
    remove(image_daemon, pod.id)


def test_mounts_parents_first_and_recursive_read_only(
    image_daemon: Daemon, registry: Registry, short_tmp: Path, tmpfs: Path
) -> None:
    d = image_daemon
    handlers = {h.name: h.features for h in d.status().runtime_handlers}
    assert handlers["runc"].recursive_read_only_mounts and handlers[""].recursive_read_only_mounts
    pod = Pod(d, registry, short_tmp / "logs")
    outer, inner = short_tmp / "outer", short_tmp / "inner"
    outer.mkdir()
    inner.mkdir()
    (inner / "f").write_text("inner")
    # tree/sub is a mount of its own inside the tree mounted read-only
    tree = tmpfs
    (tree / "sub").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "sub", str(tree / "sub")], check=True)
    try:
        config = container(
            pod,
            "mounts",
            # the child first: applied as sent, the parent would hide it
            api_pb2.Mount(container_path="/data/sub", host_path=str(inner)),
            api_pb2.Mount(container_path="/data", host_path=str(outer)),
            api_pb2.Mount(container_path="/ro", host_path=str(tree), readonly=True),
            api_pb2.Mount(
                container_path="/rro", host_path=str(tree), readonly=True, recursive_read_only=True
            ),
        )
        cid = create(pod, config)
        pod.start(cid)
        assert pod.exec(cid, ["cat", "/data/sub/f"]).stdout == b"inner"
        plain = pod.exec(cid, ["sh", "-c", "echo x > /ro/sub/w && echo ok"])
        assert plain.stdout == b"ok\n", plain  # read-only is not recursive: the submount writes
        deep = pod.exec(cid, ["sh", "-c", "echo x > /rro/sub/w2"])
        assert deep.exit_code != 0 and b"Read-only file system" in deep.stderr, deep
        top = pod.exec(cid, ["sh", "-c", "echo x > /rro/top"])
        assert top.exit_code != 0 and b"Read-only file system" in top.stderr, top
    finally:
        remove(d, pod.id)
        subprocess.run(["umount", "-l", str(tree / "sub")], check=False)


def test_propagation_needs_a_shared_or_slave_source(
    image_daemon: Daemon, registry: Registry, short_tmp: Path, tmpfs: Path
) -> None:
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    (tmpfs / "src").mkdir()
    for name, mode in (
        ("bidi", api_pb2.PROPAGATION_BIDIRECTIONAL),
        ("slave", api_pb2.PROPAGATION_HOST_TO_CONTAINER),
    ):
        mount = api_pb2.Mount(container_path="/m", host_path=str(tmpfs / "src"), propagation=mode)
        code, message = failure(create, pod, container(pod, name, mount))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, message
        assert f"is on mount {tmpfs}" in message and "config.mounts[0]" in message, message
    assert not d.runtime_call("ListContainers", api_pb2.ListContainersRequest()).containers
    subprocess.run(["mount", "--make-shared", str(tmpfs)], check=True)
    mount = api_pb2.Mount(
        container_path="/m",
        host_path=str(tmpfs / "src"),
        propagation=api_pb2.PROPAGATION_BIDIRECTIONAL,
    )
    cid = create(pod, container(pod, "shared", mount))
    pod.start(cid)
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING
    remove(d, pod.id)
    subprocess.run(["mount", "--make-private", str(tmpfs)], check=True)


def test_etc_hosts_names_the_pods_ip_and_hostname(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """The pod's hosts file is written before CNI ADD answers and again with the IP it
    answered, while the pause task is made: a container sees the second."""
    pod = Pod(image_daemon, registry, short_tmp / "logs")
    status = image_daemon.runtime_call(
        "PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod.id)
    ).status
    ip = status.network.ip
    assert ip
    cid = create(pod, container(pod, "app"))
    pod.start(cid)
    hosts = pod.exec(cid, ["cat", "/etc/hosts"]).stdout.decode()
    names = {line.split()[0]: line.split()[1:] for line in hosts.splitlines() if line.split()}
    assert pod.config.hostname in names.get(ip, []), hosts
    remove(image_daemon, pod.id)


def test_the_pod_files_are_the_pods_own_and_writable(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """As containerd's CRI gives them: a pod without a DNS config gets a copy of the node's
    resolv.conf, which its containers may write (and see each other's writes) while the
    node's stays as it was; a container with a read-only root may not write them."""
    node_resolv = Path("/etc/resolv.conf").read_bytes()
    pod = Pod(image_daemon, registry, short_tmp / "logs")
    assert not pod.config.HasField("dns_config")
    writer = create(pod, container(pod, "writer"))
    reader = create(pod, container(pod, "reader"))
    locked_config = container(pod, "locked")
    locked_config.linux.security_context.readonly_rootfs = True
    locked = create(pod, locked_config)
    for cid in (writer, reader, locked):
        pod.start(cid)
    assert pod.exec(reader, ["cat", "/etc/resolv.conf"]).stdout == node_resolv
    for path in ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts"):
        wrote = pod.exec(writer, ["sh", "-c", f"echo '# written' >> {path}"])
        assert wrote.exit_code == 0, (path, wrote.stderr)
        assert pod.exec(reader, ["tail", "-n", "1", path]).stdout == b"# written\n", path
        refused = pod.exec(locked, ["sh", "-c", f"echo '# not' >> {path}"])
        assert refused.exit_code != 0 and b"Read-only" in refused.stderr, (path, refused)
    assert Path("/etc/resolv.conf").read_bytes() == node_resolv
    # A pod an older crictld made without a DNS config had no copy: its containers get the
    # node's file, read-only.
    (image_daemon.state_dir / "sandboxes" / pod.id / "resolv.conf").unlink()
    older = create(pod, container(pod, "older"))
    pod.start(older)
    assert pod.exec(older, ["cat", "/etc/resolv.conf"]).stdout == node_resolv
    refused = pod.exec(older, ["sh", "-c", "echo '# not' >> /etc/resolv.conf"])
    assert refused.exit_code != 0 and b"Read-only" in refused.stderr, refused
    assert pod.exec(older, ["sh", "-c", "echo '# written' >> /etc/hosts"]).exit_code == 0
    assert Path("/etc/resolv.conf").read_bytes() == node_resolv
    remove(image_daemon, pod.id)


def test_drop_all_then_add_leaves_the_added_capability(
    image_daemon: Daemon, registry: Registry, short_tmp: Path
) -> None:
    """The restricted Pod Security Standard's pattern, "drop ALL, add NET_BIND_SERVICE", as
    containerd's CRI applies it: the one capability is left, in every set a root process
    has."""
    pod = Pod(image_daemon, registry, short_tmp / "logs")
    config = container(pod, "restricted")
    config.linux.security_context.capabilities.drop_capabilities.append("ALL")
    config.linux.security_context.capabilities.add_capabilities.append("NET_BIND_SERVICE")
    cid = create(pod, config)
    pod.start(cid)
    status = pod.exec(cid, ["cat", "/proc/self/status"]).stdout.decode()
    sets = {k: v.strip() for k, v in (line.split(":", 1) for line in status.splitlines())}
    bit = f"{1 << 10:016x}"  # CAP_NET_BIND_SERVICE
    assert (sets["CapEff"], sets["CapPrm"], sets["CapBnd"]) == (bit, bit, bit), sets
    remove(image_daemon, pod.id)
