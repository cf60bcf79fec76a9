"""The read workload: what kubelet reads all the time, against the runtime's own `Version`.

kubelet holds one gRPC channel open and, on that channel, lists pods and containers every
second (PLEG) and reads a pod's and its containers' statuses on each pod sync; ImageStatus comes
before each container start, ListImages with each image GC pass. These reads are a runtime's
steady-state load, so they are measured as kubelet makes them: over one persistent channel,
sequentially, next to `Version` on the same channel, which does no work and so is the floor of
what any call can cost there (gRPC over the unix socket, protobuf, the server's scheduling).

Before the first round, on every runtime (untimed): the pause and busybox images pulled, one pod
run with CONTAINERS started busybox containers (`sleep 3600`). Per round: Version,
ContainerStatus (a different container each round), PodSandboxStatus, ListContainers,
ListPodSandbox, ImageStatus (busybox, by name), ListImages. The pod goes after the last round
(untimed).

    .venv/bin/python -m benchmarks.reads                    # brings everything up itself
    .venv/bin/python -m benchmarks.reads --rounds 400 --containers 5 --json out.json

After the usual table, a comparison: per operation each runtime's p50, the ratio
crictld / containerd, and each runtime's p50 above its own Version's; then the CPU each
runtime's own processes spent per round and per read (`cri_bench.format_cpu`): crictld's
daemon, which answers these reads alone, and its containerd, which they should not reach.
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

READS = (
    "Version",
    "ContainerStatus",
    "PodSandboxStatus",
    "ListContainers",
    "ListPodSandbox",
    "ImageStatus",
    "ListImages",
)
# What `crictl inspect`/`inspectp` and critest's benchmarks ask (kubelet never does): the
# statuses with containerd's spec and the runtime's own info.
VERBOSE_READS = ("ContainerStatus(verbose)", "PodSandboxStatus(verbose)")


class ReadWorkload(ContainerWorkload):
    name = "reads"

    def __init__(
        self, pause: str, busybox: str, containers: int, log_root: Path, verbose: bool = False
    ) -> None:
        super().__init__(pause, busybox, 0, 0, log_root)
        self.containers = containers
        self.verbose = verbose
        self.ids: dict[str, list[str]] = {}

    def describe(self) -> str:
        return (
            f"one pod of {self.containers} sleeping containers; per round over one channel: "
            + ", ".join(READS + (VERBOSE_READS if self.verbose else ()))
        )

    def setup(self, rt: Runtime) -> None:
        super().setup(rt)  # images pulled, the pod run
        pod = self.round_pods[rt.name]
        for i in range(self.containers):
            cid = self._create(rt, "setup", pod, self.container_config(f"r{i}"))
            if cid is None or not self._start(rt, "setup", cid):
                raise BenchError(f"{rt.name}: cannot start the containers to read")
            self.ids.setdefault(rt.name, []).append(cid)
        rt.ops.pop("setup", None)

    def run_round(self, rt: Runtime, index: int) -> None:
        r, i = rt.runtime, rt.image
        pod = self.round_pods[rt.name].id
        ids = self.ids[rt.name]
        rt.call("Version", r.Version, api_pb2.VersionRequest())
        status = rt.call(
            "ContainerStatus",
            r.ContainerStatus,
            api_pb2.ContainerStatusRequest(container_id=ids[index % len(ids)]),
        )
        if status is not None:
            self._check(
                rt,
                "ContainerStatus",
                status.status.state == api_pb2.CONTAINER_RUNNING,
                f"state {status.status.state}",
            )
        rt.call(
            "PodSandboxStatus",
            r.PodSandboxStatus,
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod),
        )
        listed = rt.call("ListContainers", r.ListContainers, api_pb2.ListContainersRequest())
        if listed is not None:
            mine = {c.id for c in listed.containers if c.pod_sandbox_id == pod}
            self._check(rt, "ListContainers", mine == set(ids), f"{len(mine)} listed")
        rt.call("ListPodSandbox", r.ListPodSandbox, api_pb2.ListPodSandboxRequest())
        found = rt.call(
            "ImageStatus",
            i.ImageStatus,
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=self.busybox)),
        )
        if found is not None:
            self._check(rt, "ImageStatus", found.HasField("image"), "busybox not found")
        rt.call("ListImages", i.ListImages, api_pb2.ListImagesRequest())
        if self.verbose:
            rt.call(
                "ContainerStatus(verbose)",
                r.ContainerStatus,
                api_pb2.ContainerStatusRequest(container_id=ids[index % len(ids)], verbose=True),
            )
            rt.call(
                "PodSandboxStatus(verbose)",
                r.PodSandboxStatus,
                api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True),
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reads",
        description="Read RPC latency over one channel, crictld next to containerd's CRI plugin.",
    )
    parser.add_argument("--rounds", type=int, default=400, help="rounds (400)")
    parser.add_argument("--containers", type=int, default=5, help="containers in the pod (5)")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also the verbose ContainerStatus and PodSandboxStatus (crictl inspect's, critest's)",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw figures to OUT")
    args = parser.parse_args(argv)
    code, workload = run_pod_workload(
        "reads",
        lambda pause, busybox, logs: ReadWorkload(
            pause, busybox, args.containers, logs, args.verbose
        ),
        args.rounds,
        args.json,
        floor="Version",
        calls_per_round=len(READS) + (len(VERBOSE_READS) if args.verbose else 0),
    )
    wrong = [f"  {line}" for line in workload.checks] if isinstance(workload, ReadWorkload) else []
    if wrong:
        print("\nwrong answers:", *wrong, sep="\n")
    return 1 if wrong or code else 0


if __name__ == "__main__":
    sys.exit(main())
