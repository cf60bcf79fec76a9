"""Decoding cgroup samples (crictl/reconciler/cgroups.py): v2 from files as a cgroup v2 kernel
writes them (this machine is v1), v1 likewise, the systemd path form, nano cores; and the
removal of a task cgroup a create cut short left."""

from __future__ import annotations

from pathlib import Path

import pytest

from crictl.reconciler import cgroups
from crictl.reconciler.cgroups import Sample

# As a 6.1 kernel writes them for a container that spins and holds ~30 MiB (trimmed to the keys
# the decoder reads and a few it must skip).
V2_FILES = {
    "cpu.stat": (
        "usage_usec 2534017\nuser_usec 2101733\nsystem_usec 432284\n"
        "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
    ),
    "memory.current": "31457280\n",
    "memory.max": "67108864\n",
    "memory.swap.current": "4096\n",
    "memory.stat": (
        "anon 20971520\nfile 10485760\nkernel_stack 49152\nshmem 0\n"
        "active_anon 20971520\ninactive_anon 0\nactive_file 2097152\ninactive_file 8388608\n"
        "pgfault 12345\npgmajfault 7\n"
    ),
    "pids.current": "5\n",  # threads
    "pids.max": "max\n",
    "cgroup.procs": "101\n102\n103\n",
    "memory.events": "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
}
SCOPE = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/crictld-abc.scope"


def write(root: Path, rel: str, files: dict[str, str]) -> None:
    d = root / rel
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text)


