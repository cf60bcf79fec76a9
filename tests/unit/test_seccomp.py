from __future__ import annotations

import json
from pathlib import Path

import pytest

from crictl.errors import InvalidArgument
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.oci.seccomp import profile_for


def ctx(**kw: object) -> api_pb2.LinuxContainerSecurityContext:
    sc = api_pb2.LinuxContainerSecurityContext()
    for k, v in kw.items():
        if k == "seccomp":
            assert isinstance(v, api_pb2.SecurityProfile)
            sc.seccomp.CopyFrom(v)
        else:
            setattr(sc, k, v)
    return sc


def denied(profile: dict[str, object]) -> set[str]:
    rules = profile["syscalls"]
    assert isinstance(rules, list)
    return {n for r in rules if r["action"] == "SCMP_ACT_ERRNO" for n in r["names"]}


def test_no_profile_unconfined_and_privileged_have_no_filter() -> None:
    default = api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
    assert profile_for(ctx(), set()) is None
    assert (
        profile_for(
            ctx(seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.Unconfined)),
            set(),
        )
        is None
    )
    assert profile_for(ctx(seccomp=default, privileged=True), set()) is None
    assert profile_for(ctx(seccomp_profile_path="unconfined"), set()) is None


def test_runtime_default_denies_and_gives_back_with_capabilities() -> None:
    default = api_pb2.SecurityProfile()  # RuntimeDefault is the zero value
    plain = profile_for(ctx(seccomp=default), set())
    assert plain is not None and plain["defaultAction"] == "SCMP_ACT_ALLOW"
    assert {"mount", "keyctl", "kexec_load", "bpf", "unshare"} <= denied(plain)
    assert "ptrace" not in denied(plain) and "read" not in denied(plain)
    admin = profile_for(ctx(seccomp=default), {"CAP_SYS_ADMIN"})
    assert admin is not None and "mount" not in denied(admin) and "keyctl" in denied(admin)
    assert profile_for(ctx(seccomp_profile_path="runtime/default"), set()) == plain


def test_localhost_profile_in_docker_format(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "archMap": [
                    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}
                ],
                "syscalls": [
                    {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
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
                ],
            }
        )
    )
    ref = api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=str(f)
    )
    p = profile_for(ctx(seccomp=ref), set())
    assert p is not None
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert p["syscalls"] == [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        {
            "names": ["chmod"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "args": [{"index": 1, "value": 256, "op": "SCMP_CMP_EQ"}],
        },
    ]  # the mount rule needs CAP_SYS_ADMIN, which this container lacks
    with_admin = profile_for(ctx(seccomp=ref), {"CAP_SYS_ADMIN"})
    assert with_admin is not None and len(with_admin["syscalls"]) == 3
    assert profile_for(ctx(seccomp_profile_path=f"localhost{f}"), set()) == p


@pytest.mark.parametrize("ref", ["relative.json", "/no/such/profile.json"])
def test_bad_localhost_profiles_are_invalid_argument(ref: str, tmp_path: Path) -> None:
    profile = api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=ref
    )
    with pytest.raises(InvalidArgument, match="seccomp"):
        profile_for(ctx(seccomp=profile), set())
    bad = tmp_path / "bad.json"
    bad.write_text('{"syscalls": []}')
    profile.localhost_ref = str(bad)
    with pytest.raises(InvalidArgument, match="defaultAction"):
        profile_for(ctx(seccomp=profile), set())
