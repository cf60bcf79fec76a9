"""Reading a few files (the image's /etc/passwd and /etc/group) out of a snapshot's mounts
without mounting it, resolving every path *inside* the image's root.

A snapshot is a stack of layer directories: a bind mount is one directory, an overlay is its
upperdir then its lowerdirs, topmost first. The file a container would see at PATH is found by
walking PATH one component at a time through the merged (union) view, the way overlayfs would:

- each component is looked up in the current directory's layers, topmost first, with lstat
  (never following anything on the host): the topmost non-directory wins; directories of the
  same name in several layers merge, down to the first layer that is *opaque* (xattr
  `trusted.overlay.opaque` = "y", or `user.overlay.opaque` on a `userxattr` overlay) or that
  has a non-directory of that name;
- a whiteout (a character device 0/0, which is what containerd's overlayfs snapshotter leaves
  for an OCI `.wh.NAME`; an OCI `.wh..wh..opq` becomes the opaque xattr) hides the name in every
  layer below it;
- `..` goes back up the path walked so far and never above the root;
- a symlink's target is read with readlink and walked again: an absolute target from the image's
  root, a relative one from the directory holding the link; at most 40 links per lookup, as Linux;
- the file at the end must be a regular file (checked by lstat before it is opened, so a FIFO or a
  device is never opened, then by fstat after): it is opened with O_NOFOLLOW|O_NONBLOCK relative
  to its directory's descriptor, and at most MAX_SIZE bytes are read.

Anything that does not resolve to a regular file inside the root (missing, a directory, a loop,
more than 40 links, more than MAX_LOOKUPS lookups, a file larger than MAX_SIZE, an I/O error) is
*absent*: read_text returns "". A symlink cannot point outside the root: an absolute target starts
again at the image's root and `..` stops there, so /etc/passwd -> /tmp/x/passwd reads the image's
/tmp/x/passwd, never the host's.

openat2(2) with RESOLVE_IN_ROOT does this confinement in the kernel, but only within one directory
tree: the merged view of an unmounted overlay is a union of several trees with whiteouts and opaque
directories, which no single openat2 call can resolve, hence the walk. Mounting the snapshot to
use openat2 on it would cost a mount per CreateContainer and a mount namespace to keep it private.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import deque
from pathlib import Path

from crictl.gen.containerd.api.types import mount_pb2

log = logging.getLogger(__name__)

MAX_SYMLINKS = 40  # Linux's own limit (ELOOP)
# A user database bigger than this is treated as absent (numeric ids still work; a user or group
# *name* is then not found): no real image has one, and the daemon must not read a hostile
# image's gigabytes into memory.
MAX_SIZE = 4 << 20
# Each lookup of one component (in every layer) counts, including the re-walks that `..` needs.
# Real paths take a handful; the cap bounds the work a hostile chain of links can cause.
MAX_LOOKUPS = 4096

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_OPAQUE = "trusted.overlay.opaque"
_USER_OPAQUE = "user.overlay.opaque"


def layer_dirs(mounts: list[mount_pb2.Mount]) -> list[Path]:
    """The directories to look in, topmost first."""
    dirs: list[Path] = []
    for m in mounts:
        if m.type == "bind":
            dirs.append(Path(m.source))
        elif m.type == "overlay":
            opts = dict(o.split("=", 1) for o in m.options if "=" in o)
            if "upperdir" in opts:
                dirs.append(Path(opts["upperdir"]))
            dirs += [Path(d) for d in opts.get("lowerdir", "").split(":") if d]
    return dirs


def read_text(mounts: list[mount_pb2.Mount], path: str) -> str:
    """The text of the file at PATH in the image's merged root; "" when it is absent or is not
    a regular file inside the root (see the module docstring)."""
    xattrs = [_OPAQUE]
    if any(m.type == "overlay" and "userxattr" in m.options for m in mounts):
        xattrs.append(_USER_OPAQUE)
    data = read_confined(layer_dirs(mounts), path, tuple(xattrs))
    return "" if data is None else data.decode(errors="replace")


def read_confined(
    layers: list[Path], path: str, opaque_xattrs: tuple[str, ...] = (_OPAQUE,)
) -> bytes | None:
    """The bytes of the regular file at PATH in the union of LAYERS (topmost first), resolved
    inside that union; None when absent, escaping, not a regular file or too large."""
    walk = _Walk(layers, opaque_xattrs)
    try:
        return walk.read(path)
    except _Absent:
        return None
    except (OSError, ValueError) as e:  # EACCES, EIO, ELOOP on a layer root, a NUL in PATH...
        log.debug("reading %s in the image: %s", path, e)
        return None
    finally:
        walk.close()


class _Absent(Exception):
    """The path does not resolve to a regular file inside the root."""


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
    fds.clear()


class _Walk:
    """One resolution: `cur` holds the descriptors of the current merged directory (one per layer
    that has it, topmost first); `names` the real directories from the root down to it."""

    def __init__(self, layers: list[Path], opaque_xattrs: tuple[str, ...]) -> None:
        self.layers = layers
        self.opaque_xattrs = opaque_xattrs
        self.lookups = 0
        self.cur: list[int] = []

    def close(self) -> None:
        _close_all(self.cur)

    def _opaque(self, fd: int) -> bool:
        for name in self.opaque_xattrs:
            try:
                if os.getxattr(fd, name) == b"y":
                    return True
            except OSError as e:
                if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
        return False

    def _root(self) -> None:
        """Make the image's root the current directory."""
        _close_all(self.cur)
        for layer in self.layers:
            try:
                # The layer directories are containerd's own paths: following them is fine.
                fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            self.cur.append(fd)
            if self._opaque(fd):
                break

    def _lookup(self, name: str) -> list[int] | tuple[int, os.stat_result] | None:
        """NAME in the current merged directory: the descriptors of the merged directory it
        names, or (descriptor of the directory holding it, its lstat) for anything else, or
        None when no layer has it (or a whiteout hides it)."""
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _Absent
        found: list[int] = []
        try:
            for fd in self.cur:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    break  # a whiteout: hides NAME here and in every layer below
                if not stat.S_ISDIR(st.st_mode):
                    if found:
                        break  # a directory above hides it
                    return fd, st
                found.append(os.open(name, _DIR_FLAGS, dir_fd=fd))
                if self._opaque(found[-1]):
                    break
        except BaseException:
            _close_all(found)
            raise
        return found or None

    def _enter(self, names: list[str]) -> None:
        """Make the real directory NAMES (no links in it) the current directory."""
        self._root()
        for name in names:
            found = self._lookup(name)
            if not isinstance(found, list):  # cannot happen: layers are not changed under us
                raise _Absent
            _close_all(self.cur)
            self.cur = found

    def read(self, path: str) -> bytes:
        self._root()
        names: list[str] = []
        todo = deque(path.split("/"))
        links = 0
        while todo:
            comp = todo.popleft()
            if comp in ("", "."):
                continue
            if comp == "..":
                if names:
                    names.pop()
                    self._enter(names)
                continue
            found = self._lookup(comp)
            if found is None:
                raise _Absent
            if isinstance(found, list):
                _close_all(self.cur)
                self.cur = found
                names.append(comp)
                continue
            dir_fd, st = found
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise _Absent
                target = os.readlink(comp, dir_fd=dir_fd)
                if not target:
                    raise _Absent
                if target.startswith("/"):
                    names.clear()
                    self._root()
                todo.extendleft(reversed(target.split("/")))
                continue
            if todo or not stat.S_ISREG(st.st_mode):
                raise _Absent  # "file/more" is ENOTDIR; a FIFO, a device or a socket is no file
            return _read_regular(comp, dir_fd, path)
        raise _Absent  # the path names a directory


def _read_regular(name: str, dir_fd: int, path: str) -> bytes:
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Absent
        if st.st_size > MAX_SIZE:
            log.warning("the image's %s is %d bytes (over %d): ignored", path, st.st_size, MAX_SIZE)
            raise _Absent
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SIZE:
            chunk = os.read(fd, MAX_SIZE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_SIZE:
            log.warning("the image's %s is over %d bytes: ignored", path, MAX_SIZE)
            raise _Absent
        return b"".join(chunks)
    finally:
        os.close(fd)
