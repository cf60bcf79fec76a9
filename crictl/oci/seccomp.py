"""Seccomp profiles for the OCI spec's `linux.seccomp`, from a CRI SecurityProfile.

* Unconfined, no profile at all, or a privileged container: no filter.
* RuntimeDefault: crictld's own default, a deny list: every syscall is allowed except those
  Docker documents its default profile as blocking (kernel modules, keyrings, clocks, swap,
  reboot, kexec, bpf, perf, userfaultfd, open_by_handle_at, obsolete calls...), which fail with
  EPERM; ptrace stays allowed, as in Docker's profile on kernels >= 4.8. Not the same file as
  Docker's or containerd's allow list: it confines the same dangerous calls and leaves new,
  harmless syscalls usable.
* Localhost: a profile file in Docker's format (`defaultAction`, `architectures`/`archMap`,
  `syscalls` with `names`/`name`, `action`, `args`, `errnoRet`, `includes`/`excludes` by
  capability or architecture), converted to the OCI form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crictl.errors import InvalidArgument
from crictl.gen.cri.runtime.v1 import api_pb2

ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]

DEFAULT_DENIED = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
]
# Syscalls the deny list gives back when the container holds the capability they need, as
# Docker's profile does (a container given CAP_SYS_ADMIN may mount, unshare, setns...).
ALLOWED_WITH_CAP = {
    "CAP_SYS_ADMIN": {
        "mount",
        "umount",
        "umount2",
        "unshare",
        "setns",
        "pivot_root",
        "quotactl",
        "lookup_dcookie",
        "perf_event_open",
        "bpf",
    },
    "CAP_SYS_MODULE": {"init_module", "finit_module", "delete_module"},
    "CAP_SYS_TIME": {"settimeofday", "stime", "clock_settime", "clock_adjtime"},
    "CAP_SYS_BOOT": {"reboot"},
    "CAP_SYS_PACCT": {"acct"},
    "CAP_SYS_RAWIO": {"iopl", "ioperm"},
    "CAP_SYS_NICE": {"mbind", "set_mempolicy", "get_mempolicy", "move_pages"},
}


def runtime_default(caps: set[str]) -> dict[str, Any]:
    allowed = set().union(*(v for k, v in ALLOWED_WITH_CAP.items() if k in caps))
    denied = sorted(set(DEFAULT_DENIED) - allowed)
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": list(ARCHITECTURES),
        "syscalls": [{"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }


def _matches(rule: dict[str, Any], caps: set[str]) -> bool:
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    need = {f"CAP_{c}" if not c.startswith("CAP_") else c for c in inc.get("caps") or []}
    not_with = {f"CAP_{c}" if not c.startswith("CAP_") else c for c in exc.get("caps") or []}
    arches = inc.get("arches")
    if arches and not {"amd64", "x86_64", "x86", "386", "x32"} & set(arches):
        return False
    return need <= caps and not (not_with & caps)


def from_docker(profile: dict[str, Any], caps: set[str], where: str) -> dict[str, Any]:
    if "defaultAction" not in profile:
        raise InvalidArgument(f"seccomp profile {where}: no defaultAction")
    arches = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == "SCMP_ARCH_X86_64":
            arches = ["SCMP_ARCH_X86_64", *(entry.get("subArchitectures") or [])]
    out: dict[str, Any] = {
        "defaultAction": profile["defaultAction"],
        "architectures": arches or list(ARCHITECTURES),
        "syscalls": [],
    }
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = profile["defaultErrnoRet"]
    if profile.get("flags"):
        out["flags"] = list(profile["flags"])
    for rule in profile.get("syscalls") or []:
        if not isinstance(rule, dict) or not _matches(rule, caps):
            continue
        names = list(rule.get("names") or []) or ([rule["name"]] if rule.get("name") else [])
        if not names or "action" not in rule:
            raise InvalidArgument(f"seccomp profile {where}: a rule without names or action")
        syscall: dict[str, Any] = {"names": names, "action": rule["action"]}
        if rule.get("args"):
            syscall["args"] = [
                {k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a}
                for a in rule["args"]
            ]
        if "errnoRet" in rule:
            syscall["errnoRet"] = rule["errnoRet"]
        out["syscalls"].append(syscall)
    return out


def profile_for(sc: api_pb2.LinuxContainerSecurityContext, caps: set[str]) -> dict[str, Any] | None:
    """The OCI seccomp section for a container, or None for no filter."""
    if sc.privileged:
        return None
    kind: str | None = None
    path = ""
    if sc.HasField("seccomp"):
        p = sc.seccomp
        kind = {
            api_pb2.SecurityProfile.RuntimeDefault: "default",
            api_pb2.SecurityProfile.Unconfined: "unconfined",
            api_pb2.SecurityProfile.Localhost: "localhost",
        }[p.profile_type]
        path = p.localhost_ref
    elif sc.seccomp_profile_path:  # the deprecated string form
        value = sc.seccomp_profile_path
        if value in ("runtime/default", "docker/default"):
            kind = "default"
        elif value == "unconfined":
            kind = "unconfined"
        elif value.startswith("localhost/"):
            kind, path = "localhost", value.removeprefix("localhost")
    if kind in (None, "unconfined"):
        return None
    if kind == "default":
        return runtime_default(caps)
    if not path.startswith("/"):
        raise InvalidArgument(f"seccomp localhost profile {path!r}: not an absolute path")
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"seccomp profile {path}: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidArgument(f"seccomp profile {path}: not a JSON object")
    return from_docker(doc, caps, path)
