"""OCI runtime specs (runtime-spec 1.0.2) for the sandbox's pause container."""

from __future__ import annotations

import functools
import os
import posixpath
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crictl.errors import InvalidArgument
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.oci import apparmor
from crictl.oci.seccomp import profile_for

OCI_VERSION = "1.0.2-dev"
SANDBOX_OOM_SCORE_ADJ = -998  # containerd's defaultSandboxOOMAdj
SANDBOX_CPU_SHARES = 2  # containerd's defaultSandboxCPUshares
DEFAULT_SHM_SIZE = 64 << 20

# containerd's default capability set (oci.defaultUnixCaps).
DEFAULT_CAPS = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]


def default_mounts() -> list[dict[str, Any]]:
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]


@dataclass(frozen=True)
class SandboxFiles:
    """Files the runtime writes for the pod, mounted into its containers."""

    hostname: Path
    hosts: Path
    resolv_conf: Path | None  # None: the host's /etc/resolv.conf
    shm: Path | None  # a per-pod tmpfs; None with the host's IPC namespace


def image_process(image_config: dict[str, Any]) -> tuple[list[str], list[str], str, str]:
    """(args, env, cwd, user) from an image config's `config` section."""
    cfg = image_config.get("config") or {}
    args = list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
    return args, list(cfg.get("Env") or []), cfg.get("WorkingDir") or "/", cfg.get("User") or ""


def _numeric_user(user: str) -> tuple[int, int]:
    """uid and gid from a numeric image USER ("65535:65535"); names resolve to root here, the
    pause image uses numbers."""
    name, _, group = user.partition(":")
    uid = int(name) if name.isascii() and name.isdigit() else 0
    gid = int(group) if group.isascii() and group.isdigit() else (uid if group == "" else 0)
    return uid, gid


def cgroups_path(parent: str, sandbox_id: str, systemd: bool = False) -> str:
    """The task's cgroup under kubelet's parent. cgroupfs: a path. systemd (runc's systemd
    cgroup manager): `slice:prefix:name`, the slice being the parent's last element (kubelet
    passes a path of slices), as containerd's CRI writes it."""
    if systemd:
        slice_ = parent.rstrip("/").rsplit("/", 1)[-1] if parent else "system.slice"
        return f"{slice_}:crictld:{sandbox_id}"
    return f"{parent.rstrip('/')}/{sandbox_id}" if parent else f"/crictld/{sandbox_id}"


def sandbox_spec(
    sandbox_id: str,
    config: api_pb2.PodSandboxConfig,
    image_config: dict[str, Any],
    netns_path: str | None,
    files: SandboxFiles,
    oom_score_adj: int,
    systemd_cgroup: bool = False,
) -> dict[str, Any]:
    """The pause container's spec. `netns_path` None means the host's network namespace;
    `oom_score_adj` is already clamped to what the daemon may set."""
    args, env, cwd, image_user = image_process(image_config)
    linux = config.linux
    sc = linux.security_context
    opts = sc.namespace_options
    uid, gid = _numeric_user(image_user)
    if sc.HasField("run_as_user"):
        uid = sc.run_as_user.value
    if sc.HasField("run_as_group"):
        gid = sc.run_as_group.value
    privileged = sc.privileged
    host_network = opts.network == api_pb2.NODE

    namespaces: list[dict[str, str]] = [{"type": "mount"}]
    if opts.pid != api_pb2.NODE:
        namespaces.append({"type": "pid"})
    if opts.ipc != api_pb2.NODE:
        namespaces.append({"type": "ipc"})
    if not host_network:
        namespaces.append({"type": "uts"})
        namespaces.append({"type": "network", "path": netns_path or ""})

    mounts = default_mounts()
    mounts.append(
        {
            "destination": "/etc/hostname",
            "type": "bind",
            "source": str(files.hostname),
            "options": ["rbind", "ro"],
        }
    )
    mounts.append(
        {
            "destination": "/etc/hosts",
            "type": "bind",
            "source": str(files.hosts),
            "options": ["rbind", "ro"],
        }
    )
    resolv = str(files.resolv_conf) if files.resolv_conf else "/etc/resolv.conf"
    mounts.append(
        {
            "destination": "/etc/resolv.conf",
            "type": "bind",
            "source": resolv,
            "options": ["rbind", "ro"],
        }
    )
    if files.shm is not None:
        mounts.append(
            {
                "destination": "/dev/shm",
                "type": "bind",
                "source": str(files.shm),
                "options": ["rbind", "rw"],
            }
        )
    else:
        mounts.append(
            {
                "destination": "/dev/shm",
                "type": "bind",
                "source": "/dev/shm",
                "options": ["rbind", "rw"],
            }
        )

    caps = DEFAULT_CAPS if not privileged else _all_caps()
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": uid, "gid": gid, "additionalGids": list(sc.supplemental_groups)},
        "args": args or ["/pause"],
        "env": env,
        "cwd": cwd,
        "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": not privileged,
        "oomScoreAdj": oom_score_adj,
    }
    resources: dict[str, Any] = {
        "devices": [{"allow": False, "access": "rwm"}],
        "cpu": {"shares": SANDBOX_CPU_SHARES},
    }
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "annotations": {
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-id": sandbox_id,
            "io.kubernetes.cri.sandbox-name": config.metadata.name,
            "io.kubernetes.cri.sandbox-namespace": config.metadata.namespace,
            "io.kubernetes.cri.sandbox-uid": config.metadata.uid,
            "io.kubernetes.cri.sandbox-log-directory": config.log_directory,
        },
        "linux": {
            "namespaces": namespaces,
            "resources": resources,
            "cgroupsPath": cgroups_path(linux.cgroup_parent, sandbox_id, systemd_cgroup),
            "sysctl": dict(linux.sysctls),
        },
    }
    if not host_network and config.hostname:
        spec["hostname"] = config.hostname
    if not privileged:
        spec["linux"]["maskedPaths"] = list(MASKED_PATHS)
        spec["linux"]["readonlyPaths"] = list(READONLY_PATHS)
    return spec


