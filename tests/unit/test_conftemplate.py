"""The CNI config template (crictl/network/conftemplate.py): containerd-style templates rendered
for one or two pod CIDRs, bad CIDRs and unsupported templates refused, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crictl import errors
from crictl.network import conftemplate

# The shape of containerd's documented conf_template example.
TEMPLATE = (
    """{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
    "ipam": {
      "type": "host-local",
      "ranges": [{{range $i, $range := .PodCIDRRanges}}{{if $i}}, {{end}}"""
    """[{"subnet": "{{$range}}"}]{{end}}],
      "routes": [{{range $i, $route := .Routes}}{{if $i}}, {{end}}{"dst": "{{$route}}"}{{end}}]
    }
  }],
  "first": "{{.PodCIDR}}"
}"""
)


def test_single_and_dual_stack() -> None:
    one = json.loads(conftemplate.render(TEMPLATE, ["10.1.2.0/24"]))
    ipam = one["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.1.2.0/24"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}]
    assert one["first"] == "10.1.2.0/24"
    two = json.loads(conftemplate.render(TEMPLATE, ["10.1.2.0/24", "fd00:1::/64"]))
    ipam = two["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00:1::/64"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]


def test_cidrs_are_parsed_and_bad_ones_refused() -> None:
    assert conftemplate.parse_cidrs("10.1.2.3/24, fd00::/64") == ["10.1.2.0/24", "fd00::/64"]
    for bad in ("", " , ", "10.1.2.0/33", "nonsense"):
        with pytest.raises(errors.InvalidArgument, match="pod_cidr"):
            conftemplate.parse_cidrs(bad)


def test_unsupported_templates_are_refused() -> None:
    for template, match in (
        ('{"a": "{{.Other}}"}', "unsupported action"),
        ('{"a": [{{range $i, $r := .Routes}}1]}', "has no"),
        ("{{.PodCIDR}} not json", "not JSON"),
    ):
        with pytest.raises(errors.FailedPrecondition, match=match):
            conftemplate.render(template, ["10.0.0.0/24"])


def test_write_replaces_the_file_whole(tmp_path: Path) -> None:
    template = tmp_path / "t.json"
    template.write_text(TEMPLATE)
    conf = tmp_path / "net.d"
    conf.mkdir()
    target = conftemplate.write(conf, template, ["10.9.0.0/24"])
    assert target == conf / "10-crictld-net.conflist"
    assert json.loads(target.read_text())["first"] == "10.9.0.0/24"
    conftemplate.write(conf, template, ["10.8.0.0/24"])
    assert json.loads(target.read_text())["first"] == "10.8.0.0/24"
    assert [p.name for p in conf.iterdir()] == ["10-crictld-net.conflist"]  # no temp left
    (tmp_path / "bad.json").write_text("{{.PodCIDR}")
    with pytest.raises(errors.FailedPrecondition):
        conftemplate.write(conf, tmp_path / "bad.json", ["10.7.0.0/24"])
    assert json.loads(target.read_text())["first"] == "10.8.0.0/24"  # the old one stands
