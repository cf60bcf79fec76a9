"""The pure parts of pulling and of the image manager: chain ids, platform selection, manifest and
config parsing, image sizes, how an ImageSpec is looked up, the image user, and containerd's
image events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crictl import errors
from crictl.gen.containerd.api.events import image_pb2 as image_events
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.images import mediatypes
from crictl.images.pull import (
    ImageContent,
    Platform,
    chain_ids,
    parse_config,
    parse_manifest,
    select_manifest,
)
from crictl.images.registry import Credentials, Descriptor
from crictl.reconciler.images import (
    ImageLookup,
    _event_image_name,
    _looks_like_reference,
    credentials_from,
    lookup_for,
    user_of,
)

WHERE = "pull example.com/x:1: registry https://example.com"
HEX = "0123456789abcdef" * 4
A, B, C = ("sha256:" + ch * 64 for ch in "abc")
# Computed by hand: sha256("sha256:aaa…a sha256:bbb…b"), then sha256(that + " sha256:ccc…c").
CHAIN_AB = "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
CHAIN_ABC = "sha256:c1377126441fb2f5ec2c21ae2a60255331d639e830f0ee1b40a36e52d4c40588"
LAYER_TGZ = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _json(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _desc(media_type: str, digest: str, size: int, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def _platform(os: str, arch: str, **extra: str) -> dict[str, str]:
    return {"os": os, "architecture": arch, **extra}


# -- chain ids ---------------------------------------------------------------------------------


def test_chain_ids_known_answer() -> None:
    assert chain_ids([]) == []
    assert chain_ids([A]) == [A]
    assert chain_ids([A, B]) == [A, CHAIN_AB]
    assert chain_ids([A, B, C]) == [A, CHAIN_AB, CHAIN_ABC]
    assert chain_ids((A, B, C)) == [A, CHAIN_AB, CHAIN_ABC]


def test_chain_ids_depend_on_order() -> None:
    assert chain_ids([B, A])[-1] != CHAIN_AB


def test_chain_id_of_image_content() -> None:
    content = _content(diff_ids=(A, B, C))
    assert content.chain_id == CHAIN_ABC
    assert _content(diff_ids=()).chain_id is None
    assert content.id == content.config.digest


# -- platform selection ------------------------------------------------------------------------


def _index(*manifests: dict[str, Any]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": list(manifests)}


ARM64 = _desc(mediatypes.OCI_MANIFEST, A, 500, platform=_platform("linux", "arm64", variant="v8"))
AMD64 = _desc(mediatypes.OCI_MANIFEST, B, 501, platform=_platform("linux", "amd64"))
ARMV7 = _desc(mediatypes.OCI_MANIFEST, C, 502, platform=_platform("linux", "arm", variant="v7"))


def test_select_manifest_skips_arm64_listed_first() -> None:
    i, desc = select_manifest(_index(ARM64, AMD64, ARMV7), Platform(), WHERE)
    assert i == 1
    assert desc == Descriptor(mediatypes.OCI_MANIFEST, B, 501, platform=_platform("linux", "amd64"))


def test_select_manifest_for_another_platform() -> None:
    i, desc = select_manifest(_index(ARM64, AMD64), Platform("linux", "arm64"), WHERE)
    assert (i, desc.digest) == (0, A)


def test_select_manifest_in_a_docker_list() -> None:
    entry = _desc(mediatypes.DOCKER_MANIFEST, B, 7, platform=_platform("linux", "amd64"))
    index = {"mediaType": mediatypes.DOCKER_LIST, "manifests": [ARM64, entry]}
    assert select_manifest(index, Platform(), WHERE) == (1, Descriptor.from_json(entry, WHERE))


def test_select_manifest_skips_attestations_and_nested_indexes() -> None:
    attestation = _desc(
        mediatypes.OCI_MANIFEST,
        C,
        9,
        platform=_platform("unknown", "unknown"),
        annotations={"vnd.docker.reference.type": "attestation-manifest"},
    )
    nested = _desc(mediatypes.OCI_INDEX, A, 9, platform=_platform("linux", "amd64"))
    i, desc = select_manifest(_index(attestation, nested, AMD64), Platform(), WHERE)
    assert (i, desc.digest) == (2, B)


def test_select_manifest_first_match_wins() -> None:
    second = _desc(mediatypes.OCI_MANIFEST, C, 1, platform=_platform("linux", "amd64"))
    assert select_manifest(_index(AMD64, second), Platform(), WHERE)[1].digest == B


def test_select_manifest_needs_os_too() -> None:
    windows = _desc(mediatypes.OCI_MANIFEST, C, 1, platform=_platform("windows", "amd64"))
    with pytest.raises(errors.NotFound, match=r"\(it has: windows/amd64\)"):
        select_manifest(_index(windows), Platform(), WHERE)


def test_no_amd64_lists_the_platforms() -> None:
    with pytest.raises(errors.NotFound) as info:
        select_manifest(_index(ARM64, ARMV7), Platform(), WHERE)
    assert str(info.value) == (
        f"{WHERE}: no manifest for linux/amd64 in the index (it has: linux/arm64, linux/arm)"
    )


def test_no_platform_at_all() -> None:
    bare = _desc(mediatypes.OCI_MANIFEST, A, 1)
    with pytest.raises(errors.NotFound, match=r"\(it has: none\)"):
        select_manifest(_index(bare), Platform(), WHERE)
    with pytest.raises(errors.NotFound, match=r"\(it has: none\)"):
        select_manifest(_index(), Platform(), WHERE)


@pytest.mark.parametrize(
    "index",
    [{}, {"manifests": None}, {"manifests": {"a": 1}}, {"manifests": "x"}],
)
def test_index_without_manifests(index: dict[str, Any]) -> None:
    with pytest.raises(errors.FailedPrecondition, match=f"^{WHERE}: index without manifests$"):
        select_manifest(index, Platform(), WHERE)


@pytest.mark.parametrize(
    "entry",
    [
        {"mediaType": mediatypes.OCI_MANIFEST, "size": 1},  # no digest
        {"mediaType": mediatypes.OCI_MANIFEST, "digest": A},  # no size
        {"mediaType": mediatypes.OCI_MANIFEST, "digest": A, "size": "big"},
        {"mediaType": mediatypes.OCI_MANIFEST, "digest": A, "size": None},
    ],
)
def test_malformed_index_entry(entry: dict[str, Any]) -> None:
    with pytest.raises(errors.FailedPrecondition, match="malformed descriptor"):
        select_manifest(_index(entry), Platform(), WHERE)


def test_index_entry_that_is_not_an_object() -> None:
    with pytest.raises(errors.FailedPrecondition, match="malformed descriptor"):
        select_manifest(_index("sha256:abc"), Platform(), WHERE)  # type: ignore[arg-type]


def test_platform_matches() -> None:
    p = Platform()
    assert p.matches({"os": "linux", "architecture": "amd64", "variant": "v3"})
    assert not p.matches(None)
    assert not p.matches({})
    assert not p.matches({"os": "linux"})
    assert not p.matches({"os": "linux", "architecture": "arm64"})


# -- manifests and configs ---------------------------------------------------------------------

CONFIG_DESC = _desc(mediatypes.OCI_CONFIG, C, 1234)


def _manifest(*layers: dict[str, Any], config: Any = CONFIG_DESC) -> bytes:
    return _json(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": config,
            "layers": list(layers),
        }
    )


def test_parse_manifest() -> None:
    body = _manifest(
        _desc(LAYER_TGZ, A, 100, annotations={"k": "v"}),
        _desc(DOCKER_LAYER, B, 200),
        _desc("application/vnd.oci.image.layer.v1.tar+zstd", B, 300),
    )
    config, layers = parse_manifest(body, WHERE)
    assert config == Descriptor(mediatypes.OCI_CONFIG, C, 1234)
    assert layers == (
        Descriptor(LAYER_TGZ, A, 100, annotations={"k": "v"}),
        Descriptor(DOCKER_LAYER, B, 200),
        Descriptor("application/vnd.oci.image.layer.v1.tar+zstd", B, 300),
    )


@pytest.mark.parametrize("layers", [[], None])
def test_parse_manifest_without_layers(layers: Any) -> None:
    body = _json({"config": CONFIG_DESC, "layers": layers})
    assert parse_manifest(body, WHERE)[1] == ()
    assert parse_manifest(_json({"config": CONFIG_DESC}), WHERE)[1] == ()


def test_parse_manifest_bounds_the_config_it_will_read() -> None:
    body = _json({"config": {**CONFIG_DESC, "size": (16 << 20) + 1}, "layers": []})
    with pytest.raises(errors.FailedPrecondition, match="image config of 16777217 bytes"):
        parse_manifest(body, WHERE)
    assert parse_manifest(_json({"config": {**CONFIG_DESC, "size": 16 << 20}}), WHERE)


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.in-toto+json",
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        "",
        "application/octet-stream",
    ],
)
def test_parse_manifest_refuses_unknown_layer_media_type(media_type: str) -> None:
    body = _manifest(_desc(LAYER_TGZ, A, 1), _desc(media_type, B, 2))
    with pytest.raises(errors.FailedPrecondition) as info:
        parse_manifest(body, WHERE)
    assert str(info.value) == f"{WHERE}: unsupported layer media type {media_type!r} ({B})"


def test_every_known_layer_media_type_is_accepted() -> None:
    body = _manifest(*(_desc(mt, A, 1) for mt in sorted(mediatypes.LAYERS)))
    assert len(parse_manifest(body, WHERE)[1]) == len(mediatypes.LAYERS)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        _json([]),
        _json({"layers": []}),  # no config
        _json({"config": {"mediaType": mediatypes.OCI_CONFIG}, "layers": []}),
        _json({"config": CONFIG_DESC, "layers": [{"mediaType": LAYER_TGZ, "size": 1}]}),
        _json({"config": CONFIG_DESC, "layers": 5}),
    ],
)
def test_malformed_manifest(body: bytes) -> None:
    with pytest.raises(errors.FailedPrecondition, match=f"^{WHERE}: malformed"):
        parse_manifest(body, WHERE)


@pytest.mark.parametrize(
    "body",
    [
        _json({"config": "sha256:abc", "layers": []}),
        _json({"config": CONFIG_DESC, "layers": ["sha256:abc"]}),
    ],
)
def test_manifest_with_non_object_descriptors(body: bytes) -> None:
    with pytest.raises(errors.FailedPrecondition, match="malformed"):
        parse_manifest(body, WHERE)


def test_parse_config() -> None:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": [A, B]},
    }
    parsed, diff_ids = parse_config(_json(doc), 2, WHERE)
    assert parsed == doc
    assert diff_ids == (A, B)


def test_parse_config_with_no_layers() -> None:
    assert parse_config(_json({"rootfs": {"diff_ids": []}}), 0, WHERE)[1] == ()


@pytest.mark.parametrize(("given", "layers"), [([A], 2), ([A, B, C], 2), ([], 1), ([A], 0)])
def test_parse_config_diff_ids_must_match_the_layers(given: list[str], layers: int) -> None:
    body = _json({"rootfs": {"type": "layers", "diff_ids": given}})
    with pytest.raises(errors.FailedPrecondition) as info:
        parse_config(body, layers, WHERE)
    assert str(info.value) == (
        f"{WHERE}: image config has {len(given)} diff_ids for {layers} layers"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        _json({}),
        _json({"rootfs": {}}),
        _json({"rootfs": []}),
        _json([]),
        _json({"rootfs": {"diff_ids": None}}),
    ],
)
def test_malformed_config(body: bytes) -> None:
    with pytest.raises(errors.FailedPrecondition, match=f"^{WHERE}: malformed image config"):
        parse_config(body, 1, WHERE)


# -- image sizes -------------------------------------------------------------------------------


def _content(
    target: Descriptor | None = None,
    manifest: Descriptor | None = None,
    diff_ids: tuple[str, ...] = (A, B),
) -> ImageContent:
    manifest = manifest or Descriptor(mediatypes.OCI_MANIFEST, "sha256:" + "1" * 64, 400)
    config = Descriptor(mediatypes.OCI_CONFIG, "sha256:" + "2" * 64, 1500)
    layers = tuple(
        Descriptor(LAYER_TGZ, f"sha256:{i}" + "0" * 63, size)
        for i, size in zip(range(len(diff_ids)), (10_000, 20_000, 30_000), strict=False)
    )
    return ImageContent(
        target=target or manifest,
        manifest=manifest,
        config=config,
        layers=layers,
        diff_ids=diff_ids,
        config_json={},
    )


def test_size_of_an_image_named_by_its_manifest() -> None:
    # manifest (the target) + config + layers, the manifest counted once
    assert _content().size == 400 + 1500 + 10_000 + 20_000


def test_size_of_an_image_named_by_an_index() -> None:
    index = Descriptor(mediatypes.OCI_INDEX, "sha256:" + "9" * 64, 900)
    # index + the one platform manifest + config + layers
    assert _content(target=index).size == 900 + 400 + 1500 + 10_000 + 20_000


def test_size_without_layers() -> None:
    assert _content(diff_ids=()).size == 400 + 1500


# -- ImageSpec lookups -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (f"sha256:{HEX}", ImageLookup(image_id=f"sha256:{HEX}")),
        (HEX, ImageLookup(image_id=f"sha256:{HEX}")),
        ("busybox", ImageLookup(names=("docker.io/library/busybox:latest",))),
        ("busybox:1.36", ImageLookup(names=("docker.io/library/busybox:1.36",))),
        (
            "docker.io/library/busybox:latest",
            ImageLookup(names=("docker.io/library/busybox:latest",)),
        ),
        ("quay.io/a/b:c", ImageLookup(names=("quay.io/a/b:c",))),
        (
            "localhost:5000/x",
            ImageLookup(names=("localhost:5000/x:latest",)),
        ),
        (
            f"busybox@sha256:{HEX}",
            ImageLookup(names=(f"docker.io/library/busybox@sha256:{HEX}",)),
        ),
        # tag and digest: the digest name, as containerd stores it
        (
            f"quay.io/a/b:c@sha256:{HEX}",
            ImageLookup(names=(f"quay.io/a/b@sha256:{HEX}",)),
        ),
        # hex: both a possible repository name and an id prefix
        (
            "abc123",
            ImageLookup(names=("docker.io/library/abc123:latest",), id_prefix="sha256:abc123"),
        ),
        (
            HEX[:12],
            ImageLookup(
                names=(f"docker.io/library/{HEX[:12]}:latest",), id_prefix=f"sha256:{HEX[:12]}"
            ),
        ),
        (
            "sha256:abc123",
            ImageLookup(names=("docker.io/library/sha256:abc123",), id_prefix="sha256:abc123"),
        ),
    ],
)
def test_lookup_for(spec: str, expected: ImageLookup) -> None:
    assert lookup_for(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "image is empty"),
        ("Not An Image", "'Not An Image' is neither a reference nor an image id"),
        ("BusyBox", "'BusyBox' is neither a reference nor an image id"),
        ("ABCDEF", "neither a reference nor an image id"),
        ("busybox:", "neither a reference nor an image id"),
        ("http://busybox", "neither a reference nor an image id"),
        ("sha256:", "neither a reference nor an image id"),
        ("a b@sha256:" + HEX, "neither a reference nor an image id"),
    ],
)
def test_lookup_for_garbage(spec: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        lookup_for(spec)


# -- the image user ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("1002", (1002, "")),
        ("0", (0, "")),
        ("1002:1002", (1002, "")),
        ("www-data:1004", (None, "www-data")),
        ("www-data", (None, "www-data")),
        ("nobody:nogroup", (None, "nobody")),
        ("", (None, "")),
    ],
)
def test_user_of(user: str, expected: tuple[int | None, str]) -> None:
    assert user_of({"config": {"User": user}}) == expected


@pytest.mark.parametrize(
    "config",
    [{}, {"config": None}, {"config": {}}, {"config": {"User": None}}, {"config": {"User": 5}}],
)
def test_user_of_without_a_user(config: dict[str, object]) -> None:
    assert user_of(config) == (None, "")


def test_user_of_superscript_digit_is_a_name() -> None:
    assert user_of({"config": {"User": "²"}}) == (None, "²")


# -- credentials -------------------------------------------------------------------------------


def test_credentials_from_cri_auth_config() -> None:
    assert credentials_from(api_pb2.AuthConfig()) is None
    assert credentials_from(api_pb2.AuthConfig(username="u", password="p")) == Credentials("u", "p")
    assert credentials_from(api_pb2.AuthConfig(auth="dTpw")) == Credentials("u", "p")
    assert credentials_from(api_pb2.AuthConfig(identity_token="it")) == Credentials(
        identity_token="it"
    )
    assert credentials_from(api_pb2.AuthConfig(registry_token="rt")) == Credentials(
        registry_token="rt"
    )


# -- containerd image names and events ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("docker.io/library/busybox:latest", True),
        ("docker.io/library/busybox", True),
        (f"docker.io/library/busybox@sha256:{HEX}", True),
        ("localhost:5000/x:1", True),
        (f"sha256:{HEX}", False),
        (HEX, False),
        ("", False),
        ("Not A Reference", False),
        ("import-2024-01-01", True),
    ],
)
def test_looks_like_reference(name: str, expected: bool) -> None:
    assert _looks_like_reference(name) is expected


EVENT_PREFIX = "containerd.services.images.v1."


@pytest.mark.parametrize("prefix", ["", "types.containerd.io/", "type.googleapis.com/"])
def test_event_image_name_from_real_event_bytes(prefix: str) -> None:
    name = "docker.io/library/busybox:latest"
    create = image_events.ImageCreate(name=name, labels={"a": "b"}).SerializeToString()
    update = image_events.ImageUpdate(name=name).SerializeToString()
    delete = image_events.ImageDelete(name=name).SerializeToString()
    assert _event_image_name(f"{prefix}{EVENT_PREFIX}ImageCreate", create) == name
    assert _event_image_name(f"{prefix}{EVENT_PREFIX}ImageUpdate", update) == name
    assert _event_image_name(f"{prefix}{EVENT_PREFIX}ImageDelete", delete) == name


def test_event_type_urls_match_the_generated_messages() -> None:
    for message in (image_events.ImageCreate, image_events.ImageUpdate, image_events.ImageDelete):
        full_name = message.DESCRIPTOR.full_name
        assert full_name.startswith(EVENT_PREFIX)
        assert _event_image_name(full_name, message(name="x").SerializeToString()) == "x"


def test_other_events_have_no_image_name() -> None:
    assert _event_image_name("containerd.events.ContainerCreate", b"\n\x01x") is None
    assert _event_image_name("containerd.services.images.v1.ImageList", b"") is None
    assert _event_image_name("", b"") is None


def test_event_without_a_name() -> None:
    assert _event_image_name(EVENT_PREFIX + "ImageDelete", b"") == ""
