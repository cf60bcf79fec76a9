"""critest's own benchmarks (cri-tools v1.37.0, `critest -benchmark`) against crictld and
containerd's CRI plugin in one run: the measure issue 13 was filed with.

critest times each call of its lifecycle loops at its client (grpc-go) and writes every sample
to `<out>/*_benchmark_data.json`: pods (RunPodSandbox, PodSandboxStatus, StopPodSandbox,
RemovePodSandbox), containers (CreateContainer, StartContainer, ContainerStatus, StopContainer,
RemoveContainer, each in a pod of its own), images (PullImage, ImageStatus, RemoveImage of one
image in a loop) and ListImages. This script runs critest against each runtime in turn
(`--runs` times, the order alternating), reads those files and prints each call's p50 and p95
side by side with the ratio.

critest names upstream images (`registry.k8s.io/...`, `public.ecr.aws/docker/library/
busybox:...`): both runtimes mirror those hosts to the local registry of fixture images, as
the suite's critest runs do (tests/rig/critest.py).

    .venv/bin/python -m benchmarks.critest                      # 40 samples, 2 at once
    .venv/bin/python -m benchmarks.critest --samples 100 --parallel 1 --runs 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.cri_bench import BenchError, Runtime, percentile
from benchmarks.setup import (
    cri_tools_dir,
    format_teardown,
    leftovers,
    local_node,
    local_registry,
    runtime_logs,
)

# What critest pulls from: registry.k8s.io for its test images, public.ecr.aws for the image
# benchmarks' busybox (pkg/benchmark/image.go).
MIRRORS = ("registry.k8s.io", "gcr.io", "k8s.gcr.io", "public.ecr.aws")

# critest runs a runtime is given before the benchmark gives up: one failed sample (an error
# answered) fails critest's whole loop, and containerd 1.6's CRI fails a pull now and then when
# another sample removes the same image meanwhile ("failed to create image reference ... not
# found"). Each failure is printed with the table.
ATTEMPTS = 3

# critest's operation names, as the CRI names the calls, in the order.
CALLS = {
    "CreatePod": "RunPodSandbox",
    "StopPod": "StopPodSandbox",
    "CreateContainer": "CreateContainer",
    "StartContainer": "StartContainer",
    "StopContainer": "StopContainer",
    "RemoveContainer": "RemoveContainer",
    "PullImage": "PullImage",
    "RemoveImage": "RemoveImage",
    "StatusContainer": "ContainerStatus",
    "StatusPod": "PodSandboxStatus",
    "StatusImage": "ImageStatus",
    "RemovePod": "RemovePodSandbox",
    "ListImages": "ListImages",
}


@dataclass
class Samples:
    """Per CRI call, every sample's duration in ms, over all of a runtime's runs; and each
    run's p50 apart (the spread between runs)."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    run_p50s: dict[str, list[float]] = field(default_factory=dict)
    failed_runs: list[str] = field(default_factory=list)  # why critest failed, run again


def params_file(path: Path, samples: int, parallel: int) -> Path:
    """critest's benchmarking params (pkg/framework/test_context.go, BenchmarkingParamsType):
    the same number of samples, and at once, for pods, containers and images."""
    path.write_text(
        "\n".join(
            [
                f"containersNumber: {samples}",
                f"containersNumberParallel: {parallel}",
                f"podsNumber: {samples}",
                f"podsNumberParallel: {parallel}",
                f"imagesNumber: {samples}",
                f"imagesNumberParallel: {parallel}",
                # critest's defaults (5-10 s) fail a whole run on one slow sample of this VM.
                "containerBenchmarkTimeoutSeconds: 120",
                "podBenchmarkTimeoutSeconds: 120",
                "imageBenchmarkTimeoutSeconds: 120",
                "podContainerStartBenchmarkTimeoutSeconds: 60",
                "",
            ]
        )
    )
    return path


def read_results(out_dir: Path) -> dict[str, list[float]]:
    """Every `*_benchmark_data.json` critest wrote (pkg/benchmark/util.go,
    LifecycleBenchmarksResultsSet): per CRI call, its samples in ms."""
    found: dict[str, list[float]] = {}
    for path in sorted(out_dir.glob("*_benchmark_data.json")):
        data = json.loads(path.read_text())
        names = data["operationsNames"]
        for point in data["datapoints"]:
            for name, ns in zip(names, point["operationsDurationsNs"], strict=True):
                found.setdefault(CALLS.get(name, name), []).append(ns / 1e6)
    return found


