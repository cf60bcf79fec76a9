"""Image references: parsing and normalisation as kubelet and containerd do it (the grammar of
distribution/reference plus docker.io/library normalisation), and image ids."""

from __future__ import annotations

import pytest

from crictl.errors import InvalidArgument
from crictl.images import reference
from crictl.images.reference import Reference, is_image_id, normalize_id, parse

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"
OTHER_HEX = "f" * 64


# (input, domain, path, tag, digest, str())
NORMALISED: list[tuple[str, str, str, str | None, str | None, str]] = [
    ("busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    (
        "library/busybox",
        "docker.io",
        "library/busybox",
        "latest",
        None,
        "docker.io/library/busybox:latest",
    ),
    (
        "docker.io/busybox",
        "docker.io",
        "library/busybox",
        "latest",
        None,
        "docker.io/library/busybox:latest",
    ),
    (
        "docker.io/library/busybox:1.36",
        "docker.io",
        "library/busybox",
        "1.36",
        None,
        "docker.io/library/busybox:1.36",
    ),
    ("index.docker.io/x", "docker.io", "library/x", "latest", None, "docker.io/library/x:latest"),
    (
        "index.docker.io/someone/x:v1",
        "docker.io",
        "someone/x",
        "v1",
        None,
        "docker.io/someone/x:v1",
    ),
    ("someone/x", "docker.io", "someone/x", "latest", None, "docker.io/someone/x:latest"),
    ("localhost/x", "localhost", "x", "latest", None, "localhost/x:latest"),
    ("localhost:5000/x:1", "localhost:5000", "x", "1", None, "localhost:5000/x:1"),
    ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000", "a/b", "c", None, "127.0.0.1:5000/a/b:c"),
    ("[::1]:5000/x", "[::1]:5000", "x", "latest", None, "[::1]:5000/x:latest"),
    ("[::1]/x:t", "[::1]", "x", "t", None, "[::1]/x:t"),
    ("quay.io/a/b", "quay.io", "a/b", "latest", None, "quay.io/a/b:latest"),
    (f"quay.io/a/b@{DIGEST}", "quay.io", "a/b", None, DIGEST, f"quay.io/a/b@{DIGEST}"),
    (f"x@{DIGEST}", "docker.io", "library/x", None, DIGEST, f"docker.io/library/x@{DIGEST}"),
    (
        f"x:1@{DIGEST}",
        "docker.io",
        "library/x",
        "1",
        DIGEST,
        f"docker.io/library/x:1@{DIGEST}",
    ),
    (
        f"localhost:5000/x:1@{DIGEST}",
        "localhost:5000",
        "x",
        "1",
        DIGEST,
        f"localhost:5000/x:1@{DIGEST}",
    ),
    (
        "gcr.io/k8s-staging-cri-tools/test-image-tag:test",
        "gcr.io",
        "k8s-staging-cri-tools/test-image-tag",
        "test",
        None,
        "gcr.io/k8s-staging-cri-tools/test-image-tag:test",
    ),
    (
        "registry.k8s.io/e2e-test-images/busybox:1.29-2",
        "registry.k8s.io",
        "e2e-test-images/busybox",
        "1.29-2",
        None,
        "registry.k8s.io/e2e-test-images/busybox:1.29-2",
    ),
    # Separators inside a path component: '.', '_', '__' and runs of '-'.
    ("a.b_c__d---e", "docker.io", "library/a.b_c__d---e", "latest", None, ""),
    # A host with an upper-case letter is a domain (docker's rule), the path stays lower case.
    ("MyHost/x", "MyHost", "x", "latest", None, "MyHost/x:latest"),
    # A tag may hold upper case, '_', '.' and '-'.
    ("x:V1.2_rc-3", "docker.io", "library/x", "V1.2_rc-3", None, "docker.io/library/x:V1.2_rc-3"),
    ("x:_", "docker.io", "library/x", "_", None, "docker.io/library/x:_"),
    # No path separator after the port-looking part: docker reads it as a tag.
    ("localhost:5000", "docker.io", "library/localhost", "5000", None, ""),
    # A bare name equal to "localhost" is a Docker Hub repository.
    ("localhost", "docker.io", "library/localhost", "latest", None, ""),
    # A digest other than sha256 is accepted by the grammar.
    (
        f"x@sha512:{HEX}{HEX}",
        "docker.io",
        "library/x",
        None,
        f"sha512:{HEX}{HEX}",
        f"docker.io/library/x@sha512:{HEX}{HEX}",
    ),
]


