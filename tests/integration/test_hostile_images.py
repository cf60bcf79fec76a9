"""Hostile images on a real containerd: an image's /etc/passwd and /etc/group are read inside the
image's root, never from the host through a symlink (absolute or `..`-laden), and whiteouts and
opaque directories hide what they hide (issue 11).

The host files name a user "probe" (uid 4242) and a group "probe" (gid 4343, with root as a
member): whatever the image or the request asks, no container may run with either id.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_containers import Pod
from tests.integration.test_images import failure, pull
from tests.integration.test_sandboxes import remove
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.images import HOSTILE_DIR
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

HOST_UID, HOST_GID, NUMERIC_UID = 4242, 4343, 1234
HOST_PASSWD = (
    f"probe:x:{HOST_UID}:{HOST_UID}::/:/bin/sh\n"
    # a numeric user's primary group comes from the passwd entry of its uid
    f"numeric:x:{NUMERIC_UID}:{HOST_GID}::/:/bin/sh\n"
)
HOST_GROUP = f"probe:x:{HOST_GID}:root,probe,numeric\n"


@pytest.fixture
def host_files() -> Iterator[Path]:
    """The host's files that the hostile images' links name."""
    root = Path(HOSTILE_DIR)
    created = not root.exists()
    root.mkdir(mode=0o755, exist_ok=True)
    (root / "passwd").write_text(HOST_PASSWD)
    (root / "group").write_text(HOST_GROUP)
    try:
        yield root
    finally:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for name in ("passwd", "group"):
                (root / name).unlink(missing_ok=True)


def config(
    image: str,
    name: str,
    *,
    run_as_user: int | None = None,
    run_as_username: str = "",
    run_as_group: int | None = None,
) -> api_pb2.ContainerConfig:
    c = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name),
        image=api_pb2.ImageSpec(image=image),
        command=["sleep", "3600"],
    )
    sc = c.linux.security_context
    if run_as_user is not None:
        sc.run_as_user.value = run_as_user
    if run_as_username:
        sc.run_as_username = run_as_username
    if run_as_group is not None:
        sc.run_as_group.value = run_as_group
    return c


def create(pod: Pod, c: api_pb2.ContainerConfig) -> str:
    resp = pod.d.runtime_call(
        "CreateContainer",
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod.id, config=c, sandbox_config=pod.config),
    )
    return str(resp.container_id)


def refused(pod: Pod, c: api_pb2.ContainerConfig, what: str) -> None:
    """CreateContainer answers INVALID_ARGUMENT naming the user or group "probe"."""
    code, message = failure(create, pod, c)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert f"{what} 'probe'" in message, message


def ids(pod: Pod, cid: str) -> tuple[int, int, set[int]]:
    """uid, gid and every group of the container's processes, as `id` and the status say."""
    pod.start(cid)
    out = {flag: pod.exec(cid, ["id", flag]).stdout.decode().split() for flag in ("-u", "-g", "-G")}
    uid, gid, groups = int(out["-u"][0]), int(out["-g"][0]), {int(g) for g in out["-G"]}
    user = pod.status(cid).user.linux
    assert (user.uid, user.gid) == (uid, gid)
    assert set(user.supplemental_groups) <= groups | {gid}
    assert uid != HOST_UID and gid != HOST_GID and HOST_GID not in groups
    assert HOST_GID not in user.supplemental_groups
    return uid, gid, groups


@pytest.mark.parametrize("name", ["hostile-passwd", "hostile-dotdot"])
def test_passwd_linked_to_the_host_is_not_read(
    image_daemon: Daemon,
    registry: Registry,
    cni_network: CniNetwork,
    short_tmp: Path,
    host_files: Path,
    name: str,
) -> None:
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    image = f"{registry.host}/crictld-test/{name}:1"
    pull(d, image)

    # USER probe (the image's) and run_as_username probe (the request's): not in the image
    refused(pod, config(image, "image-user"), "user")
    refused(pod, config(image, "by-name", run_as_username="probe"), "user")
    # A numeric user still works, with group 0: its passwd entry is not the host's
    cid = create(pod, config(image, "numeric", run_as_user=NUMERIC_UID))
    uid, gid, _ = ids(pod, cid)
    assert (uid, gid) == (NUMERIC_UID, 0)
    remove(d, pod.id)


def test_group_linked_to_the_host_is_not_read(
    image_daemon: Daemon,
    registry: Registry,
    cni_network: CniNetwork,
    short_tmp: Path,
    host_files: Path,
) -> None:
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")
    image = f"{registry.host}/crictld-test/hostile-group:1"
    pull(d, image)

    # USER 0:probe: the group is not in the image
    refused(pod, config(image, "image-user"), "group")
    refused(pod, config(image, "uid-0", run_as_user=0), "group")
    # root, whom the host's group file makes a member of probe, gets no group 4343
    cid = create(pod, config(image, "root", run_as_user=0, run_as_group=0))
    assert ids(pod, cid) == (0, 0, {0})
    remove(d, pod.id)


def test_links_whiteouts_and_opaque_dirs_inside_the_image(
    image_daemon: Daemon,
    registry: Registry,
    cni_network: CniNetwork,
    short_tmp: Path,
    host_files: Path,
) -> None:
    d = image_daemon
    pod = Pod(d, registry, short_tmp / "logs")

    # /etc/passwd -> /tmp/crictld-hostile/passwd, a file the image has: probe is its 2424
    linked = f"{registry.host}/crictld-test/linked-passwd:1"
    pull(d, linked)
    cid = create(pod, config(linked, "linked"))
    uid, gid, _ = ids(pod, cid)
    assert (uid, gid) == (2424, 2525)

    # a lower layer's probe (uid 4242), deleted by a whiteout or hidden by an opaque /etc
    for name in ("hidden-passwd", "opaque-etc"):
        image = f"{registry.host}/crictld-test/{name}:1"
        pull(d, image)
        refused(pod, config(image, name), "user")
        cid = create(pod, config(image, f"{name}-numeric", run_as_user=HOST_UID + 1))
        assert ids(pod, cid)[:2] == (HOST_UID + 1, 0)
    remove(d, pod.id)
