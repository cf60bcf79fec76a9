"""A registry client for the distribution API v2: manifests and blobs, mirrors with fallback to
the upstream host, plain HTTP for loopback and insecure hosts, and registry authentication
(anonymous or credentialed bearer tokens from the `WWW-Authenticate` realm, or basic auth).

Every error names the registry and the reference, because it reaches the person who typed it.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from crictl import errors, trace
from crictl.images import http, mediatypes
from crictl.images.reference import DOCKER_HUB, DOCKER_HUB_ENDPOINT, Reference

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20  # what containerd accepts too
MAX_TOKEN_ANSWER = 1 << 20
USER_AGENT = "crictld/0.1"


class BlobStalled(errors.Unavailable):
    """A blob download moved no byte for the progress timeout."""


def _who(creds: Credentials | None) -> str:
    return creds.identity() if creds is not None else ""


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # an OAuth2 refresh token
    registry_token: str = field(default="", repr=False)  # a bearer token used as is

    def identity(self) -> str:
        """Who these credentials are, for keying what a registry granted them (a digest:
        the secrets themselves are never a key)."""
        raw = "\0".join((self.username, self.password, self.identity_token, self.registry_token))
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def from_auth_config(
        cls,
        username: str = "",
        password: str = "",
        auth: str = "",
        identity_token: str = "",
        registry_token: str = "",
    ) -> Credentials | None:
        if auth and not username:
            try:
                decoded = base64.b64decode(auth, validate=True).decode()
            except (ValueError, UnicodeDecodeError) as e:
                raise errors.InvalidArgument("auth: not base64 of user:password") from e
            if ":" not in decoded:
                raise errors.InvalidArgument("auth: not base64 of user:password (no ':')")
            username, _, password = decoded.partition(":")
        if not (username or identity_token or registry_token):
            return None
        return cls(username, password, identity_token, registry_token)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Mapping[str, Any] | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: object, where: str) -> Descriptor:
        if not isinstance(d, Mapping):
            raise errors.FailedPrecondition(f"{where}: malformed descriptor {d!r}")
        try:
            return cls(
                media_type=str(d.get("mediaType", "")),
                digest=str(d["digest"]),
                size=int(d["size"]),
                platform=d.get("platform"),
                annotations=dict(d.get("annotations") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise errors.FailedPrecondition(f"{where}: malformed descriptor {d!r}") from e


@dataclass(frozen=True)
class Endpoint:
    url: str  # scheme://host[:port]
    host: str  # the registry it stands for (the reference's domain)
    mirror: bool

    def __str__(self) -> str:
        return f"{self.url} (mirror of {self.host})" if self.mirror else self.url


def is_loopback(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1 : name.index("]")]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://auth",service="reg",scope="repository:x:pull"` ->
    ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): (q if q else u) for k, q, u in _CHALLENGE_PARAM.findall(rest)}
    return scheme.lower(), params


class RegistryClient:
    def __init__(
        self,
        mirrors: Mapping[str, list[str]] | None = None,
        insecure: list[str] | None = None,
        auths: Mapping[str, Credentials] | None = None,
        progress_timeout: float = 60.0,
        connect_timeout: float = 30.0,
    ) -> None:
        self.mirrors = dict(mirrors or {})
        self.insecure = set(insecure or [])
        self.auths = dict(auths or {})
        self.progress_timeout = progress_timeout
        self.connect_timeout = connect_timeout
        self._session: http.Client | None = None
        # What a registry granted, by (endpoint, ..., who asked): a pull with other (or no)
        # credentials must earn its own, never ride on another's.
        self._tokens: dict[tuple[str, str, str, str, str], tuple[str, float]] = {}
        self._basic: dict[tuple[str, str], str] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> http.Client:
        # The system CA bundle is loaded into a TLS context at the first https request, not at
        # the daemon's start: a restarted daemon often pulls nothing.
        if self._session is None or self._session.closed:
            self._session = http.Client(
                connect_timeout=self.connect_timeout,
                read_timeout=self.progress_timeout,
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    # -- endpoints -------------------------------------------------------------------------

    def endpoints(self, ref: Reference) -> list[Endpoint]:
        """Mirrors first, in their configured order, then the registry itself."""
        out = [
            Endpoint(url.rstrip("/"), ref.domain, True) for url in self.mirrors.get(ref.domain, [])
        ]
        if ref.domain == DOCKER_HUB:
            upstream = f"https://{DOCKER_HUB_ENDPOINT}"
        elif ref.domain in self.insecure or is_loopback(ref.domain):
            upstream = f"http://{ref.domain}"
        else:
            upstream = f"https://{ref.domain}"
        out.append(Endpoint(upstream, ref.domain, False))
        return out

    # -- requests --------------------------------------------------------------------------

    def _credentials(self, endpoint: Endpoint, given: Credentials | None) -> Credentials | None:
        if given is not None:
            return given
        host = endpoint.url.split("://", 1)[1]
        return self.auths.get(host) or self.auths.get(endpoint.host)

    async def _request(
        self,
        method: str,
        endpoint: Endpoint,
        ref: Reference,
        path: str,
        creds: Credentials | None,
        headers: Mapping[str, str] | None = None,
    ) -> http.Response:
        """One request with auth: on a 401 it answers the challenge and tries once more."""
        url = f"{endpoint.url}/v2/{ref.path}/{path}"
        scope = f"repository:{ref.path}:pull"
        creds = self._credentials(endpoint, creds)
        for attempt in (1, 2):
            h = dict(headers or {})
            auth = self._cached_auth(endpoint, scope, _who(creds))
            if auth:
                h["Authorization"] = auth
            try:
                with trace.span(f"registry {method} {path.split('/', 1)[0]}"):
                    resp = await self._http().request(method, url, h)
            except TimeoutError as e:
                raise errors.Unavailable(
                    f"pull {ref}: registry {endpoint}: {path}: no answer within "
                    f"{self.progress_timeout:g}s"
                ) from e
            except http.CertificateError as e:
                raise errors.Unavailable(
                    f"pull {ref}: registry {endpoint}: {path}: TLS certificate not trusted: {e}"
                ) from e
            except http.TLSError as e:
                raise errors.Unavailable(
                    f"pull {ref}: registry {endpoint}: TLS handshake failed ({e}); if this "
                    f"registry speaks plain HTTP, list it with --insecure-registry"
                ) from e
            except http.ConnectError as e:
                raise errors.Unavailable(
                    f"pull {ref}: registry {endpoint}: {path}: cannot connect: {e}"
                ) from e
            except http.HTTPError as e:
                raise errors.Unavailable(f"pull {ref}: registry {endpoint}: {path}: {e}") from e
            if resp.status != 401 or attempt == 2:
                return resp
            challenge = resp.header("WWW-Authenticate")
            await resp.release()
            if not challenge:
                break
            await self._answer_challenge(endpoint, ref, scope, challenge, creds)
        raise errors.PermissionDenied(
            f"pull {ref}: registry {endpoint}: unauthorized"
            + ("" if creds else " (no credentials given)")
        )

    def _cached_auth(self, endpoint: Endpoint, scope: str, who: str) -> str | None:
        basic = self._basic.get((endpoint.url, who))
        if basic:
            return basic
        now = time.monotonic()
        for (url, _, _, sc, holder), (token, expiry) in self._tokens.items():
            if url == endpoint.url and sc == scope and holder == who and expiry > now:
                return f"Bearer {token}"
        return None

    async def _answer_challenge(
        self,
        endpoint: Endpoint,
        ref: Reference,
        scope: str,
        challenge: str,
        creds: Credentials | None,
    ) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if creds is None or not creds.username:
                raise errors.PermissionDenied(
                    f"pull {ref}: registry {endpoint} wants basic auth and no credentials "
                    "were given"
                )
            raw = f"{creds.username}:{creds.password}".encode()
            self._basic[(endpoint.url, _who(creds))] = "Basic " + base64.b64encode(raw).decode()
            return
        if scheme != "bearer" or "realm" not in params:
            raise errors.PermissionDenied(
                f"pull {ref}: registry {endpoint}: unsupported auth challenge {challenge!r}"
            )
        if creds is not None and creds.registry_token:
            token, expires_in = creds.registry_token, 60.0
        else:
            token, expires_in = await self._fetch_token(endpoint, ref, params, scope, creds)
        key = (endpoint.url, params["realm"], params.get("service", ""), scope, _who(creds))
        self._tokens[key] = (token, time.monotonic() + max(expires_in - 5, 5))

    async def _fetch_token(
        self,
        endpoint: Endpoint,
        ref: Reference,
        params: Mapping[str, str],
        scope: str,
        creds: Credentials | None,
    ) -> tuple[str, float]:
        realm = params["realm"]
        service = params.get("service", "")
        scope = params.get("scope", scope)
        try:
            if creds is not None and creds.identity_token:
                form = {
                    "grant_type": "refresh_token",
                    "refresh_token": creds.identity_token,
                    "service": service,
                    "scope": scope,
                    "client_id": "crictld",
                }
                resp = await self._http().post_form(realm, form)
            else:
                query = {"scope": scope}
                if service:
                    query["service"] = service
                headers = {}
                if creds is not None and creds.username:
                    raw = f"{creds.username}:{creds.password}".encode()
                    headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
                resp = await self._http().request("GET", realm, headers, params=query)
            async with resp:
                if resp.status in (401, 403):
                    raise errors.PermissionDenied(
                        f"pull {ref}: registry {endpoint}: token service {realm} refused "
                        f"the credentials ({resp.status})"
                    )
                if resp.status != 200:
                    raise errors.Unavailable(
                        f"pull {ref}: registry {endpoint}: token service {realm} answered "
                        f"{resp.status}"
                    )
                body = json.loads(await resp.read_all(MAX_TOKEN_ANSWER))
        except ValueError as e:
            raise errors.Unavailable(
                f"pull {ref}: registry {endpoint}: token service {realm} answered non-JSON"
            ) from e
        except TimeoutError as e:
            raise errors.Unavailable(
                f"pull {ref}: registry {endpoint}: token service {realm}: no answer within "
                f"{self.progress_timeout:g}s"
            ) from e
        except http.HTTPError as e:
            raise errors.Unavailable(
                f"pull {ref}: registry {endpoint}: token service {realm}: {e}"
            ) from e
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise errors.PermissionDenied(
                f"pull {ref}: registry {endpoint}: token service {realm} gave no token"
            )
        expires = body.get("expires_in", 60)
        return token, float(expires) if isinstance(expires, int | float) else 60.0

    # -- manifests and blobs ---------------------------------------------------------------

    async def _read(
        self, resp: http.Response, endpoint: Endpoint, ref: Reference, what: str
    ) -> bytes:
        try:
            return await resp.read()
        except TimeoutError as e:
            raise errors.Unavailable(
                f"pull {ref}: registry {endpoint}: {what}: no bytes for {self.progress_timeout:g}s"
            ) from e
        except http.HTTPError as e:
            raise errors.Unavailable(f"pull {ref}: registry {endpoint}: {what}: {e}") from e

    async def resolve(
        self, ref: Reference, creds: Credentials | None = None
    ) -> tuple[Endpoint, Descriptor, bytes]:
        """The manifest or index `ref` names, from the first endpoint that has it."""
        failures: list[str] = []
        endpoints = self.endpoints(ref)
        for endpoint in endpoints:
            try:
                return endpoint, *await self._get_manifest(endpoint, ref, ref.object, creds)
            except (errors.NotFound, errors.Unavailable, errors.PermissionDenied) as e:
                if not endpoint.mirror:
                    if failures:
                        raise type(e)(f"{e} (after mirrors: {'; '.join(failures)})") from e
                    raise
                failures.append(str(e))
                log.info(
                    "mirror failed, trying the next endpoint",
                    extra={"endpoint": endpoint.url, "error": str(e)},
                )
        raise AssertionError(f"no endpoints for {ref}: {endpoints}")  # upstream is always last

    async def fetch_manifest(
        self,
        endpoint: Endpoint,
        ref: Reference,
        desc: Descriptor,
        creds: Credentials | None = None,
    ) -> bytes:
        _, body = await self._get_manifest(endpoint, ref, desc.digest, creds)
        return body

    async def _get_manifest(
        self, endpoint: Endpoint, ref: Reference, obj: str, creds: Credentials | None
    ) -> tuple[Descriptor, bytes]:
        resp = await self._request(
            "GET", endpoint, ref, f"manifests/{obj}", creds, {"Accept": mediatypes.MANIFEST_ACCEPT}
        )
        async with resp:
            if resp.status == 404:
                raise errors.NotFound(
                    f"pull {ref}: registry {endpoint}: manifest unknown ({obj} not found)"
                )
            if resp.status in (401, 403):
                raise errors.PermissionDenied(
                    f"pull {ref}: registry {endpoint}: access denied ({resp.status})"
                )
            if resp.status != 200:
                text = (await _prefix(resp, 200)).decode(errors="replace")
                raise errors.Unavailable(
                    f"pull {ref}: registry {endpoint}: manifest {obj}: HTTP {resp.status} {text}"
                )
            too_big = errors.FailedPrecondition(
                f"pull {ref}: registry {endpoint}: manifest larger than {MAX_MANIFEST} bytes"
            )
            if (resp.content_length or 0) > MAX_MANIFEST:
                raise too_big
            chunks: list[bytes] = []
            size = 0
            while chunk := await self._read(resp, endpoint, ref, f"manifest {obj}"):
                size += len(chunk)  # capped as it comes: chunked bodies too
                if size > MAX_MANIFEST:
                    raise too_big
                chunks.append(chunk)
            body = b"".join(chunks)
            media_type = resp.header("Content-Type").split(";")[0].strip()
        digest = sha256_digest(body)
        if obj.startswith("sha256:") and digest != obj:
            raise errors.Unavailable(
                f"pull {ref}: registry {endpoint}: manifest digest mismatch: asked for {obj}, "
                f"got {digest}"
            )
        media_type = _manifest_media_type(media_type, body)
        if media_type in (mediatypes.DOCKER_SCHEMA1, mediatypes.DOCKER_SCHEMA1_SIGNED):
            raise errors.FailedPrecondition(
                f"pull {ref}: registry {endpoint}: Docker schema 1 manifests are not supported"
            )
        if media_type not in mediatypes.INDEXES | mediatypes.MANIFESTS:
            raise errors.FailedPrecondition(
                f"pull {ref}: registry {endpoint}: unsupported manifest media type {media_type!r}"
            )
        return Descriptor(media_type, digest, len(body)), body

    async def fetch_blob(
        self,
        endpoint: Endpoint,
        ref: Reference,
        desc: Descriptor,
        creds: Credentials | None = None,
    ) -> bytes:
        """A small blob (an image config) whole, verified."""
        chunks = [c async for c in self.stream_blob(endpoint, ref, desc, 0, creds)]
        data = b"".join(chunks)
        if sha256_digest(data) != desc.digest:
            raise errors.Unavailable(
                f"pull {ref}: registry {endpoint}: blob {desc.digest} digest mismatch"
            )
        return data

    async def stream_blob(
        self,
        endpoint: Endpoint,
        ref: Reference,
        desc: Descriptor,
        offset: int,
        creds: Credentials | None = None,
    ) -> AsyncIterator[bytes]:
        """The blob's bytes from `offset` on. The caller verifies the digest.

        A registry that ignores the Range header (answers 200) has the skipped part dropped here.
        A read that brings no byte within the progress timeout fails naming the blob.
        """
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp = await self._request("GET", endpoint, ref, f"blobs/{desc.digest}", creds, headers)
        async with resp:
            if resp.status == 404:
                raise errors.NotFound(
                    f"pull {ref}: registry {endpoint}: blob {desc.digest} unknown"
                )
            if resp.status in (401, 403):
                raise errors.PermissionDenied(
                    f"pull {ref}: registry {endpoint}: access denied to blob {desc.digest}"
                )
            if resp.status not in (200, 206):
                raise errors.Unavailable(
                    f"pull {ref}: registry {endpoint}: blob {desc.digest}: HTTP {resp.status}"
                )
            skip = offset if resp.status == 200 else 0
            position = offset if resp.status == 206 else 0
            while True:
                try:
                    chunk = await resp.read(CHUNK)
                except TimeoutError as e:
                    raise BlobStalled(
                        f"pull {ref}: registry {endpoint}: blob {desc.digest} stalled: no bytes "
                        f"for {self.progress_timeout:g}s at {position} of {desc.size}"
                    ) from e
                except http.HTTPError as e:
                    raise errors.Unavailable(
                        f"pull {ref}: registry {endpoint}: blob {desc.digest} broke off at "
                        f"{position} of {desc.size}: {e}"
                    ) from e
                if not chunk:
                    break
                position += len(chunk)
                if position > desc.size:
                    # what the manifest promised is all a pull takes: a registry that sends
                    # more (or without end) cannot make the daemon hold or store it
                    raise errors.Unavailable(
                        f"pull {ref}: registry {endpoint}: blob {desc.digest} is longer than "
                        f"the {desc.size} bytes its descriptor gives"
                    )
                if skip:
                    drop = min(skip, len(chunk))
                    chunk, skip = chunk[drop:], skip - drop
                    if not chunk:
                        continue
                yield chunk


async def _prefix(resp: http.Response, limit: int) -> bytes:
    """The start of an error's body, for its message; whatever could be read of it."""
    out = b""
    try:
        while len(out) < limit and (chunk := await resp.read(limit - len(out))):
            out += chunk
    except (TimeoutError, http.HTTPError):
        pass
    return out


def _manifest_media_type(header: str, body: bytes) -> str:
    """The media type from the body if it says one, else from Content-Type."""
    try:
        doc = json.loads(body)
    except ValueError:
        return header
    if isinstance(doc, dict):
        declared = doc.get("mediaType")
        if isinstance(declared, str) and declared:
            return declared
        if doc.get("schemaVersion") == 1:
            return mediatypes.DOCKER_SCHEMA1
        if "manifests" in doc:
            return mediatypes.OCI_INDEX
        if "layers" in doc and "config" in doc:
            return mediatypes.OCI_MANIFEST
    return header
