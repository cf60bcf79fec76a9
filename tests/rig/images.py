"""Build critest's fixture images offline and push them to a registry (Registry HTTP API v2).

Every image is made here from Debian's busybox (busybox-static unless `BUSYBOX_CANDIDATES`
finds another) and the small static C programs under `pause/` and `fixtures/`; nothing is
pulled from the internet. Builds are deterministic (sorted tar entries, fixed mtimes, uid/gid 0,
gzip without name or timestamp), so a rebuild yields the same digests.

The repositories keep critest v1.37.0's paths without the registry host (`pkg/validate/consts.go`,
`multi_container_linux.go`, `security_context_linux.go`, `pkg/framework/util.go`,
`pkg/benchmark/image.go`), so the registry can stand in as a *mirror* of registry.k8s.io, gcr.io,
k8s.gcr.io and public.ecr.aws. Each repository also gets a `latest` tag, because critest's
`-registry-prefix` rewrite drops the tag (`framework.PrepareImageName`).

CLI: `python -m tests.rig.images --registry 127.0.0.1:PORT [--workdir D]`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parents[2]
PAUSE_SOURCE = REPO_ROOT / "pause" / "pause.c"
FIXTURES_DIR = REPO_ROOT / "fixtures"
DEFAULT_WORKDIR = REPO_ROOT / ".cache" / "rig-images"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MANIFEST_MEDIA_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)
INDEX_MEDIA_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

CREATED = "2024-01-01T00:00:00Z"
MTIME = 1704067200  # CREATED as a Unix time: every tar entry carries it
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HTTPD_PATH = "/usr/local/apache2/bin:" + DEFAULT_PATH
CFLAGS = ("-static", "-Os", "-Wall", "-Wextra", "-Werror")

Json = dict[str, object]
Format = Literal["docker", "oci"]


class RigError(Exception):
    """The rig cannot build or push the images (a missing tool, a registry error)."""


# --------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob or a child manifest."""

    media_type: str
    digest: str
    size: int

    def as_json(self) -> Json:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Platform:
    architecture: str
    os: str = "linux"
    variant: str | None = None

    def as_json(self) -> Json:
        out: Json = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor  # the gzip'ed tar, as stored in the registry
    diff_id: str  # sha256 of the uncompressed tar


@dataclass(frozen=True)
class ImageManifest:
    """One platform's image: a manifest, its config and its layers."""

    descriptor: Descriptor
    data: bytes
    config: Descriptor
    layers: tuple[Layer, ...]
    platform: Platform


@dataclass(frozen=True)
class FixtureImage:
    """A repository, the tags to push, and the manifest (or index) they point at."""

    repository: str
    tags: tuple[str, ...]
    descriptor: Descriptor  # the top-level manifest or index
    data: bytes
    manifests: tuple[ImageManifest, ...]  # one per platform (one for a plain image)
    blob_dir: Path
    description: str

    @property
    def is_index(self) -> bool:
        return self.descriptor.media_type in INDEX_MEDIA_TYPES

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    def references(self, registry: str) -> list[str]:
        return [f"{registry}/{self.repository}:{tag}" for tag in self.tags]

    def blobs(self) -> list[Descriptor]:
        """Every config and layer blob the manifests reference, each once, in push order."""
        seen: dict[str, Descriptor] = {}
        for m in self.manifests:
            for d in (*(layer.descriptor for layer in m.layers), m.config):
                seen.setdefault(d.digest, d)
        return list(seen.values())

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.blob_dir / algo / hexpart

    def manifest_for(self, architecture: str = "amd64") -> ImageManifest:
        for m in self.manifests:
            if m.platform.architecture == architecture and m.platform.os == "linux":
                return m
        raise RigError(f"{self.repository}: no linux/{architecture} manifest")


# --------------------------------------------------------------------------------------------
# Filesystem trees and layers


@dataclass(frozen=True)
class Entry:
    """One tar entry. Paths are relative to the image root, without a leading slash."""

    path: str
    kind: Literal["file", "dir", "symlink", "hardlink"] = "file"
    mode: int = 0o644
    data: bytes = b""
    target: str = ""
    uid: int = 0
    gid: int = 0


def file(path: str, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    raw = data.encode() if isinstance(data, str) else data
    return Entry(path, "file", mode, raw, uid=uid, gid=gid)


def directory(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, "dir", mode, uid=uid, gid=gid)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, "symlink", 0o777, target=target)


def hardlink(path: str, target: str) -> Entry:
    return Entry(path, "hardlink", 0o755, target=target)


