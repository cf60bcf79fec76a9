"""Running CNI plugins (the spec's execution protocol) with stand-in plugins written as shell
scripts: what each gets (environment, config on stdin, prevResult), what comes back, and a
plugin that fails, hangs, cannot run, or whose caller gives up. The real plugins run in the
integration tests."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from crictl.network import cni
from crictl.network.cni import CniError, NetworkConfig


def plugin(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def network(bin_dir: Path, *types: str) -> NetworkConfig:
    plugins = [{"type": t, "marker": t} for t in types]
    raw = {"cniVersion": "1.0.0", "name": "testnet", "plugins": plugins}
    return NetworkConfig(
        bin_dir / "net.conflist",
        "testnet",
        "1.0.0",
        plugins,
        raw,
        {t: bin_dir / t for t in types},
    )


RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
    "ips": [{"address": "10.88.0.7/16", "interface": 0}],
}


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    return d


async def test_add_passes_the_protocol_and_chains_results(bin_dir: Path) -> None:
    seen = bin_dir / "seen"
    # the first plugin answers a result; the second records what it was given and passes it on
    plugin(bin_dir, "first", f"cat > {seen}.first\necho '{json.dumps(RESULT)}'\n")
    second_result = {**RESULT, "ips": [{"address": "10.88.0.8/16", "interface": 0}]}
    plugin(
        bin_dir,
        "second",
        f"env > {seen}.env\ncat > {seen}.second\necho '{json.dumps(second_result)}'\n",
    )
    result = await cni.add(
        network(bin_dir, "first", "second"),
        "cid1",
        "/run/netns/x",
        "K8S_POD_NAME=p",
        {"portMappings": [{"hostPort": 80}]},
        [bin_dir],
    )
    assert result.ip == "10.88.0.8"  # the last plugin's result is the network's
    first = json.loads((bin_dir / "seen.first").read_text())
    assert first["name"] == "testnet" and first["cniVersion"] == "1.0.0"
    assert "prevResult" not in first
    second = json.loads((bin_dir / "seen.second").read_text())
    assert second["prevResult"] == RESULT
    env = dict(
        line.split("=", 1)
        for line in (bin_dir / "seen.env").read_text().splitlines()
        if "=" in line
    )
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == "cid1"
    assert env["CNI_NETNS"] == "/run/netns/x"
    assert env["CNI_IFNAME"] == "eth0"
    assert env["CNI_ARGS"] == "K8S_POD_NAME=p"
    assert env["CNI_PATH"] == str(bin_dir)


async def test_a_failing_plugin_names_itself_and_its_error(bin_dir: Path) -> None:
    plugin(
        bin_dir,
        "bad",
        'echo \'{"code": 11, "msg": "no IP left", "details": "pool 10.88"}\'\nexit 1\n',
    )
    with pytest.raises(CniError) as info:
        await cni.add(network(bin_dir, "bad"), "cid2", "/run/netns/x", "", {}, [bin_dir])
    assert str(info.value) == "CNI ADD cid2: plugin bad failed (exit 1): no IP left pool 10.88"


async def test_a_failure_without_json_gives_stderr(bin_dir: Path) -> None:
    plugin(bin_dir, "bad", "echo 'netlink: permission denied' >&2\nexit 2\n")
    with pytest.raises(CniError, match=r"plugin bad failed \(exit 2\): netlink: permission denied"):
        await cni.delete(network(bin_dir, "bad"), "cid3", "", "", {}, None, [bin_dir])


async def test_an_add_answering_garbage_is_refused(bin_dir: Path) -> None:
    plugin(bin_dir, "odd", "echo not-json\n")
    with pytest.raises(CniError, match="answered non-JSON"):
        await cni.add(network(bin_dir, "odd"), "cid4", "/run/netns/x", "", {}, [bin_dir])


async def test_a_plugin_that_cannot_run_says_so(bin_dir: Path) -> None:
    (bin_dir / "noexec").write_text("#!/bin/sh\n")  # not executable
    with pytest.raises(CniError, match=r"plugin noexec \(.*noexec\) could not run"):
        await cni.delete(network(bin_dir, "noexec"), "cid5", "", "", {}, None, [bin_dir])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is gone for this purpose only once reaped: read its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


async def _pid_of(pidfile: Path) -> int:
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        await asyncio.sleep(0.01)
    raise AssertionError("the plugin never started")


async def test_a_hung_plugin_is_killed_at_the_timeout(
    bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cni, "PLUGIN_TIMEOUT", 0.3)
    pidfile = bin_dir / "pid"
    plugin(bin_dir, "hang", f"echo $$ > {pidfile}\nexec sleep 30\n")
    started = time.monotonic()
    with pytest.raises(CniError) as info:
        await cni.delete(network(bin_dir, "hang"), "cid6", "", "", {}, None, [bin_dir])
    assert time.monotonic() - started < 5
    assert str(info.value) == "CNI DEL cid6: plugin hang did not answer within 0.3s (killed)"
    assert _gone(int(pidfile.read_text()))


async def test_a_caller_that_gives_up_kills_the_plugin(bin_dir: Path) -> None:
    pidfile = bin_dir / "pid"
    plugin(bin_dir, "hang", f"echo $$ > {pidfile}\nexec sleep 30\n")
    call = asyncio.ensure_future(
        cni.add(network(bin_dir, "hang"), "cid7", "/run/netns/x", "", {}, [bin_dir])
    )
    pid = await _pid_of(pidfile)
    started = time.monotonic()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert time.monotonic() - started < 5
    assert _gone(pid)  # killed and reaped before the cancellation was answered


async def test_plugins_do_not_hold_the_event_loop(bin_dir: Path) -> None:
    """Plugins run from threads: while eight run, the loop goes on."""
    plugin(bin_dir, "slow", "sleep 0.3\n")
    net = network(bin_dir, "slow")
    runs = [
        asyncio.ensure_future(cni.delete(net, f"c{i}", "", "", {}, None, [bin_dir]))
        for i in range(8)
    ]
    ticks = 0
    while not all(r.done() for r in runs):
        await asyncio.sleep(0.01)
        ticks += 1
    await asyncio.gather(*runs)
    assert ticks >= 10  # the loop turned all along (0.3 s of plugins at once)


def sys_net(root: Path, macs: dict[str, str]) -> Path:
    for name, mac in macs.items():
        (root / name).mkdir(parents=True)
        (root / name / "address").write_text(mac + "\n")
    return root


ADDED: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "5a:1b:df:65:bd:a3"},
        {"name": "veth1", "mac": "66:00:00:00:00:01"},
        {"name": "eth0", "mac": "0a:00:00:00:00:02", "sandbox": "/var/run/netns/p"},
    ],
    "ips": [{"address": "10.1.0.2/24", "interface": 2, "gateway": "10.1.0.1"}],
}


def test_a_host_side_mac_that_moved_is_checked_as_it_is_now(tmp_path: Path) -> None:
    """The bridge's MAC differs from the one its ADD recorded: the CHECK gets the one the
    host has now, and the caller learns what moved; the rest of the result is untouched."""
    root = sys_net(tmp_path, {"cni0": "be:ef:00:00:00:01", "veth1": "66:00:00:00:00:01"})
    fresh, moved = cni.with_host_macs_now(ADDED, root)
    assert moved == [cni.MovedMac("cni0", "5a:1b:df:65:bd:a3", "be:ef:00:00:00:01")]
    assert fresh["interfaces"][0] == {"name": "cni0", "mac": "be:ef:00:00:00:01"}
    assert fresh["interfaces"][1:] == ADDED["interfaces"][1:]
    assert fresh["ips"] == ADDED["ips"]
    assert ADDED["interfaces"][0]["mac"] == "5a:1b:df:65:bd:a3"  # the stored result unchanged


def test_pod_side_and_missing_interfaces_keep_the_macs_their_add_gave(tmp_path: Path) -> None:
    """A pod-side interface (`sandbox` set) is the pod's to check, even if the host has one of
    that name with another MAC; a host-side interface the host no longer has stays as added,
    for the CHECK to report missing. Nothing moved: the very same result comes back."""
    root = sys_net(tmp_path, {"eth0": "be:ef:00:00:00:09", "veth1": "66:00:00:00:00:01"})
    fresh, moved = cni.with_host_macs_now(ADDED, root)
    assert (fresh, moved) == (ADDED, [])
    assert fresh is ADDED


@pytest.mark.parametrize(
    "prev",
    [
        {},
        {"interfaces": "cni0"},
        {"interfaces": [None, "cni0", {"name": "../cni0", "mac": "x"}]},
        {"interfaces": [{"name": "a/b", "mac": "x"}, {"name": "", "mac": "x"}]},
        {"interfaces": [{"name": "cni0"}, {"name": 3, "mac": "x"}, {"name": "..", "mac": "x"}]},
    ],
)
def test_results_without_host_macs_pass_through(tmp_path: Path, prev: dict[str, object]) -> None:
    """Results without host-side MACs, or with names that are not interface names, read no
    file outside the interfaces' own dirs and come back as they were."""
    sys_net(tmp_path / "net", {"cni0": "be:ef:00:00:00:01"})
    (tmp_path / "address").write_text("be:ef:00:00:00:02\n")
    fresh, moved = cni.with_host_macs_now(prev, tmp_path / "net")
    assert (fresh, moved) == (prev, [])
