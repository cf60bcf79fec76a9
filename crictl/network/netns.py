"""Network namespaces, bind-mounted as files in the daemon's own netns directory, which is made
a shared mount point as iproute2 does for /run/netns (so another tool re-mounting /run/netns
cannot strand ours). Interfaces inside are the CNI plugins' business, but for the loopback:
`create` brings `lo` up, as containerd's CRI does (its own loopback network, always attached:
`cni.WithLoNetwork` in v1.6's pkg/cri/server), because the network configurations nodes run
(calico's, flannel's, a bridge's) do not carry the loopback plugin: without it a pod's
127.0.0.1 is unreachable, to its own containers and to port-forward, which dials it.

Every operation is idempotent and safe after a crash at any point: `create` finishes or redoes a
half-made namespace (the file exists but nothing is mounted on it), `remove` of what is gone
succeeds.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from crictl import errors

if TYPE_CHECKING:
    # pyroute2 is imported on the first netlink read: it added ~50 ms and ~10 MiB to the daemon,
    # and a restart serves before any pod's interfaces are read (docs/performance.md).
    from pyroute2 import IPRoute

T = TypeVar("T")

NSFS_MAGIC = 0x6E736673
MNT_DETACH = 2
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
# struct ifreq: the interface's name, then a 24-byte union whose first member is ifr_flags
_IFREQ_FLAGS = struct.Struct("16sH22x")


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def is_netns(path: Path) -> bool:
    """True if `path` is a mounted network namespace (nsfs), not just an empty file."""
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return False
    return bool(buf.f_type == NSFS_MAGIC)


def prepare_dir(directory: Path) -> None:
    """Makes the netns directory a shared mount point (bind-mounted onto itself first if it is
    not a mount point yet), as iproute2 does for /run/netns."""
    directory.mkdir(parents=True, exist_ok=True)
    d = os.fsencode(directory)
    if _libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if _libc.mount(d, d, b"none", MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise errors.Unavailable(f"cannot bind-mount {directory}: {os.strerror(err)}")
    if _libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise errors.Unavailable(f"cannot make {directory} shared: {os.strerror(err)}")


def _loopback_up() -> None:
    """Sets `lo` up in the calling thread's network namespace (the kernel then gives it
    127.0.0.1 and ::1). Two ioctls on a socket made there: pyroute2 would be netlink, but it
    is imported only on the first netlink read (~10 MiB, see docs/performance.md), and this
    runs for every pod."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        _, flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(s, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(b"lo", 0)))
        if not flags & IFF_UP:
            fcntl.ioctl(s, SIOCSIFFLAGS, _IFREQ_FLAGS.pack(b"lo", flags | IFF_UP))


