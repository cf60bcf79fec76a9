"""Spans land in the trace of the call that caused them, also from the tasks it created."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from benchmarks.cri_bench import Call
from benchmarks.sandboxes import breakdown, format_breakdown, read_call_log
from crictl import trace


def test_spans_count_and_sum_per_name() -> None:
    t = trace.Trace()
    t.add("containerd get task", 0.001)
    t.add("containerd get task", 0.002)
    t.add("store write", 0.0005)
    assert t.summary() == {"containerd get task": [2, 3.0], "store write": [1, 0.5]}


def test_no_trace_no_spans() -> None:
    with trace.span("nothing records this"):
        pass
    trace.record("nor this", 1.0)
    assert trace.CURRENT.get() is None


def test_a_task_created_by_the_call_records_into_its_trace() -> None:
    async def call() -> trace.Trace:
        spans = trace.Trace()
        token = trace.CURRENT.set(spans)
        try:

            async def pass_() -> None:  # a reconcile pass the call woke
                with trace.span("containerd create task"):
                    await asyncio.sleep(0.01)

            await asyncio.create_task(pass_())
            await trace.to_thread("netns create", time.sleep, 0.005)
        finally:
            trace.CURRENT.reset(token)
        return spans

    spans = asyncio.run(call())
    assert set(spans.spans) == {"containerd create task", "netns create"}
    assert spans.spans["containerd create task"][1] >= 0.01
    assert spans.spans["netns create"][1] >= 0.005


def test_the_benchmark_breakdown_reads_spans_from_the_call_log(tmp_path: Path) -> None:
    log = tmp_path / "crictld.log"
    started = time.time()
    lines = []
    for i, (ms, trips) in enumerate(((10.0, 3), (12.0, 3), (11.0, 4))):
        at = started + i
        lines.append(
            json.dumps(
                {
                    "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
                    + f".{int((at % 1) * 1000):03d}Z",
                    "msg": "cri call",
                    "rpc": "/runtime.v1.RuntimeService/CreateContainer",
                    "ms": ms,
                    "spans": {
                        "containerd create container": [trips, ms / 2],
                        "store write": [2, 1.0],
                    },
                }
            )
        )
    log.write_text("\n".join(lines) + "\n")
    calls = [
        Call("CreateContainer", "CreateContainer", started + i - 0.001, started + i + 0.001, 0.013)
        for i in range(3)
    ]
    rows, unmatched = breakdown(calls, read_call_log(log))
    assert unmatched == 0
    (row,) = rows
    assert row.spans["containerd create container"] == (3.0, 5.5)
    assert row.spans["store write"] == (2.0, 1.0)
    text = format_breakdown("crictld", rows, unmatched)
    assert "CreateContainer: handler 11.00 ms, 3 containerd round trips" in text
