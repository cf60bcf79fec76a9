"""OCI runtime specs (runtime-spec 1.0.2) for the sandbox's pause container."""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crictl.errors import InvalidArgument
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.oci import apparmor
from crictl.oci.opts import (
    SpecOpt,
    compose,
    when,
    with_annotations,
    with_bind,
    with_capabilities,
    with_cgroups_path,
    with_cri_mounts,
    with_devices,
    with_host_devices,
    with_hostname,
    with_linux,
    with_masked_paths,
    with_mounts,
    with_namespaces,
    with_process,
    with_readonly_rootfs,
    with_resources,
    with_rootfs_propagation,
    with_writable_sysfs,
)
from crictl.oci.seccomp import profile_for

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
    "/proc/interrupts",  # these two: kubelet v1.34's list has them too
    "/sys/devices/virtual/powercap",
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
    resolv_conf: Path | None  # None: the node's own (a pod an older crictld made)
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


def pod_hostname(config: api_pb2.PodSandboxConfig) -> str:
    """The pod's hostname (its /etc/hostname, its containers' $HOSTNAME): the one asked for;
    the node's with the host's network, or when none was asked for."""
    if config.linux.security_context.namespace_options.network == api_pb2.NODE:
        return os.uname().nodename
    return config.hostname or os.uname().nodename


def merge_env(
    image_env: list[str], config: api_pb2.ContainerConfig, hostname: str = ""
) -> list[str]:
    """HOSTNAME (as containerd's CRI and CRI-O set it), then the image's variables, then the
    container config's: each later one overrides."""
    env: dict[str, str] = {"HOSTNAME": hostname} if hostname else {}
    for item in image_env:
        key, _, value = item.partition("=")
        env[key] = value
    for kv in config.envs:
        env[kv.key] = kv.value.decode(errors="replace")  # bytes since cri-api 0.37
    return [f"{k}={v}" for k, v in env.items()]


