"""benchmarks/kubelet.py's pure parts: the static pod it writes and the table it prints."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.kubelet import GRACE, Figures, Rounds, format_figures, kubelet_histograms, manifest
from benchmarks.setup import Node, write_figures


def test_the_manifest_is_a_pod_of_busybox_containers_that_end_on_sigterm() -> None:
    pod = manifest("p3", "bench-7", "reg/busybox:1", 2)
    assert pod["metadata"]["name"] == "p3"
    assert pod["metadata"]["namespace"] == "bench-7"
    spec = pod["spec"]
    assert spec["terminationGracePeriodSeconds"] == GRACE
    assert [c["name"] for c in spec["containers"]] == ["c0", "c1"]
    for c in spec["containers"]:
        assert c["image"] == "reg/busybox:1"
        assert c["imagePullPolicy"] == "IfNotPresent"
        script = c["command"][-1]
        # A foreground sleep would hold the trap until it ends; `wait` returns on the signal.
        assert "trap 'exit 0' TERM" in script and script.endswith("& wait")


def _rounds(tmp_path: Path) -> Rounds:
    r = Rounds(Node("reg", "reg/pause:3.10", tmp_path), 1, 2, 60.0, idle_pods=10)
    r.figures = {
        "crictld": Figures(
            started=[150.0, 170.0, 160.0],
            running=[900.0, 1000.0, 950.0],
            stopped=[940.0],
            pod_stopped=[990.0],
            cpu_ns={"crictld daemon": 300_000_000},
            kubelet_cpu_ns=150_000_000,
            rounds=3,
            idle_cpu_ns={"crictld daemon": 260_000_000, "managed containerd": 60_000_000},
            idle_seconds=20.0,
        ),
        "containerd": Figures(
            started=[200.0, 200.0],
            running=[1000.0],
            stopped=[1000.0],
            pod_stopped=[1000.0],
            cpu_ns={"containerd (CRI plugin)": 100_000_000},
            kubelet_cpu_ns=100_000_000,
            rounds=2,
            idle_cpu_ns={"containerd (CRI plugin)": 120_000_000},
            idle_seconds=20.0,
            stop_retries=2,
        ),
    }
    return r


def test_the_table_gives_p50s_their_ratio_and_cpu_per_round_and_per_idle_second(
    tmp_path: Path,
) -> None:
    text = format_figures(_rounds(tmp_path))
    started = next(line for line in text.splitlines() if line.startswith("started"))
    assert "160" in started and "200" in started
    assert started.rstrip().endswith("0.80")  # 160 / 200
    running = next(line for line in text.splitlines() if line.startswith("running"))
    assert running.rstrip().endswith("0.95")
    assert "crictld: crictld daemon 100.0; kubelet 50.0 (3 rounds)" in text
    assert "containerd: containerd (CRI plugin) 50.0; kubelet 50.0 (2 rounds)" in text
    # ms of CPU a second while idle: 260 ms + 60 ms over 20 s
    assert "crictld daemon 13.0 + managed containerd 3.0 (= 16.0)" in text
    assert "containerd (CRI plugin) 6.0 (= 6.0)" in text
    assert "10 pods of 2 containers" in text
    assert "sent again: containerd 2x" in text


def test_the_idle_pods_written_at_once_print_each_blocks_figure_and_the_ratio_of_sums(
    tmp_path: Path,
) -> None:
    r = _rounds(tmp_path)
    assert "written at once" not in format_figures(r)  # no idle phase ran: no such rows
    r.figures["crictld"].burst_started = [1100.0, 1000.0]
    r.figures["crictld"].burst_running = [2000.0, 1900.0]
    r.figures["containerd"].burst_started = [1000.0, 1000.0]
    r.figures["containerd"].burst_running = [1950.0, 1950.0]
    lines = format_figures(r).splitlines()
    start = next(i for i, line in enumerate(lines) if "10 pods written at once" in line)
    started, running = lines[start + 1], lines[start + 2]
    assert started.startswith("started") and "1100, 1000" in started and "1000, 1000" in started
    assert started.rstrip().endswith("1.05")  # 2100 against 2000
    assert running.startswith("running") and running.rstrip().endswith("1.00")
    r.figures["containerd"].burst_started = [1000.0]  # a block that failed: no ratio
    started = next(x for x in format_figures(r).splitlines()[start:] if x.startswith("started"))
    assert started.rstrip().endswith("-")


def test_no_idle_phase_prints_no_idle_section(tmp_path: Path) -> None:
    r = _rounds(tmp_path)
    for f in r.figures.values():
        f.idle_seconds, f.idle_cpu_ns = 0.0, {}
    assert "CPU while idle" not in format_figures(r)


def test_kubelets_relist_and_operation_timings_are_read_from_its_metrics() -> None:
    text = b"""# HELP kubelet_runtime_operations_duration_seconds [ALPHA] Duration in seconds