def create(path: Path) -> bool:
    """Creates the namespace at `path`, its loopback up; returns False if it was already there.

    The namespace is made in a thread of its own (unshare(CLONE_NEWNET) acts on the calling
    thread only), `lo` is set up from inside it, it is bind-mounted from that thread's /proc
    entry, and the thread then ends: a namespace mounted at `path` always has its loopback up.
    No fork: forking a process that runs gRPC's threads (as pyroute2's netns.create does)
    crashed the child with SIGSEGV under load.
    """
    if is_netns(path):
        return False
    prepare_dir(path.parent)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a mount point file left by a crash before the bind mount
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)
    failure: list[str] = []

    def in_new_netns() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            failure.append(f"unshare: {os.strerror(ctypes.get_errno())}")
            return
        try:
            _loopback_up()
        except OSError as e:
            failure.append(f"loopback up: {e.strerror or e}")
            return
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        if _libc.mount(source, os.fsencode(path), b"none", MS_BIND, None) != 0:
            failure.append(f"bind mount: {os.strerror(ctypes.get_errno())}")

    thread = threading.Thread(target=in_new_netns, name="netns-create")
    thread.start()
    thread.join()
    if failure or not is_netns(path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise errors.Unavailable(
            f"cannot create network namespace {path}: {failure[0] if failure else 'not mounted'}"
        )
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


def _enter(path: Path, failures: list[str]) -> bool:
    """Moves the calling thread into the network namespace at `path` (for good: only a thread
    made for it may call this); False, with the reason in `failures`, when it cannot."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        failures.append(f"network namespace {path}: {e.strerror}")
        return False
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            failures.append(f"setns {path}: {os.strerror(ctypes.get_errno())}")
            return False
    finally:
        os.close(fd)
    return True


def connect(path: Path | None, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to `port` on the loopback of the namespace at `path` (None: the
    daemon's own), 127.0.0.1 first, then ::1, as containerd dials for port-forward. The socket
    belongs to the namespace it was made in, so it is made in a thread of its own that enters
    the namespace and then ends (a pool thread must never change namespace). Blocks the caller:
    run it with asyncio.to_thread. Returns the socket in non-blocking mode."""
    result: list[socket.socket] = []
    failures: list[str] = []

    def dial() -> None:
        if path is not None and not _enter(path, failures):
            return
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect((host, port))
            except OSError as e:
                sock.close()
                failures.append(f"{host}: {e.strerror or e}")
                continue
            sock.setblocking(False)
            result.append(sock)
            return

    thread = threading.Thread(target=dial, name="netns-dial")
    thread.start()
    thread.join()
    if result:
        return result[0]
    raise errors.Unavailable(f"cannot connect to port {port} in the pod: {'; '.join(failures)}")


def _inside(path: Path, work: Callable[[], T], what: str, thread_name: str) -> T:
    """`work()` in a thread of its own that enters the namespace at `path` with setns and then
    ends (nothing forks, and no pool thread changes namespace); its failure is UNAVAILABLE,
    `what` naming it; the thread is `netns-<thread_name>`. Blocks the caller: run it with
    asyncio.to_thread."""
    result: list[T] = []
    failures: list[str] = []

    def run() -> None:
        if not _enter(path, failures):
            return
        try:
            result.append(work())
        except Exception as e:  # netlink errors come in many types
            failures.append(f"{what} in {path}: {getattr(e, 'strerror', None) or e}")

    thread = threading.Thread(target=run, name=f"netns-{thread_name}")
    thread.start()
    thread.join()
    if failures:
        raise errors.Unavailable(failures[0])
    return result[0]


def _netlink(path: Path, work: Callable[[IPRoute], T], what: str) -> T:
    """`work` on an IPRoute socket made inside the namespace at `path` (see _inside)."""
    from pyroute2 import IPRoute  # here, not in the thread: it then enters the namespace

    def run() -> T:
        with IPRoute() as ipr:
            return work(ipr)

    return _inside(path, run, "netlink", what)


def addresses(path: Path) -> dict[str, list[str]]:
    """The addresses of every interface inside the namespace at `path`, by interface name,
    read over netlink with pyroute2 (see _netlink)."""

    def read(ipr: IPRoute) -> dict[str, list[str]]:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        result: dict[str, list[str]] = {name: [] for name in names.values()}
        for addr in ipr.get_addr():
            result.setdefault(names.get(addr["index"], "?"), []).append(
                addr.get_attr("IFA_ADDRESS")
            )
        return result

    return _netlink(path, read, "addresses")


@dataclass(frozen=True)
class LinkStats:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int
    rx_packets: int = 0
    rx_dropped: int = 0
    tx_packets: int = 0
    tx_dropped: int = 0


def net_dev(text: str) -> list[LinkStats]:
    """The interfaces of a /proc/net/dev table, loopback left out. Its counters are the
    kernel's 64-bit link statistics, as netlink's IFLA_STATS64 gives them (receive drops also
    count missed errors) and as cAdvisor reads them for kubelet: per interface eight receive
    counters (bytes, packets, errs, drop, ...), then eight transmit ones."""
    out = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        values = rest.split()
        name = name.strip()
        if not sep or name == "lo" or len(values) < 16:
            continue
        try:
            v = [int(x) for x in values[:16]]
        except ValueError:
            continue
        out.append(LinkStats(name, v[0], v[2], v[8], v[10], v[1], v[3], v[9], v[11]))
    return out


def link_stats_through(pid: int, path: Path) -> list[LinkStats] | None:
    """The counters of the namespace at `path`, read through a process in it (the pod's
    pause): /proc/<pid>/net/dev, if the process's namespace is that one before and after the
    read, else None (the process gone, its pid another's). No thread and no setns: a few
    small procfs reads, cheap enough for the event loop."""
    try:
        want = os.stat(path)

        def inside() -> bool:
            st = os.stat(f"/proc/{pid}/ns/net")
            return (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino)

        if not inside():
            return None
        with open(f"/proc/{pid}/net/dev", "rb") as f:
            text = f.read().decode(errors="replace")
        if not inside():
            return None
    except OSError:
        return None
    return net_dev(text)


def link_stats(path: Path) -> list[LinkStats]:
    """The counters of every interface inside the namespace at `path` but loopback: its
    /proc/net/dev table, read by a thread inside it (/proc/thread-self/net is the calling
    thread's namespace; see _inside)."""

    def read() -> str:
        with open("/proc/thread-self/net/dev", "rb") as f:
            return f.read().decode(errors="replace")

    return net_dev(_inside(path, read, "/proc/thread-self/net/dev", "stats"))
