"""The named spec options (crictl/oci/opts.py), each on its own."""

from __future__ import annotations

from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.oci import opts

M = api_pb2.Mount


def test_compose_gives_the_skeleton_then_applies_in_order() -> None:
    spec = opts.compose(opts.with_process(args=["a"]), opts.with_process(args=["b"], cwd="/"))
    assert spec["process"] == {"args": ["b"], "cwd": "/"}
    assert spec["root"] == {"path": "rootfs", "readonly": False}
    assert spec["linux"] == {"namespaces": [], "resources": {}}


def test_cri_mounts_parents_first_rro_and_image_volumes() -> None:
    mounts = [
        M(container_path="/a/b/c", host_path="/h1"),
        M(container_path="/a", host_path="/h2", readonly=True, recursive_read_only=True),
        M(container_path="/a/b", image=api_pb2.ImageSpec(image="img")),
        M(container_path="/z", host_path="/h3", propagation=api_pb2.PROPAGATION_BIDIRECTIONAL),
    ]
    volume = {"type": "overlay", "source": "overlay", "options": ["lowerdir=/l", "ro"]}
    spec = opts.compose(opts.with_cri_mounts(mounts, {2: volume}))
    assert [(m["destination"], m["options"]) for m in spec["mounts"]] == [
        ("/a", ["rbind", "rro", "rprivate"]),
        ("/z", ["rbind", "rw", "rshared"]),
        ("/a/b", ["lowerdir=/l", "ro"]),
        ("/a/b/c", ["rbind", "rw", "rprivate"]),
    ]
    assert opts.mount_depth("/") == 0 and opts.mount_depth("/a/b/") == 2


def test_rootfs_propagation_follows_the_mounts() -> None:
    def prop(*modes: api_pb2.MountPropagation.ValueType) -> object:
        mounts = [M(container_path="/m", propagation=m) for m in modes]
        return opts.compose(opts.with_rootfs_propagation(mounts))["linux"].get("rootfsPropagation")

    assert prop() is None and prop(api_pb2.PROPAGATION_PRIVATE) is None
    assert prop(api_pb2.PROPAGATION_HOST_TO_CONTAINER) == "rslave"
    assert (
        prop(api_pb2.PROPAGATION_HOST_TO_CONTAINER, api_pb2.PROPAGATION_BIDIRECTIONAL) == "rshared"
    )


def test_devices_add_nodes_and_cgroup_rules() -> None:
    node = {"path": "/dev/x", "type": "c", "major": 1, "minor": 3}
    spec = opts.compose(
        opts.with_resources({"devices": [{"allow": False, "access": "rwm"}]}),
        opts.with_devices([node], ["r"]),
    )
    assert spec["linux"]["devices"] == [node]
    assert spec["linux"]["resources"]["devices"][1] == {
        "allow": True,
        "type": "c",
        "major": 1,
        "minor": 3,
        "access": "r",
    }
    assert "devices" not in opts.compose(opts.with_devices([], []))["linux"]


def test_writable_sysfs_and_when() -> None:
    sys_mount = {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]}
    spec = opts.compose(opts.with_mounts([sys_mount]), opts.when(True, opts.with_writable_sysfs()))
    assert spec["mounts"][0]["options"] == ["rw"]
    spec = opts.compose(opts.with_mounts([sys_mount]), opts.when(False, opts.with_writable_sysfs()))
    assert spec["mounts"][0]["options"] == ["ro"]
    assert sys_mount["options"] == ["ro"]  # the input is copied, never changed
