"""AppArmor decisions (crictl/oci/apparmor.py) on a host with and without AppArmor."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import cast

import pytest

from crictl import errors
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.oci import apparmor

SP = api_pb2.SecurityProfile


def context(**fields: object) -> api_pb2.LinuxContainerSecurityContext:
    return api_pb2.LinuxContainerSecurityContext(**fields)  # type: ignore[arg-type]


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A host whose AppArmor state the test writes: `enabled` and the loaded `profiles`."""
    monkeypatch.setattr(apparmor, "ENABLED", tmp_path / "enabled")
    monkeypatch.setattr(apparmor, "PROFILES", tmp_path / "profiles")
    return tmp_path


def test_without_apparmor_nothing_is_applied_and_the_reason_says_so(host: Path) -> None:
    for sc in (
        context(),
        context(apparmor=SP(profile_type=SP.RuntimeDefault)),
        context(apparmor_profile="runtime/default"),
        context(apparmor=SP(profile_type=SP.Localhost, localhost_ref="mine")),
    ):
        d = apparmor.decide(sc)
        assert d.profile is None and "AppArmor is not enabled on this host" in d.reason, d
    (host / "enabled").write_text("N\n")
    assert apparmor.decide(context()).profile is None


def test_with_apparmor_localhost_must_be_loaded(host: Path) -> None:
    (host / "enabled").write_text("Y\n")
    (host / "profiles").write_text("mine (enforce)\nother (complain)\n")
    for sc in (
        context(apparmor=SP(profile_type=SP.Localhost, localhost_ref="mine")),
        context(apparmor=SP(profile_type=SP.Localhost, localhost_ref="localhost/mine")),
        context(apparmor_profile="localhost/mine"),
    ):
        assert apparmor.decide(sc).profile == "mine"
    with pytest.raises(errors.FailedPrecondition, match="'missing' is not loaded"):
        apparmor.decide(context(apparmor_profile="localhost/missing"))
    # the spec is built later without the check: the profile may be loaded by then
    assert (
        apparmor.decide(context(apparmor_profile="localhost/x"), check_loaded=False).profile == "x"
    )


def test_with_apparmor_runtime_default_needs_the_default_profile(host: Path) -> None:
    (host / "enabled").write_text("Y\n")
    (host / "profiles").write_text("")
    d = apparmor.decide(context(apparmor=SP(profile_type=SP.RuntimeDefault)))
    assert d.profile is None and "not loaded" in d.reason
    (host / "profiles").write_text("crictld-default (enforce)\n")
    assert apparmor.decide(context()).profile == "crictld-default"
    assert apparmor.decide(context(privileged=True)).profile is None
    assert apparmor.decide(context(apparmor=SP(profile_type=SP.Unconfined))).profile is None


def test_bad_profiles_are_invalid_whatever_the_host(host: Path) -> None:
    for sc, field in (
        (context(apparmor=SP(profile_type=cast("SP.ProfileType.ValueType", 7))), "profile_type"),
        (context(apparmor=SP(profile_type=SP.Localhost)), "apparmor.localhost_ref"),
        (context(apparmor=SP(profile_type=SP.Localhost, localhost_ref="a\0b")), "localhost_ref"),
        (context(apparmor_profile="docker-default"), "apparmor_profile"),
        (context(apparmor_profile="localhost/"), "apparmor_profile"),
    ):
        with pytest.raises(errors.InvalidArgument, match=field):
            apparmor.decide(sc)


def test_the_default_profile_parses() -> None:
    """apparmor_parser (Debian's `apparmor`, installed by hack/install-deps.sh) compiles the
    profile without loading it: this kernel has no AppArmor."""
    parser = shutil.which("apparmor_parser")
    assert parser, "apparmor_parser is missing: run hack/install-deps.sh"
    done = subprocess.run(
        [parser, "--skip-kernel-load", "--skip-cache", str(apparmor.DEFAULT_TEXT)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_load_default_runs_the_parser_only_where_apparmor_is(
    host: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = host / "state"
    state.mkdir()
    assert apparmor.load_default(state) == "AppArmor is not enabled on this host"
    assert not (state / "apparmor").exists()

    (host / "enabled").write_text("Y\n")
    (host / "profiles").write_text("")
    bin_dir = host / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apparmor_parser"  # records its arguments and "loads" the profile
    fake.write_text(
        f'#!/bin/sh\necho "$@" > {host}/args\necho "crictld-default (enforce)" >> {host}/profiles\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert apparmor.decide(context()).profile is None
    assert apparmor.load_default(state) == "loaded crictld-default"
    loaded = state / "apparmor" / "crictld-default"
    assert loaded.read_text() == apparmor.DEFAULT_TEXT.read_text()
    assert (host / "args").read_text().split() == ["--replace", "--skip-cache", str(loaded)]
    assert apparmor.decide(context()).profile == "crictld-default"

    fake.write_text("#!/bin/sh\necho 'bad profile' >&2\nexit 3\n")
    assert apparmor.load_default(state) == "apparmor_parser failed (3): bad profile"