def _pod_file_binds(
    files: SandboxFiles, taken: Iterable[str] = (), readonly: bool = True
) -> list[SpecOpt]:
    """The pod's /etc/hostname, /etc/hosts, /etc/resolv.conf and /dev/shm, each unless a CRI
    mount takes its place. The three files are the pod's own, shared by its containers, and
    writable unless `readonly` (an app container with a read-only root), as containerd's CRI
    mounts them; /dev/shm is writable. The node's own /etc/resolv.conf (a pod made before
    crictld copied it into the pod's dir) is never writable."""
    resolv = str(files.resolv_conf) if files.resolv_conf else "/etc/resolv.conf"
    shm = str(files.shm) if files.shm else "/dev/shm"
    skip = set(taken)
    return [
        with_bind(dest, source, readonly=ro)
        for dest, source, ro in (
            ("/etc/hostname", str(files.hostname), readonly),
            ("/etc/hosts", str(files.hosts), readonly),
            ("/etc/resolv.conf", resolv, readonly or files.resolv_conf is None),
            ("/dev/shm", shm, False),
        )
        if dest not in skip
    ]


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
    md = config.metadata
    caps = _all_caps() if privileged else DEFAULT_CAPS
    # kubelet asks RuntimeDefault for every pod's sandbox (kubernetes#84623), which containerd's
    # CRI applies: the pause runs confined whatever its containers' profiles are. Its filter
    # is the node's architecture's alone (the pause is one native binary): a third of the
    # filters for runc to build (seccomp.profile_for).
    seccomp = profile_for(sc, set(caps), native_only=True)
    resources = linux.resources if linux.HasField("resources") else None
    return compose(
        with_process(
            terminal=False,
            user={"uid": uid, "gid": gid, "additionalGids": list(sc.supplemental_groups)},
            args=args or ["/pause"],
            env=env,
            cwd=cwd,
            rlimits=[{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            noNewPrivileges=not privileged,
            oomScoreAdj=oom_score_adj,
        ),
        with_capabilities(caps),
        # The pause process reads nothing and writes nothing: its root is read-only and it
        # gets no cgroup filesystem, /etc/hostname or /etc/hosts, as containerd's CRI makes
        # it. Each is mounts runc's init sets up (cgroup v1: one per controller); with them,
        # the pause processes of 100 pods started at once took 0.5-0.8 s of CPU, 0.14 s
        # without. /etc/resolv.conf and /dev/shm stay, as there: runtimes that boot a VM per
        # pod read them from the sandbox's spec.
        with_readonly_rootfs(True),
        with_mounts([m for m in default_mounts() if m["destination"] != "/sys/fs/cgroup"]),
        *_pod_file_binds(files, taken=("/etc/hostname", "/etc/hosts")),
        with_namespaces(
            [
                {"type": "mount"},
                *([{"type": "pid"}] if opts.pid != api_pb2.NODE else []),
                *([{"type": "ipc"}] if opts.ipc != api_pb2.NODE else []),
                *(
                    [{"type": "uts"}, {"type": "network", "path": netns_path or ""}]
                    if not host_network
                    else []
                ),
            ]
        ),
        with_resources(
            {"devices": [{"allow": False, "access": "rwm"}], "cpu": {"shares": SANDBOX_CPU_SHARES}}
        ),
        with_cgroups_path(cgroups_path(linux.cgroup_parent, sandbox_id, systemd_cgroup)),
        with_linux("sysctl", dict(linux.sysctls)),
        with_annotations(
            {
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-id": sandbox_id,
                "io.kubernetes.cri.sandbox-name": md.name,
                "io.kubernetes.cri.sandbox-namespace": md.namespace,
                "io.kubernetes.cri.sandbox-uid": md.uid,
                "io.kubernetes.cri.sandbox-log-directory": config.log_directory,
                # the pod's initial resources as kubelet sums them, for runtimes that size a
                # VM by them (containerd's CRI's annotations)
                **(
                    {
                        "io.kubernetes.cri.sandbox-cpu-period": str(resources.cpu_period),
                        "io.kubernetes.cri.sandbox-cpu-quota": str(resources.cpu_quota),
                        "io.kubernetes.cri.sandbox-cpu-shares": str(resources.cpu_shares),
                        "io.kubernetes.cri.sandbox-memory": str(resources.memory_limit_in_bytes),
                    }
                    if resources is not None
                    else {}
                ),
            }
        ),
        when(seccomp is not None, with_linux("seccomp", seccomp)),
        when(not host_network and bool(config.hostname), with_hostname(config.hostname)),
        when(not privileged, with_masked_paths(MASKED_PATHS, READONLY_PATHS)),
    )


def container_namespaces(
    opts: api_pb2.NamespaceOption, sandbox: SandboxRef, target_pid: int | None
) -> list[dict[str, str]]:
    """The app container's namespaces: the pause task's network, IPC and UTS; PID the pod's,
    a TARGET container's (kubectl debug --target), its own, or the node's."""
    ns_base = f"/proc/{sandbox.pause_pid}/ns"
    pod_opts = sandbox.config.linux.security_context.namespace_options
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
    return namespaces


def container_capabilities(sc: api_pb2.LinuxContainerSecurityContext) -> set[str]:
    """The default set (all when privileged) with the context's additions and drops, in
    containerd's CRI's (and CRI-O's) order: ALL added, then ALL dropped, then each named one
    added, then each named one dropped. So "drop ALL, add NET_BIND_SERVICE", the restricted
    Pod Security Standard's one allowed addition, leaves NET_BIND_SERVICE; "add ALL, drop
    CHOWN" all but CHOWN; a name both added and dropped is dropped."""
    if sc.privileged:
        return set(_all_caps())
    caps = set(DEFAULT_CAPS)
    add = list(sc.capabilities.add_capabilities)
    drop = list(sc.capabilities.drop_capabilities)
    if any(c.upper() == "ALL" for c in add):
        caps = set(_all_caps())
    if any(c.upper() == "ALL" for c in drop):
        caps = set()
    caps |= {_cap(c) for c in add if c.upper() != "ALL"}
    caps -= {_cap(c) for c in drop if c.upper() != "ALL"}
    return caps


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
    swap_controller: bool = False,
    image_name: str = "",
) -> dict[str, Any]:
    """An app container's spec. `image_name`: the image's name in containerd (its first tag,
    else its id), which containerd's CRI annotates where kubelet asks for the image by id."""
    linux = config.linux
    sc = linux.security_context
    privileged = sc.privileged
    _, image_env, image_cwd, _ = image_process(image_config)
    caps = container_capabilities(sc)
    devices = [device_entry(d) for d in config.devices]
    seccomp = profile_for(sc, caps)
    armor = apparmor.decide(sc, check_loaded=False)
    return compose(
        with_process(
            terminal=config.tty,
            user={"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
            args=process_args(config, image_config),
            env=merge_env(image_env, config, pod_hostname(sandbox.config)),
            cwd=config.working_dir or image_cwd,
            # No rlimits: the process inherits the shim's, as with containerd's CRI (raising
            # RLIMIT_NOFILE would need CAP_SYS_RESOURCE, which the daemon lacks here).
            noNewPrivileges=sc.no_new_privs,
            oomScoreAdj=oom_score_adj,
        ),
        with_capabilities(sorted(caps)),
        when(armor.profile is not None, with_process(apparmorProfile=armor.profile)),
        with_readonly_rootfs(sc.readonly_rootfs),
        with_mounts(default_mounts()),
        when(privileged, with_writable_sysfs()),
        *_pod_file_binds(
            sandbox.files, (m.container_path for m in config.mounts), sc.readonly_rootfs
        ),
        with_cri_mounts(config.mounts, image_volumes or {}),
        with_rootfs_propagation(config.mounts),
        with_namespaces(container_namespaces(sc.namespace_options, sandbox, target_pid)),
        with_resources(
            {
                "devices": [{"allow": privileged, "access": "rwm"}],
                **linux_resources(linux.resources, swap_controller),
            }
        ),
        with_devices(devices, [d.permissions or "rwm" for d in config.devices]),
        *([with_host_devices(host_devices())] if privileged else []),
        with_cgroups_path(
            cgroups_path(sandbox.config.linux.cgroup_parent, container_id, systemd_cgroup)
        ),
        with_annotations(
            {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.container-name": config.metadata.name,
                "io.kubernetes.cri.sandbox-id": sandbox.sandbox_id,
                "io.kubernetes.cri.sandbox-name": sandbox.config.metadata.name,
                "io.kubernetes.cri.sandbox-namespace": sandbox.config.metadata.namespace,
                "io.kubernetes.cri.sandbox-uid": sandbox.config.metadata.uid,
                "io.kubernetes.cri.image-name": image_name or config.image.image,
            }
        ),
        when(
            not privileged,
            with_masked_paths(sc.masked_paths or MASKED_PATHS, sc.readonly_paths or READONLY_PATHS),
        ),
        when(seccomp is not None, with_linux("seccomp", seccomp)),
    )


def device_entry(device: api_pb2.Device) -> dict[str, Any]:
    """An OCI linux.devices entry for a host device node (character or block)."""
    try:
        st = os.stat(device.host_path)
    except OSError as e:
        raise InvalidArgument(f"device {device.host_path}: {e.strerror}") from e
    entry = _device_node(device.container_path or device.host_path, st)
    if entry is None or entry["type"] == "p":
        raise InvalidArgument(f"device {device.host_path} is not a device node")
    return entry


def _device_node(path: str, st: os.stat_result) -> dict[str, Any] | None:
    """The OCI linux.devices entry at `path` for a character or block device or a FIFO
    (containerd's `DeviceFromPath`); None for anything else."""
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    elif stat.S_ISFIFO(st.st_mode):
        kind = "p"
    else:
        return None
    return {
        "path": path,
        "type": kind,
        "major": os.major(st.st_rdev),
        "minor": os.minor(st.st_rdev),
        "fileMode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
    }


# /dev's directories a privileged container does not get from the node: its own pts, shm and
# mqueue mounts, and the lxc/udev state dirs (containerd's HostDevices skips the same).
_NOT_HOST_DEVICE_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})


