"""Disk usage of a snapshotter's snapshots, measured as containerd measures it but without a
round trip to containerd per snapshot and per refresh.

containerd's overlayfs (and native) snapshotter answers `Usage` of a committed snapshot from
what it recorded at the commit, and of an active one by walking its writable directory
(continuity's `fs.DiskUsage`: every entry under it, the directory included, each inode counted
once, its size the blocks it holds). crictld refreshes the usage of every container's writable
layer and of the whole snapshotter every 10 s (ContainerStats, ImageFsInfo): asked one snapshot
at a time over gRPC, at 100 pods and 300 containers that was ~700 round trips every 10 s, the
larger part of what the daemon and its containerd took at rest.

So a committed snapshot's usage is asked once (it never changes), an active snapshot's
writable directory is asked once (`Mounts`: an overlay's upperdir, or a parentless snapshot's
bind mount) and walked here the way containerd walks it; where there is no such directory (a
read-only or other snapshotter's mount) or it is gone (the snapshot removed and made again
under its key), containerd is asked as before.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from crictl import errors
from crictl.containerd.client import ContainerdClient, translate
from crictl.containerd.h2 import RpcError
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2
from crictl.gen.containerd.api.types import mount_pb2

# (bytes, inodes)
Measure = tuple[int, int]

# Mounts asked at once when a refresh meets snapshots not seen before.
MOUNTS_AT_ONCE = 16


def writable_dir(mounts: Iterable[mount_pb2.Mount]) -> Path | None:
    """The directory an active snapshot's writes land in, from its mounts: an overlay's
    upperdir, or the source of a read-write bind mount (a snapshot without a parent)."""
    mounts = list(mounts)
    if len(mounts) != 1:
        return None
    m = mounts[0]
    if m.type == "overlay":
        for option in m.options:
            if option.startswith("upperdir="):
                return Path(option.removeprefix("upperdir="))
        return None
    if m.type == "bind" and "ro" not in m.options:
        return Path(m.source)
    return None


def disk_usage(root: Path) -> Measure:
    """What continuity's `fs.DiskUsage` returns for `root`: the blocks (512 bytes each) of every
    inode under it and of itself, each inode once, and how many inodes. Nothing is followed.
    FileNotFoundError if `root` is not there."""
    top = os.lstat(root)
    seen = {(top.st_dev, top.st_ino)}
    size = top.st_blocks * 512
    if not stat.S_ISDIR(top.st_mode):
        return size, 1
    pending = [os.fspath(root)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed meanwhile, as containerd's walk would skip it
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    size += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)
    return size, len(seen)


class SnapshotUsage:
    """The usage of one snapshotter's snapshots, for the containerd namespace of `client`."""

    def __init__(self, client: ContainerdClient, snapshotter: str) -> None:
        self.client = client
        self.snapshotter = snapshotter
        self._committed: dict[str, Measure] = {}  # never changes once committed
        # active key -> its writable dir (None: nothing to walk, containerd is asked)
        self._dirs: dict[str, Path | None] = {}

    def forget(self, keep: set[str]) -> None:
        """Drops what is known of snapshots other than `keep`."""
        for cache in (self._committed, self._dirs):
            for key in [k for k in cache if k not in keep]:
                del cache[key]

    async def active(self, keys: list[str]) -> dict[str, Measure | None]:
        """The usage of each active snapshot in `keys` (None: containerd knows no such
        snapshot, or could not say)."""
        unknown = [k for k in keys if k not in self._dirs]
        if unknown:
            semaphore = asyncio.Semaphore(MOUNTS_AT_ONCE)

            async def learn(key: str) -> None:
                async with semaphore:
                    try:
                        mounts = await self.client.snapshot_mounts(self.snapshotter, key)
                    except errors.CrictlError:
                        return  # asked again next time
                self._dirs[key] = writable_dir(mounts)

            await asyncio.gather(*(learn(k) for k in unknown))
        walk = {k: d for k in keys if (d := self._dirs.get(k)) is not None}
        walked = await asyncio.to_thread(_walk_all, walk)
        out: dict[str, Measure | None] = {}
        for key in keys:
            if key in walked:
                out[key] = walked[key]
                continue
            if self._dirs.get(key) is not None or key not in self._dirs:
                # its directory is gone, or the snapshot was not found: learnt again next time
                self._dirs.pop(key, None)
            try:
                out[key] = await self._ask(key)
            except errors.CrictlError:
                out[key] = None
        return out

    async def total(self) -> Measure:
        """The usage of every snapshot (ImageFsInfo's figure, as containerd's CRI sums it)."""
        kinds: dict[str, int] = {}
        try:
            async for resp in self.client.snapshots.List(
                snapshots_pb2.ListSnapshotsRequest(snapshotter=self.snapshotter),
                metadata=self.client.metadata,
            ):
                kinds.update((info.name, info.kind) for info in resp.info)
        except RpcError as e:
            raise translate(e, "list snapshots") from e
        self.forget(set(kinds))
        active = [k for k, kind in kinds.items() if kind == snapshots_pb2.ACTIVE]
        measures = list((await self.active(active)).values())
        for key in kinds.keys() - set(active):
            if key not in self._committed:
                measure = await self._ask(key)
                if measure is None:
                    continue  # removed meanwhile
                self._committed[key] = measure
            measures.append(self._committed[key])
        return (
            sum(m[0] for m in measures if m is not None),
            sum(m[1] for m in measures if m is not None),
        )

    async def _ask(self, key: str) -> Measure | None:
        """containerd's answer for `key` (None: no such snapshot)."""
        try:
            usage = await self.client.call(
                "snapshot usage",
                self.client.snapshots.Usage(
                    snapshots_pb2.UsageRequest(snapshotter=self.snapshotter, key=key),
                    metadata=self.client.metadata,
                ),
            )
        except errors.NotFound:
            return None
        return usage.size, usage.inodes


def _walk_all(dirs: dict[str, Path]) -> dict[str, Measure]:
    """Each directory's usage; those that are gone are left out."""
    out: dict[str, Measure] = {}
    for key, path in dirs.items():
        try:
            out[key] = disk_usage(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return out