def test_v2_decoding(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    write(tmp_path, SCOPE, V2_FILES)
    assert cgroups.unified(tmp_path)
    s = cgroups.read("kubepods-burstable-pod1234.slice:crictld:abc", tmp_path)
    assert s.cpu_ns == 2_534_017_000
    assert s.memory_usage == 31_457_280
    assert s.working_set == 31_457_280 - 8_388_608
    assert (s.rss, s.page_faults, s.major_page_faults) == (20_971_520, 12_345, 7)
    assert s.memory_limit == 64 << 20 and s.available == (64 << 20) - s.working_set
    assert (s.swap, s.processes, s.threads, s.threads_max) == (4096, 3, 5, None)
    assert (s.pids, s.memory_failcnt, s.oom_kills) == ((101, 102, 103), 4, 1)
    assert (s.cpu_user_ns, s.cpu_system_ns) == (2_101_733_000, 432_284_000)


def test_v2_unlimited_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    write(tmp_path, "crictld/x", {"memory.max": "max\n", "memory.current": "100\n"})
    s = cgroups.read("/crictld/x", tmp_path)
    assert s.memory_limit is None and s.available is None
    assert s.cpu_ns is None and s.processes is None and s.working_set == 100
    gone = cgroups.read("/crictld/removed", tmp_path)  # a cgroup being removed: no fields
    assert gone.cpu_ns is None and gone.memory_usage is None


def test_v1_decoding(tmp_path: Path) -> None:
    rel = "crictld/abc"
    write(tmp_path, f"cpuacct/{rel}", {"cpuacct.usage": "987654321\n"})
    write(
        tmp_path,
        f"memory/{rel}",
        {
            "memory.usage_in_bytes": "5000000\n",
            "memory.memsw.usage_in_bytes": "5004096\n",
            "memory.limit_in_bytes": "9223372036854771712\n",  # no limit
            "memory.stat": (
                "cache 1000\nrss 3000000\ntotal_cache 1000\ntotal_rss 3000000\n"
                "total_inactive_file 1000000\ntotal_pgfault 77\ntotal_pgmajfault 1\n"
            ),
        },
    )
    write(
        tmp_path, f"pids/{rel}", {"pids.current": "2\n", "cgroup.procs": "7\n", "pids.max": "64\n"}
    )
    s = cgroups.read("/crictld/abc", tmp_path)
    assert (s.cpu_ns, s.memory_usage, s.working_set) == (987_654_321, 5_000_000, 4_000_000)
    assert (s.rss, s.page_faults, s.major_page_faults) == (3_000_000, 77, 1)
    assert s.memory_limit is None and s.swap == 4096
    assert (s.processes, s.threads, s.threads_max, s.pids) == (1, 2, 64, (7,))


# What only cAdvisor's metrics carry (ListPodSandboxMetrics): not read for the CRI's stats.
METRICS_ONLY = (
    "cpu_user_ns",
    "cpu_system_ns",
    "cfs_periods",
    "cfs_throttled_periods",
    "cfs_throttled_ns",
    "memory_cache",
    "memory_mapped_file",
    "memory_kernel",
    "memory_max_usage",
    "memory_failcnt",
    "oom_kills",
    "threads",
    "threads_max",
)


@pytest.mark.parametrize("unified", [False, True], ids=["v1", "v2"])
def test_a_sample_for_the_cri_stats_reads_only_their_fields(tmp_path: Path, unified: bool) -> None:
    if unified:
        (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
        files = dict(V2_FILES, **{"io.stat": "8:0 rbytes=1 wbytes=2 rios=3 wios=4\n"})
        files["memory.stat"] += "file_mapped 4096\nkernel 8192\n"
        files |= {"memory.peak": "40000000\n", "pids.max": "64\n"}
        write(tmp_path, "crictld/abc", files)
    else:
        rel = "crictld/abc"
        write(
            tmp_path,
            f"cpuacct/{rel}",
            {"cpuacct.usage": "9\n", "cpuacct.stat": "user 1\nsystem 2\n"},
        )
        write(
            tmp_path, f"cpu/{rel}", {"cpu.stat": "nr_periods 3\nnr_throttled 1\nthrottled_time 5\n"}
        )
        write(
            tmp_path,
            f"memory/{rel}",
            {
                "memory.usage_in_bytes": "5000\n",
                "memory.memsw.usage_in_bytes": "6000\n",
                "memory.limit_in_bytes": "8192\n",
                "memory.stat": (
                    "total_cache 1\ntotal_rss 2\ntotal_inactive_file 3\ntotal_mapped_file 4\n"
                ),
                "memory.failcnt": "4\n",
                "memory.max_usage_in_bytes": "7000\n",
                "memory.kmem.usage_in_bytes": "100\n",
                "memory.oom_control": "oom_kill 1\n",
            },
        )
        write(
            tmp_path,
            f"pids/{rel}",
            {"pids.current": "2\n", "cgroup.procs": "7\n", "pids.max": "64\n"},
        )
        write(tmp_path, f"blkio/{rel}", {"blkio.throttle.io_serviced": "8:0 Read 5\n"})
    full = cgroups.read("/crictld/abc", tmp_path)
    light = cgroups.read("/crictld/abc", tmp_path, full=False)
    assert all(getattr(full, f) is not None for f in METRICS_ONLY)
    assert full.io and not light.io
    assert all(getattr(light, f) is None for f in METRICS_ONLY)
    metrics_only = {*METRICS_ONLY, "io", "timestamp"}
    fields = [f for f in Sample.__dataclass_fields__ if f not in metrics_only]
    assert [getattr(light, f) for f in fields] == [getattr(full, f) for f in fields]
    assert light.cpu_ns is not None and light.swap is not None and light.pids == full.pids


def test_working_set_never_below_zero(tmp_path: Path) -> None:
    write(
        tmp_path,
        "memory/x",
        {"memory.usage_in_bytes": "10\n", "memory.stat": "total_inactive_file 99\n"},
    )
    assert cgroups.read("/x", tmp_path).working_set == 0


def test_systemd_paths() -> None:
    assert cgroups.fs_path("system.slice:crictld:abc") == "system.slice/crictld-abc.scope"
    assert cgroups.fs_path("a-b-c.slice:p:x") == "a.slice/a-b.slice/a-b-c.slice/p-x.scope"
    assert cgroups.fs_path("/crictld/abc") == "crictld/abc"


def test_nano_cores() -> None:
    a = Sample(timestamp=1_000_000_000, cpu_ns=5_000_000_000)
    b = Sample(timestamp=2_000_000_000, cpu_ns=5_500_000_000)
    assert cgroups.nano_cores(a, b) == 500_000_000  # half a core over a second
    assert cgroups.nano_cores(None, b) is None
    assert cgroups.nano_cores(b, a) is None  # time went backwards
    assert cgroups.nano_cores(Sample(timestamp=0, cpu_ns=9 << 40), b) is None  # counter reset


def test_resource_files_v1_and_v2() -> None:
    from crictl.gen.cri.runtime.v1 import api_pb2

    res = api_pb2.LinuxContainerResources(
        cpu_shares=1024, cpu_quota=50_000, cpu_period=100_000, memory_limit_in_bytes=1 << 28
    )
    assert cgroups.resource_files(res, v2=False) == [
        ("memory/memory.limit_in_bytes", str(1 << 28)),
        ("cpu/cpu.shares", "1024"),
        ("cpu/cpu.cfs_period_us", "100000"),
        ("cpu/cpu.cfs_quota_us", "50000"),
    ]
    assert cgroups.resource_files(res, v2=True) == [
        ("memory.max", str(1 << 28)),
        ("cpu.weight", "39"),  # runc's conversion of 1024 shares
        ("cpu.max", "50000 100000"),
    ]
    assert cgroups.resource_files(api_pb2.LinuxContainerResources(), v2=True) == []


def test_swap_controller_v1_and_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    assert not cgroups.swap_controller.__wrapped__(v1)
    (v1 / "memory" / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroups.swap_controller.__wrapped__(v1)
    v2 = tmp_path / "v2"
    (v2 / "system.slice" / "crictld.service").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory\n")
    own = tmp_path / "self-cgroup"
    own.write_text("0::/system.slice/crictld.service\n")
    assert not cgroups.swap_controller.__wrapped__(v2, own)
    (v2 / "system.slice" / "crictld.service" / "memory.swap.max").write_text("max\n")
    assert cgroups.swap_controller.__wrapped__(v2, own)
    own.write_text("0::/\n")  # the root cgroup has no memory.swap.max
    assert not cgroups.swap_controller.__wrapped__(v2, own)


def test_a_left_task_cgroup_is_removed_where_empty(tmp_path: Path) -> None:
    """v1: each hierarchy's empty directory of the task goes, one holding a cgroup stays (to
    the orphan sweep), a co-mounted controller's link is not a hierarchy of its own, and
    where nothing is left there is nothing to do. v2: the one directory. systemd: nothing."""
    v1 = tmp_path / "v1"
    for h in ("memory", "cpu,cpuacct", "pids"):
        (v1 / h / "kubepods" / "pod1" / "abc").mkdir(parents=True)
    (v1 / "cpu").symlink_to("cpu,cpuacct")
    (v1 / "pids" / "kubepods" / "pod1" / "abc" / "child").mkdir()
    removed = cgroups.remove_left_empty("/kubepods/pod1/abc", root=v1)
    assert sorted(removed) == [
        f"{v1}/cpu,cpuacct/kubepods/pod1/abc",
        f"{v1}/memory/kubepods/pod1/abc",
    ]
    assert (v1 / "pids" / "kubepods" / "pod1" / "abc").is_dir()
    assert (v1 / "memory" / "kubepods" / "pod1").is_dir()  # the parent is kubelet's
    assert cgroups.remove_left_empty("/kubepods/pod1/abc", root=v1) == []

    v2 = tmp_path / "v2"
    (v2 / "crictld" / "abc").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cgroups.remove_left_empty("/crictld/abc", root=v2) == [f"{v2}/crictld/abc"]
    assert not (v2 / "crictld" / "abc").exists()

    (v2 / "system.slice" / "crictld-abc.scope").mkdir(parents=True)
    assert cgroups.remove_left_empty("system.slice:crictld:abc", root=v2) == []
    assert (v2 / "system.slice" / "crictld-abc.scope").is_dir()
