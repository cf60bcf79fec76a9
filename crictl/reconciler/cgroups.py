"""One resource sample of a cgroup, read from the cgroup filesystem, v1 or v2: the files
containerd's own Metrics call reads, without a containerd round trip per container.

* CPU: cumulative usage in ns (v1 `cpuacct.usage`; v2 `cpu.stat` usage_usec).
* Memory: usage (v1 `memory.usage_in_bytes`, v2 `memory.current`); working set as kubelet and
  cAdvisor define it, usage less inactive file pages (never below 0); RSS (v1 total_rss, v2
  anon); page faults; the limit (None when unlimited) and so the bytes still available; swap
  (v1 memsw less usage, v2 `memory.swap.current`).
* Processes: `pids.current`.

A file that is missing or unreadable leaves its field None (a cgroup being removed, a
controller not mounted): stats report what can be read, never fail for it.

Besides: kubelet's resource updates written to a cgroup (`apply`), and the empty cgroup a
task's create cut short left removed with its object (`remove_left_empty`).

cgroup paths: runc's systemd form (`slice:prefix:name`, crictl.oci.spec.cgroups_path) is turned
into the directory systemd makes (`a.slice/a-b.slice/.../prefix-name.scope`)."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from crictl import errors
from crictl.gen.cri.runtime.v1 import api_pb2

ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 62  # v1 reports "no limit" as a huge page-aligned number
_READ = 1 << 16  # one read takes a whole cgroup file (kernfs fills the buffer)
_HZ = os.sysconf("SC_CLK_TCK")  # cpuacct.stat's unit


@dataclass(frozen=True)
class Sample:
    timestamp: int  # ns since the epoch
    cpu_ns: int | None = None
    memory_usage: int | None = None
    working_set: int | None = None
    rss: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None
    memory_limit: int | None = None
    swap: int | None = None
    processes: int | None = None
    # what cAdvisor's metrics report besides (ListPodSandboxMetrics)
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cfs_periods: int | None = None
    cfs_throttled_periods: int | None = None
    cfs_throttled_ns: int | None = None
    memory_cache: int | None = None
    memory_mapped_file: int | None = None
    memory_kernel: int | None = None
    memory_max_usage: int | None = None
    memory_failcnt: int | None = None
    oom_kills: int | None = None
    threads: int | None = None
    threads_max: int | None = None  # None: no limit
    pids: tuple[int, ...] = ()  # the processes in the cgroup
    # block I/O per device "MAJ:MIN": (read bytes, write bytes, reads, writes)
    io: tuple[tuple[str, int, int, int, int], ...] = ()

    @property
    def available(self) -> int | None:
        if self.memory_limit is None or self.working_set is None:
            return None
        return max(self.memory_limit - self.working_set, 0)


def unified(root: Path = ROOT) -> bool:
    """cgroup v2 only (the unified hierarchy mounted at the root)."""
    return (root / "cgroup.controllers").exists()


@functools.cache
def swap_controller(root: Path = ROOT, self_cgroup: Path = Path("/proc/self/cgroup")) -> bool:
    """Whether the kernel accounts swap per cgroup, as containerd's CRI and kubelet test it:
    v1's memory.memsw.limit_in_bytes at the memory root; v2's memory.swap.max in this
    process's own cgroup (the root cgroup has none). Asked once: the kernel's swap accounting
    is set at boot."""
    if not unified(root):
        return (root / "memory" / "memory.memsw.limit_in_bytes").exists()
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return False
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    return own is not None and (root / own.lstrip("/") / "memory.swap.max").exists()


def fs_path(cgroups_path: str) -> str:
    """The cgroup's directory below a controller's root, from the spec's cgroupsPath."""
    if cgroups_path.startswith("/") or cgroups_path.count(":") != 2:
        return cgroups_path.lstrip("/")
    slice_, prefix, name = cgroups_path.split(":")
    parts = []
    if slice_ and slice_ != "-.slice":
        stem = slice_.removesuffix(".slice")
        words = stem.split("-")
        parts = ["-".join(words[: i + 1]) + ".slice" for i in range(len(words))]
    unit = f"{prefix}-{name}.scope" if prefix else name
    return "/".join([*parts, unit])


