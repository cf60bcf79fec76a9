"""containerd's timestamps as ns since the epoch (crictl/containerd/client.py): Go's zero time,
which a task that has not exited (or whose shim does not answer) reports, is no time at all,
not -6.2e19 ns, which no SQLite INTEGER holds (a container's exit recorded with it failed)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from crictl.containerd.client import timestamp_ns

GO_ZERO_TIME = -62135596800  # 0001-01-01T00:00:00Z, as Go's protobuf types encode time.Time{}


def test_go_zero_time_and_none_are_no_time() -> None:
    assert timestamp_ns(Timestamp(seconds=GO_ZERO_TIME)) == 0
    assert timestamp_ns(Timestamp()) == 0
    assert timestamp_ns(Timestamp(seconds=GO_ZERO_TIME, nanos=5)) == 0


def test_a_real_time_is_kept_to_the_nanosecond() -> None:
    assert timestamp_ns(Timestamp(seconds=1_796_000_000, nanos=123)) == 1_796_000_000_000_000_123
