"""Unmounting and removing directories that hold mounts (a pod's shm tmpfs, a task bundle's
rootfs), without forking `umount`."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
from pathlib import Path

from crictl import errors

MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def unmount_below(path: Path) -> None:
    """Detaches every mount at or under `path`, deepest first."""
    root = os.path.realpath(path)
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = unescape(line.split()[4])
        if point == root or point.startswith(root + "/"):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        if _libc.umount2(os.fsencode(point), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            raise errors.Unavailable(f"cannot unmount {point}: {os.strerror(err)}")


def remove_dir(path: Path) -> bool:
    """Unmounts what is below `path`, then removes it; False when it was not there."""
    if not path.exists():
        return False
    unmount_below(path)
    shutil.rmtree(path)
    return True


def mount_of(path: str) -> tuple[str, list[str]]:
    """The mount point holding `path` (symlinks resolved) and that mount's optional fields
    from mountinfo (`shared:N`, `master:N`...): its propagation."""
    target = os.path.realpath(path)
    best, fields = "/", []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        point = unescape(parts[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best = point
            fields = parts[6 : parts.index("-")]
    return best, fields
