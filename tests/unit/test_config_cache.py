"""Parsed configs are kept by row id for as long as the row, and answer only for the text
they were parsed from."""

from __future__ import annotations

from google.protobuf import json_format

from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.reconciler.configs import ConfigCache, parsed_copy


def cache(limit: int = 100) -> tuple[ConfigCache[list[str]], list[str]]:
    parsed: list[str] = []

    def parse(text: str) -> list[str]:
        parsed.append(text)
        return [text]

    return ConfigCache(parse, limit), parsed


def test_one_parse_per_row_and_text() -> None:
    c, parsed = cache()
    first = c.get("a", '{"x": 1}')
    assert c.get("a", '{"x": 1}') is first
    assert c.get("b", '{"x": 1}') == first  # another row, parsed for itself
    assert parsed == ['{"x": 1}', '{"x": 1}']


def test_a_changed_config_is_parsed_again() -> None:
    # UpdateContainerResources writes the new resources into the row's config
    c, parsed = cache()
    c.get("a", '{"cpu": 1}')
    assert c.get("a", '{"cpu": 2}') == ['{"cpu": 2}']
    assert c.get("a", '{"cpu": 2}') == ['{"cpu": 2}']
    assert parsed == ['{"cpu": 1}', '{"cpu": 2}']
    assert len(c) == 1


def test_a_removed_row_is_forgotten() -> None:
    c, parsed = cache()
    c.get("a", "{}")
    c.forget("a")
    c.forget("never-there")
    assert "a" not in c and len(c) == 0
    c.get("a", "{}")
    assert parsed == ["{}", "{}"]


def test_a_missed_removal_cannot_grow_it_past_its_limit() -> None:
    c, _ = cache(limit=3)
    for rid in "abcdefg":
        c.get(rid, "{}")
        assert len(c) <= 3
    assert "g" in c


def test_a_config_put_by_its_creator_is_not_parsed() -> None:
    c, parsed = cache()
    kept = ['{"x": 1}']
    c.put("a", '{"x": 1}', kept)
    assert c.get("a", '{"x": 1}') is kept
    assert parsed == []
    assert c.get("a", '{"x": 2}') == ['{"x": 2}']  # changed since: parsed
    assert parsed == ['{"x": 2}']


def test_a_put_cannot_grow_it_past_its_limit() -> None:
    c, _ = cache(limit=2)
    for rid in "abcde":
        c.put(rid, "{}", [])
        assert len(c) <= 2


def test_the_creators_copy_is_what_parsing_its_text_gives() -> None:
    """What a CreateContainer (RunPodSandbox) puts is the request's config as its row's text
    parses back: a copy, without the fields this build does not know (a newer kubelet's), which
    the JSON text does not carry."""
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="app", attempt=2),
        image=api_pb2.ImageSpec(image="busybox"),
        command=["sleep", "1"],
        envs=[api_pb2.KeyValue(key="A", value=b"1\xff")],  # bytes here: base64 in the JSON
        mounts=[api_pb2.Mount(container_path="/d", host_path="/h", readonly=True)],
        labels={"k": "v"},
        linux=api_pb2.LinuxContainerConfig(
            resources=api_pb2.LinuxContainerResources(
                cpu_shares=512, memory_limit_in_bytes=1 << 30
            ),
            security_context=api_pb2.LinuxContainerSecurityContext(masked_paths=["/proc/kcore"]),
        ),
    )
    unknown = b"\xf8\xff\x03\x01"  # field 65535, varint 1: no field of ContainerConfig
    sent = api_pb2.ContainerConfig.FromString(config.SerializeToString() + unknown)
    assert sent.SerializeToString().endswith(unknown)  # kept as an unknown field
    text = json_format.MessageToJson(
        sent, preserving_proto_field_name=True, sort_keys=True, indent=None
    )
    copy = parsed_copy(sent)
    parsed = json_format.Parse(text, api_pb2.ContainerConfig())
    assert copy == parsed and copy.SerializeToString() == parsed.SerializeToString()
    assert copy is not sent and sent.SerializeToString().endswith(unknown)  # the request's own
    sent.labels["k"] = "changed"
    assert copy.labels["k"] == "v"
