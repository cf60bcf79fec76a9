"""The registry client against real HTTP servers in this process (aiohttp.web on 127.0.0.1
ephemeral ports) that emulate a distribution v2 registry: manifests and blobs, Range, bearer and
basic auth, mirrors, and the ways a registry misbehaves."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from crictl import errors
from crictl.images import mediatypes
from crictl.images.reference import Reference, parse
from crictl.images.registry import (
    MAX_MANIFEST,
    BlobStalled,
    Credentials,
    Descriptor,
    Endpoint,
    RegistryClient,
    is_loopback,
    parse_challenge,
    sha256_digest,
)

SERVICE = "fake-registry"
USER, PASSWORD = "alice", "s3cret"
IDENTITY_TOKEN = "refresh-me"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()


CONFIG = _json({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}})
LAYER = bytes(range(256)) * 40  # 10240 bytes
MANIFEST = _json(
    {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {
            "mediaType": mediatypes.OCI_CONFIG,
            "digest": sha256_digest(CONFIG),
            "size": len(CONFIG),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha256_digest(LAYER),
                "size": len(LAYER),
            }
        ],
    }
)
INDEX = _json(
    {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mediatypes.OCI_MANIFEST,
                "digest": sha256_digest(MANIFEST),
                "size": len(MANIFEST),
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)


class FakeRegistry:
    """A distribution v2 registry in memory.

    auth: None (anonymous), "bearer" (a token from /token, anonymous or with basic
    credentials), "basic" (basic auth on every request), "bare401" (401 with no challenge).
    """

    def __init__(
        self,
        auth: str | None = None,
        token_needs_credentials: bool = False,
        range_support: bool = True,
    ) -> None:
        self.auth = auth
        self.token_needs_credentials = token_needs_credentials
        self.range_support = range_support
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.blobs: dict[str, bytes] = {}
        self.seen: list[Seen] = []
        self.tokens_issued = 0
        self.valid_tokens: dict[str, str] = {}  # token -> scope
        self.token_response: Callable[[], web.Response] | None = None
        self.special_blobs: dict[str, Handler] = {}
        self.manifest_handler: Handler | None = None  # answers every manifest request if set
        self.challenge_header: str | None = None  # replaces the WWW-Authenticate it sends
        self.release = asyncio.Event()  # ends the handlers that stall
        self.url = ""
        self.host = ""
        self._runner: web.AppRunner | None = None

    # -- content ---------------------------------------------------------------------------

    def put_manifest(self, repo: str, tag: str | None, media_type: str, body: bytes) -> str:
        digest = sha256_digest(body)
        self.manifests[(repo, digest)] = (media_type, body)
        if tag:
            self.manifests[(repo, tag)] = (media_type, body)
        return digest

    def put_blob(self, data: bytes) -> Descriptor:
        digest = sha256_digest(data)
        self.blobs[digest] = data
        return Descriptor("application/octet-stream", digest, len(data))

    # -- serving ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v2/", self._ping)
        app.router.add_route("GET", "/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_route("GET", "/v2/{name:.+}/blobs/{digest}", self._blob)
        app.router.add_get("/token", self._token)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def requests(self, kind: str) -> list[Seen]:
        return [s for s in self.seen if f"/{kind}" in s.path]

    async def _record(self, request: web.Request) -> None:
        form: dict[str, str] = {}
        if request.method == "POST":
            form = {k: str(v) for k, v in (await request.post()).items()}
        self.seen.append(
            Seen(request.method, request.path, dict(request.headers), dict(request.query), form)
        )

    def _challenge(self, name: str) -> web.Response:
        if self.challenge_header is not None:
            header = self.challenge_header
        elif self.auth == "basic":
            header = 'Basic realm="fake"'
        elif self.auth == "bearer":
            header = (
                f'Bearer realm="{self.url}/token",service="{SERVICE}",'
                f'scope="repository:{name}:pull"'
            )
        else:
            return web.Response(status=401, text="no")
        return web.Response(status=401, headers={"WWW-Authenticate": header}, text="auth first")

    def _authorized(self, request: web.Request, name: str) -> bool:
        given = request.headers.get("Authorization", "")
        if self.auth is None:
            return True
        if self.auth == "basic":
            return given == _basic(USER, PASSWORD)
        if self.auth == "bearer" and given.startswith("Bearer "):
            return self.valid_tokens.get(given.removeprefix("Bearer ")) == (
                f"repository:{name}:pull"
            )
        return False

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text="{}")

    async def _manifest(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        name, ref = request.match_info["name"], request.match_info["ref"]
        if not self._authorized(request, name):
            return self._challenge(name)
        if self.manifest_handler is not None:
            return await self.manifest_handler(request)
        found = self.manifests.get((name, ref))
        if found is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
        media_type, body = found
        return web.Response(body=body, headers={"Content-Type": media_type})

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        name, digest = request.match_info["name"], request.match_info["digest"]
        if not self._authorized(request, name):
            return self._challenge(name)
        special = self.special_blobs.get(digest)
        if special is not None:
            return await special(request)
        data = self.blobs.get(digest)
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        rng = request.headers.get("Range")
        if rng and self.range_support:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            return web.Response(
                status=206,
                body=data[start:],
                headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"},
            )
        return web.Response(body=data, content_type="application/octet-stream")

    async def _token(self, request: web.Request) -> web.Response:
        await self._record(request)
        if self.token_response is not None:
            return self.token_response()
        if request.method == "POST":
            form = await request.post()
            if form.get("grant_type") != "refresh_token" or (
                form.get("refresh_token") != IDENTITY_TOKEN
            ):
                return web.Response(status=401, text="bad refresh token")
            service, scope = str(form.get("service")), str(form.get("scope"))
        else:
            if self.token_needs_credentials and request.headers.get("Authorization") != _basic(
                USER, PASSWORD
            ):
                return web.Response(status=401, text="bad credentials")
            service, scope = request.query.get("service", ""), request.query.get("scope", "")
        if service != SERVICE or not scope.startswith("repository:"):
            return web.Response(status=400, text=f"bad service/scope {service} {scope}")
        self.tokens_issued += 1
        token = f"tok-{self.tokens_issued}"
        self.valid_tokens[token] = scope
        key = "access_token" if request.method == "POST" else "token"
        return web.json_response({key: token, "expires_in": 300})


@pytest.fixture
async def registries() -> AsyncIterator[Callable[..., Awaitable[FakeRegistry]]]:
    started: list[FakeRegistry] = []

    async def make(**kwargs: Any) -> FakeRegistry:
        reg = FakeRegistry(**kwargs)
        await reg.start()
        started.append(reg)
        return reg

    yield make
    for reg in started:
        await reg.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., RegistryClient]]:
    made: list[RegistryClient] = []

    def make(**kwargs: Any) -> RegistryClient:
        c = RegistryClient(**kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


@pytest.fixture
async def reg(registries: Callable[..., Awaitable[FakeRegistry]]) -> FakeRegistry:
    r = await registries()
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    return r


@pytest.fixture
def client(clients: Callable[..., RegistryClient]) -> RegistryClient:
    return clients(progress_timeout=5.0, connect_timeout=5.0)


def ref_at(r: FakeRegistry, name: str = "app/x:1") -> Reference:
    return parse(f"{r.host}/{name}")


def upstream(r: FakeRegistry) -> Endpoint:
    return Endpoint(r.url, r.host, False)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10:1", True),
        ("[::1]", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("10.0.0.1:5000", False),
        ("192.168.1.1", False),
        ("[fe80::1]:5000", False),
        ("quay.io", False),
        ("registry.local:5000", False),
        ("localhost.example.com", False),
        ("docker.io", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/busybox:pull"',
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/busybox:pull",
            },
        ),
        ('Basic realm="Registry Realm"', "basic", {"realm": "Registry Realm"}),
        (
            'BEARER Realm="https://a/t", Service=reg , scope="repository:a/b:pull,push"',
            "bearer",
            {"realm": "https://a/t", "service": "reg", "scope": "repository:a/b:pull,push"},
        ),
        ("  Basic  ", "basic", {}),
        ('Bearer realm=""', "bearer", {"realm": ""}),
        (
            'Bearer error="invalid_token",realm="r"',
            "bearer",
            {"error": "invalid_token", "realm": "r"},
        ),
    ],
)
def test_parse_challenge(header: str, scheme: str, params: dict[str, str]) -> None:
    assert parse_challenge(header) == (scheme, params)


def test_credentials_from_auth_config() -> None:
    auth = base64.b64encode(b"bob:pa:ss").decode()
    assert Credentials.from_auth_config(auth=auth) == Credentials("bob", "pa:ss")
    assert Credentials.from_auth_config(username="u", password="p", auth=auth) == Credentials(
        "u", "p"
    )
    assert Credentials.from_auth_config() is None
    assert Credentials.from_auth_config(password="only") is None
    assert Credentials.from_auth_config(identity_token="it") == Credentials(identity_token="it")
    assert Credentials.from_auth_config(registry_token="rt") == Credentials(registry_token="rt")
    with pytest.raises(errors.InvalidArgument, match="not base64 of user:password"):
        Credentials.from_auth_config(auth="abc")
    with pytest.raises(errors.InvalidArgument, match="not base64"):
        Credentials.from_auth_config(auth=base64.b64encode(b"\xff\xfe:x").decode())


@pytest.mark.parametrize("auth", ["@@@@", base64.b64encode(b"user-without-colon").decode()])
def test_auth_that_is_not_base64_of_user_colon_password_is_refused(auth: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="not base64 of user:password"):
        Credentials.from_auth_config(auth=auth)


def test_endpoints_mirrors_first_then_upstream() -> None:
    c = RegistryClient(
        mirrors={
            "docker.io": ["http://127.0.0.1:5000/", "https://mirror.example"],
            "quay.io": ["https://q.mirror"],
        },
        insecure=["registry.local:5000"],
    )
    eps = c.endpoints(parse("busybox"))
    assert [(e.url, e.host, e.mirror) for e in eps] == [
        ("http://127.0.0.1:5000", "docker.io", True),
        ("https://mirror.example", "docker.io", True),
        ("https://registry-1.docker.io", "docker.io", False),
    ]
    assert str(eps[0]) == "http://127.0.0.1:5000 (mirror of docker.io)"
    assert str(eps[2]) == "https://registry-1.docker.io"
    assert [e.url for e in c.endpoints(parse("quay.io/a/b"))] == [
        "https://q.mirror",
        "https://quay.io",
    ]
    assert [e.url for e in c.endpoints(parse("registry.local:5000/x"))] == [
        "http://registry.local:5000"
    ]
    assert [e.url for e in c.endpoints(parse("registry.local:5001/x"))] == [
        "https://registry.local:5001"
    ]
    assert [e.url for e in c.endpoints(parse("localhost:5000/x"))] == ["http://localhost:5000"]
    assert [e.url for e in c.endpoints(parse("127.0.0.1:5000/x"))] == ["http://127.0.0.1:5000"]
    assert [e.url for e in c.endpoints(parse("[::1]:5000/x"))] == ["http://[::1]:5000"]
    assert [e.url for e in c.endpoints(parse("gcr.io/a/b"))] == ["https://gcr.io"]


# -- manifests ---------------------------------------------------------------------------------


async def test_resolve_by_tag(reg: FakeRegistry, client: RegistryClient) -> None:
    ref = ref_at(reg)
    endpoint, desc, body = await client.resolve(ref)
    assert endpoint == upstream(reg)
    assert body == MANIFEST
    assert desc == Descriptor(mediatypes.OCI_MANIFEST, sha256_digest(MANIFEST), len(MANIFEST))
    [seen] = reg.requests("manifests")
    assert seen.path == "/v2/app/x/manifests/1"
    accept = seen.headers["Accept"]
    assert accept.split(", ")[:4] == [
        mediatypes.OCI_INDEX,
        mediatypes.DOCKER_LIST,
        mediatypes.OCI_MANIFEST,
        mediatypes.DOCKER_MANIFEST,
    ]
    assert seen.headers["User-Agent"].startswith("crictld/")
    assert "Authorization" not in seen.headers


async def test_resolve_by_digest_asks_for_the_digest(
    reg: FakeRegistry, client: RegistryClient
) -> None:
    digest = sha256_digest(MANIFEST)
    ref = ref_at(reg, f"app/x:ignored@{digest}")
    _, desc, body = await client.resolve(ref)
    assert desc.digest == digest
    assert body == MANIFEST
    assert [s.path for s in reg.requests("manifests")] == [f"/v2/app/x/manifests/{digest}"]


async def test_fetch_manifest_by_descriptor(reg: FakeRegistry, client: RegistryClient) -> None:
    digest = reg.put_manifest("app/x", "multi", mediatypes.OCI_INDEX, INDEX)
    ref = ref_at(reg, "app/x:multi")
    endpoint, desc, body = await client.resolve(ref)
    assert (desc.media_type, desc.digest, body) == (mediatypes.OCI_INDEX, digest, INDEX)
    child = Descriptor(mediatypes.OCI_MANIFEST, sha256_digest(MANIFEST), len(MANIFEST))
    assert await client.fetch_manifest(endpoint, ref, child) == MANIFEST


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        # The body's own mediaType wins over the header.
        ("text/plain", MANIFEST, mediatypes.OCI_MANIFEST),
        (
            mediatypes.OCI_MANIFEST + "; charset=utf-8",
            _json({"mediaType": mediatypes.DOCKER_LIST, "manifests": []}),
            mediatypes.DOCKER_LIST,
        ),
        # Without one, its shape decides.
        ("application/json", _json({"manifests": []}), mediatypes.OCI_INDEX),
        ("application/json", _json({"config": {}, "layers": []}), mediatypes.OCI_MANIFEST),
        # Else the header (parameters dropped).
        (
            mediatypes.DOCKER_MANIFEST + "; charset=utf-8",
            _json({"schemaVersion": 2}),
            mediatypes.DOCKER_MANIFEST,
        ),
    ],
)
async def test_manifest_media_type(
    reg: FakeRegistry, client: RegistryClient, content_type: str, body: bytes, expected: str
) -> None:
    reg.put_manifest("app/y", "t", content_type, body)
    _, desc, got = await client.resolve(ref_at(reg, "app/y:t"))
    assert desc.media_type == expected
    assert got == body


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (
            mediatypes.DOCKER_SCHEMA1_SIGNED,
            _json({"schemaVersion": 1, "name": "app/y", "tag": "t", "fsLayers": []}),
        ),
        ("application/json", _json({"schemaVersion": 1, "fsLayers": []})),
        (mediatypes.DOCKER_SCHEMA1, b"not json"),
        ("application/octet-stream", _json({"mediaType": mediatypes.DOCKER_SCHEMA1})),
    ],
)
async def test_schema1_is_refused(
    reg: FakeRegistry, client: RegistryClient, content_type: str, body: bytes
) -> None:
    reg.put_manifest("app/y", "t", content_type, body)
    ref = ref_at(reg, "app/y:t")
    with pytest.raises(errors.FailedPrecondition) as info:
        await client.resolve(ref)
    msg = str(info.value)
    assert "schema 1 manifests are not supported" in msg
    assert str(ref) in msg
    assert reg.url in msg


@pytest.mark.parametrize(
    ("content_type", "body", "named"),
    [
        ("application/vnd.example+json", b"\x00binary", "application/vnd.example+json"),
        ("application/json", _json({"mediaType": "application/vnd.foo"}), "application/vnd.foo"),
        ("", b"<html>", ""),
    ],
)
async def test_unknown_media_type_is_refused(
    reg: FakeRegistry, client: RegistryClient, content_type: str, body: bytes, named: str
) -> None:
    reg.put_manifest("app/y", "t", content_type, body)
    ref = ref_at(reg, "app/y:t")
    with pytest.raises(errors.FailedPrecondition) as info:
        await client.resolve(ref)
    assert f"unsupported manifest media type {named!r}" in str(info.value)
    assert str(ref) in str(info.value)


async def test_manifest_not_matching_the_asked_digest(
    reg: FakeRegistry, client: RegistryClient
) -> None:
    asked = "sha256:" + "0" * 64
    reg.manifests[("app/x", asked)] = (mediatypes.OCI_MANIFEST, MANIFEST)
    ref = ref_at(reg, f"app/x@{asked}")
    with pytest.raises(errors.Unavailable) as info:
        await client.resolve(ref)
    msg = str(info.value)
    assert f"manifest digest mismatch: asked for {asked}, got {sha256_digest(MANIFEST)}" in msg
    assert str(ref) in msg
    assert reg.url in msg


async def test_oversized_manifest_is_refused(reg: FakeRegistry, client: RegistryClient) -> None:
    reg.put_manifest("app/y", "big", mediatypes.OCI_MANIFEST, b" " * (MAX_MANIFEST + 1))
    with pytest.raises(errors.FailedPrecondition, match="manifest larger than"):
        await client.resolve(ref_at(reg, "app/y:big"))


async def test_oversized_chunked_manifest_is_refused(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries()
    big = _json({"mediaType": mediatypes.OCI_MANIFEST, "config": {}, "layers": [], "pad": ""})
    big = big.replace(b'"pad": ""', b'"pad": "' + b"x" * MAX_MANIFEST + b'"')

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": mediatypes.OCI_MANIFEST})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(big), 1 << 16):
            await resp.write(big[i : i + (1 << 16)])
        await resp.write_eof()
        return resp

    r.manifest_handler = chunked
    with pytest.raises(errors.FailedPrecondition, match="manifest larger than"):
        await client.resolve(ref_at(r, "app/y:big"))


async def test_missing_manifest_is_not_found(reg: FakeRegistry, client: RegistryClient) -> None:
    ref = ref_at(reg, "app/x:nope")
    with pytest.raises(errors.NotFound) as info:
        await client.resolve(ref)
    msg = str(info.value)
    assert msg == f"pull {ref}: registry {reg.url}: manifest unknown (nope not found)"


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        (403, errors.PermissionDenied, "access denied (403)"),
        (500, errors.Unavailable, "manifest 1: HTTP 500 boom"),
        (429, errors.Unavailable, "HTTP 429"),
    ],
)
async def test_manifest_http_errors(
    registries: Callable[..., Awaitable[FakeRegistry]],
    client: RegistryClient,
    status: int,
    error: type[errors.CrictlError],
    text: str,
) -> None:
    r = await registries()

    async def failing(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="boom")

    r.manifest_handler = failing
    ref = ref_at(r)
    with pytest.raises(error) as info:
        await client.resolve(ref)
    assert text in str(info.value)
    assert str(ref) in str(info.value)
    assert r.url in str(info.value)


async def test_unreachable_registry_is_unavailable(client: RegistryClient) -> None:
    port = closed_port()
    ref = parse(f"127.0.0.1:{port}/app/x:1")
    with pytest.raises(errors.Unavailable) as info:
        await client.resolve(ref)
    msg = str(info.value)
    assert msg.startswith(f"pull {ref}: registry http://127.0.0.1:{port}: ")
    assert "cannot connect" in msg


async def test_tls_to_a_plain_http_registry_hints_at_insecure(
    reg: FakeRegistry, clients: Callable[..., RegistryClient]
) -> None:
    c = clients(mirrors={reg.host: [f"https://{reg.host}"]}, connect_timeout=5.0)
    ref = ref_at(reg)
    endpoint, _, _ = await c.resolve(ref)  # falls back to the plain-HTTP upstream
    assert endpoint == upstream(reg)
    ep = Endpoint(f"https://{reg.host}", reg.host, False)
    with pytest.raises(errors.Unavailable) as info:
        await c.fetch_manifest(ep, ref, Descriptor(mediatypes.OCI_MANIFEST, "sha256:x", 1))
    msg = str(info.value)
    assert f"registry https://{reg.host}" in msg
    assert str(ref) in msg
    assert "TLS handshake failed" in msg
    assert "list it with --insecure-registry" in msg


# -- mirrors -----------------------------------------------------------------------------------


async def test_mirror_serves_when_it_has_the_manifest(
    registries: Callable[..., Awaitable[FakeRegistry]],
    reg: FakeRegistry,
    clients: Callable[..., RegistryClient],
) -> None:
    mirror = await registries()
    mirror.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    c = clients(mirrors={reg.host: [mirror.url + "/"]})
    endpoint, desc, _ = await c.resolve(ref_at(reg))
    assert endpoint == Endpoint(mirror.url, reg.host, True)
    assert desc.digest == sha256_digest(MANIFEST)
    assert reg.seen == []


async def test_mirror_404_falls_back_to_upstream(
    registries: Callable[..., Awaitable[FakeRegistry]],
    reg: FakeRegistry,
    clients: Callable[..., RegistryClient],
) -> None:
    mirror = await registries()
    c = clients(mirrors={reg.host: [mirror.url]})
    endpoint, _, body = await c.resolve(ref_at(reg))
    assert endpoint == upstream(reg)
    assert body == MANIFEST
    assert [s.path for s in mirror.seen] == ["/v2/app/x/manifests/1"]
    assert len(reg.requests("manifests")) == 1


async def test_refused_mirror_falls_back_to_upstream(
    reg: FakeRegistry, clients: Callable[..., RegistryClient]
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    c = clients(mirrors={reg.host: [dead]})
    endpoint, _, body = await c.resolve(ref_at(reg))
    assert endpoint == upstream(reg)
    assert body == MANIFEST


async def test_unauthorized_mirror_falls_back_to_upstream(
    registries: Callable[..., Awaitable[FakeRegistry]],
    reg: FakeRegistry,
    clients: Callable[..., RegistryClient],
) -> None:
    mirror = await registries(auth="bare401")
    mirror.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    c = clients(mirrors={reg.host: [mirror.url]})
    endpoint, _, _ = await c.resolve(ref_at(reg))
    assert endpoint == upstream(reg)


async def test_every_endpoint_failing_names_them_all(
    registries: Callable[..., Awaitable[FakeRegistry]], clients: Callable[..., RegistryClient]
) -> None:
    up = await registries()
    mirror = await registries()
    dead = f"http://127.0.0.1:{closed_port()}"
    c = clients(mirrors={up.host: [mirror.url, dead]})
    ref = ref_at(up, "app/x:gone")
    with pytest.raises(errors.NotFound) as info:
        await c.resolve(ref)
    msg = str(info.value)
    assert msg.startswith(f"pull {ref}: registry {up.url}: manifest unknown (gone not found)")
    assert "after mirrors:" in msg
    assert f"registry {mirror.url} (mirror of {up.host}): manifest unknown" in msg
    assert f"registry {dead} (mirror of {up.host}): " in msg
    assert "cannot connect" in msg.split(f"registry {dead} (mirror of {up.host}): ")[1]
    assert len(mirror.seen) == 1
    assert len(up.seen) == 1


async def test_upstream_failure_alone_is_not_decorated(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    up = await registries()
    with pytest.raises(errors.NotFound) as info:
        await client.resolve(ref_at(up, "app/x:gone"))
    assert "after mirrors" not in str(info.value)


async def test_mirror_refusing_the_media_type_does_not_fall_back(
    registries: Callable[..., Awaitable[FakeRegistry]],
    reg: FakeRegistry,
    clients: Callable[..., RegistryClient],
) -> None:
    """Only NotFound, Unavailable and PermissionDenied move on to the next endpoint."""
    mirror = await registries()
    mirror.put_manifest("app/x", "1", "application/vnd.example", b"?")
    c = clients(mirrors={reg.host: [mirror.url]})
    with pytest.raises(errors.FailedPrecondition, match="mirror of"):
        await c.resolve(ref_at(reg))
    assert reg.seen == []


# -- authentication ----------------------------------------------------------------------------


async def test_anonymous_bearer_token(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bearer")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    blob = r.put_blob(LAYER)
    ref = ref_at(r)
    endpoint, desc, _ = await client.resolve(ref)
    assert desc.digest == sha256_digest(MANIFEST)
    [token_req] = r.requests("token")
    assert token_req.method == "GET"
    assert token_req.query == {"service": SERVICE, "scope": "repository:app/x:pull"}
    assert "Authorization" not in token_req.headers
    first, second = r.requests("manifests")
    assert "Authorization" not in first.headers
    assert second.headers["Authorization"] == "Bearer tok-1"

    # Cached: the next manifest and blob requests carry the token without a 401 round trip.
    await client.resolve(ref)
    assert await client.fetch_blob(endpoint, ref, blob) == LAYER
    assert r.tokens_issued == 1
    assert [s.headers.get("Authorization") for s in r.seen[3:]] == ["Bearer tok-1"] * 2


async def test_token_is_per_repository_scope(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bearer")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    r.put_manifest("app/other", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    await client.resolve(ref_at(r))
    await client.resolve(ref_at(r, "app/other:1"))
    assert [s.query["scope"] for s in r.requests("token")] == [
        "repository:app/x:pull",
        "repository:app/other:pull",
    ]


async def test_bearer_token_with_basic_credentials(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bearer", token_needs_credentials=True)
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    ref = ref_at(r)
    _, desc, _ = await client.resolve(ref, Credentials(USER, PASSWORD))
    assert desc.digest == sha256_digest(MANIFEST)
    [token_req] = r.requests("token")
    assert token_req.headers["Authorization"] == _basic(USER, PASSWORD)
    assert token_req.query == {"service": SERVICE, "scope": "repository:app/x:pull"}


async def test_bearer_token_with_configured_auths(
    registries: Callable[..., Awaitable[FakeRegistry]], clients: Callable[..., RegistryClient]
) -> None:
    r = await registries(auth="bearer", token_needs_credentials=True)
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    c = clients(auths={r.host: Credentials(USER, PASSWORD)})
    await c.resolve(ref_at(r))
    assert r.requests("token")[0].headers["Authorization"] == _basic(USER, PASSWORD)


async def test_token_service_refusing_credentials(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bearer", token_needs_credentials=True)
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    ref = ref_at(r)
    with pytest.raises(errors.PermissionDenied) as info:
        await client.resolve(ref, Credentials(USER, "wrong"))
    msg = str(info.value)
    assert f"token service {r.url}/token refused the credentials (401)" in msg
    assert str(ref) in msg
    assert f"registry {r.url}" in msg


async def test_identity_token_is_exchanged_by_post(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bearer")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    await client.resolve(ref_at(r), Credentials(identity_token=IDENTITY_TOKEN))
    [token_req] = r.requests("token")
    assert token_req.method == "POST"
    assert token_req.form == {
        "grant_type": "refresh_token",
        "refresh_token": IDENTITY_TOKEN,
        "service": SERVICE,
        "scope": "repository:app/x:pull",
        "client_id": "crictld",
    }
    assert r.requests("manifests")[-1].headers["Authorization"] == "Bearer tok-1"


async def test_registry_token_is_used_as_is(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bearer")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    r.valid_tokens["given-token"] = "repository:app/x:pull"
    await client.resolve(ref_at(r), Credentials(registry_token="given-token"))
    assert r.requests("token") == []
    assert r.requests("manifests")[-1].headers["Authorization"] == "Bearer given-token"


async def test_rejected_token_is_access_denied(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bearer")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    ref = ref_at(r)
    with pytest.raises(errors.PermissionDenied) as info:
        await client.resolve(ref, Credentials(registry_token="not-valid"))
    assert str(info.value) == f"pull {ref}: registry {r.url}: access denied (401)"
    assert len(r.requests("manifests")) == 2  # one retry only


@pytest.mark.parametrize(
    ("response", "error", "text"),
    [
        (lambda: web.Response(status=500), errors.Unavailable, "answered 500"),
        (
            lambda: web.Response(status=403),
            errors.PermissionDenied,
            "refused the credentials (403)",
        ),
        (lambda: web.json_response({"nothing": 1}), errors.PermissionDenied, "gave no token"),
        (lambda: web.json_response({"token": ""}), errors.PermissionDenied, "gave no token"),
        (lambda: web.json_response(["token"]), errors.PermissionDenied, "gave no token"),
    ],
)
async def test_token_service_failures(
    registries: Callable[..., Awaitable[FakeRegistry]],
    client: RegistryClient,
    response: Callable[[], web.Response],
    error: type[errors.CrictlError],
    text: str,
) -> None:
    r = await registries(auth="bearer")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    r.token_response = response
    ref = ref_at(r)
    with pytest.raises(error) as info:
        await client.resolve(ref)
    assert f"token service {r.url}/token" in str(info.value)
    assert text in str(info.value)
    assert str(ref) in str(info.value)


async def test_token_service_answering_non_json(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bearer")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    r.token_response = lambda: web.Response(text="<html>gateway</html>")
    with pytest.raises(errors.CrictlError, match="token service"):
        await client.resolve(ref_at(r))


async def test_unreachable_token_service(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bearer")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    dead = f"http://127.0.0.1:{closed_port()}/token"
    r.challenge_header = f'Bearer realm="{dead}",service="{SERVICE}"'
    with pytest.raises(errors.Unavailable, match=f"token service {dead}"):
        await client.resolve(ref_at(r))


async def test_a_token_service_that_never_answers_times_out(
    registries: Callable[..., Awaitable[FakeRegistry]], clients: Callable[..., RegistryClient]
) -> None:
    r = await registries(auth="bearer")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()  # reads the request, never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    realm = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/token"
    r.challenge_header = f'Bearer realm="{realm}",service="{SERVICE}"'
    c = clients(progress_timeout=0.3, connect_timeout=5.0)
    try:
        with pytest.raises(errors.Unavailable) as info:
            await c.resolve(ref_at(r))
        assert str(info.value) == (
            f"pull {ref_at(r)}: registry {r.url}: token service {realm}: no answer within 0.3s"
        )
    finally:
        release.set()
        server.close()


async def test_basic_challenge_with_credentials(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="basic")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    blob = r.put_blob(LAYER)
    ref = ref_at(r)
    creds = Credentials(USER, PASSWORD)
    endpoint, _, body = await client.resolve(ref, creds)
    assert body == MANIFEST
    assert await client.fetch_blob(endpoint, ref, blob, creds) == LAYER
    first, second, third = r.seen
    assert "Authorization" not in first.headers
    assert second.headers["Authorization"] == _basic(USER, PASSWORD)
    assert third.headers["Authorization"] == _basic(USER, PASSWORD)  # remembered


async def test_basic_challenge_without_credentials(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="basic")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    ref = ref_at(r)
    with pytest.raises(errors.PermissionDenied) as info:
        await client.resolve(ref)
    assert str(info.value) == (
        f"pull {ref}: registry {r.url} wants basic auth and no credentials were given"
    )


async def test_basic_challenge_with_wrong_password(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="basic")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    with pytest.raises(errors.PermissionDenied, match=r"access denied \(401\)"):
        await client.resolve(ref_at(r), Credentials(USER, "wrong"))


async def test_401_without_challenge(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bare401")
    ref = ref_at(r)
    with pytest.raises(errors.PermissionDenied) as info:
        await client.resolve(ref)
    assert str(info.value) == (f"pull {ref}: registry {r.url}: unauthorized (no credentials given)")
    with pytest.raises(errors.PermissionDenied) as info:
        await client.resolve(ref, Credentials(USER, PASSWORD))
    assert str(info.value) == f"pull {ref}: registry {r.url}: unauthorized"


async def test_unsupported_challenge(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bearer")
    r.put_manifest("app/x", "1", mediatypes.OCI_MANIFEST, MANIFEST)
    r.challenge_header = "Negotiate abc"
    with pytest.raises(errors.PermissionDenied, match="unsupported auth challenge 'Negotiate abc'"):
        await client.resolve(ref_at(r))


async def test_bearer_challenge_without_realm(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(auth="bearer")
    r.challenge_header = 'Bearer service="x"'
    with pytest.raises(errors.PermissionDenied, match="unsupported auth challenge"):
        await client.resolve(ref_at(r))


# -- blobs -------------------------------------------------------------------------------------


async def _collect(
    client: RegistryClient, r: FakeRegistry, desc: Descriptor, offset: int = 0
) -> bytes:
    chunks = [c async for c in client.stream_blob(upstream(r), ref_at(r), desc, offset)]
    assert all(chunks)  # never an empty chunk
    return b"".join(chunks)


async def test_stream_whole_blob(reg: FakeRegistry, client: RegistryClient) -> None:
    desc = reg.put_blob(LAYER)
    assert await _collect(client, reg, desc) == LAYER
    [seen] = reg.requests("blobs")
    assert seen.path == f"/v2/app/x/blobs/{desc.digest}"
    assert "Range" not in seen.headers


async def test_stream_blob_resumes_with_range(reg: FakeRegistry, client: RegistryClient) -> None:
    desc = reg.put_blob(LAYER)
    assert await _collect(client, reg, desc, 1000) == LAYER[1000:]
    assert reg.requests("blobs")[0].headers["Range"] == "bytes=1000-"


@pytest.mark.parametrize("offset", [1, 1000, len(LAYER) - 1, len(LAYER)])
async def test_server_ignoring_range_has_the_prefix_skipped(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient, offset: int
) -> None:
    r = await registries(range_support=False)
    desc = r.put_blob(LAYER)
    assert await _collect(client, r, desc, offset) == LAYER[offset:]
    assert r.requests("blobs")[0].headers["Range"] == f"bytes={offset}-"


async def test_skip_spanning_several_reads(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    r = await registries(range_support=False)
    data = bytes(i % 251 for i in range(3 * (1 << 20) + 12345))
    desc = r.put_blob(data)
    offset = (1 << 20) + (1 << 19) + 7
    assert await _collect(client, r, desc, offset) == data[offset:]


async def test_fetch_blob_verifies_the_digest(reg: FakeRegistry, client: RegistryClient) -> None:
    desc = reg.put_blob(CONFIG)
    ref = ref_at(reg)
    assert await client.fetch_blob(upstream(reg), ref, desc) == CONFIG
    wrong = Descriptor(desc.media_type, "sha256:" + "1" * 64, desc.size)
    reg.blobs[wrong.digest] = CONFIG
    with pytest.raises(errors.Unavailable) as info:
        await client.fetch_blob(upstream(reg), ref, wrong)
    assert str(info.value) == (
        f"pull {ref}: registry {reg.url}: blob {wrong.digest} digest mismatch"
    )


async def test_a_blob_longer_than_its_descriptor_is_cut_off(
    reg: FakeRegistry, client: RegistryClient
) -> None:
    """A hostile registry cannot make the daemon read (and hold) more than the manifest says."""
    desc = reg.put_blob(CONFIG)
    short = Descriptor(desc.media_type, desc.digest, len(CONFIG) - 1)
    with pytest.raises(errors.Unavailable, match=f"longer than the {len(CONFIG) - 1} bytes"):
        await client.fetch_blob(upstream(reg), ref_at(reg), short)


async def test_missing_blob_is_not_found(reg: FakeRegistry, client: RegistryClient) -> None:
    desc = Descriptor("x", "sha256:" + "2" * 64, 10)
    ref = ref_at(reg)
    with pytest.raises(errors.NotFound) as info:
        await _collect(client, reg, desc)
    assert str(info.value) == f"pull {ref}: registry {reg.url}: blob {desc.digest} unknown"


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        (403, errors.PermissionDenied, "access denied to blob"),
        (503, errors.Unavailable, "HTTP 503"),
        (416, errors.Unavailable, "HTTP 416"),
    ],
)
async def test_blob_http_errors(
    reg: FakeRegistry,
    client: RegistryClient,
    status: int,
    error: type[errors.CrictlError],
    text: str,
) -> None:
    desc = Descriptor("x", "sha256:" + "3" * 64, 10)

    async def failing(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status)

    reg.special_blobs[desc.digest] = failing
    with pytest.raises(error) as info:
        await _collect(client, reg, desc)
    assert text in str(info.value)
    assert desc.digest in str(info.value)
    assert str(ref_at(reg)) in str(info.value)


async def test_stalled_blob(reg: FakeRegistry, clients: Callable[..., RegistryClient]) -> None:
    c = clients(progress_timeout=0.3, connect_timeout=5.0)
    desc = Descriptor("x", "sha256:" + "4" * 64, 1000)

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"a" * 100)
        await reg.release.wait()
        return resp

    reg.special_blobs[desc.digest] = stall
    got = bytearray()
    started = time.monotonic()
    with pytest.raises(BlobStalled) as info:
        async for chunk in c.stream_blob(upstream(reg), ref_at(reg), desc, 0):
            got += chunk
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2.0
    assert bytes(got) == b"a" * 100
    assert isinstance(info.value, errors.Unavailable)
    assert str(info.value) == (
        f"pull {ref_at(reg)}: registry {reg.url}: blob {desc.digest} stalled: no bytes for "
        "0.3s at 100 of 1000"
    )


async def test_stalled_blob_after_a_resume_counts_from_the_offset(
    reg: FakeRegistry, clients: Callable[..., RegistryClient]
) -> None:
    c = clients(progress_timeout=0.3)
    desc = Descriptor("x", "sha256:" + "5" * 64, 1000)

    async def stall(request: web.Request) -> web.StreamResponse:
        assert request.headers["Range"] == "bytes=400-"
        resp = web.StreamResponse(status=206, headers={"Content-Length": "600"})
        await resp.prepare(request)
        await resp.write(b"b" * 50)
        await reg.release.wait()
        return resp

    reg.special_blobs[desc.digest] = stall
    with pytest.raises(BlobStalled, match="at 450 of 1000"):
        async for _ in c.stream_blob(upstream(reg), ref_at(reg), desc, 400):
            pass


async def test_connection_closed_midway(reg: FakeRegistry, client: RegistryClient) -> None:
    desc = Descriptor("x", "sha256:" + "6" * 64, 1000)

    async def broken(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"c" * 300)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return resp

    reg.special_blobs[desc.digest] = broken
    got = bytearray()
    with pytest.raises(errors.Unavailable) as info:
        async for chunk in client.stream_blob(upstream(reg), ref_at(reg), desc, 0):
            got += chunk
    assert not isinstance(info.value, BlobStalled)
    assert bytes(got) == b"c" * 300
    msg = str(info.value)
    assert msg.startswith(
        f"pull {ref_at(reg)}: registry {reg.url}: blob {desc.digest} broke off at 300 of 1000"
    )


async def test_connection_closed_midway_after_a_resume(
    reg: FakeRegistry, client: RegistryClient
) -> None:
    desc = Descriptor("x", "sha256:" + "7" * 64, 1000)

    async def broken(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=206, headers={"Content-Length": "800"})
        await resp.prepare(request)
        await resp.write(b"d" * 100)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return resp

    reg.special_blobs[desc.digest] = broken
    with pytest.raises(errors.Unavailable, match="broke off at 300 of 1000"):
        async for _ in client.stream_blob(upstream(reg), ref_at(reg), desc, 200):
            pass


async def test_redirect_to_another_origin_drops_the_authorization(
    registries: Callable[..., Awaitable[FakeRegistry]], client: RegistryClient
) -> None:
    """Registries hand blobs to a CDN by redirect; the registry token must not follow."""
    r = await registries(auth="basic")
    cdn = await registries()
    desc = cdn.put_blob(LAYER)

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{cdn.url}/v2/app/x/blobs/{desc.digest}")

    r.special_blobs[desc.digest] = redirect
    ref = ref_at(r)
    got = await client.fetch_blob(upstream(r), ref, desc, Credentials(USER, PASSWORD))
    assert got == LAYER
    [cdn_req] = cdn.seen
    assert "Authorization" not in cdn_req.headers


# -- the session -------------------------------------------------------------------------------


async def test_close_is_idempotent_and_the_client_reopens(reg: FakeRegistry) -> None:
    c = RegistryClient()
    await c.close()  # never opened
    await c.resolve(ref_at(reg))
    session = c._session
    assert session is not None
    await c.close()
    assert session.closed
    assert c._session is None
    await c.close()
    try:
        await c.resolve(ref_at(reg))  # a new session
        assert c._session is not None
        assert c._session is not session
    finally:
        await c.close()


async def test_session_timeouts_follow_the_settings() -> None:
    c = RegistryClient(progress_timeout=7.0, connect_timeout=3.0)
    try:
        session = c._http()
        assert (session.connect_timeout, session.read_timeout) == (3.0, 7.0)
    finally:
        await c.close()


def test_what_a_registry_granted_one_caller_is_not_reused_by_another() -> None:
    """A pull with other or no credentials must earn its own grant, never ride on another's
    cached basic auth or token."""
    from crictl.images.registry import Credentials, Endpoint, RegistryClient, _who

    async def run() -> None:
        client = RegistryClient()
        endpoint = Endpoint("http://127.0.0.1:1", "127.0.0.1:1", mirror=False)
        alice = Credentials("alice", "secret")
        ref = parse("127.0.0.1:1/private/app:1")
        scope = "repository:private/app:pull"
        await client._answer_challenge(endpoint, ref, scope, 'Basic realm="r"', alice)
        assert client._cached_auth(endpoint, scope, _who(alice)) is not None
        assert client._cached_auth(endpoint, scope, _who(None)) is None
        assert client._cached_auth(endpoint, scope, _who(Credentials("alice", "wrong"))) is None
        assert "secret" not in repr(alice)
        await client.close()

    asyncio.run(run())
