"""Confined reads out of a snapshot's layer directories: the image's /etc/passwd is found the way
overlayfs would show it, and no symlink, `..` or special file reaches or blocks on the host."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from pathlib import Path

import pytest

from crictl.containerd import rootfs
from crictl.containerd.rootfs import layer_dirs, read_confined, read_text
from crictl.gen.containerd.api.types import mount_pb2

PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
HOSTILE = "probe:x:4242:4242::/:/bin/sh\n"


def overlay(upper: Path, *lower: Path, userxattr: bool = False) -> list[mount_pb2.Mount]:
    options = [f"upperdir={upper}", f"workdir={upper.parent / 'work'}"]
    if lower:
        options.append("lowerdir=" + ":".join(str(d) for d in lower))
    if userxattr:
        options.append("userxattr")
    return [mount_pb2.Mount(type="overlay", source="overlay", options=options)]


def bind(root: Path) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type="bind", source=str(root), options=["rbind", "rw"])]


def put(root: Path, path: str, text: str) -> Path:
    p = root / path
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def link(root: Path, path: str, target: str | Path) -> None:
    p = root / path
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(target)


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    """upper, middle and lower layer directories, all empty."""
    dirs = tuple(tmp_path / "layers" / name for name in ("upper", "middle", "lower"))
    for d in dirs:
        d.mkdir(parents=True)
    return dirs[0], dirs[1], dirs[2]


@pytest.fixture
def host_passwd(tmp_path: Path) -> Path:
    """A file outside every layer, as an attacker would want read."""
    return put(tmp_path, "host/passwd", HOSTILE)


def whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))  # S_IFCHR 0/0
    except PermissionError:
        pytest.skip("creating a whiteout (mknod c 0 0) needs CAP_MKNOD")


def make_opaque(path: Path, name: str = "trusted.overlay.opaque") -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.setxattr(path, name, b"y")
    except OSError as e:
        if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"cannot set {name} here: {e}")
        raise


def test_layer_dirs_topmost_first(layers: tuple[Path, Path, Path]) -> None:
    upper, middle, lower = layers
    assert layer_dirs(overlay(upper, middle, lower)) == [upper, middle, lower]
    assert layer_dirs(bind(lower)) == [lower]


def test_plain_file_in_any_layer(layers: tuple[Path, Path, Path]) -> None:
    upper, middle, lower = layers
    put(lower, "etc/passwd", PASSWD)
    put(lower, "etc/group", "root:x:0:\n")
    put(middle, "etc/group", "wheel:x:10:\n")
    m = overlay(upper, middle, lower)
    assert read_text(m, "/etc/passwd") == PASSWD
    assert read_text(m, "/etc/group") == "wheel:x:10:\n"  # the topmost layer wins
    assert read_text(m, "/etc/shadow") == ""
    assert read_text(bind(lower), "/etc/passwd") == PASSWD


def test_absolute_symlink_to_the_host_is_resolved_in_the_root(
    layers: tuple[Path, Path, Path], host_passwd: Path
) -> None:
    upper, middle, lower = layers
    link(lower, "etc/passwd", host_passwd)
    m = overlay(upper, middle, lower)
    assert read_text(m, "/etc/passwd") == ""  # the image has no such file
    # The same absolute path inside the image is what the link names.
    put(middle, str(host_passwd).lstrip("/"), PASSWD)
    assert read_text(m, "/etc/passwd") == PASSWD


def test_dotdot_never_climbs_above_the_root(
    layers: tuple[Path, Path, Path], host_passwd: Path, tmp_path: Path
) -> None:
    upper, _, lower = layers
    # From lower/etc, enough `..` reach tmp_path and then the host file, if followed on the host.
    climb = "../" * (len(lower.relative_to("/").parts) + 1) + str(host_passwd).lstrip("/")
    assert (lower / "etc" / climb).resolve() == host_passwd  # the trap is real
    link(lower, "etc/passwd", climb)
    m = overlay(upper, lower)
    assert read_text(m, "/etc/passwd") == ""
    put(upper, str(host_passwd).lstrip("/"), PASSWD)  # the same path inside the root
    assert read_text(m, "/etc/passwd") == PASSWD
    # `..` in the path asked for stops at the root too.
    put(lower, "etc/group", "g:x:1:\n")
    assert read_text(m, "/../../../etc/../../etc/group") == "g:x:1:\n"


def test_relative_link_to_tmp_inside_the_root(layers: tuple[Path, Path, Path]) -> None:
    upper, middle, lower = layers
    link(lower, "etc/passwd", "../../../../tmp/x")
    m = overlay(upper, middle, lower)
    assert read_text(m, "/etc/passwd") == ""
    put(middle, "tmp/x", PASSWD)
    assert read_text(m, "/etc/passwd") == PASSWD


def test_link_chains_and_loops(layers: tuple[Path, Path, Path]) -> None:
    upper, _, lower = layers
    m = overlay(upper, lower)
    put(lower, "data/passwd", PASSWD)
    # a chain of exactly 40 links resolves (Linux allows 40)
    for i in range(40):
        link(lower, f"chain/{i}", f"/chain/{i + 1}" if i < 39 else "/data/passwd")
    assert read_text(m, "/chain/0") == PASSWD
    # 41 is one too many
    link(lower, "chain/x", "/chain/0")
    assert read_text(m, "/chain/x") == ""
    # loops end
    link(lower, "etc/passwd", "passwd")
    assert read_text(m, "/etc/passwd") == ""
    link(lower, "a", "b")
    link(lower, "b", "a")
    assert read_text(m, "/a") == ""
    link(lower, "loop/dir", ".")
    assert read_text(m, "/loop/" + "dir/" * 50 + "x") == ""


def test_lookups_are_capped(layers: tuple[Path, Path, Path]) -> None:
    upper, _, lower = layers
    m = overlay(upper, lower)
    put(lower, "etc/passwd", PASSWD)
    deep = "/".join(["d"] * 200)
    (lower / deep).mkdir(parents=True)
    # each `..` re-walks from the root: 200 levels up one at a time is ~20,000 lookups
    link(lower, "up", deep + "/" + "../" * 200 + "etc/passwd")
    start = time.monotonic()
    assert read_text(m, "/up") == ""
    assert time.monotonic() - start < 10
    put(lower, "/".join(["d"] * 190) + "/x", "x\n")
    assert read_text(m, "/" + deep + "/" + "../" * 10 + "x") == "x\n"  # ~2,100 lookups
    assert read_text(m, "/" + deep + "/" + "../" * 200 + "etc/passwd") == ""
    assert read_text(m, "/d/d/../../etc/passwd") == PASSWD


def test_link_in_an_upper_layer_to_a_file_in_a_lower_one(layers: tuple[Path, Path, Path]) -> None:
    upper, middle, lower = layers
    put(lower, "usr/share/base-passwd/passwd", PASSWD)
    link(middle, "etc/passwd", "../usr/share/base-passwd/passwd")
    link(upper, "etc/group", "/usr/share/base-passwd/passwd")
    m = overlay(upper, middle, lower)
    assert read_text(m, "/etc/passwd") == PASSWD
    assert read_text(m, "/etc/group") == PASSWD


def test_directory_link_on_the_way(layers: tuple[Path, Path, Path], tmp_path: Path) -> None:
    upper, middle, lower = layers
    link(lower, "etc", "/usr/etc")
    put(middle, "usr/etc/passwd", PASSWD)
    m = overlay(upper, middle, lower)
    assert read_text(m, "/etc/passwd") == PASSWD
    # a directory link pointing at a host directory is looked up inside the root
    put(tmp_path, "hostetc/group", HOSTILE)
    link(upper, "usr/lib", tmp_path / "hostetc")
    assert read_text(m, "/usr/lib/group") == ""
    # `..` after a directory link goes up from where the link led, as Linux does
    put(lower, "usr/other", "other\n")
    assert read_text(m, "/etc/../other") == "other\n"


def test_a_file_above_hides_a_directory_below_and_the_reverse(
    layers: tuple[Path, Path, Path],
) -> None:
    upper, middle, lower = layers
    put(lower, "etc/passwd", PASSWD)
    put(middle, "etc", "not a directory\n")
    m = overlay(upper, middle, lower)
    assert read_text(m, "/etc/passwd") == ""
    assert read_text(m, "/etc") == "not a directory\n"
    (upper / "etc").mkdir()
    put(upper, "etc/group", "g:x:1:\n")
    # upper's directory hides middle's file and lower's directory below it
    assert read_text(m, "/etc/passwd") == ""
    assert read_text(m, "/etc/group") == "g:x:1:\n"
    assert read_text(m, "/etc") == ""  # a directory is no file
    assert read_text(m, "/etc/group/") == ""  # ENOTDIR


def test_directories_merge(layers: tuple[Path, Path, Path]) -> None:
    upper, middle, lower = layers
    put(lower, "etc/passwd", PASSWD)
    put(middle, "etc/group", "g:x:1:\n")
    (upper / "etc").mkdir()
    m = overlay(upper, middle, lower)
    assert read_text(m, "/etc/passwd") == PASSWD
    assert read_text(m, "/etc/group") == "g:x:1:\n"


def test_whiteout_hides_a_lower_file(layers: tuple[Path, Path, Path]) -> None:
    upper, middle, lower = layers
    put(lower, "etc/passwd", HOSTILE)
    put(lower, "etc/group", "g:x:1:\n")
    whiteout(middle / "etc" / "passwd")
    m = overlay(upper, middle, lower)
    assert read_text(m, "/etc/passwd") == ""
    assert read_text(m, "/etc/group") == "g:x:1:\n"
    put(upper, "etc/passwd", PASSWD)  # recreated above the whiteout
    assert read_text(m, "/etc/passwd") == PASSWD


def test_whiteout_of_a_directory(layers: tuple[Path, Path, Path]) -> None:
    upper, middle, lower = layers
    put(lower, "etc/passwd", HOSTILE)
    whiteout(middle / "etc")
    m = overlay(upper, middle, lower)
    assert read_text(m, "/etc/passwd") == ""
    put(upper, "etc/group", "g:x:1:\n")
    assert read_text(m, "/etc/passwd") == ""
    assert read_text(m, "/etc/group") == "g:x:1:\n"


def test_opaque_directory_hides_lower_contents(layers: tuple[Path, Path, Path]) -> None:
    upper, middle, lower = layers
    put(lower, "etc/passwd", HOSTILE)
    make_opaque(middle / "etc")
    put(middle, "etc/group", "g:x:1:\n")
    m = overlay(upper, middle, lower)
    assert read_text(m, "/etc/passwd") == ""
    assert read_text(m, "/etc/group") == "g:x:1:\n"
    # only the overlay's own xattr namespace counts
    make_opaque(upper / "etc", "user.overlay.opaque")
    assert read_text(m, "/etc/group") == "g:x:1:\n"
    assert read_text(overlay(upper, middle, lower, userxattr=True), "/etc/group") == ""


def test_a_fifo_is_absent_at_once(layers: tuple[Path, Path, Path]) -> None:
    upper, _, lower = layers
    (lower / "etc").mkdir()
    os.mkfifo(lower / "etc" / "passwd")
    result: list[str] = []
    t = threading.Thread(
        target=lambda: result.append(read_text(overlay(upper, lower), "/etc/passwd"))
    )
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the reader so the test run ends, then fail
        fd = os.open(lower / "etc" / "passwd", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join()
        pytest.fail("reading a FIFO blocked")
    assert result == [""]


def test_devices_and_sockets_are_absent(layers: tuple[Path, Path, Path]) -> None:
    upper, _, lower = layers
    link(lower, "etc/passwd", "/dev/null")
    (lower / "dev").mkdir()
    with contextlib.suppress(PermissionError):  # without it the link names nothing: absent
        os.mknod(lower / "dev" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    assert read_text(overlay(upper, lower), "/etc/passwd") == ""


def test_file_size_cap(layers: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    upper, _, lower = layers
    m = overlay(upper, lower)
    put(lower, "etc/passwd", PASSWD)
    with (lower / "etc" / "group").open("wb") as f:
        f.truncate(rootfs.MAX_SIZE + 1)  # sparse: costs no disk
    assert read_text(m, "/etc/group") == ""
    (lower / "etc" / "group").write_bytes(b"x" * 100)
    monkeypatch.setattr(rootfs, "MAX_SIZE", 100)
    assert read_text(m, "/etc/group") == "x" * 100
    monkeypatch.setattr(rootfs, "MAX_SIZE", 99)
    assert read_text(m, "/etc/group") == ""


def test_odd_paths(layers: tuple[Path, Path, Path]) -> None:
    upper, _, lower = layers
    m = overlay(upper, lower)
    put(lower, "etc/passwd", PASSWD)
    assert read_text(m, "etc/passwd") == PASSWD
    assert read_text(m, "//etc/./passwd") == PASSWD
    assert read_text(m, "/etc/pass\0wd") == ""
    assert read_text(m, "/") == ""
    assert read_text(m, "") == ""
    assert read_confined([lower], "/etc/passwd") == PASSWD.encode()
    assert read_confined([lower], "/etc/nothing") is None


def test_missing_layers_are_skipped(layers: tuple[Path, Path, Path], tmp_path: Path) -> None:
    upper, _, lower = layers
    put(lower, "etc/passwd", PASSWD)
    assert read_text(overlay(upper, tmp_path / "gone", lower), "/etc/passwd") == PASSWD
    assert read_text([], "/etc/passwd") == ""


def test_no_descriptor_leaks(layers: tuple[Path, Path, Path], host_passwd: Path) -> None:
    upper, middle, lower = layers
    put(lower, "etc/passwd", PASSWD)
    link(middle, "etc/group", host_passwd)
    os.mkfifo(lower / "etc" / "shadow")
    m = overlay(upper, middle, lower)
    roots = (str(upper.parent), str(host_passwd))

    def ours() -> list[str]:
        """Descriptors open on the layers or the host file (other threads of the test process,
        a store's connections closing, say, change the count of the rest)."""
        out = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith(roots):
                    out.append(target)
        return out

    before = ours()
    for _ in range(20):
        for p in ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc", "/nope/x"):
            read_text(m, p)
    assert ours() == before
