"""Request validation for RunPodSandbox and CreateContainer, before anything is written.

Every rule refuses with errors.InvalidArgument and a message that names the field, so that a
refused request leaves no row, no event and no file behind: nothing here touches the store, and
the only side effects are lstat/stat calls on host paths the request names and the in-place
normalisation of mount paths (`validate_container_request`).

What the rules follow:
- metadata: what kubelet sends (DNS-1123 names in either case, plus '_'), nothing that would
  break CNI_ARGS (';', '=') or an environment variable (NUL), bounded;
- hostnames: RFC 1123, at most HOST_NAME_MAX (64) characters;
- sysctls: only the namespaced ones kubelet knows (its safe list is a subset): kernel.sem,
  kernel.shm{all,max,mni,_rmid_forced}, kernel.msg{max,mnb,mni} and fs.mqueue.* in the IPC
  namespace, net.* in the network namespace; refused when the pod shares that namespace with
  the host;
- resources: the ranges runc and the kernel accept (kubelet's own clamps are inside them);
- paths: absolute where the OCI runtime needs them absolute, no NUL anywhere, a log path
  relative and inside the pod's log directory, mount paths normalised;
- a privileged container only in a privileged pod, host namespaces only as the pod has them.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import stat
from collections.abc import Iterable, Mapping, Sequence

from crictl import errors
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.mounts import mount_of
from crictl.oci import apparmor
from crictl.oci.spec import CAPS_BY_BIT, recursive_read_only_supported
from crictl.reconciler import cgroups
from crictl.reconciler.sandboxes import capability_args

RUNTIME_HANDLERS = ("", "runc")

MAX_NAME = 253  # a DNS-1123 subdomain (pod and container names)
MAX_NAMESPACE = 63  # a DNS-1123 label
MAX_UID = 253
MAX_HOSTNAME = 64  # HOST_NAME_MAX
PATH_MAX = 4096
NAME_MAX = 255
MAX_ARG = 128 * 1024 - 1  # MAX_ARG_STRLEN, less the NUL
MAX_ARGS_TOTAL = 2 * 1024 * 1024  # ARG_MAX with the default 8 MiB stack
MAX_MAP_BYTES = 256 * 1024  # labels or annotations (Kubernetes' total annotation size)
MAX_SYSCTL_NAME = 253
MAX_SYSCTL_VALUE = 4096  # one page: a longer write to /proc/sys is EINVAL
MAX_DNS_SEARCHES = 32  # kubelet's MaxDNSSearchPaths
MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel
MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262144  # kubelet's MinShares and MaxShares
MIN_CPU_PERIOD, MAX_CPU_PERIOD = 1000, 1000000  # the kernel's CFS period bounds (µs)
MIN_CPU_QUOTA, MAX_CPU_QUOTA = 1000, 2**44 - 1  # 1 ms; the kernel's max_cfs_runtime (µs)
MIN_OOM_SCORE_ADJ, MAX_OOM_SCORE_ADJ = -1000, 1000
MAX_CPUSET_INDEX = 65535

_NAME = re.compile(r"[A-Za-z0-9._-]+")
_UID = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")
_SYSCTL_SEGMENT = r"[a-z0-9]([-_a-z0-9]*[a-z0-9])?"
_SYSCTL_NAME = re.compile(rf"({_SYSCTL_SEGMENT}[./])*{_SYSCTL_SEGMENT}")  # kubelet's regex
_CPUSET = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
_PAGE_SIZE = re.compile(r"([1-9][0-9]*)(B|KB|MB|GB|TB|PB)")
_PAGE_UNITS = {"B": 0, "KB": 10, "MB": 20, "GB": 30, "TB": 40, "PB": 50}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
_UNIFIED_KEY = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+")

# Kubelet's sysctl namespaces (k8s.io/component-helpers/node/util/sysctl): the exact names, then
# the prefixes. Anything else is not known to be namespaced: a pod setting it would change the
# node for everyone (kernel.panic, vm.*), or the runtime sets it itself (kernel.hostname).
IPC, NET = "IPC", "network"
SYSCTL_NAMESPACES = {
    "kernel.sem": IPC,
    "kernel.shmall": IPC,
    "kernel.shmmax": IPC,
    "kernel.shmmni": IPC,
    "kernel.shm_rmid_forced": IPC,
    "kernel.msgmax": IPC,
    "kernel.msgmnb": IPC,
    "kernel.msgmni": IPC,
}
SYSCTL_PREFIXES = {"net.": NET, "fs.mqueue.": IPC}
_NAMESPACED = ", ".join([*SYSCTL_NAMESPACES, *(f"{p}*" for p in SYSCTL_PREFIXES)])
# Kubelet's safe list (allowed without --allowed-unsafe-sysctls). crictld cannot know the node's
# allow list, so it takes every namespaced sysctl; this set is for the messages and the tests.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
    }
)

_MODES: dict[int, str] = {
    api_pb2.POD: "POD",
    api_pb2.CONTAINER: "CONTAINER",
    api_pb2.NODE: "NODE",
    api_pb2.TARGET: "TARGET",
}
_PROPAGATIONS = frozenset(
    {
        api_pb2.PROPAGATION_PRIVATE,
        api_pb2.PROPAGATION_HOST_TO_CONTAINER,
        api_pb2.PROPAGATION_BIDIRECTIONAL,
    }
)
_PROTOCOLS = frozenset({api_pb2.TCP, api_pb2.UDP, api_pb2.SCTP})
_CAPABILITIES = frozenset(CAPS_BY_BIT)


def _show(value: object, limit: int = 80) -> str:
    """A value for a message: quoted, and cut short (a 140 KB name must not come back whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-1]} ({len(text)} chars)"