def run_critest(critest: Path, runtime: Runtime, params: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True)
    cmd = [
        str(critest),
        "-runtime-endpoint",
        runtime.endpoint,
        "-image-endpoint",
        runtime.endpoint,
        "-benchmark",
        "-benchmarking-params-file",
        str(params),
        "-benchmarking-output-dir",
        str(out_dir),
        "-ginkgo.no-color",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=out_dir)
    if proc.returncode != 0:
        # ginkgo's reasons, not the goroutine dumps after them
        reasons = [
            line.strip()
            for line in (proc.stdout + proc.stderr).splitlines()
            if "[FAILED]" in line or "rpc error" in line or "Unexpected error" in line
        ]
        unique = list(dict.fromkeys(reasons)) or ["(no reason printed)"]
        raise BenchError(
            f"critest -benchmark against {runtime.name} failed (exit {proc.returncode}):\n"
            + "\n".join(unique)[-4000:]
        )
    if not any(out_dir.glob("*_benchmark_data.json")):
        raise BenchError(f"critest -benchmark against {runtime.name} wrote no results")


def run(
    runtimes: Sequence[Runtime], samples: int, parallel: int, runs: int, workdir: Path
) -> dict[str, Samples]:
    critest = cri_tools_dir() / "critest"
    if not critest.exists():
        raise BenchError(f"{critest} is missing: `make deps` builds it")
    params = params_file(workdir / "params.yaml", samples, parallel)
    figures = {rt.name: Samples() for rt in runtimes}
    for n in range(runs):
        order = list(runtimes) if n % 2 == 0 else list(reversed(runtimes))
        for rt in order:
            print(f"run {n + 1}/{runs}: critest -benchmark against {rt.name}", file=sys.stderr)
            for attempt in range(ATTEMPTS):
                out_dir = workdir / f"{rt.name}-{n}-{attempt}"
                try:
                    run_critest(critest, rt, params, out_dir)
                    break
                except BenchError as e:
                    # a failed sample fails critest's whole loop: said, and run again
                    figures[rt.name].failed_runs.append(str(e))
                    print(str(e), file=sys.stderr)
                    if attempt == ATTEMPTS - 1:
                        raise
            found = read_results(out_dir)
            for call, ms in found.items():
                figures[rt.name].ms.setdefault(call, []).extend(ms)
                figures[rt.name].run_p50s.setdefault(call, []).append(percentile(ms, 0.5))
    return figures


def format_results(figures: dict[str, Samples], samples: int, parallel: int, runs: int) -> str:
    a, b = "crictld", "containerd"
    lines = [
        f"critest -benchmark (cri-tools v1.37.0), {samples} samples a loop, {parallel} at once, "
        f"{runs} run(s) a runtime; ms at critest's client, p50 / p95 over every sample",
        f"{'call':<18}| {a:>17} | {b:>17} | p50 ratio | ratio per run",
        "-" * 18 + "+" + "-" * 19 + "+" + "-" * 19 + "+-----------+--------------",
    ]
    for call in CALLS.values():
        mine, theirs = figures[a].ms.get(call), figures[b].ms.get(call)
        if not mine or not theirs:
            continue
        p50a, p50b = percentile(mine, 0.5), percentile(theirs, 0.5)
        per_run = ", ".join(
            f"{x / y:.2f}"
            for x, y in zip(figures[a].run_p50s[call], figures[b].run_p50s[call], strict=False)
        )
        lines.append(
            f"{call:<18}| {p50a:7.2f} / {percentile(mine, 0.95):7.2f} "
            f"| {p50b:7.2f} / {percentile(theirs, 0.95):7.2f} | {p50a / p50b:9.2f} | {per_run}"
        )
    for name in (a, b):
        for failure in figures[name].failed_runs:
            lines.append(f"{name}: a critest run failed and was run again: {failure}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.critest",
        description="critest -benchmark against crictld and containerd's CRI plugin, side by side.",
    )
    parser.add_argument("--samples", type=int, default=40, help="samples a loop (40)")
    parser.add_argument("--parallel", type=int, default=2, help="samples at once (2)")
    parser.add_argument("--runs", type=int, default=1, help="critest runs a runtime (1)")
    parser.add_argument(
        "--registry", help="HOST:PORT of a registry with the fixture images (default: start one)"
    )
    parser.add_argument("--workdir", type=Path, help="image build dir (default .cache/rig-images)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the runtimes' logs")
    args = parser.parse_args(argv)

    node = None
    try:
        with (
            runtime_logs(args.keep_logs, "critest") as (logs_dir, failed),
            local_registry(args.registry, args.workdir) as registry,
            tempfile.TemporaryDirectory(prefix="crd-bench-critest-") as tmp,
        ):
            try:
                with local_node(registry, logs_dir, mirrors=MIRRORS) as node:
                    figures = run(node.runtimes, args.samples, args.parallel, args.runs, Path(tmp))
            except BenchError:
                failed[0] = True
                raise
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        if node is not None:
            print(format_teardown(leftovers(node), False), file=sys.stderr)
        return 1
    print(format_results(figures, args.samples, args.parallel, args.runs))
    print()
    after = leftovers(node)
    print(format_teardown(after, any(after.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
