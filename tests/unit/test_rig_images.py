"""The fixture images of tests/rig/images.py: deterministic, self-consistent, what critest needs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile

import pytest

from tests.rig.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_MEDIA_TYPES,
    MTIME,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    FixtureImage,
    build_images,
    default_busybox,
)

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not default_busybox().exists(),
    reason="needs gcc, libc6-dev and busybox-static",
)

# What critest v1.37.0 pulls, as REPOSITORY:TAG below the registry host (see images.py).
CRITEST_REFERENCES = [
    "e2e-test-images/busybox:1.29-2",
    "e2e-test-images/nginx:1.14-2",
    "e2e-test-images/httpd:2.4.39-4",
    "e2e-test-images/nonewprivs:1.3",
    "k8s-staging-cri-tools/hostnet-nginx-amd64:latest",
    "k8s-staging-cri-tools/test-image-user-uid:latest",
    "k8s-staging-cri-tools/test-image-user-username:latest",
    "k8s-staging-cri-tools/test-image-user-uid-group:latest",
    "k8s-staging-cri-tools/test-image-user-username-group:latest",
    "k8s-staging-cri-tools/test-image-predefined-group:latest",
    "k8s-staging-cri-tools/test-image-latest:latest",
    "k8s-staging-cri-tools/test-image-tag:test",
    "k8s-staging-cri-tools/test-image-tag:all",
    "k8s-staging-cri-tools/test-image-tags:1",
    "k8s-staging-cri-tools/test-image-tags:2",
    "k8s-staging-cri-tools/test-image-tags:3",
    "k8s-staging-cri-tools/test-image-1:latest",
    "k8s-staging-cri-tools/test-image-2:latest",
    "k8s-staging-cri-tools/test-image-3:latest",
    "pause:3.9",
    "pause:3.10",
    "docker/library/busybox:1",
]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[FixtureImage]:
    return build_images(tmp_path_factory.mktemp("images-a"))


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> list[FixtureImage]:
    return build_images(tmp_path_factory.mktemp("images-b"))


def by_ref(images: list[FixtureImage]) -> dict[str, FixtureImage]:
    return {f"{i.repository}:{tag}": i for i in images for tag in i.tags}


def tar_members(image: FixtureImage, layer_index: int = -1) -> dict[str, tarfile.TarInfo]:
    layer = image.manifest_for("amd64").layers[layer_index]
    raw = gzip.decompress(image.blob_path(layer.descriptor.digest).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(image: FixtureImage, name: str, layer_index: int = -1) -> bytes:
    layer = image.manifest_for("amd64").layers[layer_index]
    raw = gzip.decompress(image.blob_path(layer.descriptor.digest).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def config_of(image: FixtureImage, arch: str = "amd64") -> dict[str, object]:
    m = image.manifest_for(arch)
    cfg = json.loads(image.blob_path(m.config.digest).read_bytes())
    assert isinstance(cfg, dict)
    return cfg


def runtime_config(image: FixtureImage) -> dict[str, object]:
    cfg = config_of(image)["config"]
    assert isinstance(cfg, dict)
    return cfg


def test_builds_are_deterministic(images: list[FixtureImage], rebuilt: list[FixtureImage]) -> None:
    first = [(i.repository, i.tags, i.digest) for i in images]
    second = [(i.repository, i.tags, i.digest) for i in rebuilt]
    assert first == second
    for a, b in zip(images, rebuilt, strict=True):
        for desc in a.blobs():
            assert a.blob_path(desc.digest).read_bytes() == b.blob_path(desc.digest).read_bytes()


def test_every_critest_reference_is_built(images: list[FixtureImage]) -> None:
    refs = by_ref(images)
    missing = [r for r in CRITEST_REFERENCES if r not in refs]
    assert not missing
    # critest's -registry-prefix rewrite drops tags, so every repository also has "latest".
    repos = {i.repository for i in images}
    assert all(f"{repo}:latest" in refs for repo in repos)


def test_manifests_match_their_blobs(images: list[FixtureImage]) -> None:
    for image in images:
        assert sha256(image.data) == image.digest
        assert image.descriptor.size == len(image.data)
        for m in image.manifests:
            assert sha256(m.data) == m.descriptor.digest
            doc = json.loads(m.data)
            assert doc["schemaVersion"] == 2
            assert doc["mediaType"] == m.descriptor.media_type
            oci = m.descriptor.media_type == OCI_MANIFEST
            assert doc["config"]["mediaType"] == (OCI_CONFIG if oci else DOCKER_CONFIG)
            for d in [doc["config"], *doc["layers"]]:
                blob = image.blob_path(d["digest"]).read_bytes()
                assert len(blob) == d["size"]
                assert sha256(blob) == d["digest"]
            for d in doc["layers"]:
                assert d["mediaType"] == (OCI_LAYER if oci else DOCKER_LAYER)


def test_diff_ids_are_the_uncompressed_layer_digests(images: list[FixtureImage]) -> None:
    for image in images:
        for m in image.manifests:
            cfg = json.loads(image.blob_path(m.config.digest).read_bytes())
            diff_ids = [
                sha256(gzip.decompress(image.blob_path(layer.descriptor.digest).read_bytes()))
                for layer in m.layers
            ]
            assert cfg["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
            assert cfg["architecture"] == m.platform.architecture
            assert cfg["os"] == "linux"


def test_indexes_offer_amd64_and_another_platform(images: list[FixtureImage]) -> None:
    indexes = [i for i in images if i.is_index]
    assert {i.descriptor.media_type for i in indexes} == set(INDEX_MEDIA_TYPES)
    for image in indexes:
        doc = json.loads(image.data)
        platforms = [(e["platform"]["os"], e["platform"]["architecture"]) for e in doc["manifests"]]
        assert ("linux", "amd64") in platforms
        assert ("linux", "arm64") in platforms
        amd64 = next(e for e in doc["manifests"] if e["platform"]["architecture"] == "amd64")
        assert amd64["digest"] == image.manifest_for("amd64").descriptor.digest
        # The arm64 variant has a config of its own.
        assert config_of(image, "arm64") != config_of(image, "amd64")
    refs = by_ref(images)
    assert refs["pause:3.10"].descriptor.media_type == DOCKER_MANIFEST_LIST
    assert refs["k8s-staging-cri-tools/test-image-tag:test"].descriptor.media_type == OCI_INDEX


def test_both_manifest_flavours_are_used(images: list[FixtureImage]) -> None:
    kinds = {m.descriptor.media_type for i in images for m in i.manifests}
    assert kinds == {DOCKER_MANIFEST, OCI_MANIFEST}


def test_layers_are_normalised(images: list[FixtureImage]) -> None:
    for image in images:
        for index in range(len(image.manifest_for("amd64").layers)):
            members = tar_members(image, index)
            names = list(members)
            assert all(m.mtime == MTIME for m in members.values())
            assert all(m.uname == "" and m.gname == "" for m in members.values())
            owned = {n for n, m in members.items() if (m.uid, m.gid) != (0, 0)}
            assert owned <= {"home/default-user"}
            links = [n for n, m in members.items() if m.islnk()]
            assert names == sorted(set(names) - set(links)) + sorted(links)


def test_busybox_image(images: list[FixtureImage]) -> None:
    image = by_ref(images)["e2e-test-images/busybox:1.29-2"]
    members = tar_members(image)
    assert members["bin/busybox"].isfile()
    # Hard links, so that masking /bin/ls masks only ls.
    for applet in ("sh", "ls", "sleep", "top", "pidof", "id", "ping", "brctl", "netstat"):
        assert members[f"bin/{applet}"].islnk()
        assert members[f"bin/{applet}"].linkname == "bin/busybox"
    for helper in ("ipcs", "pgrep"):
        assert members[f"bin/{helper}"].isfile()
        assert members[f"bin/{helper}"].mode == 0o755
    assert members["tmp"].mode == 0o1777
    passwd = read_member(image, "etc/passwd").decode()
    for user in ("root:x:0:0:", "nobody:x:65534:", "www-data:x:33:"):
        assert user in passwd
    assert "nogroup:x:65534:" in read_member(image, "etc/group").decode()
    assert runtime_config(image)["Cmd"] == ["sh"]


def test_user_images(images: list[FixtureImage]) -> None:
    refs = by_ref(images)
    users = {
        "test-image-user-uid": "1002",
        "test-image-user-username": "www-data",
        "test-image-user-uid-group": "1003:1004",
        "test-image-user-username-group": "www-data:1004",
        "test-image-predefined-group": "1000",
    }
    for repo, user in users.items():
        image = refs[f"k8s-staging-cri-tools/{repo}:latest"]
        assert runtime_config(image)["User"] == user
    predefined = refs["k8s-staging-cri-tools/test-image-predefined-group:latest"]
    assert "default-user:x:1000:1000:" in read_member(predefined, "etc/passwd").decode()
    group = read_member(predefined, "etc/group").decode()
    assert "group-defined-in-image:x:50000:default-user\n" in group
    assert "default-user:x:1000:\n" in group


def test_marker_images(images: list[FixtureImage]) -> None:
    refs = by_ref(images)
    markers = {
        "test-image-latest:latest": "test-image-latest",
        "test-image-1:latest": "test-image-1",
        "test-image-2:latest": "test-image-2",
        "test-image-3:latest": "test-image-3",
        "test-image-tags:1": "same-image",
        "test-image-tag:test": "test",
        "test-image-tag:all": "all",
    }
    for ref, name in markers.items():
        assert name in tar_members(refs[f"k8s-staging-cri-tools/{ref}"])
    digests = {refs[f"k8s-staging-cri-tools/test-image-{n}:latest"].digest for n in "123"}
    assert len(digests) == 3
    tags = {refs[f"k8s-staging-cri-tools/test-image-tags:{n}"].digest for n in "123"}
    assert len(tags) == 1


def test_web_server_images(images: list[FixtureImage]) -> None:
    refs = by_ref(images)
    nginx = refs["e2e-test-images/nginx:1.14-2"]
    cfg = runtime_config(nginx)
    assert cfg["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert cfg["ExposedPorts"] == {"80/tcp": {}}
    assert "listen       80;" in read_member(nginx, "etc/nginx/conf.d/default.conf").decode()
    assert tar_members(nginx, 1)["usr/sbin/nginx"].mode == 0o755

    hostnet = refs["k8s-staging-cri-tools/hostnet-nginx-amd64:latest"]
    assert "listen       12003;" in read_member(hostnet, "etc/nginx/conf.d/default.conf").decode()
    assert runtime_config(hostnet)["ExposedPorts"] == {"12003/tcp": {}}

    httpd = refs["e2e-test-images/httpd:2.4.39-4"]
    cfg = runtime_config(httpd)
    assert cfg["Cmd"] == ["httpd-foreground"]
    assert cfg["WorkingDir"] == "/usr/local/apache2"
    assert cfg["StopSignal"] == "SIGWINCH"
    script = read_member(httpd, "usr/local/bin/httpd-foreground").decode()
    assert "exec /usr/local/apache2/bin/httpd -DFOREGROUND" in script


def test_nonewprivs_and_pause_images(images: list[FixtureImage]) -> None:
    refs = by_ref(images)
    nnp = refs["e2e-test-images/nonewprivs:1.3"]
    member = tar_members(nnp)["usr/local/bin/nnp"]
    assert member.mode == 0o4755
    assert (member.uid, member.gid) == (0, 0)
    assert runtime_config(nnp)["Entrypoint"] == ["/usr/local/bin/nnp"]

    pause = refs["pause:3.10"]
    # Distinct images (so a pinned sandbox image never shares an id with a test's pause:3.9),
    # one pause layer.
    assert refs["pause:3.9"].digest != pause.digest
    assert [m.config.digest for m in refs["pause:3.9"].manifests] != [
        m.config.digest for m in pause.manifests
    ]
    assert refs["pause:3.9"].manifest_for().layers == pause.manifest_for().layers
    assert list(tar_members(pause)) == ["pause"]
    cfg = runtime_config(pause)
    assert cfg["Entrypoint"] == ["/pause"]
    assert "Cmd" not in cfg
