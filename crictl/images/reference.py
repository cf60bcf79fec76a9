"""Image references, parsed and normalised as kubelet and containerd do it (the grammar of
distribution/reference with docker's normalisation):

    busybox                   -> docker.io/library/busybox:latest
    quay.io/a/b               -> quay.io/a/b:latest
    localhost:5000/x:1        -> localhost:5000/x:1
    x@sha256:<64 hex>         -> docker.io/library/x@sha256:...
    x:1@sha256:<64 hex>       -> tag and digest both kept; the digest decides what is pulled
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from crictl.errors import InvalidArgument

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_LEGACY_HUB = {"index.docker.io", "registry-1.docker.io"}

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*"
    r"[a-zA-Z0-9])?))*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # ASCII, as distribution's grammar
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """domain/path, e.g. docker.io/library/busybox."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        s = self.repository
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    @property
    def tagged_name(self) -> str | None:
        return f"{self.repository}:{self.tag}" if self.tag else None

    def with_digest(self, digest: str) -> str:
        """The canonical digest reference of this repository: repo@sha256:..."""
        return f"{self.repository}@{digest}"

    @property
    def object(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if any, else the tag."""
        return self.digest or self.tag or "latest"


def parse(ref: str, default_tag: bool = True) -> Reference:
    """Parses and normalises `ref`; InvalidArgument names what is wrong with it."""
    if not ref:
        raise InvalidArgument("image reference is empty")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise InvalidArgument(f"image reference {ref!r} contains white space")
    if _HEX64.fullmatch(ref):
        # As distribution's ParseNormalizedNamed: an image id is not a repository name.
        raise InvalidArgument(
            f"image reference {ref!r}: a 64-hex string is an image id, not a repository name"
        )
    rest, digest = ref, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgument(f"image reference {ref!r}: invalid digest {digest!r}")
        if digest.startswith("sha256:") and not _SHA256.fullmatch(digest):
            raise InvalidArgument(f"image reference {ref!r}: sha256 digest must be 64 hex")
    tag = None
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidArgument(f"image reference {ref!r}: invalid tag {tag!r}")
    if not rest:
        raise InvalidArgument(f"image reference {ref!r} has no repository")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, path = first, remainder
        if not _DOMAIN.fullmatch(domain):
            raise InvalidArgument(f"image reference {ref!r}: invalid registry host {domain!r}")
    else:
        domain, path = DOCKER_HUB, rest
    if domain in _LEGACY_HUB:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            if component.lower() != component and _COMPONENT.fullmatch(component.lower()):
                raise InvalidArgument(f"image reference {ref!r}: repository must be lowercase")
            raise InvalidArgument(f"image reference {ref!r}: invalid path component {component!r}")
    if len(f"{domain}/{path}") > MAX_NAME:
        raise InvalidArgument(f"image reference {ref!r}: name longer than {MAX_NAME}")
    if tag is None and digest is None and default_tag:
        tag = "latest"
    return Reference(domain, path, tag, digest)


def is_image_id(value: str) -> bool:
    """A full image id: sha256:<64 hex> or the bare 64 hex."""
    return bool(_SHA256.fullmatch(value)) or bool(_HEX64.fullmatch(value))


def normalize_id(value: str) -> str:
    return value if value.startswith("sha256:") else f"sha256:{value}"
