"""Named fault-injection points: with `fault_point` set (crictld serve --fault-point NAME, for
crash tests only), reaching that point kills the daemon as SIGKILL would, between two steps.
NAME@N dies on the Nth time the point is reached (a path taken only once something was
done before, e.g. a create after a first container of the same image).

Every point a test may name is listed in POINTS, so a typo fails at start, not silently.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

POINTS = frozenset(
    {
        # RunPodSandbox
        "sandbox-run:after-insert",
        "sandbox-run:after-netns",
        "sandbox-run:after-cni-add",
        "sandbox-run:after-cni-recorded",
        "sandbox-run:after-container-create",
        "sandbox-run:after-snapshot",
        "sandbox-run:after-task-create",
        "sandbox-run:after-task-started",  # the task runs, READY is not yet recorded
        "sandbox-run:after-task-start",
        # the undo of a RunPodSandbox whose setup failed
        "sandbox-undo:after-desired",
        # StopPodSandbox
        "sandbox-stop:after-desired",
        "sandbox-stop:after-task-kill",
        "sandbox-stop:after-task-delete",
        "sandbox-stop:after-cni-del",
        "sandbox-stop:after-netns-remove",
        # RemovePodSandbox
        "sandbox-remove:after-desired",
        "sandbox-remove:after-container-delete",
        "sandbox-remove:after-snapshot-remove",
        "sandbox-remove:after-files-remove",
        # CreateContainer, StartContainer, StopContainer, RemoveContainer
        "container-create:after-insert",
        "container-create:after-snapshot",  # its lease alone holds the snapshot
        "container-create:after-container-create",
        "container-start:after-desired",
        "container-start:after-task-create",
        "container-start:after-task-started",  # the task runs, RUNNING is not yet recorded
        "container-start:after-task-start",
        "container-stop:after-desired",
        "container-stop:after-signal",
        "container-remove:after-desired",
        "container-remove:after-task-delete",
        "container-remove:after-container-delete",
        # UpdateContainerResources: containerd's record changed, the row not yet
        "resources-update:after-record",
    }
)

_armed: str | None = None
_hits_left = 0


def arm(point: str | None) -> None:
    global _armed, _hits_left
    hits = 1
    if point is not None and "@" in point:
        point, _, n = point.partition("@")
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"fault point {point!r}: @{n} is not a count from 1")
        hits = int(n)
    if point is not None and point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; known: {', '.join(sorted(POINTS))}")
    _armed, _hits_left = point, hits


def point(name: str) -> None:
    """Dies here if this point is armed (and reached as many times as it was armed for)."""
    global _hits_left
    assert name in POINTS, name
    if _armed == name:
        _hits_left -= 1
    if _armed == name and _hits_left <= 0:
        log.warning("fault point reached: dying as SIGKILL would", extra={"point": name})
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