# TYPE kubelet_runtime_operations_duration_seconds histogram
kubelet_runtime_operations_duration_seconds_bucket{operation_type="container_status",le="0.005"} 40
kubelet_runtime_operations_duration_seconds_sum{operation_type="container_status"} 0.05
kubelet_runtime_operations_duration_seconds_count{operation_type="container_status"} 50
kubelet_runtime_operations_duration_seconds_sum{operation_type="run_podsandbox"} 0.4
kubelet_runtime_operations_duration_seconds_count{operation_type="run_podsandbox"} 8
kubelet_runtime_operations_errors_total{operation_type="run_podsandbox"} 1
kubelet_pleg_relist_duration_seconds_bucket{le="0.005"} 9
kubelet_pleg_relist_duration_seconds_sum 0.03
kubelet_pleg_relist_duration_seconds_count 10
kubelet_pleg_relist_interval_seconds_sum 10.2
"""
    seen = kubelet_histograms(text)
    assert seen == {
        "container_status": (0.05, 50.0),
        "run_podsandbox": (0.4, 8.0),
        "PLEG relist": (0.03, 10.0),
    }


def test_kubelets_timings_are_printed_relist_first_then_by_count(tmp_path: Path) -> None:
    r = _rounds(tmp_path)
    r.figures["crictld"].kubelet_seen = {
        "PLEG relist": [0.04, 10.0],
        "container_status": [0.05, 50.0],
        "run_podsandbox": [0.4, 8.0],
    }
    r.figures["containerd"].kubelet_seen = {
        "PLEG relist": [0.02, 10.0],
        "container_status": [0.025, 50.0],
        "run_podsandbox": [0.5, 8.0],
    }
    lines = format_figures(r).splitlines()
    start = lines.index("as kubelet timed them (its metrics over every block): mean ms (calls)")
    rows = lines[start + 2 : start + 5]
    assert [row.split("|")[0].strip() for row in rows] == [
        "PLEG relist",
        "container_status",
        "run_podsandbox",
    ]
    assert rows[0].rstrip().endswith("2.00")  # 4 ms against 2
    assert "1.00 (    50)" in rows[1] and "0.50 (    50)" in rows[1]
    assert rows[2].rstrip().endswith("0.80")  # 50 ms against 62.5


def test_the_raw_figures_are_written_with_the_runs_parameters_and_teardown(
    tmp_path: Path,
) -> None:
    r = _rounds(tmp_path)
    out = tmp_path / "out.json"
    write_figures(out, {"pods": 1, "containers": 2}, r.figures, {"crictld": [], "containerd": []})
    body = json.loads(out.read_text())
    assert body["pods"] == 1 and body["containers"] == 2
    assert body["crictld"]["started"] == [150.0, 170.0, 160.0]
    assert body["containerd"]["stop_retries"] == 2
    assert body["after_teardown"] == {"crictld": [], "containerd": []}