def _with_parents(entries: Iterable[Entry]) -> list[Entry]:
    by_path: dict[str, Entry] = {}
    for e in entries:
        path = e.path.strip("/")
        if not path:
            continue
        target = e.target.lstrip("/") if e.kind == "hardlink" else e.target
        by_path[path] = replace(e, path=path, target=target)
    for path in list(by_path):
        parent = PurePosixPath(path).parent
        while str(parent) not in (".", ""):
            by_path.setdefault(str(parent), directory(str(parent)))
            parent = parent.parent
    # Hard links after everything else, so each one follows its target; otherwise by path.
    return sorted(by_path.values(), key=lambda e: (e.kind == "hardlink", e.path))


def tar_bytes(entries: Iterable[Entry]) -> bytes:
    """A deterministic tar of the entries (parents added, sorted, fixed mtime, no names)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in _with_parents(entries):
            info = tarfile.TarInfo(e.path)
            info.mtime = MTIME
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.uname = info.gname = ""
            if e.kind == "file":
                info.type = tarfile.REGTYPE
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
                continue
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif e.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e.target
            else:
                info.type = tarfile.LNKTYPE
                info.linkname = e.target
            tar.addfile(info)
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _private_tmp(path: Path) -> Path:
    """A temp name beside PATH, private to this process (builds may run side by side)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


class BlobStore:
    """Content-addressed blobs under DIR/sha256/<hex> (the OCI image layout's blobs/ folder)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        return self.root / algo / hexpart

    def put(self, data: bytes, media_type: str) -> Descriptor:
        digest = _sha256(data)
        path = self.path(digest)
        if not path.exists() or path.stat().st_size != len(data):
            tmp = _private_tmp(path)
            tmp.write_bytes(data)
            tmp.chmod(0o644)
            tmp.replace(path)
        return Descriptor(media_type, digest, len(data))

    def layer(self, entries: Iterable[Entry], fmt: Format) -> Layer:
        raw = tar_bytes(entries)
        compressed = gzip.compress(raw, compresslevel=9, mtime=0)
        return Layer(
            self.put(compressed, OCI_LAYER if fmt == "oci" else DOCKER_LAYER), _sha256(raw)
        )


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (`config` in the JSON)."""

    cmd: tuple[str, ...] | None = ("sh",)
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = (f"PATH={DEFAULT_PATH}",)
    user: str = ""
    working_dir: str = ""
    exposed_ports: tuple[str, ...] = ()
    stop_signal: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def as_json(self) -> Json:
        out: Json = {"Env": list(self.env)}
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.user:
            out["User"] = self.user
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.labels:
            out["Labels"] = dict(self.labels)
        return out


def make_manifest(
    store: BlobStore,
    layers: Sequence[Layer],
    config: ImageConfig,
    fmt: Format,
    platform: Platform,
    history: Sequence[str],
) -> ImageManifest:
    """Write the config and the manifest of one platform's image into the store."""
    if fmt == "oci" and any(layer.descriptor.media_type != OCI_LAYER for layer in layers):
        layers = [
            Layer(Descriptor(OCI_LAYER, la.descriptor.digest, la.descriptor.size), la.diff_id)
            for la in layers
        ]
    if fmt == "docker" and any(layer.descriptor.media_type != DOCKER_LAYER for layer in layers):
        layers = [
            Layer(Descriptor(DOCKER_LAYER, la.descriptor.digest, la.descriptor.size), la.diff_id)
            for la in layers
        ]
    cfg: Json = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": CREATED,
        "config": config.as_json(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": CREATED, "created_by": h} for h in history],
    }
    if platform.variant:
        cfg["variant"] = platform.variant
    config_desc = store.put(_dumps(cfg), OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG)
    media_type = OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST
    doc: Json = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config_desc.as_json(),
        "layers": [layer.descriptor.as_json() for layer in layers],
    }
    data = _dumps(doc)
    return ImageManifest(store.put(data, media_type), data, config_desc, tuple(layers), platform)


def make_index(
    store: BlobStore, manifests: Sequence[ImageManifest], fmt: Format
) -> tuple[Descriptor, bytes]:
    media_type = OCI_INDEX if fmt == "oci" else DOCKER_MANIFEST_LIST
    doc: Json = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {**m.descriptor.as_json(), "platform": m.platform.as_json()} for m in manifests
        ],
    }
    data = _dumps(doc)
    return store.put(data, media_type), data


# --------------------------------------------------------------------------------------------
# Compiling the C helpers


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RigError(f"{name} not found: install it (Debian: gcc, binutils, libc6-dev)")
    return path


