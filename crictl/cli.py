"""The `crictld` command: serve | migrate | sql | doctor | version."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from crictl import __version__, errors
from crictl.config import (
    Config,
    load_config_file,
    parse_event_log_rows,
    parse_grace,
    parse_mirror_flags,
    parse_port,
    parse_settings,
    parse_timeout,
)
from crictl.log import setup_logging

DEFAULT_CONFIG_FILE = Path("/etc/crictld/config.toml")


def _add_state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, help=f"TOML config file (default {DEFAULT_CONFIG_FILE} if it exists)"
    )
    p.add_argument("--state-dir", type=Path, help="holds the database (default /var/lib/crictld)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crictld", description="A Kubernetes CRI runtime with its state in SQLite."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve CRI on a unix socket")
    _add_state_args(serve)
    serve.add_argument("--socket", type=Path, help="default /run/crictld/crictld.sock")
    serve.add_argument(
        "--socket-group",
        metavar="GROUP",
        help="group (name or gid) that owns the socket, mode 0660 (default: root's group)",
    )
    serve.add_argument(
        "--containerd",
        metavar="ADDRESS|managed",
        help="a containerd socket, or 'managed' to start a private one "
        "(default: the standard socket if it answers, else managed)",
    )
    serve.add_argument("--containerd-namespace", help="default crictld")
    serve.add_argument("--containerd-bin", help="containerd binary for managed mode")
    serve.add_argument(
        "--containerd-state-dir",
        type=Path,
        help="the managed containerd's state dir (task bundles, FIFOs; a tmpfs on a node); "
        "default /run/crictld/containerd, or <state dir>/containerd/state with --state-dir",
    )
    serve.add_argument(
        "--containerd-start-timeout",
        metavar="SECONDS",
        help="how long a managed containerd has to answer: one found running before it is "
        "replaced, one started before the start fails (default 30)",
    )
    serve.add_argument("--cni-conf-dir", type=Path, help="default /etc/cni/net.d")
    serve.add_argument(
        "--runtime-handler",
        action="append",
        metavar="NAME=BINARY",
        help="a RuntimeClass handler run by a runc-compatible BINARY (repeatable)",
    )
    serve.add_argument(
        "--cni-conf-template",
        type=Path,
        help="CNI config template rendered with kubelet's pod CIDR into the conf dir",
    )
    serve.add_argument(
        "--cni-bin-dir",
        type=Path,
        action="append",
        dest="cni_bin_dirs",
        help="repeatable; default /opt/cni/bin and /usr/lib/cni",
    )
    serve.add_argument("--netns-dir", type=Path, help="default /run/crictld/netns")
    serve.add_argument("--pause-image", help="default registry.k8s.io/pause:3.10")
    serve.add_argument(
        "--registry-mirror", action="append", default=[], metavar="HOST=URL", help="repeatable"
    )
    serve.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST",
        help="repeatable; plain HTTP allowed (always for loopback)",
    )
    serve.add_argument(
        "--image-pull-progress-timeout",
        type=float,
        metavar="SECONDS",
        help="fail a pull that moves no byte for this long (default 60)",
    )
    serve.add_argument(
        "--stream-server-address",
        help="address the Exec/Attach/PortForward server listens on (default 127.0.0.1)",
    )
    serve.add_argument("--stream-server-port", type=int, help="its port (default 0: a free one)")
    serve.add_argument(
        "--cgroup-driver",
        choices=("cgroupfs", "systemd"),
        help="as kubelet's --cgroup-driver (default cgroupfs)",
    )
    serve.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off)",
    )
    serve.add_argument(
        "--event-log-rows",
        metavar="N",
        help="keep the event log's newest N rows (default 100000, ~25 MB; 0: every row)",
    )
    serve.add_argument(
        "--orphan-grace",
        metavar="SECONDS",
        help="the orphan sweep leaves what is younger than this to whatever is making it "
        "(default 60; 0: everything no row owns, as after the database was moved aside)",
    )
    serve.add_argument("--log-level", help="default INFO")
    serve.add_argument("--fault-point", help=argparse.SUPPRESS)  # crash tests only

    migrate = sub.add_parser("migrate", help="migrate the database to the newest schema")
    _add_state_args(migrate)

    sql = sub.add_parser("sql", help="run a read-only SQL query on the database")
    _add_state_args(sql)
    sql.add_argument("--db", type=Path, help="the database file (instead of --state-dir)")
    sql.add_argument("--json", action="store_true", help="print rows as JSON objects")
    sql.add_argument("--schema", action="store_true", help="print the views and tables")
    sql.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="stop a query that runs longer (default 10; 0: no limit); exit status 2",
    )
    sql.add_argument(
        "--max-rows",
        type=int,
        default=10_000,
        metavar="N",
        help="print at most N rows, then say so on stderr and exit with status 3 "
        "(default 10000; 0: no limit)",
    )
    sql.add_argument("query", nargs="?")

    doctor = sub.add_parser(
        "doctor",
        help="compare the store with containerd, netns, IPAM and loggers; list every mismatch",
        description="Exit status: 0 nothing amiss, 1 findings, 2 the database or containerd "
        "cannot be read.",
    )
    _add_state_args(doctor)
    doctor.add_argument(
        "--containerd",
        metavar="ADDRESS|managed",
        help="default: the standard socket if it answers, else the managed one under the "
        "state dir (nothing is started)",
    )
    doctor.add_argument("--containerd-namespace", help="default crictld")
    doctor.add_argument("--netns-dir", type=Path, help="default /run/crictld/netns")
    doctor.add_argument("--cni-conf-dir", type=Path, help="default /etc/cni/net.d")
    doctor.add_argument(
        "--cni-bin-dir",
        type=Path,
        action="append",
        dest="cni_bin_dirs",
        help="repeatable; default /opt/cni/bin and /usr/lib/cni",
    )
    doctor.add_argument(
        "--stuck-after",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="a row not where it should be for this long is stuck (default 120)",
    )
    doctor.add_argument(
        "--grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="objects younger than this are being made, not orphans (default 60)",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--sweep",
        action="store_true",
        help="remove the orphans found (as the daemon's sweep does), then look again",
    )

    sub.add_parser("version", help="print crictld's version")
    return parser


def load_config(args: argparse.Namespace) -> Config:
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG_FILE.exists():
        path = DEFAULT_CONFIG_FILE
    config = load_config_file(path) if path is not None else Config()
    overrides: dict[str, Any] = {"state_dir": args.state_dir}
    if args.command == "serve":
        overrides |= {
            "socket": args.socket,
            "socket_group": args.socket_group,
            "containerd": args.containerd,
            "containerd_namespace": args.containerd_namespace,
            "containerd_bin": args.containerd_bin,
            "containerd_state_dir": args.containerd_state_dir,
            "containerd_start_timeout": (
                None
                if args.containerd_start_timeout is None
                else parse_timeout(args.containerd_start_timeout, "--containerd-start-timeout")
            ),
            "cni_conf_dir": args.cni_conf_dir,
            "cni_conf_template": args.cni_conf_template,
            "runtime_handlers": (
                parse_settings(
                    {"runtime_handlers": _handler_flags(args.runtime_handler)},
                    "--runtime-handler",
                )["runtime_handlers"]
                if args.runtime_handler
                else None
            ),
            "cni_bin_dirs": args.cni_bin_dirs,
            "netns_dir": args.netns_dir,
            "pause_image": args.pause_image,
            "log_level": args.log_level,
            "image_pull_progress_timeout": args.image_pull_progress_timeout,
            "fault_point": args.fault_point,
            "stream_server_address": args.stream_server_address,
            "metrics_address": args.metrics_address,
            "cgroup_driver": args.cgroup_driver,
            "event_log_rows": (
                None
                if args.event_log_rows is None
                else parse_event_log_rows(args.event_log_rows, "--event-log-rows")
            ),
            "orphan_grace": (
                None
                if args.orphan_grace is None
                else parse_grace(args.orphan_grace, "--orphan-grace")
            ),
            "stream_server_port": (
                None
                if args.stream_server_port is None
                else parse_port(args.stream_server_port, "--stream-server-port")
            ),
        }
        if args.registry_mirror:
            mirrors = dict(config.registry_mirrors)
            mirrors.update(parse_mirror_flags(args.registry_mirror))
            overrides["registry_mirrors"] = mirrors
        if args.insecure_registry:
            overrides["insecure_registries"] = config.insecure_registries + args.insecure_registry
    return config.with_overrides(overrides)


def _sql(args: argparse.Namespace) -> int:
    from crictl.store import inspect

    db: Path = args.db or load_config(args).db_path
    limits = inspect.Limits(timeout=args.timeout, max_rows=args.max_rows)
    try:
        if args.schema:
            print(inspect.schema(db))
            return 0
        if not args.query:
            raise errors.InvalidArgument("give a query, or --schema")
        result = inspect.run_query(db, args.query, limits)
    except PermissionError as e:  # the database is private to root: say so, no traceback
        raise inspect.not_readable(db) from e
    if args.json:
        print(
            json.dumps(
                [dict(zip(result.columns, row, strict=True)) for row in result.rows],
                indent=2,
                default=str,
            )
        )
    else:
        print(inspect.format_table(result))
    if result.truncated:
        print(f"crictld: stopped after {limits.max_rows} rows (--max-rows)", file=sys.stderr)
        return 3
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from crictl import doctor

    setup_logging("WARNING")  # a removal --sweep could not make is logged, as the daemon's
    config = load_config(args).with_overrides(
        {
            "containerd": args.containerd,
            "containerd_namespace": args.containerd_namespace,
            "netns_dir": args.netns_dir,
            "cni_conf_dir": args.cni_conf_dir,
            "cni_bin_dirs": args.cni_bin_dirs,
        }
    )
    if args.grace < 0 or args.stuck_after < 0:
        raise errors.InvalidArgument("--grace and --stuck-after must not be negative")
    options = doctor.DoctorOptions(stuck_after=args.stuck_after, grace=args.grace, sweep=args.sweep)
    return doctor.run(config, options, as_json=args.json)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "version":
            print(f"crictld {__version__}")
            return 0
        if args.command == "sql":
            return _sql(args)
        if args.command == "doctor":
            return _doctor(args)
        config = load_config(args)
        setup_logging(config.log_level)
        if args.command == "migrate":
            from crictl.store.migrate import upgrade_to_head

            before, after = upgrade_to_head(config.db_path)
            print(f"{config.db_path}: {before or 'empty'} -> {after}")
            return 0
        from crictl.daemon import serve

        asyncio.run(serve(config))
        return 0
    except errors.CrictlError as e:
        print(f"crictld: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())


def _handler_flags(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, binary = value.partition("=")
        if not sep:
            raise errors.InvalidArgument(f"--runtime-handler {value!r}: expected NAME=BINARY")
        out[name] = binary
    return out
