"""The seccomp section of the OCI spec: RuntimeDefault as moby's allow list evaluated for the
container's capabilities and the host, Localhost profiles read safely, bad input refused."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from crictl.errors import InvalidArgument
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.oci.seccomp import (
    DEFAULT_PROFILE,
    MAX_PROFILE_BYTES,
    Host,
    from_docker,
    parse_kernel,
    profile_for,
    runtime_default,
)
from crictl.oci.spec import DEFAULT_CAPS

AMD64 = Host("amd64", "SCMP_ARCH_X86_64", (6, 1))
ARM64 = Host("arm64", "SCMP_ARCH_AARCH64", (6, 1))
S390X = Host("s390x", "SCMP_ARCH_S390X", (6, 1))
DEFAULT = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
UNKNOWN_TYPE = cast("api_pb2.SecurityProfile.ProfileType.ValueType", 7)  # not in the enum
NEVER = {"keyctl", "add_key", "request_key", "kexec_load", "init_module", "swapon", "reboot"}
MOUNT_FAMILY = {"mount", "umount2", "fsopen", "fsmount", "move_mount", "open_tree", "pivot_root"}


def ctx(**kw: object) -> api_pb2.LinuxContainerSecurityContext:
    sc = api_pb2.LinuxContainerSecurityContext()
    for k, v in kw.items():
        if k == "seccomp":
            assert isinstance(v, api_pb2.SecurityProfile)
            sc.seccomp.CopyFrom(v)
        else:
            setattr(sc, k, v)
    return sc


def localhost(ref: str) -> api_pb2.LinuxContainerSecurityContext:
    return ctx(
        seccomp=api_pb2.SecurityProfile(
            profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=ref
        )
    )


def allowed(profile: dict[str, Any]) -> set[str]:
    """Syscalls allowed whatever their arguments."""
    return {
        n
        for r in profile["syscalls"]
        if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
        for n in r["names"]
    }


def rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def test_no_profile_unconfined_and_privileged_have_no_filter(tmp_path: Path) -> None:
    unconfined = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)
    assert profile_for(ctx(), set()) is None
    assert profile_for(ctx(seccomp=unconfined), set()) is None
    assert profile_for(ctx(seccomp_profile_path="unconfined"), set()) is None
    assert profile_for(ctx(seccomp=DEFAULT, privileged=True), set()) is None
    # A privileged container's Localhost profile is not even read.
    missing = localhost(str(tmp_path / "missing.json"))
    missing.privileged = True
    assert profile_for(missing, set()) is None


def test_runtime_default_is_mobys_allow_list() -> None:
    p = profile_for(ctx(seccomp=DEFAULT), set())
    assert p is not None
    assert p["defaultAction"] == "SCMP_ACT_ERRNO" and p["defaultErrnoRet"] == 1  # EPERM
    assert p == runtime_default(set())
    assert profile_for(ctx(seccomp_profile_path="runtime/default"), set()) == p
    assert profile_for(ctx(seccomp_profile_path="docker/default"), set()) == p
    assert profile_for(ctx(seccomp=api_pb2.SecurityProfile()), set()) == p  # the zero value
    ok = allowed(p)
    assert {"read", "write", "openat", "close", "execve", "futex", "mmap", "exit_group"} <= ok
    assert {"fork", "vfork", "wait4", "getpid", "uname", "ptrace"} <= ok
    refused = {"bpf", "unshare", "setns", "perf_event_open", "sethostname", "chroot"}
    assert not (NEVER | MOUNT_FAMILY | refused | {"clone", "clone3"}) & ok
    # Only allow and the two errno actions appear; everything else falls to defaultAction.
    assert {r["action"] for r in p["syscalls"]} == {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"}


def test_clone_without_cap_sys_admin_only_without_namespace_flags() -> None:
    p = runtime_default(set(), AMD64)
    assert rules_for(p, "clone") == [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET must all be clear.
            "args": [{"index": 0, "value": 0x7E020000, "op": "SCMP_CMP_MASKED_EQ"}],
        }
    ]
    # clone3's flags are in memory seccomp cannot read: ENOSYS makes glibc fall back to clone.
    assert rules_for(p, "clone3") == [
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    ]
    # s390 passes clone's flags as its second argument.
    assert rules_for(runtime_default(set(), S390X), "clone")[0]["args"][0]["index"] == 1


def test_cap_sys_admin_unlocks_the_mount_family_and_namespaces() -> None:
    plain = runtime_default(set())
    admin = runtime_default({"CAP_SYS_ADMIN"})
    unlocked = allowed(admin) - allowed(plain)
    assert MOUNT_FAMILY - {"pivot_root"} <= unlocked  # pivot_root is in no group of moby's
    assert {"unshare", "setns", "clone", "clone3", "bpf", "sethostname", "syslog"} <= unlocked
    assert not NEVER & allowed(admin)
    assert all(r["action"] == "SCMP_ACT_ALLOW" for r in admin["syscalls"])  # no clone3 ENOSYS
    assert all(not r.get("args") for r in rules_for(admin, "clone"))


@pytest.mark.parametrize(
    ("cap", "unlocks"),
    [
        ("CAP_SYS_CHROOT", {"chroot"}),
        ("CAP_SYS_BOOT", {"reboot"}),
        ("CAP_SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
        ("CAP_SYS_PTRACE", {"kcmp", "pidfd_getfd", "process_madvise"}),
        ("CAP_SYS_TIME", {"settimeofday", "stime", "clock_settime", "clock_settime64"}),
        ("CAP_BPF", {"bpf"}),
        ("CAP_PERFMON", {"perf_event_open"}),
        ("CAP_DAC_READ_SEARCH", {"open_by_handle_at"}),
        ("CAP_SYS_NICE", {"mbind", "get_mempolicy", "set_mempolicy", "set_mempolicy_home_node"}),
        ("CAP_SYSLOG", {"syslog"}),
    ],
)
def test_each_capability_unlocks_its_group(cap: str, unlocks: set[str]) -> None:
    gained = allowed(runtime_default({cap})) - allowed(runtime_default(set()))
    assert gained == unlocks


def test_default_capabilities_of_a_container() -> None:
    ok = allowed(runtime_default(set(DEFAULT_CAPS)))
    assert "chroot" in ok  # CAP_SYS_CHROOT is among them
    assert not (MOUNT_FAMILY | {"unshare", "setns", "bpf", "keyctl", "add_key"}) & ok


def test_architecture_conditions() -> None:
    amd64 = runtime_default(set(), AMD64)
    assert amd64["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert {"arch_prctl", "modify_ldt"} <= allowed(amd64)
    assert "set_tls" not in allowed(amd64)
    arm64 = runtime_default(set(), ARM64)
    assert arm64["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert {"set_tls", "cacheflush"} <= allowed(arm64)
    assert not {"arch_prctl", "modify_ldt"} & allowed(arm64)
    unknown = runtime_default(set(), Host("sparc64", None, (6, 1)))
    assert "architectures" not in unknown  # runc then filters its native architecture only


def test_min_kernel_conditions() -> None:
    assert parse_kernel("6.1.0-18-amd64") == (6, 1)
    assert parse_kernel("3.12-1-amd64") == (3, 12)
    assert parse_kernel("garbage") == (0, 0)
    old = runtime_default(set(), Host("amd64", "SCMP_ARCH_X86_64", (4, 4)))
    new = runtime_default(set(), Host("amd64", "SCMP_ARCH_X86_64", (4, 8)))
    assert "ptrace" not in allowed(old) and "ptrace" in allowed(new)
    assert "ptrace" in allowed(runtime_default(set()))  # this host's kernel


def test_data_file_is_mobys_profile() -> None:
    doc = json.loads(DEFAULT_PROFILE.read_text())
    assert doc["defaultAction"] == "SCMP_ACT_ERRNO" and doc["defaultErrnoRet"] == 1
    arch_map = {a["architecture"]: a["subArchitectures"] for a in doc["archMap"]}
    assert arch_map["SCMP_ARCH_X86_64"] == ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert arch_map["SCMP_ARCH_AARCH64"] == ["SCMP_ARCH_ARM"]
    assert len(doc["syscalls"][0]["names"]) > 300 and "includes" not in doc["syscalls"][0]
    # Each rule converts, whatever the host and capabilities.
    everything = {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYSLOG", "CAP_BPF"}
    for on in (AMD64, ARM64, S390X):
        assert from_docker(doc, everything, "default", on)["syscalls"]


def test_localhost_profile_in_docker_format(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "archMap": [
                    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": None},
                ],
                "syscalls": [
                    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "io"},
                    {
                        "name": "chmod",
                        "action": "SCMP_ACT_ERRNO",
                        "errnoRet": 1,
                        "args": [{"index": 1, "value": 256, "op": "SCMP_CMP_EQ", "ignored": 1}],
                    },
                    {
                        "names": ["mount"],
                        "action": "SCMP_ACT_ALLOW",
                        "includes": {"caps": ["CAP_SYS_ADMIN"]},
                    },
                    {
                        "names": ["keyctl"],
                        "action": "SCMP_ACT_ALLOW",
                        "excludes": {"caps": ["SYS_ADMIN"]},
                    },
                ],
            }
        )
    )
    p = from_docker(json.loads(f.read_text()), set(), str(f), AMD64)
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert p["syscalls"] == [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {
            "names": ["chmod"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "args": [{"index": 1, "value": 256, "op": "SCMP_CMP_EQ"}],
        },
        {"names": ["keyctl"], "action": "SCMP_ACT_ALLOW"},
    ]  # the mount rule needs CAP_SYS_ADMIN, which this container lacks
    admin = from_docker(json.loads(f.read_text()), {"CAP_SYS_ADMIN"}, str(f), AMD64)
    assert [r["names"] for r in admin["syscalls"]] == [["read", "write"], ["chmod"], ["mount"]]
    assert from_docker(json.loads(f.read_text()), set(), str(f), ARM64)["architectures"] == [
        "SCMP_ARCH_AARCH64"
    ]
    via_cri = profile_for(localhost(str(f)), set())
    assert via_cri is not None and via_cri["syscalls"][1]["names"] == ["chmod"]
    assert profile_for(ctx(seccomp_profile_path=f"localhost{f}"), set()) == via_cri


def expect_invalid(sc: api_pb2.LinuxContainerSecurityContext, *words: str) -> str:
    with pytest.raises(InvalidArgument) as info:
        profile_for(sc, set())
    message = str(info.value)
    assert "seccomp" in message
    for w in words:
        assert w in message, message
    return message


def test_unknown_profile_types_are_invalid_argument() -> None:
    bogus = api_pb2.SecurityProfile(profile_type=UNKNOWN_TYPE)
    expect_invalid(ctx(seccomp=bogus), "type 7", "unknown")
    expect_invalid(ctx(seccomp_profile_path="mystery/profile"), "mystery/profile", "unknown")


def test_missing_relative_and_empty_localhost_refs(tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "such.json")
    expect_invalid(localhost(missing), missing, "No such file")
    expect_invalid(localhost("relative.json"), "relative.json", "absolute")
    expect_invalid(localhost(""), "empty")
    expect_invalid(localhost(str(tmp_path)), str(tmp_path), "not a regular file")
    expect_invalid(localhost(str(tmp_path) + "/a\0b"), "null")
    expect_invalid(localhost("/dev/null"), "/dev/null", "not a regular file")


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "profile.json"
    os.mkfifo(fifo)
    errors: list[str] = []

    def call() -> None:
        with pytest.raises(InvalidArgument) as info:
            profile_for(localhost(str(fifo)), set())
        errors.append(str(info.value))

    started = time.monotonic()
    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(1.0)
    if t.is_alive():  # it blocked on the FIFO: let it go before failing
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("reading a FIFO profile blocked")
    assert time.monotonic() - started < 1.0
    assert errors == [f"seccomp profile {fifo}: not a regular file"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", ["not valid JSON"]),
        (b"\xff\xfe", ["not valid JSON"]),
        (b"[" * 100_000 + b"]" * 100_000, ["not valid JSON"]),
        (b"[]", ["not a JSON object"]),
        (b'{"syscalls": []}', ["no defaultAction"]),
        (b'{"defaultAction": "SCMP_ACT_NOPE"}', ["defaultAction", "SCMP_ACT_NOPE"]),
        (b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}', ["syscalls must be a list"]),
        (b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [1]}', ["syscalls[0]"]),
        (
            b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"]}]}',
            ["syscalls[0] has no action"],
        ),
        (
            b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}',
            ["syscalls[0] names no syscall"],
        ),
        (
            b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "name": "b",'
            b' "action": "SCMP_ACT_ERRNO"}]}',
            ["both name and names"],
        ),
        (
            b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": "read",'
            b' "action": "SCMP_ACT_ERRNO"}]}',
            ["syscalls[0].names must be a list of strings"],
        ),
        (
            b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],'
            b' "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 1,'
            b' "op": "SCMP_CMP_EQ"}]}]}',
            ["syscalls[0].args[0].index"],
        ),
        (
            b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],'
            b' "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": -1,'
            b' "op": "SCMP_CMP_EQ"}]}]}',
            ["syscalls[0].args[0].value"],
        ),
        (
            b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],'
            b' "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "op": "LIKE"}]}]}',
            ["syscalls[0].args[0].op", "LIKE"],
        ),
        (
            b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],'
            b' "action": "SCMP_ACT_ERRNO", "errnoRet": "EPERM"}]}',
            ["syscalls[0].errnoRet"],
        ),
        (
            b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],'
            b' "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4"}}]}',
            ["syscalls[0].includes.minKernel", "'4'"],
        ),
        (
            b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],'
            b' "action": "SCMP_ACT_ALLOW", "excludes": {"caps": "CAP_SYS_ADMIN"}}]}',
            ["syscalls[0].excludes.caps"],
        ),
        (
            b'{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],'
            b' "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}',
            ["both architectures and archMap"],
        ),
        (b'{"defaultAction": "SCMP_ACT_ALLOW", "archMap": [{}]}', ["archMap[0]"]),
    ],
)
def test_bad_localhost_profiles_name_the_file(
    tmp_path: Path, content: bytes, words: list[str]
) -> None:
    f = tmp_path / "bad.json"
    f.write_bytes(content)
    expect_invalid(localhost(str(f)), str(f), *words)


def test_a_profile_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "big.json"
    f.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "pad": "x" * MAX_PROFILE_BYTES}))
    expect_invalid(localhost(str(f)), str(f), "bytes, more than")
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "pad": "x" * 1000}))
    assert profile_for(localhost(str(ok)), set()) == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [],
    }