def _text(path: str) -> str | None:
    """The file's whole content, or None if it cannot be read. Read with os calls: a cgroup
    file is a few hundred bytes, and pathlib's and io's layers cost several times the read
    (a v1 sample took 686 us through them, 154 of it the 16 reads)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, _READ)
        if len(data) == _READ:  # a big cgroup.procs: the rest
            chunks = [data]
            while chunk := os.read(fd, _READ):
                chunks.append(chunk)
            data = b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode(errors="replace")


def _int(path: str) -> int | None:
    text = _text(path)
    try:
        return int(text.split()[0]) if text else None
    except (ValueError, IndexError):
        return None


def _keyed(path: str) -> dict[str, int]:
    text = _text(path)
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def _working_set(usage: int | None, inactive: int | None) -> int | None:
    if usage is None:
        return None
    return max(usage - (inactive or 0), 0)


def _procs(path: str) -> tuple[int, ...]:
    text = _text(path) or ""
    return tuple(int(x) for x in text.split() if x.isdigit())


def _limit(path: str) -> int | None:
    text = (_text(path) or "").strip()
    return int(text) if text.isdigit() else None


def _io_v1(d: str) -> tuple[tuple[str, int, int, int, int], ...]:
    """blkio.throttle.io_service_bytes and io_serviced: "MAJ:MIN Read|Write N" lines."""
    per: dict[str, list[int]] = {}
    for name, offset in (("blkio.throttle.io_service_bytes", 0), ("blkio.throttle.io_serviced", 2)):
        for line in (_text(f"{d}/{name}") or "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in ("Read", "Write") and parts[2].isdigit():
                slot = per.setdefault(parts[0], [0, 0, 0, 0])
                slot[offset + (parts[1] == "Write")] = int(parts[2])
    return tuple((dev, *v) for dev, v in sorted(per.items()))  # type: ignore[misc]


def _io_v2(d: str) -> tuple[tuple[str, int, int, int, int], ...]:
    """io.stat: "MAJ:MIN rbytes=N wbytes=N rios=N wios=N ..." lines."""
    out = []
    for line in (_text(f"{d}/io.stat") or "").splitlines():
        dev, *pairs = line.split()
        kv = dict(p.split("=", 1) for p in pairs if "=" in p)
        try:
            out.append(
                (dev, int(kv["rbytes"]), int(kv["wbytes"]), int(kv["rios"]), int(kv["wios"]))
            )
        except (KeyError, ValueError):
            continue
    return tuple(out)


def read_v1(rel: str, root: Path = ROOT, now: int | None = None, full: bool = True) -> Sample:
    mem, pid, acct = f"{root}/memory/{rel}", f"{root}/pids/{rel}", f"{root}/cpuacct/{rel}"
    usage = _int(f"{mem}/memory.usage_in_bytes")
    stat = _keyed(f"{mem}/memory.stat")
    limit = _int(f"{mem}/memory.limit_in_bytes")
    memsw = _int(f"{mem}/memory.memsw.usage_in_bytes")
    pids = _procs(f"{pid}/cgroup.procs") or _procs(f"{mem}/cgroup.procs")
    sample = Sample(
        timestamp=now or time.time_ns(),
        cpu_ns=_int(f"{acct}/cpuacct.usage"),
        memory_usage=usage,
        working_set=_working_set(usage, stat.get("total_inactive_file")),
        rss=stat.get("total_rss"),
        page_faults=stat.get("total_pgfault"),
        major_page_faults=stat.get("total_pgmajfault"),
        memory_limit=limit if limit is not None and limit < UNLIMITED else None,
        swap=max(memsw - usage, 0) if memsw is not None and usage is not None else None,
        processes=len(pids) if pids else None,
        pids=pids,
    )
    if not full:
        return sample
    cpu_stat = _keyed(f"{root}/cpu/{rel}/cpu.stat")
    ticks = _keyed(f"{acct}/cpuacct.stat")
    return replace(
        sample,
        cpu_user_ns=ticks["user"] * 1_000_000_000 // _HZ if "user" in ticks else None,
        cpu_system_ns=ticks["system"] * 1_000_000_000 // _HZ if "system" in ticks else None,
        cfs_periods=cpu_stat.get("nr_periods"),
        cfs_throttled_periods=cpu_stat.get("nr_throttled"),
        cfs_throttled_ns=cpu_stat.get("throttled_time"),
        memory_cache=stat.get("total_cache"),
        memory_mapped_file=stat.get("total_mapped_file"),
        memory_kernel=_int(f"{mem}/memory.kmem.usage_in_bytes"),
        memory_max_usage=_int(f"{mem}/memory.max_usage_in_bytes"),
        memory_failcnt=_int(f"{mem}/memory.failcnt"),
        oom_kills=_keyed(f"{mem}/memory.oom_control").get("oom_kill"),
        threads=_int(f"{pid}/pids.current"),
        threads_max=_limit(f"{pid}/pids.max"),
        io=_io_v1(f"{root}/blkio/{rel}"),
    )


def read_v2(rel: str, root: Path = ROOT, now: int | None = None, full: bool = True) -> Sample:
    d = f"{root}/{rel}"
    usage = _int(f"{d}/memory.current")
    stat = _keyed(f"{d}/memory.stat")
    cpu_stat = _keyed(f"{d}/cpu.stat")
    cpu = cpu_stat.get("usage_usec")
    limit_text = (_text(f"{d}/memory.max") or "").strip()
    pids = _procs(f"{d}/cgroup.procs")
    sample = Sample(
        timestamp=now or time.time_ns(),
        cpu_ns=cpu * 1000 if cpu is not None else None,
        memory_usage=usage,
        working_set=_working_set(usage, stat.get("inactive_file")),
        rss=stat.get("anon"),
        page_faults=stat.get("pgfault"),
        major_page_faults=stat.get("pgmajfault"),
        memory_limit=int(limit_text) if limit_text.isdigit() else None,
        swap=_int(f"{d}/memory.swap.current"),
        processes=len(pids) if pids else None,
        pids=pids,
    )
    if not full:
        return sample
    events = _keyed(f"{d}/memory.events")

    def usec(key: str) -> int | None:
        return cpu_stat[key] * 1000 if key in cpu_stat else None

    return replace(
        sample,
        cpu_user_ns=usec("user_usec"),
        cpu_system_ns=usec("system_usec"),
        cfs_periods=cpu_stat.get("nr_periods"),
        cfs_throttled_periods=cpu_stat.get("nr_throttled"),
        cfs_throttled_ns=usec("throttled_usec"),
        memory_cache=stat.get("file"),
        memory_mapped_file=stat.get("file_mapped"),
        memory_kernel=stat.get("kernel"),
        memory_max_usage=_int(f"{d}/memory.peak"),
        memory_failcnt=events.get("max"),
        oom_kills=events.get("oom_kill"),
        threads=_int(f"{d}/pids.current"),
        threads_max=_limit(f"{d}/pids.max"),
        io=_io_v2(d),
    )


def read(cgroups_path: str, root: Path = ROOT, full: bool = True) -> Sample:
    """A sample of the cgroup. Not `full`: only what the CRI's stats carry (CPU, memory, swap,
    processes: 6 files on v1 where cAdvisor's metrics read 16), the rest left None."""
    rel = fs_path(cgroups_path)
    return read_v2(rel, root, full=full) if unified(root) else read_v1(rel, root, full=full)


