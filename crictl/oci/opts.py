"""Named spec options: each a function of (spec, its inputs) that sets the OCI spec fields one
CRI field (or one rule) is responsible for, as containerd's `oci.With...` options. The pause
spec and the container spec (crictl/oci/spec.py) are lists of them, so which CRI field became
which spec field shows in one place, and a new field is one more option."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from crictl.gen.cri.runtime.v1 import api_pb2

Spec = dict[str, Any]
SpecOpt = Callable[[Spec], None]

OCI_VERSION = "1.0.2-dev"
PROPAGATION = {
    api_pb2.PROPAGATION_PRIVATE: "rprivate",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
}


def compose(*opts: SpecOpt) -> Spec:
    """A spec with the empty skeleton every option may rely on, then each option in order."""
    spec: Spec = {
        "ociVersion": OCI_VERSION,
        "process": {},
        "root": {"path": "rootfs", "readonly": False},
        "mounts": [],
        "annotations": {},
        "linux": {"namespaces": [], "resources": {}},
    }
    for opt in opts:
        opt(spec)
    return spec


def with_process(**fields: Any) -> SpecOpt:
    """Process fields as given (args, env, cwd, terminal, user, noNewPrivileges, ...)."""

    def opt(spec: Spec) -> None:
        spec["process"].update(fields)

    return opt


def with_capabilities(caps: Iterable[str]) -> SpecOpt:
    listed = list(caps)

    def opt(spec: Spec) -> None:
        spec["process"]["capabilities"] = {
            k: listed for k in ("bounding", "effective", "permitted")
        }

    return opt


def with_readonly_rootfs(readonly: bool) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["root"]["readonly"] = readonly

    return opt


def with_mounts(mounts: Iterable[Mapping[str, Any]]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["mounts"] += [dict(m) for m in mounts]

    return opt


def with_writable_sysfs() -> SpecOpt:
    """A privileged container's /sys and /sys/fs/cgroup are writable."""

    def opt(spec: Spec) -> None:
        for m in spec["mounts"]:
            if m["destination"] in ("/sys", "/sys/fs/cgroup"):
                m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]

    return opt


def with_bind(destination: str, source: str, readonly: bool) -> SpecOpt:
    return with_mounts(
        [
            {
                "destination": destination,
                "type": "bind",
                "source": source,
                "options": ["rbind", "ro" if readonly else "rw"],
            }
        ]
    )


def mount_depth(path: str) -> int:
    """How many components a destination has: "/" 0, "/a" 1, "/a/b/" 2."""
    return len([p for p in posixpath.normpath(path).split("/") if p])


def with_cri_mounts(
    mounts: Sequence[api_pb2.Mount], image_volumes: Mapping[int, Mapping[str, Any]]
) -> SpecOpt:
    """The container's CRI mounts, parents before what is mounted below them whatever order
    kubelet sent (as containerd); an image volume (by the mount's index) is its image's
    read-only snapshot; recursive read-only is runc's rro."""

    def opt(spec: Spec) -> None:
        ordered = sorted(enumerate(mounts), key=lambda im: mount_depth(im[1].container_path))
        for index, cm in ordered:
            volume = image_volumes.get(index)
            if volume is not None:
                spec["mounts"].append({"destination": cm.container_path, **volume})
                continue
            access = "rro" if cm.recursive_read_only else "ro" if cm.readonly else "rw"
            spec["mounts"].append(
                {
                    "destination": cm.container_path,
                    "type": "bind",
                    "source": cm.host_path,
                    "options": ["rbind", access, PROPAGATION.get(cm.propagation, "rprivate")],
                }
            )

    return opt


def with_rootfs_propagation(mounts: Sequence[api_pb2.Mount]) -> SpecOpt:
    """Propagation into or out of the container needs the rootfs to propagate too."""
    modes = {m.propagation for m in mounts}

    def opt(spec: Spec) -> None:
        if api_pb2.PROPAGATION_BIDIRECTIONAL in modes:
            spec["linux"]["rootfsPropagation"] = "rshared"
        elif api_pb2.PROPAGATION_HOST_TO_CONTAINER in modes:
            spec["linux"]["rootfsPropagation"] = "rslave"

    return opt


def with_namespaces(namespaces: Iterable[Mapping[str, str]]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["linux"]["namespaces"] += [dict(n) for n in namespaces]

    return opt


def with_resources(resources: Mapping[str, Any]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["linux"]["resources"].update(resources)

    return opt


def with_devices(devices: Sequence[Mapping[str, Any]], permissions: Sequence[str]) -> SpecOpt:
    """Device nodes in the container, and the cgroup rules that let it use them."""

    def opt(spec: Spec) -> None:
        if not devices:
            return
        spec["linux"]["devices"] = [dict(d) for d in devices]
        spec["linux"]["resources"]["devices"] += [
            {
                "allow": True,
                "type": d["type"],
                "major": d["major"],
                "minor": d["minor"],
                "access": p,
            }
            for d, p in zip(devices, permissions, strict=True)
        ]

    return opt


def with_host_devices(devices: Sequence[Mapping[str, Any]]) -> SpecOpt:
    """The node's device nodes in a privileged container, beside the ones the request named
    (which keep their place: a node's device at the same path is left out). Its cgroup allows
    every device already."""

    def opt(spec: Spec) -> None:
        listed = spec["linux"].setdefault("devices", [])
        taken = {d["path"] for d in listed}
        listed += [dict(d) for d in devices if d["path"] not in taken]

    return opt


def with_cgroups_path(path: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["linux"]["cgroupsPath"] = path

    return opt


def with_annotations(annotations: Mapping[str, str]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["annotations"].update(annotations)

    return opt


def with_masked_paths(masked: Sequence[str], readonly: Sequence[str]) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["linux"]["maskedPaths"] = list(masked)
        spec["linux"]["readonlyPaths"] = list(readonly)

    return opt


def with_linux(key: str, value: Any) -> SpecOpt:
    """One `linux` field as given (sysctl, seccomp)."""

    def opt(spec: Spec) -> None:
        spec["linux"][key] = value

    return opt


def with_hostname(hostname: str) -> SpecOpt:
    def opt(spec: Spec) -> None:
        spec["hostname"] = hostname

    return opt


def when(condition: bool, *opts: SpecOpt) -> SpecOpt:
    """`opts` only if `condition`: keeps the lists flat where a rule applies to some specs."""

    def opt(spec: Spec) -> None:
        if condition:
            for o in opts:
                o(spec)

    return opt
