"""Seccomp profiles for the OCI spec's `linux.seccomp`, from a CRI SecurityProfile.

* Unconfined, no profile at all, or a privileged container: no filter. A profile type outside
  the enum, or a deprecated `seccomp_profile_path` string that names none, is INVALID_ARGUMENT.
* RuntimeDefault: an allow list, Docker's and containerd's default profile, kept as data in
  `seccomp_default.json` beside this module. Every syscall it does not name fails with EPERM
  (`defaultAction` SCMP_ACT_ERRNO, `defaultErrnoRet` 1), so syscalls added to the kernel after
  the list was written are refused too. Its conditional rules are evaluated here for the
  container and the host, as moby does: `includes`/`excludes` by the container's capabilities
  (CAP_SYS_ADMIN unlocks the mount family, unshare, setns, bpf...; without it clone is allowed
  only without namespace flags and clone3 fails with ENOSYS so that libcs fall back to clone),
  by the host's architecture (`os.uname().machine`, in libseccomp's names: amd64, arm64...) and
  by `minKernel` against `os.uname().release`.
* Localhost: a profile file in the same (Docker's) format, read from the absolute path kubelet
  gives: a regular file of at most 1 MiB (a FIFO, a device or a directory is refused without
  being read, so a hostile path cannot stall the daemon), checked field by field; whatever is
  wrong is INVALID_ARGUMENT naming the file.

`seccomp_default.json` is a verbatim copy (a final newline added) of `seccomp/default.json` of
github.com/moby/profiles v0.2.3, the module moby/moby's `profiles/seccomp/default.json` moved to
(vendored by moby/moby at commit 35797366d7cd); Copyright The Moby Authors, Apache License 2.0,
as crictld. To update it, copy the newer file over it: nothing here lists syscall names.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crictl.errors import InvalidArgument
from crictl.gen.cri.runtime.v1 import api_pb2

DEFAULT_PROFILE = Path(__file__).with_name("seccomp_default.json")
MAX_PROFILE_BYTES = 1 << 20

ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)
OPERATORS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)
U64 = 1 << 64

# `uname -m` => the architecture name the profile's `arches` conditions use (libseccomp's, as in
# moby's goToNative) and the architecture its `archMap` is keyed by.
MACHINES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "i386": ("x86", "SCMP_ARCH_X86"),
    "i486": ("x86", "SCMP_ARCH_X86"),
    "i586": ("x86", "SCMP_ARCH_X86"),
    "i686": ("x86", "SCMP_ARCH_X86"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "armv6l": ("arm", "SCMP_ARCH_ARM"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"),
    "armv8l": ("arm", "SCMP_ARCH_ARM"),
    "ppc64": ("ppc64", "SCMP_ARCH_PPC64"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "s390": ("s390", "SCMP_ARCH_S390"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
    "mips64": ("mips64", "SCMP_ARCH_MIPS64"),
    "loongarch64": ("loong64", "SCMP_ARCH_LOONGARCH64"),
}


@dataclass(frozen=True)
class Host:
    """What a profile's conditions are evaluated against besides the capabilities."""

    arch: str  # libseccomp's name, as in `includes.arches`: amd64, arm64, x86...
    scmp_arch: str | None  # the `archMap` key: SCMP_ARCH_X86_64...; None if unknown
    kernel: tuple[int, int]  # (version, major revision) of the running kernel


