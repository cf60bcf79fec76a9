"""What the store's transactions of one container's life cost, alone: the nine the daemon
commits from CreateContainer to RemoveContainer (the row, CREATED, desired RUNNING, RUNNING,
desired EXITED, EXITED, observed, desired REMOVED, the delete), through `Store.write_sync` on
a fresh database at the schema's head, in one thread, one after the other. No runtime is
involved: this is the floor under the store writer thread's CPU that `benchmarks.containers`
measures with everything else running (docs/performance.md, "CPU per write").

    .venv/bin/python -m benchmarks.store_writes
    .venv/bin/python -m benchmarks.store_writes --lives 1000 --profile 20
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from crictl.store import containers as sc
from crictl.store import sandboxes as ss
from crictl.store.common import Tx
from crictl.store.engine import Store, make_engine
from crictl.store.migrate import upgrade_to_head
from crictl.store.models import ContainerDesired

Txn = Callable[[Tx], Any]


def life(sandbox_id: str, n: int) -> list[tuple[str, Txn]]:
    """The transactions of container number `n`'s life, in the daemon's order."""
    cid = secrets.token_hex(32)
    new = sc.NewContainer(
        id=cid,
        sandbox_id=sandbox_id,
        name=f"c{n}",
        attempt=0,
        config="{}",
        config_digest="d",
        image="busybox",
        image_ref=None,
        image_id=None,
        log_path=None,
        labels={"io.kubernetes.container.name": f"c{n}"},
        annotations={"io.kubernetes.container.hash": "1"},
    )
    return [
        ("create", lambda s: sc.create_container(s, new)),
        ("created", lambda s: sc.record_container_created(s, cid, 0, 0, [])),
        ("desired running", lambda s: sc.set_container_desired(s, cid, ContainerDesired.RUNNING)),
        ("started", lambda s: sc.record_container_started(s, cid, 4242)),
        ("desired exited", lambda s: sc.set_container_desired(s, cid, ContainerDesired.EXITED)),
        ("exited", lambda s: sc.record_container_exited(s, cid, 137, "Error")),
        ("observed", lambda s: sc.mark_container_observed(s, cid, 3)),
        ("desired removed", lambda s: sc.set_container_desired(s, cid, ContainerDesired.REMOVED)),
        ("delete", lambda s: sc.delete_container(s, cid)),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_writes", description=__doc__)
    parser.add_argument("--lives", type=int, default=300, help="container lives timed (300)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed lives first (50)")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="then cProfile 100 lives, top N"
    )
    parser.add_argument("--dir", type=Path, help="where the database goes (default /var/tmp)")
    args = parser.parse_args(argv)
    if args.lives < 1:
        parser.error("--lives must be 1 or more")

    where = Path(tempfile.mkdtemp(prefix="crictld-store-bench-", dir=args.dir or "/var/tmp"))
    try:
        db = where / "crictld.db"
        upgrade_to_head(db)
        store = Store(make_engine(db))
        store.build_model()  # as the daemon does at start: transitions start from its views
        try:
            sid = secrets.token_hex(32)
            pod = ss.NewSandbox(
                id=sid, name="p", namespace="n", uid="u", attempt=0, config="{}", config_digest="d"
            )
            store.write_sync(lambda s: ss.create_sandbox(s, pod))
            for n in range(args.warmup):
                for _, txn in life(sid, n):
                    store.write_sync(txn)
            wall: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for n in range(args.lives):
                for name, txn in life(sid, args.warmup + n):
                    w, c = time.perf_counter(), time.thread_time()
                    store.write_sync(txn)
                    wall[name] = wall.get(name, 0.0) + time.perf_counter() - w
                    cpu[name] = cpu.get(name, 0.0) + time.thread_time() - c
            print(f"{args.lives} container lives, {len(wall)} transactions each, in {db}")
            print(f"{'transaction':<16} {'wall ms':>8} {'cpu ms':>8}")
            for name in wall:
                print(
                    f"{name:<16} {1000 * wall[name] / args.lives:8.3f} "
                    f"{1000 * cpu[name] / args.lives:8.3f}"
                )
            total_w, total_c = sum(wall.values()), sum(cpu.values())
            print(
                f"{'a life':<16} {1000 * total_w / args.lives:8.3f} "
                f"{1000 * total_c / args.lives:8.3f}"
            )
            if args.profile:
                profile = cProfile.Profile()
                base = args.warmup + args.lives
                profile.enable()
                for n in range(100):
                    for _, txn in life(sid, base + n):
                        store.write_sync(txn)
                profile.disable()
                pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(
                    args.profile
                )
        finally:
            store.close()
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