# Linux capabilities by bit number (include/uapi/linux/capability.h).
CAPS_BY_BIT = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]


@functools.cache
def _all_caps() -> list[str]:
    """Every capability the daemon itself may hand on (its bounding set), as containerd's
    WithAllCurrentCapabilities: asking runc for one outside it (CAP_SYS_RESOURCE here) fails."""
    try:
        line = next(
            x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("CapBnd:")
        )
        bounding = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return list(DEFAULT_CAPS)
    return [name for bit, name in enumerate(CAPS_BY_BIT) if bounding >> bit & 1]


def resolv_conf(dns: api_pb2.DNSConfig) -> str | None:
    """resolv.conf text from the pod's DNSConfig; None when the pod gives none."""
    if not (dns.servers or dns.searches or dns.options):
        return None
    lines = [f"nameserver {s}" for s in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def hosts_file(hostname: str, ip: str | None) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if ip and hostname:
        lines.append(f"{ip}\t{hostname}")
    return "\n".join(lines) + "\n"


# -- app containers ---------------------------------------------------------------------------

PROPAGATION = {
    api_pb2.PROPAGATION_PRIVATE: "rprivate",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}


@dataclass(frozen=True)
class SandboxRef:
    """What an app container joins: the pause task's namespaces and the pod's files."""

    sandbox_id: str
    config: api_pb2.PodSandboxConfig
    pause_pid: int
    netns_path: str | None  # None: host network
    files: SandboxFiles


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    additional_gids: list[int]


def process_args(config: api_pb2.ContainerConfig, image_config: dict[str, Any]) -> list[str]:
    """CRI command/args merged with the image's ENTRYPOINT/CMD, as docker and containerd do."""
    cfg = image_config.get("config") or {}
    command, args = list(config.command), list(config.args)
    if not command:
        if not args:
            args = list(cfg.get("Cmd") or [])
        command = list(cfg.get("Entrypoint") or [])
    return command + args


def merge_env(image_env: list[str], config: api_pb2.ContainerConfig) -> list[str]:
    env: dict[str, str] = {}
    for item in image_env:
        key, _, value = item.partition("=")
        env[key] = value
    for kv in config.envs:
        env[kv.key] = kv.value.decode(errors="replace")  # bytes since cri-api 0.37
    return [f"{k}={v}" for k, v in env.items()]


def container_spec(
    container_id: str,
    config: api_pb2.ContainerConfig,
    sandbox: SandboxRef,
    image_config: dict[str, Any],
    user: User,
    oom_score_adj: int,
    target_pid: int | None = None,
    systemd_cgroup: bool = False,
    image_volumes: Mapping[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    linux = config.linux
    sc = linux.security_context
    opts = sc.namespace_options
    privileged = sc.privileged
    pod_opts = sandbox.config.linux.security_context.namespace_options
    args = process_args(config, image_config)
    _, image_env, image_cwd, _ = image_process(image_config)

    ns_base = f"/proc/{sandbox.pause_pid}/ns"
    namespaces: list[dict[str, str]] = [{"type": "mount"}]
    if sandbox.netns_path is not None:
        namespaces.append({"type": "network", "path": sandbox.netns_path})
    if pod_opts.ipc != api_pb2.NODE:
        namespaces.append({"type": "ipc", "path": f"{ns_base}/ipc"})
    if pod_opts.network != api_pb2.NODE:
        namespaces.append({"type": "uts", "path": f"{ns_base}/uts"})
    if opts.pid == api_pb2.POD:
        namespaces.append({"type": "pid", "path": f"{ns_base}/pid"})
    elif opts.pid == api_pb2.TARGET and target_pid:
        namespaces.append({"type": "pid", "path": f"/proc/{target_pid}/ns/pid"})
    elif opts.pid != api_pb2.NODE:
        namespaces.append({"type": "pid"})

    f = sandbox.files
    mounts = default_mounts()
    if privileged:
        for m in mounts:
            if m["destination"] in ("/sys", "/sys/fs/cgroup"):
                m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]
    taken = {m.container_path for m in config.mounts}
    pod_files = [
        ("/etc/hostname", str(f.hostname)),
        ("/etc/hosts", str(f.hosts)),
        ("/etc/resolv.conf", str(f.resolv_conf) if f.resolv_conf else "/etc/resolv.conf"),
        ("/dev/shm", str(f.shm) if f.shm else "/dev/shm"),
    ]
    for dest, source in pod_files:
        if dest not in taken:
            mounts.append(
                {
                    "destination": dest,
                    "type": "bind",
                    "source": source,
                    "options": ["rbind", "rw" if dest == "/dev/shm" else "ro"],
                }
            )
    # Parents before what is mounted below them, whatever order kubelet sent (as containerd).
    # An image volume (`image_volumes`, by the mount's index) is its image's read-only snapshot.
    ordered = sorted(enumerate(config.mounts), key=lambda im: mount_depth(im[1].container_path))
    for index, cm in ordered:
        volume = (image_volumes or {}).get(index)
        if volume is not None:
            mounts.append({"destination": cm.container_path, **volume})
            continue
        options = [
            "rbind",
            "rro" if cm.recursive_read_only else "ro" if cm.readonly else "rw",
            PROPAGATION.get(cm.propagation, "rprivate"),
        ]
        mounts.append(
            {
                "destination": cm.container_path,
                "type": "bind",
                "source": cm.host_path,
                "options": options,
            }
        )

    caps = set(_all_caps() if privileged else DEFAULT_CAPS)
    if not privileged:
        for c in sc.capabilities.add_capabilities:
            caps |= set(_all_caps()) if c.upper() == "ALL" else {_cap(c)}
        for c in sc.capabilities.drop_capabilities:
            caps = set() if c.upper() == "ALL" else caps - {_cap(c)}
    cap_list = sorted(caps)
    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
        "args": args,
        "env": merge_env(image_env, config),
        "cwd": config.working_dir or image_cwd,
        "capabilities": {k: cap_list for k in ("bounding", "effective", "permitted")},
        # No rlimits: the process inherits the shim's, as with containerd's CRI (raising
        # RLIMIT_NOFILE would need CAP_SYS_RESOURCE, which the daemon lacks here).
        "noNewPrivileges": sc.no_new_privs,
        "oomScoreAdj": oom_score_adj,
    }
    resources: dict[str, Any] = {"devices": [{"allow": privileged, "access": "rwm"}]}
    resources.update(linux_resources(linux.resources))
    devices = [device_entry(d) for d in config.devices]
    resources["devices"] += [
        {
            "allow": True,
            "type": d["type"],
            "major": d["major"],
            "minor": d["minor"],
            "access": perms,
        }
        for d, perms in zip(devices, (d.permissions or "rwm" for d in config.devices), strict=True)
    ]
    parent = sandbox.config.linux.cgroup_parent
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": config.metadata.name,
            "io.kubernetes.cri.sandbox-id": sandbox.sandbox_id,
            "io.kubernetes.cri.image-name": config.image.image,
        },
        "linux": {
            "namespaces": namespaces,
            "resources": resources,
            "cgroupsPath": cgroups_path(parent, container_id, systemd_cgroup),
        },
    }
    if devices:
        spec["linux"]["devices"] = devices
    if not privileged:
        spec["linux"]["maskedPaths"] = (
            list(sc.masked_paths) if sc.masked_paths else list(MASKED_PATHS)
        )
        spec["linux"]["readonlyPaths"] = (
            list(sc.readonly_paths) if sc.readonly_paths else list(READONLY_PATHS)
        )
    seccomp = profile_for(sc, caps)
    if seccomp is not None:
        spec["linux"]["seccomp"] = seccomp
    armor = apparmor.decide(sc, check_loaded=False)
    if armor.profile is not None:
        process["apparmorProfile"] = armor.profile
    # Propagation into and out of the container needs the rootfs to propagate too.
    modes = {cm.propagation for cm in config.mounts}
    if api_pb2.PROPAGATION_BIDIRECTIONAL in modes:
        spec["linux"]["rootfsPropagation"] = "rshared"
    elif api_pb2.PROPAGATION_HOST_TO_CONTAINER in modes:
        spec["linux"]["rootfsPropagation"] = "rslave"
    return spec


