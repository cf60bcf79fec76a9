"""Chaos: random SIGKILLs of the daemon (and of its managed containerd) under three concurrent
pod+container lifecycles with kubelet-like retries; then no lifecycle lost an object, nothing
is stuck, and the node holds nothing. The short run in the suite: 12 kills, the long one
CRICTLD_CHAOS_KILLS=1000; a quarter of them containerd's (CRICTLD_CHAOS_CONTAINERD sets the
share, CRICTLD_CHAOS_SEED the seed)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crictl.reconciler import orphans
from tests.integration.test_images import pull
from tests.integration.test_sandboxes import held
from tests.rig.chaos import Chaos
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("CRICTLD_CHAOS_KILLS", "12"))
SEED = int(os.environ.get("CRICTLD_CHAOS_SEED", "7"))
# A quarter of the kills are containerd's, in the short run as in the long one.
CONTAINERD_SHARE = float(os.environ.get("CRICTLD_CHAOS_CONTAINERD", "0.25"))


def loggers(under: Path | None = None) -> int:
    """crictld-logger processes; with `under`, only those whose arguments name a path below it
    (one daemon's, when other tests run theirs at the same time)."""
    count = 0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if b"crictld-logger" in argv[0]:
                    count += under is None or any(str(under).encode() + b"/" in a for a in argv)
    return count


def doctor(d: Daemon, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "crictl.cli",
            "doctor",
            "--json",
            "--state-dir",
            str(d.state_dir),
            "--containerd",
            "managed",
            "--netns-dir",
            str(d.state_dir.parent / "netns"),
            "--cni-conf-dir",
            str(d.cni_conf_dir),
            *(x for b in d.cni_bin_dirs for x in ("--cni-bin-dir", str(b))),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def history(d: Daemon, object_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(
        d.sql(
            "--json",
            "SELECT action, to_phase, reason, message FROM events "
            f"WHERE object_id = '{object_id}' ORDER BY id",
        ).stdout
    )
    return rows


def mounts_under(*dirs: Path) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if any(point.startswith(str(d) + "/") for d in dirs):
            out.append(point)
    return out


@pytest.fixture
def chaos_daemon(managed_daemon: Daemon, registry: Registry) -> Iterator[Daemon]:
    managed_daemon.extra_args += ["--pause-image", f"{registry.host}/pause:3.10"]
    managed_daemon.start()
    yield managed_daemon


@pytest.mark.timeout(max(300, KILLS * 6))
def test_chaos(
    chaos_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = chaos_daemon
    image = f"{registry.host}/e2e-test-images/busybox:1.29-2"
    pull(d, image)
    loggers_before = loggers()
    cgroups_before = held(d, cni_network).cgroups  # other runtimes' on this node are theirs
    runc_before = {s.name for s in orphans.runc_states(d.namespace)}  # the namespace's, shared
    chaos = Chaos(d, image, short_tmp / "logs", containerd_share=CONTAINERD_SHARE)
    stats = chaos.run(KILLS, SEED, lambda rng: rng.uniform(0.2, 1.5))
    report = (
        f"kills: {stats.kills} (daemon {stats.kills_daemon}, containerd {stats.kills_containerd}), "
        f"lifecycles: {stats.lifecycles}, retried calls: {stats.retries}"
    )
    print(report)
    lost_ids = {m for e in stats.lost for m in re.findall(r"[0-9a-f]{64}", e)}
    history_of_lost = {i: history(d, i) for i in lost_ids}
    assert not stats.lost, (report, stats.lost, history_of_lost)
    failing = json.loads(d.status().info["daemon"])["failingPasses"]
    ids = {m for e in stats.errors for m in re.findall(r"[0-9a-f]{64}", e)}
    histories = {i: history(d, i) for i in ids}
    assert not stats.errors, (report, stats.errors, histories, failing)
    assert stats.lifecycles >= stats.kills // 4, report
    # Nothing stuck. What the crashes left that no row owns is the orphan sweep's to remove
    # (the daemon runs it at start and every few minutes; here at once, with no grace): it
    # must leave the node holding nothing, and what it removed is reported.
    rows = json.loads(d.sql("--json", "SELECT id, phase FROM pods").stdout)
    assert rows == [], rows
    swept = doctor(d, "--sweep", "--grace", "0")
    kinds = Counter(f["kind"] for f in swept.get("swept", []))
    print(f"swept after the run: {dict(kinds) or 'nothing'}")
    for f in swept.get("swept", []):  # where each came from: what the store recorded of its id
        print(f"  {f['kind']} {f['name']}: {f['detail']}; its events: {history(d, f['name'])}")
    assert not swept["findings"], swept["findings"]
    h = held(d, cni_network)
    assert h.cgroups <= cgroups_before and h.total() == len(h.cgroups), h
    assert loggers() == loggers_before
    assert mounts_under(d.state_dir, d.state_dir.parent / "netns") == []
    # no shim of this containerd is left running (containerd killed between a task's delete
    # and its shim's shutdown leaves one, which the sweep ends)
    assert orphans.find_shims(d.containerd_address, d.namespace) == ()
    # nor runc's state of a task (a `runc create` cut short leaves its dir, which the sweep
    # removes)
    assert {s.name for s in orphans.runc_states(d.namespace)} <= runc_before
