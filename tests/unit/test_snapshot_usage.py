"""Snapshot usage without a round trip per snapshot (crictl/containerd/usage.py): the walk
counts what continuity's fs.DiskUsage counts, an active snapshot's directory is learnt once
from its mounts, a committed snapshot is asked once, and containerd is asked where there is
nothing to walk. That the figures equal containerd's own is the integration test's
(tests/integration/test_stats.py::test_layer_usage_is_what_containerd_measures)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from crictl import errors
from crictl.containerd.usage import SnapshotUsage, disk_usage, writable_dir
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2
from crictl.gen.containerd.api.types import mount_pb2


def by_hand(root: Path) -> tuple[int, int]:
    seen: dict[tuple[int, int], int] = {}
    for path in [root, *root.rglob("*")]:
        st = os.lstat(path)
        seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return sum(seen.values()), len(seen)


def test_the_walk_counts_each_inode_once_and_follows_nothing(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"x" * 50_000)
    os.link(root / "a" / "b" / "f", root / "g")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "big").write_bytes(b"y" * 200_000)
    (root / "to-outside").symlink_to(tmp_path / "outside")
    os.mkfifo(root / "fifo")
    size, inodes = disk_usage(root)
    assert (size, inodes) == by_hand(root)
    assert inodes == 6  # fs, a, b, f (= g), the link, the fifo
    assert 50_000 <= size < 200_000


def test_the_writable_dir_comes_from_the_mounts() -> None:
    overlay = mount_pb2.Mount(
        type="overlay",
        source="overlay",
        options=["index=off", "workdir=/s/9/work", "upperdir=/s/9/fs", "lowerdir=/s/1/fs"],
    )
    assert writable_dir([overlay]) == Path("/s/9/fs")
    bind = mount_pb2.Mount(type="bind", source="/s/3/fs", options=["rbind", "rw"])
    assert writable_dir([bind]) == Path("/s/3/fs")
    assert writable_dir([mount_pb2.Mount(type="bind", source="/s", options=["ro"])]) is None
    assert writable_dir([mount_pb2.Mount(type="overlay", options=["lowerdir=/a:/b"])]) is None
    assert writable_dir([]) is None


class Containerd:
    """Mounts, Usage and List of a snapshotter, counted."""

    def __init__(self, dirs: dict[str, Path], committed: dict[str, tuple[int, int]]) -> None:
        self.dirs = dirs
        self.committed = committed
        self.asked: list[str] = []
        self.mounts_asked: list[str] = []
        self.read_only: set[str] = set()
        self.metadata: list[tuple[str, str]] = []
        self.snapshots = SimpleNamespace(Usage=self._usage, List=self._list)

    async def snapshot_mounts(self, snapshotter: str, key: str) -> list[mount_pb2.Mount]:
        self.mounts_asked.append(key)
        if key not in self.dirs:
            raise errors.NotFound(key)
        mode = "ro" if key in self.read_only else "rw"
        return [mount_pb2.Mount(type="bind", source=str(self.dirs[key]), options=["rbind", mode])]

    async def call(self, what: str, awaitable: Any) -> Any:
        return await awaitable

    async def _usage(self, request: snapshots_pb2.UsageRequest, metadata: Any) -> Any:
        self.asked.append(request.key)
        if request.key in self.committed:
            size, inodes = self.committed[request.key]
            return SimpleNamespace(size=size, inodes=inodes)
        if request.key in self.dirs:
            return SimpleNamespace(size=1, inodes=1)  # what containerd says of a lost dir
        raise errors.NotFound(request.key)

    async def _list(
        self, request: snapshots_pb2.ListSnapshotsRequest, metadata: Any
    ) -> AsyncIterator[snapshots_pb2.ListSnapshotsResponse]:
        infos = [snapshots_pb2.Info(name=k, kind=snapshots_pb2.ACTIVE) for k in self.dirs]
        infos += [snapshots_pb2.Info(name=k, kind=snapshots_pb2.COMMITTED) for k in self.committed]
        yield snapshots_pb2.ListSnapshotsResponse(info=infos)


def test_a_refresh_asks_containerd_only_for_what_is_new(tmp_path: Path) -> None:
    for name in ("c1", "c2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_bytes(b"z" * 10_000)
    fake = Containerd({"c1": tmp_path / "c1", "c2": tmp_path / "c2"}, {"sha256:l1": (4096, 3)})
    usage = SnapshotUsage(fake, "overlayfs")  # type: ignore[arg-type]

    async def run() -> None:
        first = await usage.total()
        assert first == (
            by_hand(tmp_path / "c1")[0] + by_hand(tmp_path / "c2")[0] + 4096,
            by_hand(tmp_path / "c1")[1] + by_hand(tmp_path / "c2")[1] + 3,
        )
        assert sorted(fake.mounts_asked) == ["c1", "c2"] and fake.asked == ["sha256:l1"]
        (tmp_path / "c1" / "more").write_bytes(b"m" * 10_000)  # a layer grows
        second = await usage.total()
        assert second[0] > first[0] and second[1] == first[1] + 1
        assert sorted(fake.mounts_asked) == ["c1", "c2"] and fake.asked == ["sha256:l1"]

        # c2's directory is gone (made again elsewhere): containerd is asked, then the
        # mounts again on the next refresh
        (tmp_path / "c2" / "f").unlink()
        (tmp_path / "c2").rmdir()
        assert (await usage.active(["c2"]))["c2"] == (1, 1)
        await usage.active(["c2"])
        assert fake.mounts_asked.count("c2") == 2

        # a snapshot containerd does not know: None, and nothing kept of it
        assert (await usage.active(["nope"]))["nope"] is None
        await usage.active(["nope"])
        assert fake.mounts_asked.count("nope") == 2

        # one whose mounts have no directory to walk: containerd's Usage, its mounts once
        fake.read_only.add("c1")
        usage.forget(set())
        asked = len(fake.asked)
        await usage.active(["c1"])
        await usage.active(["c1"])
        assert fake.mounts_asked.count("c1") == 2 and fake.asked[asked:] == ["c1", "c1"]

    asyncio.run(run())