def parse_kernel(release: str) -> tuple[int, int]:
    """The (version, major revision) of a kernel release: 6.1.0-18-amd64 => (6, 1); (0, 0),
    below every minKernel, if it cannot be read."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m[1]), int(m[2])) if m else (0, 0)


@functools.cache
def host() -> Host:
    u = os.uname()
    arch, scmp = MACHINES.get(u.machine, (u.machine, None))
    return Host(arch, scmp, parse_kernel(u.release))


@functools.cache
def _default_document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DEFAULT_PROFILE.read_text())
    return doc


def runtime_default(caps: set[str], on: Host | None = None) -> dict[str, Any]:
    """The RuntimeDefault profile for a container holding `caps` (CAP_* names)."""
    return from_docker(_default_document(), caps, "RuntimeDefault", on)


def _cap(name: str) -> str:
    name = name.upper()
    return name if name.startswith("CAP_") else f"CAP_{name}"


class _Checker:
    """Type checks of a profile document, each failure an InvalidArgument naming the file."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, what: str) -> InvalidArgument:
        return InvalidArgument(f"seccomp profile {self.where}: {what}")

    def strings(self, value: object, field: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"{field} must be a list of strings")
        return list(value)

    def uint(self, value: object, field: str, limit: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
            raise self.fail(f"{field} must be an integer from 0 to {limit - 1}, not {value!r}")
        return value

    def action(self, value: object, field: str) -> str:
        if not isinstance(value, str) or value not in ACTIONS:
            raise self.fail(f"{field} {value!r} is not a seccomp action")
        return value

    def kernel(self, value: object, field: str) -> tuple[int, int] | None:
        if value is None or value == "":
            return None
        m = re.fullmatch(r"(\d{1,3})\.(\d{1,3})", value) if isinstance(value, str) else None
        if m is None or (int(m[1]), int(m[2])) == (0, 0):
            raise self.fail(f'{field} {value!r} is not a kernel version "<kernel>.<major>"')
        return int(m[1]), int(m[2])

    def condition(self, value: object, field: str) -> tuple[set[str], set[str], Any]:
        """(caps, arches, minKernel) of an `includes` or `excludes` object."""
        if value is None:
            return set(), set(), None
        if not isinstance(value, dict):
            raise self.fail(f"{field} must be an object")
        caps = {_cap(c) for c in self.strings(value.get("caps"), f"{field}.caps")}
        arches = set(self.strings(value.get("arches"), f"{field}.arches"))
        return caps, arches, self.kernel(value.get("minKernel"), f"{field}.minKernel")


def _applies(rule: dict[str, Any], i: int, caps: set[str], on: Host, check: _Checker) -> bool:
    """Whether a rule's `includes` and `excludes` conditions keep it, as moby evaluates them:
    every included capability held, the host's arch among the included ones, the kernel at
    least the included minKernel; no excluded capability held, the arch not excluded, the
    kernel below the excluded minKernel."""
    need, arches, min_kernel = check.condition(rule.get("includes"), f"syscalls[{i}].includes")
    not_with, not_on, not_from = check.condition(rule.get("excludes"), f"syscalls[{i}].excludes")
    if not need <= caps or (arches and on.arch not in arches):
        return False
    if min_kernel is not None and on.kernel < min_kernel:
        return False
    if not_with & caps or on.arch in not_on:
        return False
    return not (not_from is not None and on.kernel >= not_from)


def _architectures(profile: dict[str, Any], on: Host, check: _Checker) -> list[str]:
    arches = check.strings(profile.get("architectures"), "architectures")
    arch_map = profile.get("archMap")
    if arch_map is None:
        return arches
    if not isinstance(arch_map, list):
        raise check.fail("archMap must be a list")
    if arches and arch_map:
        raise check.fail("both architectures and archMap are given; use one")
    for i, entry in enumerate(arch_map):
        if not isinstance(entry, dict) or not isinstance(entry.get("architecture"), str):
            raise check.fail(f"archMap[{i}] must be an object with an architecture")
        subs = check.strings(entry.get("subArchitectures"), f"archMap[{i}].subArchitectures")
        if entry["architecture"] == on.scmp_arch:
            return [entry["architecture"], *subs]
    return []  # no entry for this host: runc filters its native architecture only


def _syscall(rule: dict[str, Any], i: int, check: _Checker) -> dict[str, Any]:
    field = f"syscalls[{i}]"
    names = check.strings(rule.get("names"), f"{field}.names")
    if rule.get("name"):
        if names:
            raise check.fail(f"{field} has both name and names")
        if not isinstance(rule["name"], str):
            raise check.fail(f"{field}.name must be a string")
        names = [rule["name"]]
    if not names:
        raise check.fail(f"{field} names no syscall")
    if "action" not in rule:
        raise check.fail(f"{field} has no action")
    out: dict[str, Any] = {
        "names": names,
        "action": check.action(rule["action"], f"{field}.action"),
    }
    if rule.get("errnoRet") is not None:
        out["errnoRet"] = check.uint(rule["errnoRet"], f"{field}.errnoRet", 1 << 32)
    args = rule.get("args")
    if args:
        if not isinstance(args, list):
            raise check.fail(f"{field}.args must be a list")
        out["args"] = []
        for j, a in enumerate(args):
            where = f"{field}.args[{j}]"
            if not isinstance(a, dict):
                raise check.fail(f"{where} must be an object")
            if a.get("op") not in OPERATORS:
                raise check.fail(f"{where}.op {a.get('op')!r} is not a seccomp comparison")
            arg: dict[str, Any] = {"index": check.uint(a.get("index", 0), f"{where}.index", 6)}
            arg["value"] = check.uint(a.get("value", 0), f"{where}.value", U64)
            if a.get("valueTwo") is not None:
                arg["valueTwo"] = check.uint(a["valueTwo"], f"{where}.valueTwo", U64)
            arg["op"] = a["op"]
            out["args"].append(arg)
    return out


def from_docker(
    profile: dict[str, Any], caps: set[str], where: str, on: Host | None = None
) -> dict[str, Any]:
    """A profile in Docker's format, its conditions evaluated for a container holding `caps`
    on `on` (this host by default), as the OCI `linux.seccomp` section."""
    on = on or host()
    check = _Checker(where)
    if not isinstance(profile, dict):
        raise check.fail("not a JSON object")
    if "defaultAction" not in profile:
        raise check.fail("no defaultAction")
    out: dict[str, Any] = {"defaultAction": check.action(profile["defaultAction"], "defaultAction")}
    arches = _architectures(profile, on, check)
    if arches:
        out["architectures"] = arches
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = check.uint(profile["defaultErrnoRet"], "defaultErrnoRet", 1 << 32)
    flags = check.strings(profile.get("flags"), "flags")
    if flags:
        out["flags"] = flags
    for key in ("listenerPath", "listenerMetadata"):
        if profile.get(key):
            if not isinstance(profile[key], str):
                raise check.fail(f"{key} must be a string")
            out[key] = profile[key]
    rules = profile.get("syscalls")
    if rules is not None and not isinstance(rules, list):
        raise check.fail("syscalls must be a list")
    held = {_cap(c) for c in caps}
    out["syscalls"] = []
    for i, rule in enumerate(rules or []):
        if not isinstance(rule, dict):
            raise check.fail(f"syscalls[{i}] must be an object")
        syscall = _syscall(rule, i, check)  # checked even when its conditions leave it out
        if _applies(rule, i, held, on, check):
            out["syscalls"].append(syscall)
    return out


def read_localhost(path: str) -> dict[str, Any]:
    """The JSON document of a Localhost profile: an absolute path to a regular file of at
    most MAX_PROFILE_BYTES. Anything else is refused before a byte is read, so a FIFO or a
    device cannot block the daemon."""
    if not path:
        raise InvalidArgument("seccomp localhost profile: no path given (localhost_ref is empty)")
    if not path.startswith("/"):
        raise InvalidArgument(f"seccomp localhost profile {path!r}: not an absolute path")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InvalidArgument(f"seccomp profile {path}: not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except ValueError as e:  # a NUL in the path
        raise InvalidArgument(f"seccomp profile {path!r}: {e}") from e
    except OSError as e:
        raise InvalidArgument(f"seccomp profile {path}: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between the stat and the open
            raise InvalidArgument(f"seccomp profile {path}: not a regular file")
        if st.st_size > MAX_PROFILE_BYTES:
            raise InvalidArgument(
                f"seccomp profile {path}: {st.st_size} bytes, more than {MAX_PROFILE_BYTES}"
            )
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, MAX_PROFILE_BYTES + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_PROFILE_BYTES:
                raise InvalidArgument(
                    f"seccomp profile {path}: more than {MAX_PROFILE_BYTES} bytes"
                )
    except OSError as e:
        raise InvalidArgument(f"seccomp profile {path}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    try:
        doc = json.loads(b"".join(chunks).decode())
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise InvalidArgument(f"seccomp profile {path}: not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidArgument(f"seccomp profile {path}: not a JSON object")
    return doc


KINDS = {
    api_pb2.SecurityProfile.RuntimeDefault: "default",
    api_pb2.SecurityProfile.Unconfined: "unconfined",
    api_pb2.SecurityProfile.Localhost: "localhost",
}


def profile_for(
    sc: api_pb2.LinuxContainerSecurityContext | api_pb2.LinuxSandboxSecurityContext,
    caps: set[str],
    native_only: bool = False,
) -> dict[str, Any] | None:
    """The OCI seccomp section for a container (a pod's pause included), or None for no
    filter. `native_only`: the RuntimeDefault profile for the node's own architecture alone,
    its compat ones (x86_64's x86 and x32, arm64's arm) left to the default action; for the
    pause, one binary of the node's architecture, for which runc's libseccomp then builds one
    filter where it built three (~9 ms of runc's init a pod here, measured with runc alone:
    create and delete of a pause bundle 128 ms without a filter, 138-139 with the three, 129
    with one)."""
    kind: str | None = None
    path = ""
    if sc.HasField("seccomp"):
        p = sc.seccomp
        if p.profile_type not in KINDS:
            raise InvalidArgument(f"seccomp profile type {p.profile_type}: unknown")
        kind = KINDS[p.profile_type]
        path = p.localhost_ref
    elif sc.seccomp_profile_path:  # the deprecated string form
        value = sc.seccomp_profile_path
        if value in ("runtime/default", "docker/default"):
            kind = "default"
        elif value == "unconfined":
            kind = "unconfined"
        elif value.startswith("localhost/"):
            kind, path = "localhost", value.removeprefix("localhost")
        else:
            raise InvalidArgument(f"seccomp profile {value!r}: unknown")
    if sc.privileged or kind in (None, "unconfined"):
        return None
    if kind == "default":
        profile = runtime_default(caps)
        if native_only:
            profile["architectures"] = profile.get("architectures", [])[:1]
        return profile
    return from_docker(read_localhost(path), caps, path)