def device_entry(device: api_pb2.Device) -> dict[str, Any]:
    """An OCI linux.devices entry for a host device node (character or block)."""
    try:
        st = os.stat(device.host_path)
    except OSError as e:
        raise InvalidArgument(f"device {device.host_path}: {e.strerror}") from e
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise InvalidArgument(f"device {device.host_path} is not a device node")
    return {
        "path": device.container_path or device.host_path,
        "type": kind,
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


@functools.cache
def recursive_read_only_supported() -> bool:
    """runc's "rro" mount option needs mount_setattr(2): Linux 5.12 or later (runc 1.1 has it)."""
    release = os.uname().release.split("-", 1)[0].split(".")
    try:
        major, minor = int(release[0]), int(release[1])
    except (ValueError, IndexError):
        return False
    return (major, minor) >= (5, 12)


def mount_depth(path: str) -> int:
    """How many components a destination has: "/" 0, "/a" 1, "/a/b/" 2."""
    return len([p for p in posixpath.normpath(path).split("/") if p])


def linux_resources(res: api_pb2.LinuxContainerResources) -> dict[str, Any]:
    """The OCI `linux.resources` cpu and memory parts of CRI container resources."""
    out: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if res.cpu_shares:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota:
        cpu["quota"] = res.cpu_quota
    if res.cpu_period:
        cpu["period"] = res.cpu_period
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        cpu["mems"] = res.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    if res.memory_limit_in_bytes:
        out["memory"] = {"limit": res.memory_limit_in_bytes}
    return out


def _cap(name: str) -> str:
    name = name.upper()
    return name if name.startswith("CAP_") else f"CAP_{name}"


def _valid_id(text: str) -> bool:
    """A uid or gid as /etc/passwd and /etc/group may hold one: decimal, below 2**32 - 1."""
    return text.isascii() and text.isdigit() and int(text) < 0xFFFFFFFF


def resolve_user(config: api_pb2.ContainerConfig, image_user: str, passwd: str, group: str) -> User:
    """uid, gid and additional groups, from the security context or the image's USER, with
    names looked up in the image's /etc/passwd and /etc/group."""
    sc = config.linux.security_context
    # Lines an image may have made up (ids not decimal, negative or out of range) are skipped,
    # as glibc's files backend does: a numeric user must still work in spite of them.
    users = [
        f
        for f in (line.split(":") for line in passwd.splitlines() if line.count(":") >= 6)
        if _valid_id(f[2]) and _valid_id(f[3])
    ]
    groups = [
        f
        for f in (line.split(":") for line in group.splitlines() if line.count(":") >= 3)
        if _valid_id(f[2])
    ]
    name_part, _, group_part = image_user.partition(":")
    if sc.HasField("run_as_user"):
        uid: int | None = sc.run_as_user.value
        username = None
    elif sc.run_as_username:
        uid, username = None, sc.run_as_username
    elif name_part.isascii() and name_part.isdigit():
        uid, username = int(name_part), None
    else:
        uid, username = (None, name_part) if name_part else (0, None)
    gid: int | None = None
    if username is not None:
        entry = next((u for u in users if u[0] == username), None)
        if entry is None:
            raise ValueError(f"user {username!r} is not in the image's /etc/passwd")
        uid, gid = int(entry[2]), int(entry[3])
    assert uid is not None
    if gid is None:
        entry = next((u for u in users if u[2] == str(uid)), None)
        gid = int(entry[3]) if entry is not None else 0
    if sc.HasField("run_as_group"):
        gid = sc.run_as_group.value
    elif group_part:
        if group_part.isascii() and group_part.isdigit():
            gid = int(group_part)
        else:
            g = next((x for x in groups if x[0] == group_part), None)
            if g is None:
                raise ValueError(f"group {group_part!r} is not in the image's /etc/group")
            gid = int(g[2])
    names = {u[0] for u in users if u[2] == str(uid)}
    extra = [int(g[2]) for g in groups if names & set(g[3].split(","))]
    extra += list(sc.supplemental_groups)
    return User(uid, gid, sorted({gid, *extra}))


def image_volume_mount(snapshot_mounts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The spec mount (less its destination) of an image's read-only view snapshot, from the
    mounts containerd answers: one layer is a read-only bind of it, several an overlay of
    lower dirs only (read-only by construction)."""
    if len(snapshot_mounts) != 1:
        raise InvalidArgument(f"image volume: {len(snapshot_mounts)} mounts for one view")
    m = snapshot_mounts[0]
    options = [o for o in m["options"] if o not in ("rw", "ro")]
    if m["type"] == "bind":
        return {"type": "bind", "source": m["source"], "options": [*options, "ro", "rprivate"]}
    return {"type": m["type"], "source": m["source"], "options": [*options, "ro"]}