def _refuse(field: str, why: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{field}: {why}")


def _no_nul(field: str, value: str) -> None:
    if "\0" in value:
        raise _refuse(field, f"{_show(value)} holds a NUL byte")


def _absolute(field: str, value: str) -> None:
    """A non-empty absolute path without NUL, no longer than PATH_MAX."""
    if not value:
        raise _refuse(field, "is empty")
    _no_nul(field, value)
    if not value.startswith("/"):
        raise _refuse(field, f"{_show(value)} is not an absolute path")
    if len(os.fsencode(value)) >= PATH_MAX:
        raise _refuse(field, f"{_show(value)} is longer than PATH_MAX ({PATH_MAX})")


def _no_dotdot(field: str, value: str) -> None:
    if ".." in value.split("/"):
        raise _refuse(field, f"{_show(value)} climbs with '..'")


def normal_path(path: str) -> str:
    """`path` without '.', '..', repeated or trailing slashes (POSIX's leading '//' too)."""
    out = posixpath.normpath(path)
    return "/" + out.lstrip("/") if out.startswith("//") else out


def _id(field: str, value: int) -> None:
    if not 0 <= value <= MAX_ID:
        raise _refuse(field, f"{value} is not a uid/gid (0 to {MAX_ID})")


def _enum_mode(field: str, mode: int) -> str:
    name = _MODES.get(mode)
    if name is None:
        raise _refuse(field, f"{mode} is not a namespace mode (POD, CONTAINER, NODE, TARGET)")
    return name


def _string_map(field: str, values: Mapping[str, str]) -> None:
    total = 0
    for key, value in values.items():
        if not key:
            raise _refuse(field, "has an empty key")
        _no_nul(f"{field} key", key)
        total += len(key.encode()) + len(value.encode())
    if total > MAX_MAP_BYTES:
        raise _refuse(field, f"{total} bytes of keys and values, more than {MAX_MAP_BYTES}")


# -- RunPodSandbox -----------------------------------------------------------------------------


def validate_metadata(metadata: api_pb2.PodSandboxMetadata) -> None:
    """Name, namespace and uid: they go into CNI_ARGS (';'-separated 'K=V' pairs in an
    environment variable), the OCI annotations and every message."""
    for field, value, limit, pattern, allowed in (
        ("name", metadata.name, MAX_NAME, _NAME, "letters, digits, '.', '-', '_'"),
        ("namespace", metadata.namespace, MAX_NAMESPACE, _NAME, "letters, digits, '.', '-', '_'"),
        ("uid", metadata.uid, MAX_UID, _UID, "printable ASCII but space, ';' and '='"),
    ):
        path = f"config.metadata.{field}"
        if not value:
            raise errors.InvalidArgument(f"{path} is empty")
        if len(value) > limit:
            raise _refuse(path, f"{_show(value)} is longer than {limit} characters")
        if not pattern.fullmatch(value) or ";" in value or "=" in value:
            raise _refuse(path, f"{_show(value)} may hold only {allowed}")


def validate_hostname(field: str, hostname: str) -> None:
    if not hostname:
        return
    if len(hostname) > MAX_HOSTNAME:
        raise _refuse(field, f"{_show(hostname)} is longer than {MAX_HOSTNAME} characters")
    if not all(_HOST_LABEL.fullmatch(label) for label in hostname.split(".")):
        raise _refuse(field, f"{_show(hostname)} is not an RFC 1123 host name")


def _dns(dns: api_pb2.DNSConfig) -> None:
    for i, server in enumerate(dns.servers):
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise _refuse(
                f"config.dns_config.servers[{i}]", f"{_show(server)} is not an IP address"
            ) from None
    if len(dns.searches) > MAX_DNS_SEARCHES:
        raise _refuse("config.dns_config.searches", f"more than {MAX_DNS_SEARCHES} domains")
    for kind, items in (("searches", dns.searches), ("options", dns.options)):
        for i, item in enumerate(items):
            # one line of resolv.conf each: a space or newline would make more of them
            if not item or _SPACE_OR_CONTROL.search(item) or len(item) > MAX_NAME:
                raise _refuse(
                    f"config.dns_config.{kind}[{i}]",
                    f"{_show(item)} must be 1 to {MAX_NAME} characters, no space or control",
                )


def _ports(mappings: Iterable[api_pb2.PortMapping]) -> None:
    for i, p in enumerate(mappings):
        field = f"config.port_mappings[{i}]"
        if not 0 <= p.host_port <= 65535 or not 0 < p.container_port <= 65535:
            raise errors.InvalidArgument(
                f"config.port_mappings: bad port {p.host_port}->{p.container_port}"
            )
        if p.protocol not in _PROTOCOLS:
            raise _refuse(f"{field}.protocol", f"{p.protocol} is not TCP, UDP or SCTP")
        if p.host_ip:
            try:
                ipaddress.ip_address(p.host_ip)
            except ValueError:
                raise _refuse(f"{field}.host_ip", f"{_show(p.host_ip)} is not an IP") from None


def sysctl_namespace(name: str) -> str | None:
    """The namespace a sysctl lives in (IPC or network), as kubelet knows it; None when it is
    not known to be namespaced. `name` may use '/' as kubelet's NormalizeName allows."""
    first = min((i for i in (name.find("."), name.find("/")) if i >= 0), default=-1)
    if first >= 0 and name[first] == "/":
        name = name.translate(str.maketrans("./", "/."))
    known = SYSCTL_NAMESPACES.get(name)
    if known is not None:
        return known
    return next((ns for p, ns in SYSCTL_PREFIXES.items() if name.startswith(p)), None)


def validate_sysctls(
    sysctls: Mapping[str, str], opts: api_pb2.NamespaceOption, field: str = "config.linux.sysctls"
) -> None:
    for name, value in sorted(sysctls.items()):
        here = f"{field}[{_show(name)}]"
        if len(name) > MAX_SYSCTL_NAME or not _SYSCTL_NAME.fullmatch(name):
            raise _refuse(here, "is not a sysctl name")
        ns = sysctl_namespace(name)
        if ns is None:
            raise _refuse(here, f"is not a namespaced sysctl a pod may set ({_NAMESPACED})")
        if ns == IPC and opts.ipc == api_pb2.NODE:
            raise _refuse(here, "sets the host's IPC namespace (the pod has host IPC)")
        if ns == NET and opts.network == api_pb2.NODE:
            raise _refuse(here, "sets the host's network namespace (the pod has host network)")
        if len(value) > MAX_SYSCTL_VALUE or _CONTROL.search(value.replace("\t", " ")):
            raise _refuse(here, f"value {_show(value)} is too long or holds control characters")


def _cpuset(field: str, value: str, what: str) -> None:
    if not value:
        return
    if not _CPUSET.fullmatch(value):
        raise _refuse(field, f"{_show(value)} is not a list of {what} (like 0-3,5)")
    for part in value.split(","):
        low, _, high = part.partition("-")
        a, b = int(low), int(high or low)
        if a > b or b > MAX_CPUSET_INDEX:
            raise _refuse(field, f"{_show(value)}: bad range {part}")


def page_size_bytes(text: str) -> int | None:
    """A hugepage size as kubelet writes it ("2MB", "1GB": units of 1024) in bytes; None when
    it is not one."""
    m = _PAGE_SIZE.fullmatch(text)
    if m is None:
        return None
    size = int(m.group(1)) << _PAGE_UNITS[m.group(2)]
    return size if size & (size - 1) == 0 else None


def validate_resources(res: api_pb2.LinuxContainerResources, field: str) -> None:
    """CPU, memory, cpuset, hugepage, oom_score_adj and unified values runc and the kernel
    take; 0 (or "") leaves a value unset."""

    def bad(name: str, why: str) -> errors.InvalidArgument:
        return _refuse(f"{field}.{name}", why)

    if res.memory_limit_in_bytes < 0:
        raise bad("memory_limit_in_bytes", f"{res.memory_limit_in_bytes} is negative")
    swap = res.memory_swap_limit_in_bytes
    if swap < -1:
        raise bad("memory_swap_limit_in_bytes", f"{swap} is negative (-1 is unlimited)")
    if swap > 0 and res.memory_limit_in_bytes == 0:
        raise bad("memory_swap_limit_in_bytes", "is set without memory_limit_in_bytes")
    if 0 < swap < res.memory_limit_in_bytes:
        raise bad(
            "memory_swap_limit_in_bytes",
            f"{swap} is below memory_limit_in_bytes {res.memory_limit_in_bytes} "
            "(it counts memory and swap together)",
        )
    if res.cpu_shares and not MIN_CPU_SHARES <= res.cpu_shares <= MAX_CPU_SHARES:
        raise bad(
            "cpu_shares", f"{res.cpu_shares} is out of range ({MIN_CPU_SHARES}-{MAX_CPU_SHARES})"
        )
    if res.cpu_period and not MIN_CPU_PERIOD <= res.cpu_period <= MAX_CPU_PERIOD:
        raise bad(
            "cpu_period",
            f"{res.cpu_period} is out of range ({MIN_CPU_PERIOD}-{MAX_CPU_PERIOD} µs)",
        )
    quota = res.cpu_quota
    if quota and quota != -1 and not MIN_CPU_QUOTA <= quota <= MAX_CPU_QUOTA:
        raise bad("cpu_quota", f"{quota} is out of range (-1, or {MIN_CPU_QUOTA} µs and more)")
    if not MIN_OOM_SCORE_ADJ <= res.oom_score_adj <= MAX_OOM_SCORE_ADJ:
        raise bad(
            "oom_score_adj",
            f"{res.oom_score_adj} is out of range ({MIN_OOM_SCORE_ADJ} to {MAX_OOM_SCORE_ADJ})",
        )
    _cpuset(f"{field}.cpuset_cpus", res.cpuset_cpus, "CPUs")
    _cpuset(f"{field}.cpuset_mems", res.cpuset_mems, "memory nodes")
    seen: set[int] = set()
    for i, h in enumerate(res.hugepage_limits):
        size = page_size_bytes(h.page_size)
        if size is None:
            raise bad(
                f"hugepage_limits[{i}].page_size",
                f"{_show(h.page_size)} is not a power-of-two size like 2MB or 1GB",
            )
        if size in seen:
            raise bad(f"hugepage_limits[{i}].page_size", f"{h.page_size} is given twice")
        seen.add(size)
    for key, value in sorted(res.unified.items()):
        # runc writes <cgroup>/<key>: a slash would leave the cgroup, cgroup.* move processes
        if not _UNIFIED_KEY.fullmatch(key) or key.startswith("cgroup."):
            raise bad(f"unified[{_show(key)}]", "is not a cgroup v2 controller file name")
        _no_nul(f"{field}.unified[{_show(key)}]", value)


def validate_container_resources(res: api_pb2.LinuxContainerResources, field: str) -> None:
    """`validate_resources`, and what the node can apply to a container: `unified` sets
    cgroup v2 files, which runc refuses on cgroup v1 (kubelet sends it on v2 only)."""
    validate_resources(res, field)
    if res.unified and not cgroups.unified():
        key = sorted(res.unified)[0]
        raise _refuse(
            f"{field}.unified[{_show(key)}]", "sets cgroup v2 files; this node runs cgroup v1"
        )


def _sandbox_security(sc: api_pb2.LinuxSandboxSecurityContext) -> None:
    field = "config.linux.security_context"
    opts = sc.namespace_options
    for ns in ("network", "pid", "ipc"):
        mode = _enum_mode(f"{field}.namespace_options.{ns}", getattr(opts, ns))
        if mode == "TARGET":
            raise _refuse(f"{field}.namespace_options.{ns}", "TARGET names no container in a pod")
    if opts.HasField("userns_options"):
        userns = opts.userns_options
        mode = _enum_mode(f"{field}.namespace_options.userns_options.mode", userns.mode)
        mapped = bool(userns.uids or userns.gids)
        if mode != "NODE" and (mode != "POD" or mapped):
            raise _refuse(
                f"{field}.namespace_options.userns_options",
                f"{mode}{' with mappings' if mapped else ''}: crictld runs pods in the host's "
                "user namespace only",
            )
    if sc.HasField("run_as_user"):
        _id(f"{field}.run_as_user", sc.run_as_user.value)
    if sc.HasField("run_as_group"):
        _id(f"{field}.run_as_group", sc.run_as_group.value)
    for i, g in enumerate(sc.supplemental_groups):
        _id(f"{field}.supplemental_groups[{i}]", g)


def validate_sandbox_config(
    config: api_pb2.PodSandboxConfig, handler: str, configured: Iterable[str] = ()
) -> None:
    """Everything RunPodSandbox takes from the request, checked before the row is written.
    `configured`: the RuntimeClass handlers of the config file, besides runc."""
    if not config.HasField("metadata"):
        raise errors.InvalidArgument("config.metadata is required")
    validate_metadata(config.metadata)
    known = [*RUNTIME_HANDLERS, *configured]
    if handler not in known:
        raise errors.InvalidArgument(
            f"runtime_handler {_show(handler)} is not configured (crictld runs: "
            f"{', '.join(h for h in known if h)})"
        )
    validate_hostname("config.hostname", config.hostname)
    if config.log_directory:
        _absolute("config.log_directory", config.log_directory)
        _no_dotdot("config.log_directory", config.log_directory)
    _dns(config.dns_config)
    _ports(config.port_mappings)
    _string_map("config.labels", config.labels)
    _string_map("config.annotations", config.annotations)
    capability_args(config)  # bandwidth annotations must parse
    linux = config.linux
    if linux.cgroup_parent:
        parent = linux.cgroup_parent
        _no_nul("config.linux.cgroup_parent", parent)
        _no_dotdot("config.linux.cgroup_parent", parent)
        if _CONTROL.search(parent) or len(parent) >= PATH_MAX:
            raise _refuse("config.linux.cgroup_parent", f"{_show(parent)} is not a cgroup path")
    _sandbox_security(linux.security_context)
    validate_sysctls(linux.sysctls, linux.security_context.namespace_options)
    for part in ("overhead", "resources"):
        if linux.HasField(part):
            validate_resources(getattr(linux, part), f"config.linux.{part}")


# -- CreateContainer ---------------------------------------------------------------------------


def validate_exec_command(cmd: Sequence[str]) -> None:
    """An exec'd argv as execve(2) takes it: not empty, no NUL, each argument and the whole
    within the kernel's limits (a longer one would fail inside runc, after the work began)."""
    if not cmd:
        raise _refuse("cmd", "is empty")
    total = 0
    for i, arg in enumerate(cmd):
        _no_nul(f"cmd[{i}]", arg)
        size = len(arg.encode())
        if size > MAX_ARG:
            raise _refuse(f"cmd[{i}]", f"{size} bytes, more than {MAX_ARG}")
        total += size + 1
    if total > MAX_ARGS_TOTAL:
        raise _refuse("cmd", f"{total} bytes in all, more than {MAX_ARGS_TOTAL}")


def validate_exec_sync(request: api_pb2.ExecSyncRequest) -> None:
    validate_exec_command(request.cmd)
    if request.timeout < 0:
        raise _refuse("timeout", f"{request.timeout} is negative (0 means no time limit)")


def _process(config: api_pb2.ContainerConfig) -> None:
    total = 0
    for kind in ("command", "args"):
        for i, arg in enumerate(getattr(config, kind)):
            _no_nul(f"config.{kind}[{i}]", arg)
            size = len(arg.encode())
            if size > MAX_ARG:
                raise _refuse(f"config.{kind}[{i}]", f"{size} bytes, more than {MAX_ARG}")
            total += size + 1
    for i, kv in enumerate(config.envs):
        field = f"config.envs[{i}]"
        if not kv.key:
            raise _refuse(f"{field}.key", "is empty")
        if "=" in kv.key:
            raise _refuse(f"{field}.key", f"{_show(kv.key)} holds '='")
        _no_nul(f"{field}.key", kv.key)
        if b"\0" in kv.value:
            raise _refuse(f"{field}.value", f"the value of {_show(kv.key)} holds a NUL byte")
        size = len(kv.key.encode()) + 1 + len(kv.value)
        if size > MAX_ARG:
            raise _refuse(field, f"{_show(kv.key)}: {size} bytes, more than {MAX_ARG}")
        total += size + 1
    if total > MAX_ARGS_TOTAL:
        raise _refuse("config", f"command, args and envs take {total} bytes: over {MAX_ARGS_TOTAL}")
    if config.working_dir:
        _absolute("config.working_dir", config.working_dir)


def _mounts(config: api_pb2.ContainerConfig) -> None:
    """Absolute paths, normalised in place (so that "/etc/hosts/" is /etc/hosts everywhere
    the spec compares destinations)."""
    for i, m in enumerate(config.mounts):
        field = f"config.mounts[{i}]"
        _absolute(f"{field}.container_path", m.container_path)
        if m.HasField("image") and m.image.image:
            # an image volume: the image's read-only snapshot, no host path
            _no_nul(f"{field}.image.image", m.image.image)
            if m.host_path:
                raise _refuse(f"{field}.host_path", "an image volume has no host path")
            if m.propagation != api_pb2.PROPAGATION_PRIVATE:
                raise _refuse(f"{field}.propagation", "an image volume is private")
        else:
            _absolute(f"{field}.host_path", m.host_path)
        if m.propagation not in _PROPAGATIONS:
            raise _refuse(f"{field}.propagation", f"{m.propagation} is not a propagation mode")
        if m.recursive_read_only and not (
            m.readonly and m.propagation == api_pb2.PROPAGATION_PRIVATE
        ):
            raise _refuse(f"{field}.recursive_read_only", "needs readonly and PROPAGATION_PRIVATE")
        if m.recursive_read_only and not recursive_read_only_supported():
            raise errors.FailedPrecondition(
                f"{field}.recursive_read_only: this kernel has no mount_setattr (Linux 5.12+)"
            )
        m.container_path = normal_path(m.container_path)
        if m.host_path:
            m.host_path = normal_path(m.host_path)


def check_propagation(config: api_pb2.ContainerConfig) -> None:
    """Propagation into or out of a container needs its source mount to propagate: rshared a
    shared mount, rslave a shared or slave one (as runc and containerd require). Checked
    against the host's mounts now, so the refusal comes before anything is made."""
    for i, m in enumerate(config.mounts):
        if m.propagation == api_pb2.PROPAGATION_PRIVATE or not os.path.exists(m.host_path):
            continue
        point, fields = mount_of(m.host_path)
        shared = any(f.startswith("shared:") for f in fields)
        slave = any(f.startswith("master:") for f in fields)
        if m.propagation == api_pb2.PROPAGATION_BIDIRECTIONAL and not shared:
            raise errors.FailedPrecondition(
                f"config.mounts[{i}]: {_show(m.host_path)} is on mount {point}, which is not "
                "shared: bidirectional propagation needs a shared mount"
            )
        if m.propagation == api_pb2.PROPAGATION_HOST_TO_CONTAINER and not (shared or slave):
            raise errors.FailedPrecondition(
                f"config.mounts[{i}]: {_show(m.host_path)} is on mount {point}, which is "
                "neither shared nor slave: host-to-container propagation needs one"
            )


def _devices(config: api_pb2.ContainerConfig) -> None:
    for i, d in enumerate(config.devices):
        field = f"config.devices[{i}]"
        _absolute(f"{field}.host_path", d.host_path)
        if d.container_path:
            _absolute(f"{field}.container_path", d.container_path)
        if d.permissions.strip("rwm"):
            raise _refuse(f"{field}.permissions", f"{_show(d.permissions)} is not made of r, w, m")
        try:
            st = os.stat(d.host_path)
        except OSError as e:
            raise _refuse(f"{field}.host_path", f"{_show(d.host_path)}: {e.strerror}") from None
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise _refuse(f"{field}.host_path", f"{_show(d.host_path)} is not a device node")


def _container_security(sc: api_pb2.LinuxContainerSecurityContext) -> None:
    field = "config.linux.security_context"
    if sc.HasField("run_as_group") and not (sc.HasField("run_as_user") or sc.run_as_username):
        raise errors.InvalidArgument(f"{field}.run_as_group needs run_as_user or run_as_username")
    if sc.HasField("run_as_user"):
        _id(f"{field}.run_as_user", sc.run_as_user.value)
    if sc.HasField("run_as_group"):
        _id(f"{field}.run_as_group", sc.run_as_group.value)
    _no_nul(f"{field}.run_as_username", sc.run_as_username)
    for i, g in enumerate(sc.supplemental_groups):
        _id(f"{field}.supplemental_groups[{i}]", g)
    opts = sc.namespace_options
    for ns in ("network", "pid", "ipc"):
        _enum_mode(f"{field}.namespace_options.{ns}", getattr(opts, ns))
    if opts.pid == api_pb2.TARGET and not opts.target_id:
        raise _refuse(f"{field}.namespace_options.target_id", "is empty with pid TARGET")
    for kind in ("add_capabilities", "drop_capabilities", "add_ambient_capabilities"):
        for i, cap in enumerate(getattr(sc.capabilities, kind)):
            name = cap.upper()
            name = name if name.startswith("CAP_") else f"CAP_{name}"
            if name != "CAP_ALL" and name not in _CAPABILITIES:
                raise _refuse(f"{field}.capabilities.{kind}[{i}]", f"{_show(cap)} is unknown")
    for kind in ("masked_paths", "readonly_paths"):
        for i, path in enumerate(getattr(sc, kind)):
            _absolute(f"{field}.{kind}[{i}]", path)


def validate_container_request(request: api_pb2.CreateContainerRequest) -> None:
    """Everything CreateContainer can check without the pod's row. Normalises the mount paths
    of `request.config` in place (before its digest is taken)."""
    config = request.config
    if not config.HasField("metadata") or not config.metadata.name:
        raise errors.InvalidArgument("config.metadata.name is empty")
    name = config.metadata.name
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise _refuse(
            "config.metadata.name",
            f"{_show(name)} may hold only letters, digits, '.', '-', '_' (at most {MAX_NAME})",
        )
    if not config.image.image:
        raise errors.InvalidArgument("config.image.image is empty")
    _no_nul("config.image.image", config.image.image)
    if not request.pod_sandbox_id:
        raise errors.InvalidArgument("pod_sandbox_id is empty")
    _process(config)
    _log_path_shape(config.log_path)
    _string_map("config.labels", config.labels)
    _string_map("config.annotations", config.annotations)
    if config.linux.HasField("resources"):
        validate_container_resources(config.linux.resources, "config.linux.resources")
    _container_security(config.linux.security_context)
    apparmor.decide(config.linux.security_context)
    _mounts(config)
    check_propagation(config)
    _devices(config)


def _log_path_shape(rel: str) -> None:
    if not rel:
        return
    _no_nul("config.log_path", rel)
    if rel.startswith("/"):
        raise _refuse(
            "config.log_path",
            f"{_show(rel)} is absolute: it must be relative to the pod's log_directory",
        )
    if ".." in rel.split("/"):
        raise _refuse("config.log_path", f"{_show(rel)} climbs out of log_directory with '..'")
    if normal_path(rel) == "." or rel.endswith("/"):
        raise _refuse("config.log_path", f"{_show(rel)} names a directory, not a file")
    if any(len(os.fsencode(part)) > NAME_MAX for part in rel.split("/")):
        raise _refuse("config.log_path", f"{_show(rel)} has a name over NAME_MAX ({NAME_MAX})")


def container_log_path(config: api_pb2.ContainerConfig, log_directory: str) -> str | None:
    """The container's log file: `config.log_path` inside `log_directory` (relative, no '..',
    no symbolic link below the directory); None without either."""
    rel = config.log_path
    _log_path_shape(rel)
    if not (rel and log_directory):
        return None
    path = os.path.join(log_directory, normal_path(rel))
    if len(os.fsencode(path)) >= PATH_MAX:
        raise _refuse("config.log_path", f"{_show(path)} is longer than PATH_MAX ({PATH_MAX})")
    # The logger creates what is missing and opens the file; what exists below the directory
    # must not lead elsewhere.
    here = log_directory
    for part in normal_path(rel).split("/"):
        here = os.path.join(here, part)
        if os.path.islink(here):
            raise _refuse("config.log_path", f"{_show(here)} is a symbolic link")
    return path


def validate_container_in_sandbox(
    request: api_pb2.CreateContainerRequest, pod: api_pb2.PodSandboxConfig, sandbox_id: str
) -> None:
    """The rules that need the pod as it was run (`pod`, from its row): the log path inside the
    pod's log directory, privilege and host namespaces no wider than the pod's."""
    config = request.config
    given = request.sandbox_config.log_directory
    if config.log_path and given:
        _absolute("sandbox_config.log_directory", given)
        _no_dotdot("sandbox_config.log_directory", given)
        if normal_path(given) != normal_path(pod.log_directory or "."):
            raise _refuse(
                "sandbox_config.log_directory",
                f"{_show(given)} is not the log_directory pod sandbox {sandbox_id} was run with "
                f"({_show(pod.log_directory)})",
            )
    container_log_path(config, given)
    sc = config.linux.security_context
    pod_sc = pod.linux.security_context
    field = "config.linux.security_context"
    if sc.privileged and not pod_sc.privileged:
        raise _refuse(
            f"{field}.privileged",
            f"pod sandbox {sandbox_id} is not privileged: a privileged container needs a "
            "privileged pod",
        )
    opts, pod_opts = sc.namespace_options, pod_sc.namespace_options
    for ns, label in (("network", "network"), ("pid", "PID"), ("ipc", "IPC")):
        if getattr(opts, ns) == api_pb2.NODE and getattr(pod_opts, ns) != api_pb2.NODE:
            raise _refuse(
                f"{field}.namespace_options.{ns}",
                f"NODE, but pod sandbox {sandbox_id} does not share the host's {label} namespace",
            )


MAX_SELECTOR = 64


def label_selector(selector: Mapping[str, str], field: str) -> dict[str, str]:
    """A list filter's label selector, bounded: each entry is one more condition in the SQL
    the store runs, and SQLite refuses expressions past ~1000 ("Expression tree is too large")."""
    if len(selector) > MAX_SELECTOR:
        raise errors.InvalidArgument(
            f"{field}: {len(selector)} labels; at most {MAX_SELECTOR} may be selected on"
        )
    return dict(selector)