def _expected_str(domain: str, path: str, tag: str | None, digest: str | None) -> str:
    s = f"{domain}/{path}"
    if tag:
        s += f":{tag}"
    if digest:
        s += f"@{digest}"
    return s


@pytest.mark.parametrize(
    ("ref", "domain", "path", "tag", "digest", "text"),
    NORMALISED,
    ids=[case[0][:60] for case in NORMALISED],
)
def test_normalisation(
    ref: str, domain: str, path: str, tag: str | None, digest: str | None, text: str
) -> None:
    r = parse(ref)
    assert (r.domain, r.path, r.tag, r.digest) == (domain, path, tag, digest)
    assert r == Reference(domain, path, tag, digest)
    expected = text or _expected_str(domain, path, tag, digest)
    assert str(r) == expected
    assert r.repository == f"{domain}/{path}"


@pytest.mark.parametrize("case", NORMALISED, ids=[case[0][:60] for case in NORMALISED])
def test_str_round_trips(case: tuple[str, str, str, str | None, str | None, str]) -> None:
    """The normalised string parses to the same reference (it is a fixed point)."""
    r = parse(case[0])
    assert parse(str(r)) == r
    assert str(parse(str(r))) == str(r)


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("", "empty"),
        ("Busybox", "lowercase"),
        ("library/BusyBox", "lowercase"),
        ("quay.io/Org/x", "lowercase"),
        ("x:-bad", "invalid tag"),
        ("x:.bad", "invalid tag"),
        ("x:bad/tag", "invalid registry host 'x:bad'"),  # the part before / is a host
        ("x:" + "a" * 129, "invalid tag"),
        ("x:", "invalid tag"),
        ("x:a+b", "invalid tag"),
        ("x@sha256:" + "g" * 64, "sha256 digest must be 64 hex"),
        ("x@sha256:" + HEX.upper(), "sha256 digest must be 64 hex"),
        ("x@sha256:abc", "invalid digest"),
        ("x@sha256:" + HEX[:63], "sha256 digest must be 64 hex"),
        ("x@sha256:" + HEX + "0", "sha256 digest must be 64 hex"),
        ("x@" + HEX, "invalid digest"),
        ("x@", "invalid digest"),
        ("x@sha256:" + HEX + "@sha256:" + HEX, "invalid digest"),
        ("x@SHA256:" + HEX, "invalid digest"),
        ("busy box", "white space"),
        (" busybox", "white space"),
        ("busybox ", "white space"),
        ("busybox\n", "white space"),
        ("busybox:\tlatest", "white space"),
        ("://", "invalid registry host"),
        ("http://busybox", "invalid registry host"),
        ("https://quay.io/a/b", "invalid registry host"),
        ("busybox/", "invalid path component ''"),
        ("quay.io/a/", "invalid path component ''"),
        ("quay.io//a", "invalid path component ''"),
        ("localhost:5000/", "invalid path component ''"),
        ("/busybox", "invalid path component ''"),
        ("-x", "invalid path component"),
        ("x-", "invalid path component"),
        ("a..b", "invalid path component"),
        ("a___b", "invalid path component"),
        ("quay.io/a$b", "invalid path component"),
        ("bad_host.io:port/x", "invalid registry host"),
        ("-bad.io/x", "invalid registry host"),
        ("[zz::1]:5000/x", "invalid registry host"),
        ("[::1:5000/x", "invalid registry host"),
        (":1", "has no repository"),
        (f"@{DIGEST}", "has no repository"),
        ("quay.io/" + "a" * 248, "longer than 255"),
        ("a/" * 125 + "b", "longer than 255"),
    ],
)
def test_rejections_name_the_problem(ref: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse(ref)
    assert problem in str(info.value)
    if ref:
        assert repr(ref) in str(info.value)


def test_name_at_the_length_limit_is_accepted() -> None:
    path = "a" * (reference.MAX_NAME - len("quay.io/"))
    r = parse(f"quay.io/{path}")
    assert len(r.repository) == reference.MAX_NAME
    with pytest.raises(InvalidArgument, match="longer than 255"):
        parse(f"quay.io/{path}a")


def test_length_limit_counts_the_normalised_name() -> None:
    # 245 characters as typed, but docker.io/library/ makes it longer than 255.
    name = "a" * 245
    with pytest.raises(InvalidArgument, match="longer than 255"):
        parse(name)


def test_tag_of_128_characters_is_the_limit() -> None:
    assert parse("x:" + "a" * 128).tag == "a" * 128


def test_default_tag_can_be_left_off() -> None:
    r = parse("busybox", default_tag=False)
    assert r.tag is None
    assert r.digest is None
    assert str(r) == "docker.io/library/busybox"
    assert r.tagged_name is None
    assert r.object == "latest"
    assert parse("busybox:1", default_tag=False).tag == "1"


def test_digest_reference_gets_no_default_tag() -> None:
    r = parse(f"busybox@{DIGEST}")
    assert r.tag is None
    assert r.tagged_name is None


def test_tagged_name() -> None:
    assert parse("busybox").tagged_name == "docker.io/library/busybox:latest"
    assert parse(f"x:1@{DIGEST}").tagged_name == "docker.io/library/x:1"
    assert parse("localhost:5000/a/b:c").tagged_name == "localhost:5000/a/b:c"


def test_with_digest_drops_the_tag() -> None:
    assert parse("busybox:1.36").with_digest(DIGEST) == f"docker.io/library/busybox@{DIGEST}"
    assert (
        parse(f"quay.io/a/b:t@{DIGEST}").with_digest(f"sha256:{OTHER_HEX}")
        == f"quay.io/a/b@sha256:{OTHER_HEX}"
    )


def test_object_prefers_the_digest() -> None:
    assert parse("busybox").object == "latest"
    assert parse("busybox:1.36").object == "1.36"
    assert parse(f"busybox@{DIGEST}").object == DIGEST
    assert parse(f"busybox:1.36@{DIGEST}").object == DIGEST
    assert Reference("docker.io", "library/x").object == "latest"


def test_reference_is_frozen_and_hashable() -> None:
    r = parse("busybox")
    with pytest.raises(AttributeError):
        r.tag = "x"  # type: ignore[misc]
    assert {r, parse("docker.io/library/busybox:latest")} == {r}


def test_registry_1_docker_io_is_docker_hub() -> None:
    assert parse("registry-1.docker.io/x").repository == "docker.io/library/x"


def test_non_ascii_tag_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="invalid tag"):
        parse("busybox:tåg")


def test_bare_64_hex_is_not_a_repository_name() -> None:
    with pytest.raises(InvalidArgument):
        parse(HEX)


# -- image ids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (DIGEST, True),
        (HEX, True),
        (f"sha256:{HEX[:12]}", False),
        (HEX[:12], False),
        (HEX + "0", False),
        (f"sha256:{HEX}0", False),
        (HEX.upper(), False),
        (f"sha256:{HEX.upper()}", False),
        (f"sha512:{HEX}", False),
        ("busybox", False),
        ("", False),
        (f" {HEX}", False),
        (f"{HEX}\n", False),
    ],
)
def test_is_image_id(value: str, expected: bool) -> None:
    assert is_image_id(value) is expected


def test_is_image_id_refuses_a_trailing_newline_after_sha256() -> None:
    assert not is_image_id(f"{DIGEST}\n")


def test_normalize_id() -> None:
    assert normalize_id(HEX) == DIGEST
    assert normalize_id(DIGEST) == DIGEST
    assert normalize_id("abc") == "sha256:abc"