def compile_static(source: Path, out_dir: Path, name: str | None = None, cc: str = "gcc") -> Path:
    """Compile SOURCE into a static, stripped binary under OUT_DIR (reused if up to date)."""
    src = source.read_bytes()
    key = hashlib.sha256(src + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name or source.stem}-{key}"
    if out.exists():
        return out
    tmp = _private_tmp(out)
    cmd = [_tool(cc), *CFLAGS, "-o", str(tmp), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        hint = ""
        if "cannot find -lc" in proc.stderr:
            hint = " (the static C library is missing: install libc6-dev)"
        raise RigError(f"compiling {source} failed{hint}:\n{proc.stderr}")
    subprocess.run([_tool("strip"), str(tmp)], check=True)
    tmp.chmod(0o755)
    tmp.replace(out)
    return out


# --------------------------------------------------------------------------------------------
# The image contents

PASSWD_BASE = (
    "root:x:0:0:root:/root:/bin/sh",
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false",
    "bin:x:2:2:bin:/bin:/bin/false",
    "sys:x:3:3:sys:/dev:/bin/false",
    "sync:x:4:100:sync:/bin:/bin/sync",
    "mail:x:8:8:mail:/var/spool/mail:/bin/false",
    "www-data:x:33:33:www-data:/var/www:/bin/false",
    "operator:x:37:37:Operator:/var:/bin/false",
    "nobody:x:65534:65534:nobody:/home:/bin/false",
)
GROUP_BASE = (
    "root:x:0:",
    "daemon:x:1:",
    "bin:x:2:",
    "sys:x:3:",
    "adm:x:4:",
    "tty:x:5:",
    "disk:x:6:",
    "lp:x:7:",
    "mail:x:8:",
    "kmem:x:9:",
    "wheel:x:10:",
    "cdrom:x:11:",
    "dialout:x:18:",
    "floppy:x:19:",
    "video:x:28:",
    "audio:x:29:",
    "tape:x:32:",
    "www-data:x:33:",
    "operator:x:37:",
    "staff:x:50:",
    "users:x:100:",
    "nogroup:x:65534:",
)


def user_files(extra_passwd: Sequence[str] = (), extra_group: Sequence[str] = ()) -> list[Entry]:
    def text(lines: Sequence[str]) -> str:
        return "".join(line + "\n" for line in lines)

    return [
        file("etc/passwd", text([*PASSWD_BASE, *extra_passwd])),
        file("etc/group", text([*GROUP_BASE, *extra_group])),
    ]


@dataclass(frozen=True)
class Toolchain:
    """The binaries that go into the images."""

    busybox: Path
    applets: tuple[str, ...]
    helpers: Mapping[str, Path]  # name -> compiled static binary (ipcs, pgrep, nnp, websrv, pause)
    libraries: tuple[str, ...] = ()  # absolute paths of a dynamic busybox's shared libraries


# Debian's busybox-static is built with FEATURE_PREFER_APPLETS: its sh runs applets without
# exec'ing /bin/<applet>, so critest's MaskedPaths test (mask /bin/ls, expect
# "/bin/sh: ls: Permission denied") cannot pass with it. Debian's dynamic `busybox` package is
# built without it; it cannot be installed beside busybox-static, but can be unpacked with
# `apt-get download busybox && dpkg-deb -x busybox_*.deb .cache/busybox`. The first existing
# candidate wins; $RIG_BUSYBOX overrides.
BUSYBOX_CANDIDATES = (REPO_ROOT / ".cache" / "busybox" / "bin" / "busybox", Path("/bin/busybox"))


def default_busybox() -> Path:
    explicit = os.environ.get("RIG_BUSYBOX")
    if explicit:
        return Path(explicit)
    return next((p for p in BUSYBOX_CANDIDATES if p.exists()), BUSYBOX_CANDIDATES[-1])


def shared_libraries(binary: Path) -> tuple[str, ...]:
    """Absolute paths of the libraries and ELF interpreter a binary loads; () if static."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # "not a dynamic executable"
        return ()
    libs: set[str] = set()
    for line in proc.stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                libs.add(word)
    return tuple(sorted(libs))


def prepare_toolchain(workdir: Path, busybox: Path | None = None, cc: str = "gcc") -> Toolchain:
    bb = busybox or default_busybox()
    if not bb.exists():
        raise RigError(f"{bb} not found: install Debian's busybox-static")
    listing = subprocess.run([str(bb), "--list"], capture_output=True, text=True, check=True)
    applets = tuple(sorted({a for a in listing.stdout.split() if a and "/" not in a}))
    out = workdir / "bin"
    helpers = {
        src.stem: compile_static(src, out, cc=cc) for src in sorted(FIXTURES_DIR.glob("*.c"))
    }
    helpers["pause"] = compile_static(PAUSE_SOURCE, out, cc=cc)
    return Toolchain(bb, applets, helpers, shared_libraries(bb))


def busybox_tree(tc: Toolchain) -> list[Entry]:
    """The base of every busybox image: busybox, every applet as a hard link, ipcs and pgrep
    (and the shared libraries of a dynamic busybox).

    Applets are hard links, not symlinks, so that masking one path (critest masks /bin/ls) masks
    only that name.
    """
    entries: list[Entry] = [file("bin/busybox", tc.busybox.read_bytes(), 0o755)]
    entries += [file(lib.lstrip("/"), Path(lib).read_bytes(), 0o755) for lib in tc.libraries]
    entries += [hardlink(f"bin/{a}", "bin/busybox") for a in tc.applets if a != "busybox"]
    for name in ("ipcs", "pgrep"):
        if name not in tc.applets:
            entries.append(file(f"bin/{name}", tc.helpers[name].read_bytes(), 0o755))
    entries += [
        directory("dev"),
        directory("proc", 0o555),
        directory("sys", 0o555),
        directory("etc"),
        directory("home"),
        directory("root", 0o700),
        directory("tmp", 0o1777),
        directory("usr/bin"),
        directory("usr/sbin"),
        directory("usr/local/bin"),
        directory("var/run"),
        directory("var/log"),
        directory("var/spool/mail"),
        directory("var/tmp", 0o1777),
        directory("var/www"),
        file("etc/hostname", ""),
        file("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
        file("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"),
        file(
            "etc/os-release",
            'NAME="crictld test image"\nID=busybox\n'
            'PRETTY_NAME="crictld fixture (Debian busybox)"\n',
        ),
        *user_files(),
    ]
    return entries


NGINX_CONF = """\
# Read by the nginx stand-in (fixtures/websrv.c): it honours "listen", "root" and "include".
pid /var/run/nginx.pid;
events { worker_connections 1024; }
http {
    include /etc/nginx/conf.d/*.conf;
}
"""


def nginx_site(port: int) -> str:
    return f"""\
server {{
    listen       {port};
    server_name  localhost;
    location / {{
        root   /usr/share/nginx/html;
        index  index.html index.htm;
    }}
}}
"""


NGINX_INDEX = """\
<!DOCTYPE html>
<html>
<head><title>Welcome to nginx!</title></head>
<body><h1>Welcome to nginx!</h1><p>crictld test fixture.</p></body>
</html>
"""

HTTPD_CONF = """\
# Read by the httpd stand-in (fixtures/websrv.c): it honours "Listen" and "DocumentRoot".
ServerRoot "/usr/local/apache2"
Listen 80
DocumentRoot "/usr/local/apache2/htdocs"
"""

HTTPD_FOREGROUND = """\
#!/bin/sh
set -e
# Apache gets grumpy about PID files pre-existing
rm -f /usr/local/apache2/logs/httpd.pid
# an absolute path: busybox sh would run its own httpd applet for a bare "httpd"
exec /usr/local/apache2/bin/httpd -DFOREGROUND "$@"
"""


def nginx_tree(tc: Toolchain) -> list[Entry]:
    return [
        file("usr/sbin/nginx", tc.helpers["websrv"].read_bytes(), 0o755),
        file("etc/nginx/nginx.conf", NGINX_CONF),
        file("usr/share/nginx/html/index.html", NGINX_INDEX),
        file("usr/share/nginx/html/50x.html", "<html><body>error</body></html>\n"),
        directory("var/log/nginx"),
        directory("var/cache/nginx"),
        *user_files(
            ["nginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin"], ["nginx:x:101:nginx"]
        ),
    ]


def httpd_tree(tc: Toolchain) -> list[Entry]:
    return [
        file("usr/local/apache2/bin/httpd", tc.helpers["websrv"].read_bytes(), 0o755),
        file("usr/local/bin/httpd-foreground", HTTPD_FOREGROUND, 0o755),
        file("usr/local/apache2/conf/httpd.conf", HTTPD_CONF),
        file(
            "usr/local/apache2/htdocs/index.html", "<html><body><h1>It works!</h1></body></html>\n"
        ),
        directory("usr/local/apache2/logs"),
    ]


def placeholder_tree(what: str, arch: str) -> list[Entry]:
    """The layer of a foreign-platform variant: no usable binaries, so pulling it by mistake
    shows up at once."""
    return [
        file(
            "README",
            f"{what} for linux/{arch}: a placeholder the crictld rig does not "
            "build; a puller on amd64 must not select it.\n",
        )
    ]


# --------------------------------------------------------------------------------------------
# The image set


@dataclass(frozen=True)
class _Spec:
    repository: str
    tags: tuple[str, ...]
    description: str
    layers: tuple[Layer, ...]
    config: ImageConfig
    fmt: Format
    history: tuple[str, ...]
    index: Format | None = None  # also publish as an index with a linux/arm64 placeholder


# Where tests/integration/test_hostile_images.py writes the host files that the hostile images'
# links name (a user "probe" with uid 4242, a group "probe" with gid 4343).
HOSTILE_DIR = "/tmp/crictld-hostile"


def hostile_specs(
    base: Layer, base_hist: str, layer: Callable[[Iterable[Entry]], Layer]
) -> list[_Spec]:
    """Images whose user database points outside the image, or is hidden by a whiteout: a
    runtime must resolve /etc/passwd and /etc/group inside the image's root."""
    probe = "probe:x:4242:4242::/:/bin/sh"

    def spec(name: str, what: str, entries: list[Entry], user: str, *more: Layer) -> _Spec:
        return _Spec(
            f"crictld-test/{name}",
            ("1", "latest"),
            f"busybox, {what}, USER {user}",
            (base, *more, layer(entries)),
            ImageConfig(cmd=("sleep", "3600"), user=user),
            "docker",
            (base_hist, *(["add probe:x:4242"] if more else []), what),
        )

    probe_layer = layer(user_files([probe], ["probe:x:4343:probe"]))
    # Enough `..` to reach the host's / from any snapshot directory, were the link followed there.
    climb = "../" * 24
    return [
        spec(
            "hostile-passwd",
            f"/etc/passwd -> {HOSTILE_DIR}/passwd (a host file)",
            [symlink("etc/passwd", f"{HOSTILE_DIR}/passwd")],
            "probe",
        ),
        spec(
            "hostile-group",
            f"/etc/group -> {HOSTILE_DIR}/group (a host file)",
            [symlink("etc/group", f"{HOSTILE_DIR}/group")],
            "0:probe",
        ),
        spec(
            "hostile-dotdot",
            f"/etc/passwd and /etc/group -> ../../(24 times){HOSTILE_DIR}/...",
            [
                symlink("etc/passwd", f"{climb}{HOSTILE_DIR.lstrip('/')}/passwd"),
                symlink("etc/group", f"{climb}{HOSTILE_DIR.lstrip('/')}/group"),
            ],
            "probe",
        ),
        spec(
            "linked-passwd",
            f"/etc/passwd -> {HOSTILE_DIR}/passwd, which the image has (probe is uid 2424)",
            [
                symlink("etc/passwd", f"{HOSTILE_DIR}/passwd"),
                file(
                    f"{HOSTILE_DIR.lstrip('/')}/passwd",
                    "root:x:0:0:root:/root:/bin/sh\nprobe:x:2424:2525::/:/bin/sh\n",
                ),
            ],
            "probe",
        ),
        spec(
            "hidden-passwd",
            "a layer adding probe (uid 4242) to /etc/passwd, then a whiteout of /etc/passwd",
            [file("etc/.wh.passwd", "")],
            "probe",
            probe_layer,
        ),
        spec(
            "opaque-etc",
            "a layer adding probe (uid 4242) to /etc/passwd, then /etc made opaque",
            [file("etc/.wh..wh..opq", ""), file("etc/group", "root:x:0:\n")],
            "probe",
            probe_layer,
        ),
    ]


def build_images(
    workdir: Path, *, busybox: Path | None = None, cc: str = "gcc"
) -> list[FixtureImage]:
    """Build every fixture image into WORKDIR (blobs under WORKDIR/blobs) and return them."""
    workdir.mkdir(parents=True, exist_ok=True)
    tc = prepare_toolchain(workdir, busybox, cc)
    store = BlobStore(workdir / "blobs")

    def layer(entries: Iterable[Entry], fmt: Format = "docker") -> Layer:
        return store.layer(entries, fmt)

    base = layer(busybox_tree(tc))
    base_hist = "busybox (Debian) with every applet hard-linked in /bin; ipcs, pgrep"
    nginx = layer(nginx_tree(tc), "oci")
    busybox_cfg = ImageConfig()

    specs: list[_Spec] = [
        _Spec(
            "e2e-test-images/busybox",
            ("1.29-2", "latest"),
            "busybox with every applet, ipcs and pgrep",
            (base,),
            busybox_cfg,
            "docker",
            (base_hist,),
        ),
        _Spec(
            "docker/library/busybox",
            ("1", "1-glibc", "1-musl", "1-uclibc", "1.35.0-glibc", "latest"),
            "busybox for critest's image benchmarks",
            (base,),
            busybox_cfg,
            "docker",
            (base_hist,),
        ),
    ]

    nginx_cfg = ImageConfig(
        cmd=("nginx", "-g", "daemon off;"),
        env=(f"PATH={DEFAULT_PATH}", "NGINX_VERSION=1.14.2"),
        exposed_ports=("80/tcp",),
        stop_signal="SIGTERM",
    )
    specs.append(
        _Spec(
            "e2e-test-images/nginx",
            ("1.14-2", "latest"),
            "nginx stand-in: HTTP 200 on :80, /var/run/nginx.pid, 'nginx: master process' as PID 1",
            (base, nginx, layer([file("etc/nginx/conf.d/default.conf", nginx_site(80))], "oci")),
            nginx_cfg,
            "oci",
            (base_hist, "nginx stand-in (fixtures/websrv.c)", "listen 80"),
        )
    )
    specs.append(
        _Spec(
            "k8s-staging-cri-tools/hostnet-nginx-amd64",
            ("latest",),
            "nginx stand-in listening on :12003 (for host-network pods)",
            (base, nginx, layer([file("etc/nginx/conf.d/default.conf", nginx_site(12003))], "oci")),
            ImageConfig(
                cmd=("nginx", "-g", "daemon off;"),
                env=(f"PATH={DEFAULT_PATH}", "NGINX_VERSION=1.25.0"),
                exposed_ports=("12003/tcp",),
                stop_signal="SIGQUIT",
            ),
            "oci",
            (base_hist, "nginx stand-in (fixtures/websrv.c)", "listen 12003"),
        )
    )
    specs.append(
        _Spec(
            "e2e-test-images/httpd",
            ("2.4.39-4", "latest"),
            "httpd stand-in: HTTP 200 on :80, logs \"Command line: 'httpd -D FOREGROUND'\"",
            (base, layer(httpd_tree(tc), "oci")),
            ImageConfig(
                cmd=("httpd-foreground",),
                env=(
                    f"PATH={HTTPD_PATH}",
                    "HTTPD_PREFIX=/usr/local/apache2",
                    "HTTPD_VERSION=2.4.39",
                ),
                working_dir="/usr/local/apache2",
                exposed_ports=("80/tcp",),
                stop_signal="SIGWINCH",
            ),
            "oci",
            (base_hist, "httpd stand-in (fixtures/websrv.c) and httpd-foreground"),
        )
    )
    specs.append(
        _Spec(
            "e2e-test-images/nonewprivs",
            ("1.3", "latest"),
            "setuid-root /usr/local/bin/nnp printing 'Effective uid: N'",
            (base, layer([file("usr/local/bin/nnp", tc.helpers["nnp"].read_bytes(), 0o4755)])),
            ImageConfig(cmd=None, entrypoint=("/usr/local/bin/nnp",)),
            "docker",
            (base_hist, "nnp (fixtures/nnp.c), setuid root"),
        )
    )

    for repo, user in (
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
    ):
        specs.append(
            _Spec(
                f"k8s-staging-cri-tools/{repo}",
                ("latest",),
                f"busybox, USER {user}",
                (base,),
                ImageConfig(user=user),
                "docker",
                (base_hist,),
            )
        )
    specs.append(
        _Spec(
            "k8s-staging-cri-tools/test-image-predefined-group",
            ("latest",),
            "busybox, USER 1000 (default-user), a member of group 50000",
            (
                base,
                layer(
                    [
                        *user_files(
                            ["default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh"],
                            ["default-user:x:1000:", "group-defined-in-image:x:50000:default-user"],
                        ),
                        directory("home/default-user", 0o755, 1000, 1000),
                    ]
                ),
            ),
            ImageConfig(user="1000"),
            "docker",
            (base_hist, "adduser -u 1000 default-user; addgroup -g 50000 group-defined-in-image"),
        )
    )

    def marker(
        repo: str, tags: tuple[str, ...], name: str, fmt: Format, index: Format | None = None
    ) -> _Spec:
        return _Spec(
            f"k8s-staging-cri-tools/{repo}",
            tags,
            f"busybox plus the file /{name}",
            (base, layer([file(name, "")], fmt)),
            busybox_cfg,
            fmt,
            (base_hist, f"ADD {name} {name}"),
            index,
        )

    specs += [
        marker("test-image-latest", ("latest",), "test-image-latest", "docker"),
        marker("test-image-1", ("latest",), "test-image-1", "docker"),
        marker("test-image-2", ("latest",), "test-image-2", "oci"),
        marker("test-image-3", ("latest",), "test-image-3", "docker"),
        marker("test-image-tags", ("1", "2", "3", "latest"), "same-image", "oci"),
        marker("test-image-tag", ("test", "latest"), "test", "oci", index="oci"),
        marker("test-image-tag", ("all",), "all", "oci", index="oci"),
    ]

    specs += hostile_specs(base, base_hist, layer)

    pause_layer = layer([file("pause", tc.helpers["pause"].read_bytes(), 0o755)])
    # One image per version (same binary, a label telling them apart), as upstream: a pinned
    # sandbox image must not share its id with the pause:3.9 that critest pulls and removes.
    for tags in (("3.10", "latest"), ("3.9",), ("3.6",)):
        specs.append(
            _Spec(
                "pause",
                tags,
                f"the sandbox pause binary (pause/pause.c), version {tags[0]}",
                (pause_layer,),
                ImageConfig(
                    cmd=None,
                    entrypoint=("/pause",),
                    user="65535:65535",
                    working_dir="/",
                    labels={"io.crictld.fixture.pause-version": tags[0]},
                ),
                "docker",
                ("pause (pause/pause.c)",),
                index="docker",
            )
        )

    images: list[FixtureImage] = []
    for spec in specs:
        amd64 = make_manifest(
            store, spec.layers, spec.config, spec.fmt, Platform("amd64"), spec.history
        )
        if spec.index is None:
            images.append(
                FixtureImage(
                    spec.repository,
                    spec.tags,
                    amd64.descriptor,
                    amd64.data,
                    (amd64,),
                    store.root,
                    spec.description,
                )
            )
            continue
        arm64 = make_manifest(
            store,
            [layer(placeholder_tree(spec.repository, "arm64"), spec.fmt)],
            ImageConfig(cmd=None, entrypoint=("/README",)),
            spec.fmt,
            Platform("arm64", variant="v8"),
            ("placeholder",),
        )
        # The foreign platform comes first: a puller that takes the first entry gets it wrong.
        desc, data = make_index(store, [arm64, amd64], spec.index)
        images.append(
            FixtureImage(
                spec.repository,
                spec.tags,
                desc,
                data,
                (arm64, amd64),
                store.root,
                spec.description + " (multi-platform index)",
            )
        )
    return images


# --------------------------------------------------------------------------------------------
# Registry HTTP API v2 client


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


def request(
    registry: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Response:
    """One HTTP request to the registry (plain HTTP, no auth); PATH includes any query."""
    host, _, port = registry.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Length", str(len(body)))
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def _check(resp: Response, expected: Iterable[int], what: str) -> Response:
    if resp.status not in set(expected):
        raise RigError(f"{what}: HTTP {resp.status}: {resp.body[:500]!r}")
    return resp


def push_blob(registry: str, repository: str, desc: Descriptor, data: bytes) -> bool:
    """Upload a blob unless the repository has it; True when it was uploaded."""
    blob_url = f"/v2/{repository}/blobs/{desc.digest}"
    if request(registry, "HEAD", blob_url).status == 200:
        return False
    resp = _check(
        request(registry, "POST", f"/v2/{repository}/blobs/uploads/", b""),
        (202,),
        f"POST upload {repository}",
    )
    location = resp.headers.get("location")
    if not location:
        raise RigError(f"POST upload {repository}: no Location header")
    parts = urllib.parse.urlsplit(location)
    query = urllib.parse.urlencode({"digest": desc.digest})
    target = parts.path + "?" + (f"{parts.query}&{query}" if parts.query else query)
    _check(
        request(registry, "PUT", target, data, {"Content-Type": "application/octet-stream"}),
        (201,),
        f"PUT blob {repository}@{desc.digest}",
    )
    return True


def push_manifest(
    registry: str, repository: str, reference: str, media_type: str, data: bytes
) -> str:
    resp = _check(
        request(
            registry,
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            data,
            {"Content-Type": media_type},
        ),
        (201,),
        f"PUT manifest {repository}:{reference}",
    )
    digest = resp.headers.get("docker-content-digest", "")
    if digest and digest != _sha256(data):
        raise RigError(f"{repository}:{reference}: registry says {digest}, we sent {_sha256(data)}")
    return _sha256(data)


def push_images(registry: str, images: Sequence[FixtureImage]) -> dict[str, str]:
    """Push every image (blobs, platform manifests, then each tag) to REGISTRY ("host:port").

    Returns {reference: manifest digest}, references being "REGISTRY/repository:tag".
    """
    pushed: dict[str, str] = {}
    for image in images:
        for desc in image.blobs():
            push_blob(registry, image.repository, desc, image.blob_path(desc.digest).read_bytes())
        if image.is_index:
            for m in image.manifests:
                push_manifest(
                    registry, image.repository, m.descriptor.digest, m.descriptor.media_type, m.data
                )
        for tag in image.tags:
            digest = push_manifest(
                registry, image.repository, tag, image.descriptor.media_type, image.data
            )
            pushed[f"{registry}/{image.repository}:{tag}"] = digest
    return pushed


def push_unique_image(registry: str, workdir: Path, repository: str = "unique") -> str:
    """Build and push a one-layer image whose layer holds a random file, so no blob of it is in
    any containerd yet: pulling it transfers bytes even where every fixture image is already
    stored. Returns its reference, "REGISTRY/repository:tag"."""
    store = BlobStore(workdir)
    token = secrets.token_hex(8)
    layer = store.layer([file(token, token)], "oci")
    manifest = make_manifest(
        store, [layer], ImageConfig(), "oci", Platform("amd64"), [f"a file named {token}"]
    )
    for desc in (layer.descriptor, manifest.config):
        push_blob(registry, repository, desc, store.path(desc.digest).read_bytes())
    push_manifest(registry, repository, token, manifest.descriptor.media_type, manifest.data)
    return f"{registry}/{repository}:{token}"


def get_manifest(
    registry: str, repository: str, reference: str, accept: Sequence[str] = MANIFEST_MEDIA_TYPES
) -> Response:
    return _check(
        request(
            registry,
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join(accept)},
        ),
        (200,),
        f"GET manifest {repository}:{reference}",
    )


def get_blob(registry: str, repository: str, digest: str) -> bytes:
    return _check(
        request(registry, "GET", f"/v2/{repository}/blobs/{digest}"),
        (200,),
        f"GET blob {repository}@{digest}",
    ).body


# --------------------------------------------------------------------------------------------
# Unpacking (for tests that run an image's programs without a container runtime)


def unpack_rootfs(image: FixtureImage, dest: Path, architecture: str = "amd64") -> Path:
    """Apply the image's layers for ARCHITECTURE in order under DEST (OCI whiteouts honoured).

    Ownership and setuid bits are kept when run as root.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for layer in image.manifest_for(architecture).layers:
        raw = gzip.decompress(image.blob_path(layer.descriptor.digest).read_bytes())
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            members = []
            for m in tar.getmembers():
                p = PurePosixPath(m.name)
                if p.name == ".wh..wh..opq":
                    target = dest / p.parent
                    for child in target.iterdir() if target.is_dir() else ():
                        _remove(child)
                elif p.name.startswith(".wh."):
                    _remove(dest / p.parent / p.name[len(".wh.") :])
                else:
                    members.append(m)
            tar.extractall(dest, members=members, filter="fully_trusted")
    return dest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.rig.images",
        description="Build critest's fixture images offline and push them to a registry.",
    )
    parser.add_argument("--registry", help="HOST:PORT of the registry (plain HTTP)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"where blobs and compiled helpers go (default {DEFAULT_WORKDIR})",
    )
    parser.add_argument(
        "--busybox",
        type=Path,
        default=None,
        help="the busybox binary to use (default $RIG_BUSYBOX or /bin/busybox)",
    )
    args = parser.parse_args(argv)
    try:
        images = build_images(args.workdir, busybox=args.busybox)
        if not args.registry:
            for image in images:
                for tag in image.tags:
                    print(f"{image.repository}:{tag} {image.digest}")
            return 0
        for ref, digest in push_images(args.registry, images).items():
            print(f"{ref} {digest}")
    except (RigError, OSError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def random_layer_image(
    workdir: Path, repository: str, tag: str, size: int, seed: int = 0
) -> FixtureImage:
    """An image with one layer of `size` incompressible bytes (a file /blob), for tests that
    need a transfer long enough to interrupt."""
    import random

    store = BlobStore(workdir / "blobs")
    data = random.Random(seed).randbytes(size)
    big = store.layer([file("blob", data)], "docker")
    m = make_manifest(
        store, [big], ImageConfig(cmd=("/blob",)), "docker", Platform("amd64"), ("random bytes",)
    )
    return FixtureImage(
        repository, (tag,), m.descriptor, m.data, (m,), store.root, f"{size} random bytes"
    )
