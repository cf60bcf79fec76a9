"""Daemon settings: defaults, the TOML config file, and command-line overrides.

Every path and address is a setting so that tests can run many isolated daemons side by side.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from crictl.errors import InvalidArgument

DEFAULT_SOCKET = Path("/run/crictld/crictld.sock")
DEFAULT_STATE_DIR = Path("/var/lib/crictld")
DEFAULT_CONTAINERD_SOCKET = Path("/run/containerd/containerd.sock")
# The managed containerd's state dir (its task bundles and FIFOs, containerd's own default being
# /run/containerd) when the state dir is the default one: under /run, a tmpfs on a node.
DEFAULT_CONTAINERD_STATE_DIR = Path("/run/crictld/containerd")
MANAGED = "managed"
# How long a managed containerd has to answer: one found running (a crictld before this one
# started it; it may still be re-loading its shims) before it is replaced, one started now
# before the start fails.
DEFAULT_CONTAINERD_START_TIMEOUT = 30.0
CGROUP_DRIVERS = ("cgroupfs", "systemd")


@dataclass
class Config:
    socket: Path = DEFAULT_SOCKET
    # The CRI socket is 0660, owned by this group (a name or a gid); "" = the daemon's own
    # group (root's): kubelet runs as root.
    socket_group: str = ""
    state_dir: Path = DEFAULT_STATE_DIR
    # "" = the standard socket if it answers, else "managed"; "managed"; or a socket path.
    containerd: str = ""
    containerd_namespace: str = "crictld"
    containerd_bin: str = "containerd"
    # The managed containerd's state dir: what it writes for each task it starts (bundles,
    # FIFOs), gone at a reboot. None = /run/crictld/containerd with the default state dir,
    # else <state dir>/containerd/state (a daemon of its own state dir keeps all it owns there).
    containerd_state_dir: Path | None = None
    # seconds a managed containerd has to answer (DEFAULT_CONTAINERD_START_TIMEOUT above)
    containerd_start_timeout: float = DEFAULT_CONTAINERD_START_TIMEOUT
    cni_conf_dir: Path = Path("/etc/cni/net.d")
    # A CNI config template rendered with kubelet's pod CIDR (UpdateRuntimeConfig) into
    # cni_conf_dir/10-crictld-net.conflist, as containerd's conf_template.
    cni_conf_template: Path | None = None
    cni_bin_dirs: list[Path] = field(
        default_factory=lambda: [Path("/opt/cni/bin"), Path("/usr/lib/cni")]
    )
    netns_dir: Path = Path("/run/crictld/netns")
    pause_image: str = "registry.k8s.io/pause:3.10"
    # RuntimeClass handlers beyond runc's own: name -> a runc-compatible binary
    # (`[runtime_handlers] gvisor = "/usr/local/bin/runsc"`), given to containerd's runc shim.
    runtime_handlers: dict[str, str] = field(default_factory=dict)
    # host -> mirror endpoints tried in order before the host itself
    registry_mirrors: dict[str, list[str]] = field(default_factory=dict)
    insecure_registries: list[str] = field(default_factory=list)
    # host -> {"username", "password"} or {"auth"} (base64 user:pass) or {"identity_token"}
    registry_auths: dict[str, dict[str, str]] = field(default_factory=dict)
    # a pull that moves no byte for this long fails, naming the stalled blob
    image_pull_progress_timeout: float = 60.0
    # The streaming server (Exec/Attach/PortForward URLs): loopback and a random port by
    # default, as containerd's; kubelet proxies to it, so it need not be reachable from outside.
    stream_server_address: str = "127.0.0.1"
    stream_server_port: int = 0
    # kubelet's --cgroup-driver: "cgroupfs" or "systemd" (runc's systemd cgroup manager)
    cgroup_driver: str = "cgroupfs"
    # the event log keeps its newest rows, this many (~250 bytes each); 0 = all, for ever
    event_log_rows: int = 100_000
    # The orphan sweep leaves what is younger than this (seconds) to whatever is making it; 0
    # takes everything no row owns at once (a database moved aside: docs/node.md)
    orphan_grace: float = 60.0
    # HOST:PORT for Prometheus' /metrics; "" = off
    metrics_address: str = ""
    log_level: str = "INFO"
    # crash tests only: die as SIGKILL would at this named point (crictl/reconciler/faults.py)
    fault_point: str | None = None

    @property
    def db_path(self) -> Path:
        return self.state_dir / "crictld.db"

    @property
    def managed_containerd_dir(self) -> Path:
        return self.state_dir / "containerd"

    @property
    def managed_containerd_state_dir(self) -> Path:
        if self.containerd_state_dir is not None:
            return self.containerd_state_dir
        if self.state_dir == DEFAULT_STATE_DIR:
            return DEFAULT_CONTAINERD_STATE_DIR
        return self.managed_containerd_dir / "state"

    @property
    def systemd_cgroup(self) -> bool:
        return self.cgroup_driver == "systemd"

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """A copy with the given settings replaced (None means "not given")."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in values:
                raise InvalidArgument(f"unknown setting {key!r}")
            values[key] = value
        if values["cgroup_driver"] not in CGROUP_DRIVERS:
            raise InvalidArgument(
                f"cgroup_driver {values['cgroup_driver']!r}: one of {', '.join(CGROUP_DRIVERS)}"
            )
        return Config(**values)