def nano_cores(previous: Sample | None, current: Sample) -> int | None:
    """CPU use between two samples of one cgroup, in billionths of a core."""
    if previous is None or previous.cpu_ns is None or current.cpu_ns is None:
        return None
    elapsed = current.timestamp - previous.timestamp
    if elapsed <= 0 or current.cpu_ns < previous.cpu_ns:
        return None
    return (current.cpu_ns - previous.cpu_ns) * 1_000_000_000 // elapsed


def resource_files(res: api_pb2.LinuxContainerResources, v2: bool) -> list[tuple[str, str]]:
    """(file below the cgroup, value) for every resource set, v1 paths relative to the
    controller roots (`cpu/...`), v2 to the unified directory. Shares become v2's weight as
    runc converts them; memory is written before anything that could need the room."""
    out: list[tuple[str, str]] = []
    if res.memory_limit_in_bytes:
        limit = str(res.memory_limit_in_bytes)
        out.append(("memory.max", limit) if v2 else ("memory/memory.limit_in_bytes", limit))
    if res.cpu_shares:
        if v2:
            weight = 1 + ((res.cpu_shares - 2) * 9999) // 262142
            out.append(("cpu.weight", str(max(1, min(weight, 10000)))))
        else:
            out.append(("cpu/cpu.shares", str(res.cpu_shares)))
    if res.cpu_period or res.cpu_quota:
        period = res.cpu_period or 100_000
        if v2:
            quota = str(res.cpu_quota) if res.cpu_quota > 0 else "max"
            out.append(("cpu.max", f"{quota} {period}"))
        else:
            out.append(("cpu/cpu.cfs_period_us", str(period)))
            if res.cpu_quota:
                out.append(("cpu/cpu.cfs_quota_us", str(res.cpu_quota)))
    if res.cpuset_cpus:
        out.append(("cpuset.cpus" if v2 else "cpuset/cpuset.cpus", res.cpuset_cpus))
    if res.cpuset_mems:
        out.append(("cpuset.mems" if v2 else "cpuset/cpuset.mems", res.cpuset_mems))
    return out


