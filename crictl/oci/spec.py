"""OCI runtime specs (runtime-spec 1.0.2) for the sandbox's pause container."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crictl.gen.cri.runtime.v1 import api_pb2

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


def cgroups_path(parent: str, sandbox_id: str) -> str:
    return f"{parent.rstrip('/')}/{sandbox_id}" if parent else f"/crictld/{sandbox_id}"


def sandbox_spec(
    sandbox_id: str,
    config: api_pb2.PodSandboxConfig,
    image_config: dict[str, Any],
    netns_path: str | None,
    files: SandboxFiles,
    oom_score_adj: int,
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
            "cgroupsPath": cgroups_path(linux.cgroup_parent, sandbox_id),
            "sysctl": dict(linux.sysctls),
        },
    }
    if not host_network and config.hostname:
        spec["hostname"] = config.hostname
    if not privileged:
        spec["linux"]["maskedPaths"] = list(MASKED_PATHS)
        spec["linux"]["readonlyPaths"] = list(READONLY_PATHS)
    return spec


def _all_caps() -> list[str]:
    return [
        *DEFAULT_CAPS,
        "CAP_DAC_READ_SEARCH",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_LEASE",
        "CAP_AUDIT_CONTROL",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
    ]


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
