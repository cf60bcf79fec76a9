"""crictl/log.py's line: the per-call line every CRI write logs, its time stamp kept per
second, the numbers of its spans as they are, and objects JSON cannot hold written as their
redacted text. (Redaction itself: tests/integration/test_private_state.py.)"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from crictl.log import JsonFormatter


def _record(created: float, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("crictl.api", logging.INFO, __file__, 1, "cri call", None, None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000)
    record.__dict__.update(extra)
    return record


def test_the_time_stamp_is_the_records_own_across_seconds() -> None:
    formatter = JsonFormatter()
    base = 1_796_000_000.0  # a second boundary, then back to an earlier second
    for created in (base + 0.999, base + 1.0, base + 1.5, base - 3.25, base + 0.001):
        entry = json.loads(formatter.format(_record(created)))
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        assert entry["ts"] == f"{expected}.{int(round((created % 1) * 1000, 6)):03d}Z"


def test_a_calls_line_keeps_its_figures_and_writes_other_objects_as_text() -> None:
    spans = {"queue wait": [1, 82.8], "store write": [2, 1.3]}
    line = JsonFormatter().format(
        _record(
            time.time(),
            rpc="/runtime.v1.RuntimeService/StartContainer",
            code="OK",
            ms=83.123,
            ok=True,
            none=None,
            spans=spans,
            path=Path("/var/log/pods/Bearer xyz"),
            error="pull: 401 for Basic dXNlcjpwYXNz",
        )
    )
    entry = json.loads(line)
    assert entry["spans"] == spans and entry["ms"] == 83.123
    assert entry["ok"] is True and entry["none"] is None
    assert entry["path"] == "/var/log/pods/Bearer [redacted]"
    assert entry["error"] == "pull: 401 for Basic [redacted]"
