"""A pod of many containers stopped as kubelet stops them: a StopContainer each, all at once,
side by side with containerd's CRI.

Before the first round, on every runtime (untimed): the pause and busybox images pulled and one
pod run. Per round: CONTAINERS busybox containers (`sleep 3600`) created and started (untimed),
then every one's StopContainer (grace GRACE seconds; `sleep` as its container's PID 1 ignores
SIGTERM, so each is SIGKILLed at the deadline) sent at once from as many threads, each with a
DEADLINE; the round's figure is the time until the last answered, and a call that failed is
an error. Then the containers are removed (untimed). With `--share-pid` the containers share
the pod's PID namespace (kubelet's `shareProcessNamespace: true`): `sleep` then dies of the
SIGTERM, and containerd 1.6's shim runs `runc kill --all` on each exit.

    .venv/bin/python -m benchmarks.pod_stop                    # brings everything up itself
    .venv/bin/python -m benchmarks.pod_stop --containers 100 --share-pid --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from benchmarks.containers import ContainerWorkload, run_pod_workload
from benchmarks.cri_bench import BenchError, OpStats, Runtime
from crictl.gen.cri.runtime.v1 import api_pb2


class PodStopWorkload(ContainerWorkload):
    name = "pod_stop"

    def __init__(
        self,
        pause: str,
        busybox: str,
        containers: int,
        grace: int,
        deadline: float,
        share_pid: bool,
        log_root: Path,
    ) -> None:
        super().__init__(pause, busybox, 0, 0, log_root)
        self.containers = containers
        self.grace = grace
        self.deadline = deadline
        self.share_pid = share_pid
        self.op = f"{containers} StopContainer at once"

    def describe(self) -> str:
        pid = "the pod's" if self.share_pid else "its own"
        return (
            f"one pod; per round {self.containers} sleeping containers (each in {pid} PID "
            f"namespace) started, then stopped all at once (grace {self.grace} s, deadline "
            f"{self.deadline:g} s a call) and removed"
        )

    def container_config(self, name: str) -> api_pb2.ContainerConfig:
        config = super().container_config(name)
        pid = api_pb2.POD if self.share_pid else api_pb2.CONTAINER
        config.linux.security_context.namespace_options.pid = pid
        return config

    def run_round(self, rt: Runtime, index: int) -> None:
        r = rt.runtime
        pod = self.round_pods[rt.name]
        ids: list[str] = []
        for i in range(self.containers):
            created = rt.quietly(
                r.CreateContainer,
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod.id,
                    config=self.container_config(f"r{index}-s{i}"),
                    sandbox_config=pod.config,
                ),
                timeout=60,
            )
            if created is None:
                raise BenchError(f"{rt.name}: cannot create the round's containers")
            ids.append(created.container_id)
            self.container_ids.setdefault(rt.name, []).append(created.container_id)
            start = api_pb2.StartContainerRequest(container_id=ids[-1])
            if rt.quietly(r.StartContainer, start, timeout=60) is None:
                raise BenchError(f"{rt.name}: cannot start the round's containers")

        def stop(cid: str) -> str | None:
            try:
                r.StopContainer(
                    api_pb2.StopContainerRequest(container_id=cid, timeout=self.grace),
                    timeout=self.deadline,
                )
            except grpc.RpcError as e:
                return f"{e.code().name}: {e.details()}"
            return None

        began = time.perf_counter()
        with ThreadPoolExecutor(len(ids)) as pool:
            failed = [f for f in pool.map(stop, ids) if f]
        seconds = time.perf_counter() - began
        stats = rt.ops.setdefault(self.op, OpStats())
        stats.samples.append(seconds)
        stats.labels.append(f"{len(failed)} failed")
        stats.errors += len(failed)
        for message in failed:
            if message not in stats.messages and len(stats.messages) < 5:
                stats.messages.append(message)
        for cid in ids:  # what failed to stop goes with the pod at teardown
            remove = api_pb2.RemoveContainerRequest(container_id=cid)
            rt.quietly(r.RemoveContainer, remove, timeout=60)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pod_stop",
        description="A pod's containers stopped all at once, crictld next to containerd's CRI.",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--containers", type=int, default=100, help="containers a round (100)")
    parser.add_argument("--grace", type=int, default=2, help="StopContainer's timeout, s (2)")
    parser.add_argument("--deadline", type=float, default=90.0, help="a call's deadline, s (90)")
    parser.add_argument(
        "--share-pid", action="store_true", help="the containers share the pod's PID namespace"
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw figures to OUT")
    args = parser.parse_args(argv)
    code, _ = run_pod_workload(
        "pod_stop",
        lambda pause, busybox, logs: PodStopWorkload(
            pause, busybox, args.containers, args.grace, args.deadline, args.share_pid, logs
        ),
        args.rounds,
        args.json,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