_HANDLER = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_PATH_KEYS = {
    "socket",
    "state_dir",
    "containerd_state_dir",
    "cni_conf_dir",
    "cni_conf_template",
    "netns_dir",
}
_STR_KEYS = {
    "socket_group",
    "containerd",
    "containerd_namespace",
    "containerd_bin",
    "pause_image",
    "log_level",
    "stream_server_address",
    "metrics_address",
    "cgroup_driver",
}


def load_config_file(path: Path) -> Config:
    """Reads a TOML file whose keys are the settings above (with - or _), e.g.

    state_dir = "/var/lib/crictld"
    cni_bin_dirs = ["/opt/cni/bin"]
    insecure_registries = ["registry.local:5000"]
    [registry_mirrors]
    "docker.io" = ["http://127.0.0.1:5000"]
    """
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidArgument(f"config file {path}: {e}") from e
    return Config().with_overrides(parse_settings(raw, source=str(path)))


def parse_settings(raw: dict[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in _PATH_KEYS and isinstance(value, str):
            out[name] = Path(value)
        elif name in _STR_KEYS and isinstance(value, str):
            out[name] = value
        elif name == "cni_bin_dirs" and _is_str_list(value):
            out[name] = [Path(v) for v in value]
        elif name == "insecure_registries" and _is_str_list(value):
            out[name] = list(value)
        elif name == "stream_server_port" and isinstance(value, int | str):
            out[name] = parse_port(value, f"{source}: {key}")
        elif name == "image_pull_progress_timeout" and isinstance(value, int | float):
            if value <= 0:
                raise InvalidArgument(f"{source}: {key} must be positive")
            out[name] = float(value)
        elif (
            name == "containerd_start_timeout"
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            out[name] = parse_timeout(value, f"{source}: {key}")
        elif name == "event_log_rows" and isinstance(value, int) and not isinstance(value, bool):
            out[name] = parse_event_log_rows(value, f"{source}: {key}")
        elif (
            name == "orphan_grace"
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            out[name] = parse_grace(value, f"{source}: {key}")
        elif name == "registry_auths" and isinstance(value, dict):
            auths: dict[str, dict[str, str]] = {}
            for host, entry in value.items():
                allowed = {"username", "password", "auth", "identity_token"}
                if (
                    not isinstance(entry, dict)
                    or not set(entry) <= allowed
                    or not all(isinstance(v, str) for v in entry.values())
                ):
                    raise InvalidArgument(
                        f"{source}: registry_auths.{host} takes strings: {sorted(allowed)}"
                    )
                auths[host] = dict(entry)
            out[name] = auths
        elif name == "runtime_handlers" and isinstance(value, dict):
            handlers: dict[str, str] = {}
            for handler, binary in value.items():
                if not isinstance(binary, str) or not os.path.isabs(binary):
                    raise InvalidArgument(
                        f"{source}: runtime_handlers.{handler} must be an absolute path"
                    )
                if not _HANDLER.fullmatch(handler) or handler == "runc":
                    raise InvalidArgument(
                        f"{source}: runtime_handlers.{handler}: a handler is a DNS label "
                        "(runc is built in)"
                    )
                handlers[handler] = binary
            out[name] = handlers
        elif name == "registry_mirrors" and isinstance(value, dict):
            mirrors: dict[str, list[str]] = {}
            for host, endpoints in value.items():
                if isinstance(endpoints, str):
                    endpoints = [endpoints]
                if not _is_str_list(endpoints):
                    raise InvalidArgument(f"{source}: registry_mirrors.{host} must be strings")
                mirrors[host] = list(endpoints)
            out[name] = mirrors
        else:
            raise InvalidArgument(f"{source}: unknown setting or wrong type: {key} = {value!r}")
    return out


def parse_event_log_rows(value: int | str, what: str) -> int:
    """How many event rows to keep: a whole number, 0 meaning all of them."""
    try:
        rows = int(value)
    except ValueError:
        raise InvalidArgument(f"{what}: {value!r} is no whole number") from None
    if rows < 0:
        raise InvalidArgument(f"{what}: {rows} is negative (0 keeps every row)")
    return rows


def parse_grace(value: float | str, what: str) -> float:
    """A grace in seconds: a finite number, not negative."""
    return _seconds(value, what, zero_allowed=True)


def parse_timeout(value: float | str, what: str) -> float:
    """A timeout in seconds: a finite number above 0."""
    return _seconds(value, what, zero_allowed=False)


def _seconds(value: float | str, what: str, zero_allowed: bool) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidArgument(f"{what}: {value!r} is no number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_allowed):
        least = "0 or more" if zero_allowed else "more than 0"
        raise InvalidArgument(f"{what}: {value!r} is no number of seconds ({least})")
    return seconds


def parse_port(value: int | str, what: str) -> int:
    """A TCP port, 0 meaning "any free one"."""
    try:
        port = int(value)
    except ValueError:
        raise InvalidArgument(f"{what}: {value!r} is no port number") from None
    if not 0 <= port < 65536:
        raise InvalidArgument(f"{what}: {port} is out of range 0-65535")
    return port


def parse_mirror_flags(flags: list[str]) -> dict[str, list[str]]:
    """`--registry-mirror HOST=URL`, repeatable; several for one host keep their order."""
    mirrors: dict[str, list[str]] = {}
    for flag in flags:
        host, sep, url = flag.partition("=")
        if not sep or not host or not url:
            raise InvalidArgument(f"--registry-mirror {flag!r}: expected HOST=URL")
        mirrors.setdefault(host, []).append(url)
    return mirrors


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
