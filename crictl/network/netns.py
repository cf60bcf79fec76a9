"""Network namespaces, bind-mounted as files in the daemon's own netns directory (pyroute2 makes
that directory a shared mount point, as iproute2 does for /run/netns, so another tool re-mounting
/run/netns cannot strand ours).

Every operation is idempotent and safe after a crash at any point: `create` finishes or redoes a
half-made namespace (the file exists but nothing is mounted on it), `remove` of what is gone
succeeds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

from crictl import errors

NSFS_MAGIC = 0x6E736673
MNT_DETACH = 2


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def is_netns(path: Path) -> bool:
    """True if `path` is a mounted network namespace (nsfs), not just an empty file."""
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return False
    return bool(buf.f_type == NSFS_MAGIC)


def create(path: Path) -> bool:
    """Creates the namespace at `path`; returns False if it was already there."""
    if is_netns(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a mount point file left by a crash before the bind mount
    try:
        pyroute2_netns.create(str(path))
    except OSError as e:
        raise errors.Unavailable(f"cannot create network namespace {path}: {e}") from e
    if not is_netns(path):
        raise errors.Internal(f"network namespace {path} was created but is not mounted")
    return True


def remove(path: Path) -> bool:
    """Unmounts and deletes the namespace file; returns False if there was nothing."""
    existed = path.exists()
    if is_netns(path) and _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise errors.Unavailable(f"cannot unmount network namespace {path}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return existed


def list_dir(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.is_file())
    except FileNotFoundError:
        return []
