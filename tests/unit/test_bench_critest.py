"""benchmarks/critest.py's pure parts: critest's result files read, the table printed."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.critest import Samples, format_results, params_file, read_results


def _write(path: Path, names: list[str], durations_ms: list[list[float]]) -> None:
    # The shape of cri-tools' LifecycleBenchmarksResultsSet (pkg/benchmark/util.go).
    path.write_text(
        json.dumps(
            {
                "operationsNames": names,
                "numParallel": 2,
                "datapoints": [
                    {
                        "sampleIndex": i,
                        "startTime": 0,
                        "endTime": 0,
                        "operationsDurationsNs": [int(ms * 1e6) for ms in row],
                        "metaInfo": {},
                    }
                    for i, row in enumerate(durations_ms)
                ],
            }
        )
    )


def test_results_are_read_per_cri_call(tmp_path: Path) -> None:
    _write(
        tmp_path / "pod_benchmark_data.json",
        ["CreatePod", "StatusPod", "StopPod", "RemovePod"],
        [[100, 1, 120, 10], [110, 2, 130, 12]],
    )
    _write(tmp_path / "image_listing_benchmark_data.json", ["ListImages"], [[0.5]])
    (tmp_path / "unrelated.json").write_text("{}")
    found = read_results(tmp_path)
    assert found == {
        "RunPodSandbox": [100.0, 110.0],
        "PodSandboxStatus": [1.0, 2.0],
        "StopPodSandbox": [120.0, 130.0],
        "RemovePodSandbox": [10.0, 12.0],
        "ListImages": [0.5],
    }


def test_the_table_prints_p50_p95_and_the_ratios() -> None:
    figures = {
        "crictld": Samples(
            ms={"StartContainer": [10.0, 20.0, 30.0]},
            run_p50s={"StartContainer": [20.0, 22.0]},
        ),
        "containerd": Samples(
            ms={"StartContainer": [20.0, 40.0, 60.0], "RemoveImage": [5.0]},
            run_p50s={"StartContainer": [40.0, 11.0], "RemoveImage": [5.0]},
            failed_runs=["critest -benchmark against containerd failed (exit 1):\nnot found"],
        ),
    }
    text = format_results(figures, samples=3, parallel=1, runs=2)
    [row] = [line for line in text.splitlines() if line.startswith("StartContainer")]
    cells = [c.strip() for c in row.split("|")]
    assert cells[1] == "20.00 /   29.00"
    assert cells[2] == "40.00 /   58.00"
    assert cells[3] == "0.50"
    assert cells[4] == "0.50, 2.00"
    assert "RemoveImage" not in text  # one runtime's figures only: no row
    assert "containerd: a critest run failed and was run again: critest" in text


def test_the_params_file_sets_every_loop(tmp_path: Path) -> None:
    text = params_file(tmp_path / "p.yaml", samples=40, parallel=2).read_text()
    for key in ("containersNumber", "podsNumber", "imagesNumber"):
        assert f"{key}: 40\n" in text
        assert f"{key}Parallel: 2\n" in text
