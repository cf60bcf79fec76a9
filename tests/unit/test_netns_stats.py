"""A pod's network counters (crictl/network/netns.py): the /proc/net/dev table decoded, read
through a process only while it is in the namespace asked for, or from a thread inside it."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import pytest

from crictl import errors
from crictl.network import netns
from crictl.network.netns import LinkStats

# As a 6.1 kernel writes it in a pod's netns (a veth named eth0, loopback, a second link).
NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     840      12    0    0    0     0          0         0      840      12    0    0    0     0       0          0
  eth0: 18446744073709551000  201    3    4    0     0          0         0     9312      88    5    6    0     0       0          0
 net1:     100       1    0    0    0     0          0         0      200       2    0    0    0     0       0          0
"""  # noqa: E501


def test_the_table_is_decoded_without_loopback() -> None:
    assert netns.net_dev(NET_DEV) == [
        # 64-bit counters, whole
        LinkStats("eth0", 18446744073709551000, 3, 9312, 5, 201, 4, 88, 6),
        LinkStats("net1", 100, 0, 200, 0, 1, 0, 2, 0),
    ]


def test_lines_that_are_not_counters_are_skipped() -> None:
    text = NET_DEV + "  bad0: 1 2 3\n  bad1: a b c d e f g h i j k l m n o p\n"
    assert [link.name for link in netns.net_dev(text)] == ["eth0", "net1"]
    assert netns.net_dev("") == []


def test_through_a_process_only_while_it_is_in_the_namespace(tmp_path: Path) -> None:
    own = Path(f"/proc/{os.getpid()}/ns/net")
    links = netns.link_stats_through(os.getpid(), own)
    assert links is not None and all(link.name != "lo" for link in links)
    # a file that is not the process's namespace (another netns, a stale path): not read
    other = tmp_path / "netns"
    other.write_text("")
    assert netns.link_stats_through(os.getpid(), other) is None
    # no such process (a pid past the kernel's limit), or no such namespace
    assert netns.link_stats_through(1 << 23, own) is None
    assert netns.link_stats_through(os.getpid(), tmp_path / "gone") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare and setns need CAP_SYS_ADMIN")
def test_from_a_thread_inside_the_namespace() -> None:
    """A namespace of a thread's own (loopback only), not the process's (which has more): the
    thread that reads it must be the one inside."""
    with open("/proc/self/net/dev") as f:
        assert netns.net_dev(f.read()), "the process's namespace has links besides lo"
    ready, done = threading.Event(), threading.Event()
    where: list[Path] = []

    def hold() -> None:
        assert netns._libc.unshare(netns.CLONE_NEWNET) == 0, ctypes.get_errno()
        where.append(Path(f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"))
        ready.set()
        done.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert ready.wait(10)
        assert netns.link_stats(where[0]) == []
    finally:
        done.set()
        holder.join()


def test_a_namespace_gone_is_named(tmp_path: Path) -> None:
    with pytest.raises(errors.Unavailable, match="gone"):
        netns.link_stats(tmp_path / "gone")
