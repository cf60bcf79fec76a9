from __future__ import annotations

import json
from pathlib import Path

import pytest

from crictl.network.cni import (
    NetworkNotReady,
    load_network_config,
    pod_network_config,
    stored_network_config,
)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("bridge", "host-local", "loopback"):
        (d / name).write_text("#!/bin/sh\n")
        (d / name).chmod(0o755)
    return d


def _write(conf_dir: Path, name: str, obj: object) -> None:
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / name).write_text(json.dumps(obj))


def test_lexically_first_config_wins(tmp_path: Path, bin_dir: Path) -> None:
    conf = tmp_path / "net.d"
    _write(
        conf, "20-b.conflist", {"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "bridge"}]}
    )
    _write(
        conf,
        "10-a.conflist",
        {"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "bridge"}, {"type": "loopback"}]},
    )
    (conf / "00-ignored.txt").write_text("not a config")
    net = load_network_config(conf, [bin_dir])
    assert net.name == "a"
    assert net.plugin_paths == {"bridge": bin_dir / "bridge", "loopback": bin_dir / "loopback"}


def test_single_plugin_conf_is_wrapped(tmp_path: Path, bin_dir: Path) -> None:
    _write(tmp_path / "net.d", "10.conf", {"cniVersion": "0.4.0", "name": "n", "type": "bridge"})
    net = load_network_config(tmp_path / "net.d", [bin_dir])
    assert [p["type"] for p in net.plugins] == ["bridge"]


def test_a_pods_stored_config_is_the_network_it_was_added_with(
    tmp_path: Path, bin_dir: Path
) -> None:
    """What a row keeps is a conflist (a `.conf` wrapped) that parses back to the same network;
    CHECK and DEL use it even once the config dir names another network."""
    conf = tmp_path / "net.d"
    _write(conf, "10.conf", {"cniVersion": "0.4.0", "name": "old", "type": "bridge", "mtu": 1400})
    added = load_network_config(conf, [bin_dir])
    stored = added.stored()
    assert json.loads(stored) == {
        "cniVersion": "0.4.0",
        "name": "old",
        "plugins": [{"cniVersion": "0.4.0", "name": "old", "type": "bridge", "mtu": 1400}],
    }
    back = stored_network_config(stored, [bin_dir])
    assert (back.path, back.name, back.cni_version, back.plugins) == (
        None,
        "old",
        "0.4.0",
        added.plugins,
    )
    (conf / "10.conf").unlink()
    conflist = {
        "cniVersion": "1.0.0",
        "name": "new",
        "disableCheck": True,
        "plugins": [{"type": "bridge"}],
    }
    _write(conf, "10.conflist", conflist)
    assert json.loads(load_network_config(conf, [bin_dir]).stored()) == conflist
    assert pod_network_config(stored, conf, [bin_dir]) == (back, "")
    current = load_network_config(conf, [bin_dir])
    assert pod_network_config(None, conf, [bin_dir]) == (current, "")  # a row from before


def test_a_stored_config_that_cannot_run_gives_the_config_dirs_and_says_why(
    tmp_path: Path, bin_dir: Path
) -> None:
    conf = tmp_path / "net.d"
    _write(
        conf, "10.conflist", {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}
    )
    current = load_network_config(conf, [bin_dir])
    gone = json.dumps({"cniVersion": "1.0.0", "name": "o", "plugins": [{"type": "calico"}]})
    net, why = pod_network_config(gone, conf, [bin_dir])
    assert net == current
    assert "CNI plugin 'calico' (the stored CNI config) not found in" in why
    with pytest.raises(NetworkNotReady) as e:
        stored_network_config(gone, [bin_dir])
    assert e.value.reason == "CNIPluginMissing"
    net, why = pod_network_config("{", conf, [bin_dir])
    assert net == current and why.startswith("the stored CNI config: ")
    (conf / "10.conflist").unlink()
    with pytest.raises(NetworkNotReady):  # neither can run
        pod_network_config(gone, conf, [bin_dir])


@pytest.mark.parametrize(
    ("files", "reason", "text"),
    [
        ({}, "NoCNIConfig", "no CNI network config"),
        ({"10.conflist": "{"}, "InvalidCNIConfig", "10.conflist"),
        (
            {"10.conflist": {"cniVersion": "1.0.0", "name": "n", "plugins": []}},
            "InvalidCNIConfig",
            "no plugins",
        ),
        (
            {"10.conflist": {"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}},
            "InvalidCNIConfig",
            "no network name",
        ),
        (
            {"10.conflist": {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "macvlan"}]}},
            "CNIPluginMissing",
            "'macvlan'",
        ),
    ],
)
def test_unusable_configs_say_why(
    tmp_path: Path, bin_dir: Path, files: dict[str, object], reason: str, text: str
) -> None:
    conf = tmp_path / "net.d"
    conf.mkdir()
    for name, body in files.items():
        (conf / name).write_text(body if isinstance(body, str) else json.dumps(body))
    with pytest.raises(NetworkNotReady, match=text) as info:
        load_network_config(conf, [bin_dir])
    assert info.value.reason == reason


def test_missing_conf_dir(tmp_path: Path, bin_dir: Path) -> None:
    with pytest.raises(NetworkNotReady) as info:
        load_network_config(tmp_path / "absent", [bin_dir])
    assert info.value.reason == "NoCNIConfig"


def test_bandwidth_annotations_become_capability_args() -> None:
    from crictl.errors import InvalidArgument
    from crictl.gen.cri.runtime.v1 import api_pb2
    from crictl.reconciler.sandboxes import capability_args

    config = api_pb2.PodSandboxConfig(
        annotations={
            "kubernetes.io/ingress-bandwidth": "10M",
            "kubernetes.io/egress-bandwidth": "1Mi",
        }
    )
    config.port_mappings.add(host_port=8080, container_port=80, protocol=api_pb2.UDP)
    config.port_mappings.add(container_port=81)  # no host port: not mapped
    args = capability_args(config)
    assert args["bandwidth"]["ingressRate"] == 10_000_000
    assert args["bandwidth"]["egressRate"] == 1 << 20
    assert args["portMappings"] == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": ""}
    ]
    bad = api_pb2.PodSandboxConfig(annotations={"kubernetes.io/ingress-bandwidth": "fast"})
    with pytest.raises(InvalidArgument, match="ingress-bandwidth"):
        capability_args(bad)


def test_pod_ips_come_from_interfaces_inside_the_pod() -> None:
    from crictl.network.cni import parse_result

    raw = {
        "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/ns"}],
        "ips": [
            {"address": "fd00::5/64", "interface": 2},
            {"address": "10.1.0.1/24", "interface": 0},  # the bridge's: not the pod's
            {"address": "10.1.0.5/24", "interface": 2},
        ],
    }
    r = parse_result(raw)
    assert (r.ip, r.additional_ips) == ("10.1.0.5", ["fd00::5"])
    assert parse_result({"ips": [{"address": "10.2.0.9/16"}]}).ip == "10.2.0.9"
    assert parse_result({}).ip is None
