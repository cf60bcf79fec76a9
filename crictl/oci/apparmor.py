"""AppArmor for a container, from its CRI security context, as containerd's CRI decides it.

* The profile asked for is `apparmor` (a SecurityProfile) or, from older kubelets, the
  deprecated `apparmor_profile` string (`runtime/default`, `unconfined`, `localhost/<name>`).
  A type outside the enum, a Localhost profile without a name or a string of another shape is
  INVALID_ARGUMENT naming the field, whatever the host.
* On a host without AppArmor (`/sys/module/apparmor/parameters/enabled` is not `Y`), nothing is
  applied and the reason is kept for the verbose ContainerStatus: containerd does the same.
* On a host with AppArmor: Localhost applies the named profile, which must be loaded (listed in
  `/sys/kernel/security/apparmor/profiles`), else FAILED_PRECONDITION naming it. RuntimeDefault
  (and no profile, for a container that is not privileged) applies `crictld-default`, which the
  daemon loads at start (`load_default`: `apparmor_default.profile` beside this module, through
  apparmor_parser, as containerd loads its own); if that failed, nothing is applied and the
  verbose status says so. Privileged containers and Unconfined get no profile.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from crictl import errors
from crictl.gen.cri.runtime.v1 import api_pb2

ENABLED = Path("/sys/module/apparmor/parameters/enabled")
PROFILES = Path("/sys/kernel/security/apparmor/profiles")
DEFAULT_PROFILE = "crictld-default"
DEFAULT_TEXT = Path(__file__).with_name("apparmor_default.profile")
RUNTIME_DEFAULT, UNCONFINED, LOCALHOST = "runtime/default", "unconfined", "localhost/"


@dataclass(frozen=True)
class Decision:
    profile: str | None  # the OCI spec's process.apparmorProfile, or None
    reason: str  # why, for the verbose status


FIELD = "config.linux.security_context"


def asked(sc: api_pb2.LinuxContainerSecurityContext) -> str:
    """The profile asked for, in the deprecated string form ("" when none); validated."""
    if sc.HasField("apparmor"):
        kind, ref = sc.apparmor.profile_type, sc.apparmor.localhost_ref
        if kind == api_pb2.SecurityProfile.RuntimeDefault:
            return RUNTIME_DEFAULT
        if kind == api_pb2.SecurityProfile.Unconfined:
            return UNCONFINED
        if kind == api_pb2.SecurityProfile.Localhost:
            name = ref.removeprefix(LOCALHOST)
            _name(f"{FIELD}.apparmor.localhost_ref", name)
            return LOCALHOST + name
        raise errors.InvalidArgument(f"{FIELD}.apparmor.profile_type: {kind} is not a profile type")
    given = sc.apparmor_profile
    if given in ("", RUNTIME_DEFAULT, UNCONFINED):
        return given
    if given.startswith(LOCALHOST):
        _name(f"{FIELD}.apparmor_profile", given.removeprefix(LOCALHOST))
        return given
    raise errors.InvalidArgument(
        f"{FIELD}.apparmor_profile: {given[:80]!r} is not runtime/default, "
        "unconfined or localhost/<profile>"
    )


def _name(field: str, name: str) -> None:
    if not name:
        raise errors.InvalidArgument(f"{field}: a Localhost AppArmor profile needs a name")
    if len(name) > 255 or any(c in name for c in "\0\n") or name != name.strip():
        raise errors.InvalidArgument(f"{field}: {name[:80]!r} is not an AppArmor profile name")


def host_enabled() -> bool:
    try:
        return ENABLED.read_text().strip() == "Y"
    except OSError:
        return False


def loaded(name: str) -> bool:
    try:
        lines = PROFILES.read_text().splitlines()
    except OSError:
        return False
    return any(line.rsplit(" (", 1)[0] == name for line in lines)


def decide(sc: api_pb2.LinuxContainerSecurityContext, *, check_loaded: bool = True) -> Decision:
    profile = asked(sc)
    if profile == UNCONFINED:
        return Decision(None, "unconfined, as asked")
    if sc.privileged and profile in ("", RUNTIME_DEFAULT):
        return Decision(None, "privileged container: no AppArmor profile")
    wanted = "RuntimeDefault" if profile in ("", RUNTIME_DEFAULT) else profile
    if not host_enabled():
        return Decision(None, f"{wanted} not applied: AppArmor is not enabled on this host")
    if profile.startswith(LOCALHOST):
        name = profile.removeprefix(LOCALHOST)
        if check_loaded and not loaded(name):
            raise errors.FailedPrecondition(
                f"{FIELD}.apparmor: the AppArmor profile {name!r} is not loaded"
            )
        return Decision(name, f"Localhost profile {name!r}")
    if loaded(DEFAULT_PROFILE):
        return Decision(DEFAULT_PROFILE, f"RuntimeDefault as {DEFAULT_PROFILE!r}")
    return Decision(
        None,
        f"RuntimeDefault not applied: the {DEFAULT_PROFILE!r} AppArmor profile is not loaded "
        "(see the daemon's log at start)",
    )


def load_default(state_dir: Path) -> str:
    """Loads (or replaces) crictld-default where the host has AppArmor; says what it did."""
    if not host_enabled():
        return "AppArmor is not enabled on this host"
    parser = shutil.which("apparmor_parser")
    if parser is None:
        return "apparmor_parser is not installed: RuntimeDefault cannot be applied"
    target = state_dir / "apparmor" / DEFAULT_PROFILE
    target.parent.mkdir(mode=0o700, exist_ok=True)
    target.write_text(DEFAULT_TEXT.read_text())
    done = subprocess.run(
        [parser, "--replace", "--skip-cache", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return f"apparmor_parser failed ({done.returncode}): {done.stderr.strip()[:500]}"
    return f"loaded {DEFAULT_PROFILE}"