def apply(cgroups_path: str, res: api_pb2.LinuxContainerResources, root: Path = ROOT) -> list[str]:
    """Writes `res` to the cgroup (v1: each controller's directory); returns the files written.
    A file that cannot be written is FAILED_PRECONDITION naming it and the value."""
    rel = fs_path(cgroups_path)
    v2 = unified(root)
    written = []
    for name, value in resource_files(res, v2):
        if v2:
            path = root / rel / name
        else:
            controller, leaf = name.split("/", 1)
            path = root / controller / rel / leaf
        try:
            path.write_text(value)
        except OSError as e:
            raise errors.FailedPrecondition(
                f"cannot write {value} to {path}: {os.strerror(e.errno or 0)}"
            ) from None
        written.append(str(path))
    return written


def remove_left_empty(cgroups_path: str, root: Path = ROOT) -> list[str]:
    """Removes the cgroup a task's spec named (`cgroups_path`) from every hierarchy that has
    it empty; returns the directories removed. For an object whose task containerd no longer
    has: runc's delete removes a task's cgroup, but a `runc create` cut short (containerd
    killed mid-create: the shim's create ends with its connection) leaves the cgroup runc made
    and no runc state to delete it by. Where there is nothing, one rmdir a hierarchy finds so.
    A cgroup still holding processes (or cgroups) is left to the orphan sweep; a systemd
    scope is systemd's (it stops an empty transient scope itself)."""
    if not cgroups_path.startswith("/") and cgroups_path.count(":") == 2:
        return []
    rel = fs_path(cgroups_path)
    if unified(root):
        hierarchies = [str(root)]
    else:
        try:  # co-mounted controllers' links (cpu -> cpu,cpuacct) name a hierarchy again
            with os.scandir(root) as entries:
                hierarchies = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []
    removed = []
    for hierarchy in hierarchies:
        path = f"{hierarchy}/{rel}"
        try:
            os.rmdir(path)
        except OSError:  # ENOENT (the usual case), EBUSY or ENOTEMPTY (in use)
            continue
        removed.append(path)
    return removed


def open_files(pids: tuple[int, ...]) -> tuple[int, int]:
    """(file descriptors, sockets) the processes hold, from /proc/<pid>/fd."""
    fds = sockets = 0
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            fds += 1
            try:
                sockets += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
            except OSError:
                continue
    return fds, sockets
