"""The stats workload: what kubelet's stats provider calls, side by side with containerd's CRI.

Before the first round, on every runtime (untimed): the pause and busybox images pulled, one pod
run with CONTAINERS started busybox containers (`sleep 3600`). Per round: ContainerStats (one
container, a different one each round), ListContainerStats, PodSandboxStats, ListPodSandboxStats,
ListMetricDescriptors and ListPodSandboxMetrics (containerd 1.6 has no metrics RPCs: its column
says so). The pod goes after the last round (untimed).

    .venv/bin/python -m benchmarks.stats                    # brings everything up itself
    .venv/bin/python -m benchmarks.stats --rounds 100 --containers 10 --json out.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.containers import ContainerWorkload, run_pod_workload
from benchmarks.cri_bench import (
    BenchError,
    Runtime,
)
from crictl.gen.cri.runtime.v1 import api_pb2


class StatsWorkload(ContainerWorkload):
    name = "stats"

    def __init__(self, pause: str, busybox: str, containers: int, log_root: Path) -> None:
        super().__init__(pause, busybox, 0, 0, log_root)
        self.containers = containers
        self.ids: dict[str, list[str]] = {}

    def describe(self) -> str:
        return (
            f"one pod of {self.containers} sleeping containers: ContainerStats, "
            "ListContainerStats, PodSandboxStats, ListPodSandboxStats, ListMetricDescriptors, "
            "ListPodSandboxMetrics per round"
        )

    def setup(self, rt: Runtime) -> None:
        super().setup(rt)  # images pulled, the pod run
        pod = self.round_pods[rt.name]
        for i in range(self.containers):
            config = self.container_config(f"s{i}")
            cid = self._create(rt, "setup", pod, config)
            if cid is None or not self._start(rt, "setup", cid):
                raise BenchError(f"{rt.name}: cannot start the stats containers")
            self.ids.setdefault(rt.name, []).append(cid)
        rt.ops.pop("setup", None)

    def run_round(self, rt: Runtime, index: int) -> None:
        r = rt.runtime
        pod = self.round_pods[rt.name].id
        ids = self.ids[rt.name]
        cid = ids[index % len(ids)]
        rt.call("ContainerStats", r.ContainerStats, api_pb2.ContainerStatsRequest(container_id=cid))
        rt.call("ListContainerStats", r.ListContainerStats, api_pb2.ListContainerStatsRequest())
        rt.call(
            "PodSandboxStats", r.PodSandboxStats, api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod)
        )
        rt.call("ListPodSandboxStats", r.ListPodSandboxStats, api_pb2.ListPodSandboxStatsRequest())
        rt.call(
            "ListMetricDescriptors",
            r.ListMetricDescriptors,
            api_pb2.ListMetricDescriptorsRequest(),
        )
        rt.call(
            "ListPodSandboxMetrics",
            r.ListPodSandboxMetrics,
            api_pb2.ListPodSandboxMetricsRequest(),
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stats",
        description="Stats RPC latency, crictld next to containerd's CRI plugin.",
    )
    parser.add_argument("--rounds", type=int, default=50, help="rounds (50)")
    parser.add_argument("--containers", type=int, default=5, help="containers in the pod (5)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw figures to OUT")
    args = parser.parse_args(argv)
    code, _ = run_pod_workload(
        "stats",
        lambda pause, busybox, logs: StatsWorkload(pause, busybox, args.containers, logs),
        args.rounds,
        args.json,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
