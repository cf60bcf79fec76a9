"""`crictld doctor`: the node as crictld's store sees it against what containerd, the netns dir,
the CNI IPAM store and the process table hold, for operators.

It prints containerd's connection state, counts on both sides, and one line per mismatch
(orphan-*, missing-*, stuck), and exits 0 when there is none, 1 when there is one, 2 when it
cannot read the database or reach containerd. The database is opened read-only, so it is safe
beside a running daemon; only `--sweep` changes anything (what the daemon's own sweep removes,
with the same events), and then looks again.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from crictl import errors
from crictl.config import DEFAULT_CONTAINERD_SOCKET, MANAGED, Config
from crictl.containerd.client import ContainerdClient
from crictl.reconciler.orphans import (
    DEFAULT_GRACE,
    DEFAULT_STUCK_AFTER,
    Finding,
    Survey,
    SweepSettings,
    inspect_node,
    process_start_ns,
    remove_orphans,
)
from crictl.store.engine import Store, make_engine
from crictl.store.inventory import readonly_engine

CONNECT_TIMEOUT = 3.0
LOCK_FILE = "crictld.lock"  # the daemon's lock on its state dir (crictl/daemon.py)


@dataclass(frozen=True)
class DoctorOptions:
    stuck_after: float = DEFAULT_STUCK_AFTER
    grace: float = DEFAULT_GRACE
    sweep: bool = False


@dataclass
class Report:
    state_dir: str
    db: str
    containerd: dict[str, Any] = field(default_factory=dict)
    daemon: dict[str, Any] = field(default_factory=dict)
    store: dict[str, Any] = field(default_factory=dict)
    node: dict[str, Any] = field(default_factory=dict)
    swept: list[Finding] | None = None
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return 2
        return 1 if self.findings else 0


def daemon_pid(state_dir: Path) -> int | None:
    """The pid holding the daemon's lock on `state_dir`, read from /proc/locks (taking the
    lock to test it could make a daemon starting at that moment fail)."""
    try:
        st = (state_dir / LOCK_FILE).stat()
        locks = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in locks:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == wanted:
            return int(parts[4])
    return None


async def connect(config: Config) -> ContainerdClient:
    """containerd as `crictld serve` would find it (crictl/daemon.py connect_containerd), but
    starting nothing: the configured address, or the standard socket if it answers, or the
    managed one under the state dir."""
    managed = str(config.managed_containerd_dir / "containerd.sock")
    if config.containerd == MANAGED:
        candidates = [managed]
    elif config.containerd:
        candidates = [config.containerd]
    else:
        candidates = [str(DEFAULT_CONTAINERD_SOCKET), managed]
    failures = []
    for address in candidates:
        if not Path(address.removeprefix("unix://")).exists():
            failures.append(f"{address}: no such socket")
            continue
        client = ContainerdClient(address, config.containerd_namespace)
        try:
            await client.version(timeout=CONNECT_TIMEOUT)
            return client
        except errors.CrictlError as e:
            failures.append(f"{address}: {e}")
            await client.close()
    raise errors.Unavailable("cannot reach containerd: " + "; ".join(failures))


def _by(values: list[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _fill_counts(report: Report, found: Survey) -> None:
    w, rows = found.world, found.rows
    report.store = {
        "pods": len(rows.sandboxes),
        "pods_by_phase": _by([r.phase for r in rows.sandboxes]),
        "containers": len(rows.containers),
        "containers_by_phase": _by([r.phase for r in rows.containers]),
    }
    crictld_ctrs = [c for c in w.containers if c.kind is not None]
    report.node = {
        "containerd_containers": len(crictld_ctrs),
        "containerd_containers_by_kind": _by([c.kind or "" for c in crictld_ctrs]),
        "tasks": len(w.tasks),
        "tasks_by_status": _by([t.status for t in w.tasks]),
        "writable_snapshots": sum(1 for s in w.snapshots if s.kind == "ACTIVE"),
        "leases": len(w.leases),
        "netns": len(w.netns),
        "cni_network": w.network,
        "ipam_dir": str(w.ipam_dir) if w.ipam_dir else None,
        "ips": len(w.ips),
        "ips_error": w.ipam_error,
        "loggers": len(w.loggers),
        "state_dirs": _by([d.kind for d in w.state_dirs]),
    }


async def diagnose(config: Config, options: DoctorOptions) -> Report:
    report = Report(state_dir=str(config.state_dir), db=str(config.db_path))
    pid = daemon_pid(config.state_dir)
    live = pid is not None
    # exec sessions and pulls older than the running daemon were an earlier daemon's
    daemon_started = process_start_ns(pid) if pid is not None else None
    report.daemon = {"running": live, "pid": pid}
    try:
        reader = Store(readonly_engine(config.db_path))
    except errors.CrictlError as e:
        report.error = f"cannot read the database {config.db_path}: {e}"
        return report
    client: ContainerdClient | None = None
    try:
        try:
            client = await connect(config)
            version = await client.version(timeout=CONNECT_TIMEOUT)
        except errors.CrictlError as e:
            report.containerd = {"address": config.containerd or "", "connected": False}
            report.error = str(e)
            return report
        report.containerd = {
            "address": client.address,
            "namespace": client.namespace,
            "connected": True,
            "version": version.version,
        }
        settings = SweepSettings(
            state_dir=config.state_dir,
            netns_dir=config.netns_dir,
            cni_conf_dir=config.cni_conf_dir,
            cni_bin_dirs=config.cni_bin_dirs,
        )

        async def look() -> Survey:
            assert client is not None
            return await inspect_node(
                reader,
                client,
                settings,
                options.grace,
                options.stuck_after,
                live=live,
                daemon_started=daemon_started,
            )

        try:
            found = await look()
            if options.sweep:
                writer = Store(make_engine(config.db_path))
                try:
                    report.swept = await remove_orphans(writer, client, settings, found)
                finally:
                    writer.close()
                found = await look()
        except errors.CrictlError as e:
            report.error = f"containerd {client.address}: {e}"
            return report
        except SQLAlchemyError as e:  # a database that is not crictld's, or of another schema
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            report.error = f"cannot read the database {config.db_path}: {first_line}"
            return report
        _fill_counts(report, found)
        report.findings = found.findings
        return report
    finally:
        if client is not None:
            await client.close()
        reader.close()


# -- output ------------------------------------------------------------------------------------


def _counts(counts: dict[str, int]) -> str:
    """ " (2 RUNNING, 1 EXITED)", or nothing when there is nothing to count."""
    return f" ({', '.join(f'{n} {k}' for k, n in counts.items())})" if counts else ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _finding_lines(findings: list[Finding]) -> list[str]:
    width = max((len(f.kind) for f in findings), default=0)
    return [f"  {f.kind.ljust(width)}  {f.name}  {f.detail}" for f in findings]


def format_human(report: Report) -> str:
    lines = [f"state dir   {report.state_dir}"]
    d = report.daemon
    lines.append(
        f"daemon      {'running, pid ' + str(d['pid']) if d.get('running') else 'not running'}"
    )
    c = report.containerd
    if c:
        if c.get("connected"):
            lines.append(f"containerd  {c['address']}: connected, version {c['version']}")
        else:
            lines.append(f"containerd  {c['address'] or 'default'}: not connected")
    if report.error is not None:
        lines.append(f"error       {report.error}")
        return "\n".join(lines)
    s, n = report.store, report.node
    lines.append(
        f"store       {report.db}: {_plural(s['pods'], 'pod')}{_counts(s['pods_by_phase'])}, "
        f"{_plural(s['containers'], 'container')}{_counts(s['containers_by_phase'])}"
    )
    lines.append(
        f"namespace   {c['namespace']}: {_plural(n['containerd_containers'], 'container')}"
        f"{_counts(n['containerd_containers_by_kind'])}, "
        f"{_plural(n['tasks'], 'task')}{_counts(n['tasks_by_status'])}, "
        f"{_plural(n['writable_snapshots'], 'writable snapshot')}, {_plural(n['leases'], 'lease')}"
    )
    ips = (
        f"{_plural(n['ips'], 'IP')} in {n['cni_network']}"
        if n["ips_error"] is None
        else f"IPs unknown ({n['ips_error']})"
    )
    lines.append(
        f"node        {n['netns']} netns, {ips}, {_plural(n['loggers'], 'logger')}, "
        f"state dirs{_counts(n['state_dirs']) or ' (none)'}"
    )
    if report.swept is not None:
        lines.append(f"swept       {len(report.swept)}")
        lines += _finding_lines(report.swept)
    lines.append(f"findings    {len(report.findings) or 'none'}")
    lines += _finding_lines(report.findings)
    return "\n".join(lines)


def format_json(report: Report) -> str:
    doc: dict[str, Any] = {
        "ok": report.exit_code == 0,
        "state_dir": report.state_dir,
        "db": report.db,
        "daemon": report.daemon,
        "containerd": report.containerd,
        "store": report.store,
        "node": report.node,
        "findings": [asdict(f) for f in report.findings],
        "error": report.error,
    }
    if report.swept is not None:
        doc["swept"] = [asdict(f) for f in report.swept]
    return json.dumps(doc, indent=2)


def run(config: Config, options: DoctorOptions, as_json: bool = False) -> int:
    report = asyncio.run(diagnose(config, options))
    print(format_json(report) if as_json else format_human(report))
    if report.error is not None and not as_json:
        print(f"crictld doctor: {report.error}", file=sys.stderr)
    return report.exit_code