def host_devices(root: str = "/dev") -> list[dict[str, Any]]:
    """The node's device nodes (character, block, FIFO) under /dev, as containerd's
    `oci.WithHostDevices` gives a privileged container: subdirectories walked (but the ones
    above), symlinks and /dev/console left out, a node that vanished meanwhile skipped."""
    out: list[dict[str, Any]] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        path = os.path.join(root, entry.name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if entry.name not in _NOT_HOST_DEVICE_DIRS:
                out += host_devices(path)
            continue
        node = None if entry.name == "console" else _device_node(path, st)
        if node is not None:
            out.append(node)
    return out


@functools.cache
def recursive_read_only_supported() -> bool:
    """runc's "rro" mount option needs mount_setattr(2): Linux 5.12 or later (runc 1.1 has it)."""
    release = os.uname().release.split("-", 1)[0].split(".")
    try:
        major, minor = int(release[0]), int(release[1])
    except (ValueError, IndexError):
        return False
    return (major, minor) >= (5, 12)


def linux_resources(
    res: api_pb2.LinuxContainerResources, swap_controller: bool = False
) -> dict[str, Any]:
    """The OCI `linux.resources` cpu, memory and cgroup v2 (`unified`) parts of CRI container
    resources, as containerd's CRI sets them: the swap limit (memory and swap together) as
    given, else, where the kernel accounts swap per cgroup (`swap_controller`), equal to the
    memory limit, so that a container with a memory limit does not swap beyond it. Hugepage
    limits are left out, as containerd's CRI leaves them by default
    (`disable_hugetlb_controller`): kubelet limits hugepages on the pod's cgroup."""
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
    memory: dict[str, int] = {}
    if res.memory_limit_in_bytes:
        memory["limit"] = res.memory_limit_in_bytes
        if swap_controller:
            memory["swap"] = res.memory_limit_in_bytes
    if res.memory_swap_limit_in_bytes:
        memory["swap"] = res.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    if res.unified:
        out["unified"] = dict(res.unified)
    return out


def with_updated_resources(spec: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`spec` with `update` (`linux_resources`' output) applied as containerd's CRI applies
    UpdateContainerResources to a container's spec and runc applies it to the cgroups: each
    value given replaces the one before, the others (the device rules among them) stay."""
    linux = dict(spec.get("linux") or {})
    resources = dict(linux.get("resources") or {})
    for key, value in update.items():
        before = resources.get(key)
        resources[key] = {**before, **value} if isinstance(before, dict) else value
    linux["resources"] = resources
    return {**spec, "linux": linux}


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
