"""Pulling an image into containerd the way containerd's own client lays it out, so that an
image pulled by crictld runs with `ctr run` in the same namespace:

  * every blob goes into the content store with its expected digest and size (containerd verifies
    both at commit, so a corrupt download never becomes content), under a lease that protects
    it until the image record exists;
  * parents carry containerd's GC reference labels (index -> manifest, manifest -> config and
    layers, config -> the top snapshot), so nothing is collected once the lease ends;
  * layers are unpacked into the snapshotter as committed snapshots named by their chain ID
    (Snapshots.Prepare, Diff.Apply, Snapshots.Commit), each applied as soon as it is downloaded
    while later layers are still downloading;
  * one image record is created: for the tag, or for repo@digest when pulled by digest (a
    tag's repository digest is its target's, which crictld reports without a record of its
    own, so removing the image is one delete and one collection).

A failed pull aborts its partial writes and deletes its lease synchronously (containerd then
collects whatever the pull wrote), so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from google.protobuf.field_mask_pb2 import FieldMask

from crictl import errors, metrics, trace
from crictl.containerd.client import ContainerdClient, translate
from crictl.containerd.h2 import RpcError
from crictl.gen.containerd.api.services.content.v1 import content_pb2
from crictl.gen.containerd.api.services.diff.v1 import diff_pb2
from crictl.gen.containerd.api.services.images.v1 import images_pb2
from crictl.gen.containerd.api.services.leases.v1 import leases_pb2
from crictl.gen.containerd.api.services.snapshots.v1 import snapshots_pb2
from crictl.gen.containerd.api.types import descriptor_pb2
from crictl.http2 import StatusCode
from crictl.images import mediatypes
from crictl.images.reference import Reference
from crictl.images.registry import (
    BlobStalled,
    Credentials,
    Descriptor,
    Endpoint,
    RegistryClient,
    sha256_digest,
)
from crictl.images.spool import SPOOL_PIECE, LocalContent, SpoolFile, leftovers

log = logging.getLogger(__name__)

LEASE_HEADER = "containerd-lease"
PULL_LEASE_LABEL = "crictld.io/pull"
MANAGED_LABEL = "crictld.io/managed"
INGEST_PREFIX = "crictld-"
GC_EXPIRE = "containerd.io/gc.expire"
UNCOMPRESSED = "containerd.io/uncompressed"
SNAPSHOT_REF = "containerd.io/snapshot.ref"
WRITE_CHUNK = 1 << 20
WRITE_WINDOW = 16  # content writes sent before the first of their answers is read
MAX_CONFIG = 16 << 20  # an image config is held whole in memory: its size is bounded first
RESUME_ATTEMPTS = 3


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"

    def matches(self, p: Mapping[str, Any] | None) -> bool:
        return (
            p is not None and p.get("os") == self.os and p.get("architecture") == self.architecture
        )


@dataclass(frozen=True)
class ImageContent:
    """What an image is made of, for one platform."""

    target: Descriptor  # what the name points at: an index or a manifest
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]
    config_json: Mapping[str, Any]

    @property
    def id(self) -> str:
        return self.config.digest

    @property
    def size(self) -> int:
        """As containerd counts it: the target (and manifest), the config and the layers."""
        total = self.target.size + self.config.size + sum(layer.size for layer in self.layers)
        if self.manifest.digest != self.target.digest:
            total += self.manifest.size
        return total

    @property
    def chain_id(self) -> str | None:
        chain = chain_ids(self.diff_ids)
        return chain[-1] if chain else None


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The OCI chain IDs: chain[0] = diff[0]; chain[i] = sha256(chain[i-1] + " " + diff[i])."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def select_manifest(
    index: Mapping[str, Any], platform: Platform, where: str
) -> tuple[int, Descriptor]:
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise errors.FailedPrecondition(f"{where}: index without manifests")
    seen = []
    for i, m in enumerate(manifests):
        desc = Descriptor.from_json(m, where)
        if desc.media_type in mediatypes.MANIFESTS and platform.matches(desc.platform):
            return i, desc
        if desc.platform:
            seen.append(f"{desc.platform.get('os')}/{desc.platform.get('architecture')}")
    raise errors.NotFound(
        f"{where}: no manifest for {platform.os}/{platform.architecture} in the index "
        f"(it has: {', '.join(seen) or 'none'})"
    )


def parse_manifest(body: bytes, where: str) -> tuple[Descriptor, tuple[Descriptor, ...]]:
    try:
        doc = json.loads(body)
        config = Descriptor.from_json(doc["config"], where)
        layers = tuple(Descriptor.from_json(layer, where) for layer in doc.get("layers") or [])
    except (ValueError, KeyError, TypeError) as e:
        raise errors.FailedPrecondition(f"{where}: malformed manifest: {e}") from e
    if config.size > MAX_CONFIG or config.size < 0:
        raise errors.FailedPrecondition(
            f"{where}: image config of {config.size} bytes: over the {MAX_CONFIG} crictld reads"
        )
    for layer in layers:
        if layer.media_type not in mediatypes.LAYERS:
            raise errors.FailedPrecondition(
                f"{where}: unsupported layer media type {layer.media_type!r} ({layer.digest})"
            )
    return config, layers


def parse_config(body: bytes, layers: int, where: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    try:
        doc = json.loads(body)
        diff_ids = tuple(str(d) for d in doc["rootfs"]["diff_ids"])
    except (ValueError, KeyError, TypeError) as e:
        raise errors.FailedPrecondition(f"{where}: malformed image config: {e}") from e
    if len(diff_ids) != layers:
        raise errors.FailedPrecondition(
            f"{where}: image config has {len(diff_ids)} diff_ids for {layers} layers"
        )
    return doc, diff_ids


# A small blob's bytes, or how to fetch them (from the registry) if they are needed.
SmallBlob = bytes | Callable[[], Awaitable[bytes]]


async def _response(call: Any) -> content_pb2.WriteContentResponse:
    """The next answer on a Content.Write stream (containerd answers every request)."""
    resp = await call.read()
    if not isinstance(resp, content_pb2.WriteContentResponse):
        raise errors.Unavailable("containerd closed the content write stream")
    return resp


def _pb_descriptor(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(media_type=d.media_type, digest=d.digest, size=d.size)


async def _copy_blob(
    what: str,
    desc: Descriptor,
    source: Callable[[int], AsyncIterator[bytes]],
    at: Callable[[], int],
    put: Callable[[bytes], Awaitable[None]],
    piece: int,
) -> None:
    """`desc`'s bytes from `source` (its bytes from an offset) to `put`, in pieces of `piece`
    (the last shorter), from `at()` (what `put` has taken) to the blob's size. A stream that
    breaks off resumes from `at()`, up to RESUME_ATTEMPTS times; a stall fails. `what`
    begins the errors ("pull REF: registry HOST")."""
    failures = 0
    while at() < desc.size:
        try:
            pending = bytearray()
            async for chunk in source(at()):
                pending += chunk
                while len(pending) >= piece:
                    await put(bytes(pending[:piece]))
                    del pending[:piece]
            if pending:
                await put(bytes(pending))
            if at() < desc.size:
                raise errors.Unavailable(
                    f"{what}: blob {desc.digest} ended at {at()} of {desc.size} bytes"
                )
        except BlobStalled:
            raise
        except errors.Unavailable:
            failures += 1
            if failures > RESUME_ATTEMPTS:
                raise
            log.info(
                "blob download broke off, resuming",
                extra={"what": what, "digest": desc.digest, "offset": at()},
            )
            await asyncio.sleep(0.2 * failures)


async def _all(aws: Sequence[Awaitable[Any]]) -> list[Any]:
    """The results of `aws`, run at once; the first failure is raised once all have ended
    (none is left running, or its failure unread)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _carries(info: content_pb2.Info, labels: Mapping[str, str]) -> bool:
    return all(info.labels.get(k) == v for k, v in labels.items())


class Puller:
    def __init__(
        self,
        containerd: ContainerdClient,
        registry: RegistryClient,
        snapshotter: str = "overlayfs",
        platform: Platform | None = None,
        max_concurrent_downloads: int = 3,
        spool: Path | None = None,
    ) -> None:
        self.containerd = containerd
        # Where layers are downloaded to be linked into containerd's content store (None:
        # through containerd's API), and that store, found on the first layer's download.
        self.spool = spool
        self._local: LocalContent | None = None
        self._local_known = spool is None
        self.registry = registry
        self.snapshotter = snapshotter
        self.platform = platform or Platform()
        self._downloads = asyncio.Semaphore(max_concurrent_downloads)
        # One writer per blob and one unpacker per chain ID in this process; a second pull of
        # the same blob waits for the first instead of fighting over containerd's ingest lock.
        # (Weak: a lock lives while some pull holds it, then its entry goes.)
        self._blob_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._snapshot_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # -- the pull --------------------------------------------------------------------------

    async def pull(
        self,
        ref: Reference,
        creds: Credentials | None = None,
        record: Callable[[ImageContent, list[str]], Awaitable[None]] | None = None,
        known: Callable[[str], str | None] | None = None,
        known_config: Callable[[str], str | None] | None = None,
    ) -> tuple[ImageContent, list[str]]:
        """Pulls `ref`; returns its content and the image names created in containerd.
        `record(content, names)` runs once the names exist, beside the lease's deletion.
        `known(name)`: the target digest containerd is thought to hold the name at (the
        caller's cache), if any; its record is then re-pointed first, not created first
        (`put_image`).
        `known_config(digest)`: the image config with that digest as the caller's cache
        holds it (JSON), if it does: its diff IDs need no read of the blob.
        An image the node has whole (every name where the cache says, at the target the
        registry resolves) is checked without a lease and nothing is written (`_held_whole`):
        it returns no names and `record` is not called."""
        started = time.perf_counter()
        lease = f"crictld-pull-{secrets.token_hex(8)}"
        first = ref.tagged_name or (ref.with_digest(ref.digest) if ref.digest else None)
        # The lease is made while the registry resolves the reference: nothing is written
        # under it before both are done. Not for a name the cache holds: that is most likely
        # a pull of an image the node has, which needs none.
        create: asyncio.Future[None] | None = None
        if known is None or first is None or known(first) is None:
            create = asyncio.ensure_future(self._create_lease(lease, ref))
        md = (*self.containerd.metadata, (LEASE_HEADER, lease))
        ended = False
        try:
            endpoint, target, body = await self.registry.resolve(ref, creds)
            # One record: the tag, or the digest pulled by. A tag's repository digest is
            # derived from its target (crictl/store/images.py, `tag_digest`), so RemoveImage
            # deletes one record and collects once.
            names = [ref.tagged_name or ref.with_digest(target.digest)]
            if (
                known is not None
                and known_config is not None
                and all(known(n) == target.digest for n in names)
            ):
                where = f"pull {ref}: registry {endpoint}"
                with trace.span("check image held"):
                    held = await self._held_whole(target, body, names, known_config, where)
                if held is not None:
                    ended = True
                    self._pulled(ref, held, started)
                    return held, []
            if create is None:
                create = asyncio.ensure_future(self._create_lease(lease, ref))
            await create
            content = await self._fetch_and_unpack(
                ref, creds, endpoint, target, body, lease, md, known_config
            )
            await asyncio.gather(
                *(
                    self.put_image(name, target, known is not None and known(name) is not None)
                    for name in names
                )
            )
            ended = True
            await _all(
                [
                    self._end_lease(lease, collect=False),
                    record(content, names) if record is not None else asyncio.sleep(0),
                ]
            )
            self._pulled(ref, content, started)
            return content, names
        finally:
            if not ended and create is not None:
                await asyncio.wait((create,))
                if not create.cancelled() and create.exception() is None:
                    await self._end_lease(lease, collect=True)

    @staticmethod
    def _pulled(ref: Reference, content: ImageContent, started: float) -> None:
        log.info(
            "pulled image",
            extra={
                "ref": str(ref),
                "id": content.id,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    async def _held_whole(
        self,
        target: Descriptor,
        body: bytes,
        names: Sequence[str],
        known_config: Callable[[str], str | None],
        where: str,
    ) -> ImageContent | None:
        """The image at `target` (`body` as the registry sent it), if the node has all of it:
        every name's record at the target (so the records hold the rest from containerd's
        collection), the index, manifest and config blobs with the references to what they
        hold, every layer blob, the config's parse in the cache, and the image's top
        snapshot, committed (a snapshot's parents cannot be removed while it is there). All
        asked at once; for an index the manifest is read from containerd first. Nothing is
        written, so no lease is needed: a removal that runs meanwhile ends as if it came
        after this pull. None when anything is missing or differs (the caller pulls under a
        lease, which writes what is missing)."""

        async def record_at(name: str) -> bool:
            image = await self.containerd.get_image(name)
            return (
                image is not None
                and image.target.digest == target.digest
                and image.target.media_type == target.media_type
                and image.target.size == target.size
                and image.labels.get(MANAGED_LABEL) == "true"
            )

        async def rest(manifest: Descriptor) -> ImageContent | None:
            manifest_body = body
            if manifest is not target:
                try:
                    manifest_body = await self._local_blob(manifest)
                except (errors.NotFound, errors.FailedPrecondition):
                    return None
            config, layers = parse_manifest(manifest_body, where)
            cached = known_config(config.digest)
            if cached is None:
                return None
            config_json, diff_ids = parse_config(cached.encode(), len(layers), where)
            chains = chain_ids(diff_ids)
            manifest_labels = {"containerd.io/gc.ref.content.config": config.digest}
            manifest_labels |= {
                f"containerd.io/gc.ref.content.l.{i}": layer.digest
                for i, layer in enumerate(layers)
            }
            config_labels = (
                {f"containerd.io/gc.ref.snapshot.{self.snapshotter}": chains[-1]} if chains else {}
            )
            checks = [
                self._has_blob(manifest.digest, manifest_labels),
                self._has_blob(config.digest, config_labels),
                *(self._has_blob(layer.digest, {}) for layer in layers),
            ]
            if chains:
                checks.append(self._snapshot_committed(chains[-1]))
            if not all(await _all(checks)):
                return None
            return ImageContent(target, manifest, config, layers, diff_ids, config_json)

        checks: list[Awaitable[bool]] = [record_at(name) for name in names]
        manifest = target
        if target.media_type in mediatypes.INDEXES:
            i, manifest = select_manifest(json.loads(body), self.platform, where)
            checks.append(
                self._has_blob(
                    target.digest, {f"containerd.io/gc.ref.content.m.{i}": manifest.digest}
                )
            )
        content, *found = await _all([rest(manifest), *checks])
        return content if all(found) else None

    async def _has_blob(self, digest: str, labels: Mapping[str, str]) -> bool:
        """Whether containerd has the blob, carrying `labels`."""
        info = await self.content_info(digest)
        return info is not None and _carries(info, labels)

    async def _snapshot_committed(self, name: str) -> bool:
        info = await self._snapshot(name)
        return info is not None and info.kind == snapshots_pb2.COMMITTED

    async def _create_lease(self, lease: str, what: Reference | str) -> None:
        await self.containerd.call(
            "create lease",
            self.containerd.leases.Create(
                leases_pb2.CreateRequest(
                    id=lease,
                    labels={
                        GC_EXPIRE: (datetime.now(UTC) + timedelta(hours=1)).strftime(
                            "%Y-%m-%dT%H:%M:%SZ"
                        ),
                        PULL_LEASE_LABEL: str(what)[:1024],
                    },
                ),
                metadata=self.containerd.metadata,
            ),
        )

    async def _end_lease(self, lease: str, collect: bool) -> None:
        with contextlib.suppress(errors.NotFound):
            await self.containerd.call(
                "delete lease",
                self.containerd.leases.Delete(
                    leases_pb2.DeleteRequest(id=lease, sync=collect),
                    metadata=self.containerd.metadata,
                ),
            )

    async def _fetch_and_unpack(
        self,
        ref: Reference,
        creds: Credentials | None,
        endpoint: Endpoint,
        target: Descriptor,
        target_body: bytes,
        lease: str,
        md: Sequence[tuple[str, str]],
        known_config: Callable[[str], str | None] | None = None,
    ) -> ImageContent:
        where = f"pull {ref}: registry {endpoint}"
        # The layers start downloading as soon as the manifest names them; the config, which
        # names their diff IDs (needed only when a layer is committed and unpacked), is read
        # meanwhile. The index, the manifest and the config are written into containerd once
        # every layer's download has ended (each a content info and a lease reference when
        # the node has them): nothing waits for them but the image records. Written during
        # the downloads, their round trips and containerd's work for them took the two cores
        # from the first layer's download (~2.5 ms of a one-layer pull); now they run beside
        # the unpacking.
        pending: list[asyncio.Future[Any]] = []  # cancelled if the pull fails
        puts: list[asyncio.Future[None]] = []
        downloaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def put_after_downloads(
            desc: Descriptor, body: SmallBlob, labels: dict[str, str]
        ) -> None:
            await asyncio.wait([downloaded])
            await self._put_small(desc, body, md, lease, labels)

        def put(desc: Descriptor, body: SmallBlob, labels: dict[str, str]) -> None:
            puts.append(asyncio.ensure_future(put_after_downloads(desc, body, labels)))
            pending.append(puts[-1])

        diff_ids_ready: asyncio.Future[tuple[str, ...]] = asyncio.get_running_loop().create_future()
        try:
            manifest, manifest_body = target, target_body
            if target.media_type in mediatypes.INDEXES:
                i, manifest = select_manifest(json.loads(target_body), self.platform, where)
                put(target, target_body, {f"containerd.io/gc.ref.content.m.{i}": manifest.digest})
                manifest_body = await self._small_blob(
                    manifest, lambda: self.registry.fetch_manifest(endpoint, ref, manifest, creds)
                )
            config, layers = parse_manifest(manifest_body, where)
            manifest_labels = {"containerd.io/gc.ref.content.config": config.digest}
            manifest_labels |= {
                f"containerd.io/gc.ref.content.l.{i}": layer.digest
                for i, layer in enumerate(layers)
            }

            async def layer_labels(i: int) -> dict[str, str]:
                return {UNCOMPRESSED: (await asyncio.shield(diff_ids_ready))[i]}

            downloads = [
                asyncio.ensure_future(
                    self._ensure_blob(
                        ref, creds, endpoint, layer, lease, md, partial(layer_labels, i)
                    )
                )
                for i, layer in enumerate(layers)
            ]
            pending += downloads

            def all_downloaded(_: object) -> None:
                if not downloaded.done():
                    downloaded.set_result(None)

            asyncio.gather(*downloads, return_exceptions=True).add_done_callback(all_downloaded)
            put(manifest, manifest_body, manifest_labels)

            def fetch_config() -> Awaitable[bytes]:
                return self.registry.fetch_blob(endpoint, ref, config, creds)

            cached = known_config(config.digest) if known_config is not None else None
            config_body: SmallBlob
            if cached is not None:
                # The cache's parse of the blob with this digest: the layers' diff IDs are
                # known without reading it. The blob is still held (or, gone, fetched) below.
                config_json, diff_ids = parse_config(cached.encode(), len(layers), where)
                config_body, config_was_here = fetch_config, True
            else:
                body, config_was_here = await self._small_blob_from(config, fetch_config)
                config_json, diff_ids = parse_config(body, len(layers), where)
                config_body = body
            diff_ids_ready.set_result(diff_ids)
            chains = chain_ids(diff_ids)
            config_labels = (
                {f"containerd.io/gc.ref.snapshot.{self.snapshotter}": chains[-1]} if chains else {}
            )
            # Each layer's snapshot is prepared while its download may still run: the first
            # layer's is, as a rule.
            put(config, config_body, config_labels)
            parent = ""
            for i, layer in enumerate(layers):
                await self._unpack_layer(
                    layer, diff_ids[i], chains[i], parent, lease, md, downloads[i], config_was_here
                )
                parent = chains[i]
            await asyncio.gather(*puts)
        except BaseException:
            if not diff_ids_ready.done():
                diff_ids_ready.cancel()
            for d in pending:
                d.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        return ImageContent(target, manifest, config, layers, diff_ids, config_json)

    async def describe(self, target: Descriptor) -> ImageContent:
        """What an image record in containerd is made of, read from the content store (for
        images pulled by anyone: crictld, ctr, another client)."""
        where = f"image {target.digest}"
        manifest, body = target, await self._local_blob(target)
        if target.media_type in mediatypes.INDEXES:
            _, manifest = select_manifest(json.loads(body), self.platform, where)
            body = await self._local_blob(manifest)
        elif target.media_type not in mediatypes.MANIFESTS:
            raise errors.FailedPrecondition(f"{where}: unsupported media type {target.media_type}")
        config, layers = parse_manifest(body, where)
        config_json, diff_ids = parse_config(await self._local_blob(config), len(layers), where)
        return ImageContent(target, manifest, config, layers, diff_ids, config_json)

    async def _local_blob(self, desc: Descriptor) -> bytes:
        data = await self.read_blob(desc.digest)
        if sha256_digest(data) != desc.digest:
            raise errors.FailedPrecondition(f"content {desc.digest} is corrupt in containerd")
        return data

    # -- content ---------------------------------------------------------------------------

    async def _add_to_lease(self, lease: str, resource: str, kind: str) -> None:
        await self.containerd.call(
            "add lease resource",
            self.containerd.leases.AddResource(
                leases_pb2.AddResourceRequest(
                    id=lease, resource=leases_pb2.Resource(id=resource, type=kind)
                ),
                metadata=self.containerd.metadata,
            ),
        )

    async def content_info(self, digest: str) -> content_pb2.Info | None:
        try:
            resp = await self.containerd.call(
                "content info",
                self.containerd.content.Info(
                    content_pb2.InfoRequest(digest=digest), metadata=self.containerd.metadata
                ),
            )
        except errors.NotFound:
            return None
        return resp.info

    async def read_blob(self, digest: str) -> bytes:
        chunks = []
        try:
            async for resp in self.containerd.content.Read(
                content_pb2.ReadContentRequest(digest=digest), metadata=self.containerd.metadata
            ):
                chunks.append(resp.data)
        except RpcError as e:
            raise translate(e, f"read {digest}") from e
        return b"".join(chunks)

    async def _small_blob(self, desc: Descriptor, fetch: Callable[[], Awaitable[bytes]]) -> bytes:
        """A manifest or config: from the content store if it is there, else the registry."""
        return (await self._small_blob_from(desc, fetch))[0]

    async def _small_blob_from(
        self, desc: Descriptor, fetch: Callable[[], Awaitable[bytes]]
    ) -> tuple[bytes, bool]:
        """`_small_blob`, and whether it came from the content store."""
        if await self.content_info(desc.digest) is not None:
            data = await self.read_blob(desc.digest)
            if sha256_digest(data) == desc.digest:
                return data, True
        return await fetch(), False

    async def _put_small(
        self,
        desc: Descriptor,
        data: SmallBlob,
        md: Sequence[tuple[str, str]],
        lease: str,
        labels: Mapping[str, str],
    ) -> None:
        """Writes a small blob in one round trip (commit with data, fetched first if `data`
        is how to fetch it), or, if it is there already, adds it to the lease and makes sure
        it carries `labels`."""
        info = await self.content_info(desc.digest)
        if info is None:
            body = data if isinstance(data, bytes) else await data()
            try:
                await self._write_once(desc, body, md, labels)
                return
            except errors.AlreadyExists:
                info = await self.content_info(desc.digest)
        await self._add_to_lease(lease, desc.digest, "content")
        if info is not None and not _carries(info, labels):
            await self._update_labels(desc.digest, labels)

    async def _update_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        await self.containerd.call(
            "update content labels",
            self.containerd.content.Update(
                content_pb2.UpdateRequest(
                    info=content_pb2.Info(digest=digest, labels=dict(labels)),
                    update_mask=FieldMask(paths=[f"labels.{k}" for k in labels]),
                ),
                metadata=self.containerd.metadata,
            ),
        )

    async def _write_once(
        self,
        desc: Descriptor,
        data: bytes,
        md: Sequence[tuple[str, str]],
        labels: Mapping[str, str],
    ) -> None:
        call = self.containerd.content.Write(metadata=md)
        try:
            with trace.span("containerd write content"):
                await call.write(
                    content_pb2.WriteContentRequest(
                        action=content_pb2.COMMIT,
                        ref=f"{INGEST_PREFIX}{desc.digest}",
                        total=desc.size,
                        expected=desc.digest,
                        offset=0,
                        data=data,
                        labels=dict(labels),
                    )
                )
                await _response(call)
                await call.done_writing()
        except RpcError as e:
            raise translate(e, f"write {desc.digest}") from e

    async def _ensure_blob(
        self,
        ref: Reference,
        creds: Credentials | None,
        endpoint: Endpoint,
        desc: Descriptor,
        lease: str,
        md: Sequence[tuple[str, str]],
        labels: Callable[[], Awaitable[Mapping[str, str]]],
    ) -> bool:
        """The layer in the content store, held by this pull's lease: downloaded under it, or,
        if it is there already (another pull's, or nothing references it yet), added to it
        (then True). Where containerd's content store is on this daemon's filesystem, through
        the spool (`_spooled`); else through containerd's content API.
        No round trip asks first: the content write's opening (its STAT, or the spool's
        commit, under the lease) answers AlreadyExists for a blob containerd has, and adds it
        to the lease in the same transaction, so it cannot be collected in between
        (containerd's metadata `contentStore.Writer`)."""
        lock = self._blob_locks.setdefault(desc.digest, asyncio.Lock())
        async with lock, self._downloads:
            local = await self._local_content()
            if local is not None and local.blob_path(desc.digest) is not None:
                with trace.span("download blob"):
                    return await self._spooled(ref, creds, endpoint, desc, md, labels, local)

            def registry(offset: int) -> AsyncIterator[bytes]:
                return self.registry.stream_blob(endpoint, ref, desc, offset, creds)

            where = f"registry {endpoint}"
            with trace.span("download blob"):
                return await self._download(ref, where, registry, desc, md, labels, WRITE_WINDOW)

    async def collect_spooled(self) -> list[str]:
        """Removes the spool files a crash left (returns their names). A blob one of them had
        linked into containerd's store may be no namespace's, which containerd removes only in
        a collection that removed content: it is committed under a pull lease of its own, so
        the deletion of the pull leases at start (`ImageManager.collect_pull_leftovers`, with
        containerd's synchronous collection) takes it, unless another namespace holds it."""
        if self.spool is None:
            return []
        left = leftovers(self.spool, await self._local_content())
        linked = [f for f in left if f.linked]
        if linked:
            lease = f"crictld-pull-{secrets.token_hex(8)}"
            await self._create_lease(lease, "spooled blobs left by a crash")
            md = (*self.containerd.metadata, (LEASE_HEADER, lease))
            for f in linked:

                async def no_labels() -> Mapping[str, str]:
                    return {}

                desc = Descriptor("", f.digest, f.size)  # only its digest and size are sent
                await self._commit_shared(desc, md, no_labels)
        return [f.name for f in left]

    async def _local_content(self) -> LocalContent | None:
        if not self._local_known:
            assert self.spool is not None
            self._local = LocalContent.find(await self.containerd.content_root(), self.spool)
            self._local_known = True
        return self._local

    async def _spooled(
        self,
        ref: Reference,
        creds: Credentials | None,
        endpoint: Endpoint,
        desc: Descriptor,
        md: Sequence[tuple[str, str]],
        labels: Callable[[], Awaitable[Mapping[str, str]]],
        local: LocalContent,
    ) -> bool:
        """`_download` through the spool (see crictl/images/spool.py): the layer downloaded
        into a file, checked, linked into containerd's content store, then committed with no
        bytes sent; or, when the store holds it already, committed (or found in the
        namespace, and added to the lease) without a download. A commit that does not find
        the linked blob (sharing off, or containerd's collector removed it before the write
        was open) sends the spooled bytes over the API."""
        if local.has(desc.digest, desc.size):
            present = await self._commit_shared(desc, md, labels)
            if present is not None:
                return present
        spooled = local.open(desc.digest, f"pull {ref}")
        try:
            await self._spool(ref, creds, endpoint, desc, spooled)
            spooled.link()
            present = await self._commit_shared(desc, md, labels)
            if present is not None:
                return present
            if local.has(desc.digest, desc.size):
                # There, and not taken: this containerd does not share its store's blobs
                # between namespaces (content_sharing_policy "isolated"). Its layers go
                # through its API from now on.
                log.warning(
                    "containerd does not take blobs from its content store "
                    "(content_sharing_policy?): layers go through its content API",
                    extra={"digest": desc.digest, "root": str(local.root)},
                )
                self._local = None
            else:  # containerd's collector took the link before the write was open
                log.info(
                    "containerd did not find a spooled blob in its store; sending it",
                    extra={"digest": desc.digest, "root": str(local.root)},
                )
            return await self._download(
                ref, f"spool {spooled.path}", spooled.read, desc, md, labels, 0, counted=False
            )
        finally:
            await spooled.close()

    async def _spool(
        self,
        ref: Reference,
        creds: Credentials | None,
        endpoint: Endpoint,
        desc: Descriptor,
        spooled: SpoolFile,
    ) -> None:
        """The layer from the registry into `spooled`, checked; a broken connection resumes
        where the file stands (HTTP Range); a stall or a digest mismatch fails the pull."""

        def registry(offset: int) -> AsyncIterator[bytes]:
            return self.registry.stream_blob(endpoint, ref, desc, offset, creds)

        async def put(piece: bytes) -> None:
            await spooled.append(piece)
            metrics.IMAGE_PULL_BYTES.labels("store").inc(len(piece))

        where = f"pull {ref}: registry {endpoint}"
        await _copy_blob(where, desc, registry, lambda: spooled.size, put, SPOOL_PIECE)
        if not await spooled.finish(desc.size):
            raise errors.Unavailable(
                f"pull {ref}: registry {endpoint}: blob {desc.digest} failed verification "
                f"({spooled.size} bytes, not the digest's); the download was discarded"
            )

    async def _commit_shared(
        self,
        desc: Descriptor,
        md: Sequence[tuple[str, str]],
        labels: Callable[[], Awaitable[Mapping[str, str]]],
    ) -> bool | None:
        """One Content.Write that commits the blob containerd's store holds to the namespace,
        under the lease, with no bytes: False when committed, True when the namespace had it
        (then added to the lease), None when containerd did not find it in its store (the
        write found offset 0: nothing was committed, and the ingest it made is aborted)."""
        ingest = f"{INGEST_PREFIX}{desc.digest}"
        commit = content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT,
            ref=ingest,
            offset=desc.size,  # a write at 0 would make containerd copy the blob
            total=desc.size,
            expected=desc.digest,
            labels=dict(await labels()),
        )
        call = self.containerd.content.Write(metadata=md)
        try:
            with trace.span("containerd commit content"):
                await call.write(commit)
                await _response(call)
                await call.done_writing()
            return False
        except RpcError as e:
            if e.code() == StatusCode.ALREADY_EXISTS:
                return True
            if e.code() == StatusCode.OUT_OF_RANGE:
                await self._abort_ingest(ingest)
                return None
            raise translate(e, f"commit blob {desc.digest}") from e
        finally:
            call.cancel()

    async def _download(
        self,
        ref: Reference,
        where: str,
        source: Callable[[int], AsyncIterator[bytes]],
        desc: Descriptor,
        md: Sequence[tuple[str, str]],
        labels: Callable[[], Awaitable[Mapping[str, str]]],
        window: int,
        counted: bool = True,
    ) -> bool:
        """Streams a layer from `source` (its bytes from an offset: the registry's, `counted`
        as downloaded here, or the spool's, counted as they came) into containerd (False),
        or finds it there (True); a broken connection resumes where the content store's
        ingest stands (HTTP Range); a stall or a digest mismatch fails the pull. A blob
        containerd has already is not downloaded (see `_ensure_blob`).

        With `window` writes in flight, containerd ending the stream with an error (a disk
        full) is raised by the next write or read, with containerd's status and words."""
        ingest = f"{INGEST_PREFIX}{desc.digest}"
        call = self.containerd.content.Write(metadata=md)
        committed = False
        opened = False  # containerd made (or found) the ingest: an abort may be due
        try:
            await call.write(
                content_pb2.WriteContentRequest(
                    action=content_pb2.STAT, ref=ingest, total=desc.size, expected=desc.digest
                )
            )
            offset = (await _response(call)).offset
            opened = True
            # Writes are pipelined: containerd answers each with the ingest's new offset, and
            # up to WRITE_WINDOW answers are left unread while the next pieces go out (waiting
            # for each answer made every piece a round trip). The registry's reads (~64 KiB)
            # are gathered into pieces of WRITE_CHUNK: each write costs the same whatever its
            # size. `offset` is what was sent (a piece not yet sent when the registry's stream
            # breaks is fetched again); the answers, all read before the commit, must come to
            # the same.
            unread = 0
            answered = offset

            async def send(piece: bytes) -> None:
                nonlocal offset, unread, answered
                await call.write(
                    content_pb2.WriteContentRequest(
                        action=content_pb2.WRITE, ref=ingest, offset=offset, data=piece
                    )
                )
                offset += len(piece)
                unread += 1
                if unread > window:
                    answered = (await _response(call)).offset
                    unread -= 1
                if counted:
                    metrics.IMAGE_PULL_BYTES.labels("api").inc(len(piece))

            await _copy_blob(
                f"pull {ref}: {where}", desc, source, lambda: offset, send, WRITE_CHUNK
            )
            for _ in range(unread):
                answered = (await _response(call)).offset
            if answered != offset:
                raise errors.Unavailable(
                    f"pull {ref}: containerd took {answered} of the {offset} bytes written "
                    f"for {desc.digest}"
                )
            commit = content_pb2.WriteContentRequest(
                action=content_pb2.COMMIT,
                ref=ingest,
                offset=offset,
                total=desc.size,
                expected=desc.digest,
                labels=dict(await labels()),
            )
            with trace.span("containerd commit content"):
                await call.write(commit)
                await _response(call)
            committed = True
            await call.done_writing()
            return False
        except RpcError as e:
            if e.code() == StatusCode.ALREADY_EXISTS:
                return True
            err = translate(e, f"write blob {desc.digest}")
            if e.code() in (StatusCode.FAILED_PRECONDITION, StatusCode.INVALID_ARGUMENT):
                err = errors.Unavailable(
                    f"pull {ref}: {where}: blob {desc.digest} failed verification "
                    f"({e.details()}); the download was discarded"
                )
            raise err from e
        finally:
            if not committed:
                call.cancel()
                if opened:
                    await self._abort_ingest(ingest)

    async def _abort_ingest(self, ingest: str) -> None:
        try:
            await self.containerd.call(
                "abort ingest",
                self.containerd.content.Abort(
                    content_pb2.AbortRequest(ref=ingest), metadata=self.containerd.metadata
                ),
            )
        except errors.NotFound:
            pass
        except errors.CrictlError as e:
            log.warning("could not abort ingest", extra={"ingest": ingest, "error": str(e)})

    # -- snapshots -------------------------------------------------------------------------

    async def _unpack_layer(
        self,
        layer: Descriptor,
        diff_id: str,
        chain_id: str,
        parent: str,
        lease: str,
        md: Sequence[tuple[str, str]],
        downloaded: asyncio.Future[bool],
        image_was_here: bool = False,
    ) -> None:
        """The layer's snapshot, held by this pull's lease: unpacked and committed under it,
        or, if it is there already, added to it and found again (as `_ensure_blob`). The
        snapshot is prepared before the layer is `downloaded`; the layer is applied after.

        Held, then found: the lease's reference is added before the snapshot is looked for
        (a reference to a snapshot not there is harmless: the commit below makes it). Where
        the image is new to containerd its snapshot is unlikely to be there, so it is looked
        for first, and held and found again only if it is (one round trip fewer before the
        prepare); where the image's config or the layer's blob was there already (a pull of
        an image the node has), the snapshot is held first and looked for once."""
        lock = self._snapshot_locks.setdefault(chain_id, asyncio.Lock())
        kind = f"snapshots/{self.snapshotter}"
        was_here = image_was_here or (
            downloaded.done()
            and not downloaded.cancelled()
            and downloaded.exception() is None
            and downloaded.result()
        )
        async with lock:
            # (`or` short-circuits: an image that was there is not looked for before the hold.)
            if was_here or await self._snapshot_exists(chain_id):
                await self._add_to_lease(lease, chain_id, kind)
                if await self._snapshot_exists(chain_id):
                    await downloaded  # the image's content is whole all the same
                    return
            key = f"extract-{secrets.token_hex(8)} {chain_id}"
            labels = {SNAPSHOT_REF: chain_id}
            prepared = await self.containerd.call(
                "prepare snapshot",
                self.containerd.snapshots.Prepare(
                    snapshots_pb2.PrepareSnapshotRequest(
                        snapshotter=self.snapshotter, key=key, parent=parent, labels=labels
                    ),
                    metadata=md,
                ),
            )
            try:
                await downloaded
                applied = await self.containerd.call(
                    "apply layer",
                    self.containerd.diff.Apply(
                        diff_pb2.ApplyRequest(
                            diff=_pb_descriptor(layer), mounts=list(prepared.mounts)
                        ),
                        metadata=md,
                    ),
                    deadline=None,  # as long as the layer takes to unpack
                )
                if applied.applied.digest != diff_id:
                    raise errors.Unavailable(
                        f"layer {layer.digest} unpacked to {applied.applied.digest}, but the image "
                        f"config says {diff_id}"
                    )
                await self.containerd.call(
                    "commit snapshot",
                    self.containerd.snapshots.Commit(
                        snapshots_pb2.CommitSnapshotRequest(
                            snapshotter=self.snapshotter, name=chain_id, key=key, labels=labels
                        ),
                        metadata=md,
                    ),
                )
            except errors.AlreadyExists:
                await self._remove_snapshot(key)
            except BaseException:
                await self._remove_snapshot(key)
                raise

    async def _snapshot_exists(self, key: str) -> bool:
        return await self._snapshot(key) is not None

    async def _snapshot(self, key: str) -> snapshots_pb2.Info | None:
        try:
            resp = await self.containerd.call(
                "stat snapshot",
                self.containerd.snapshots.Stat(
                    snapshots_pb2.StatSnapshotRequest(snapshotter=self.snapshotter, key=key),
                    metadata=self.containerd.metadata,
                ),
            )
        except errors.NotFound:
            return None
        info: snapshots_pb2.Info = resp.info
        return info

    async def _remove_snapshot(self, key: str) -> None:
        try:
            await self.containerd.call(
                "remove snapshot",
                self.containerd.snapshots.Remove(
                    snapshots_pb2.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key),
                    metadata=self.containerd.metadata,
                ),
            )
        except errors.CrictlError as e:
            log.warning("could not remove snapshot", extra={"key": key, "error": str(e)})

    # -- image records ---------------------------------------------------------------------

    async def put_image(self, name: str, target: Descriptor, exists: bool = False) -> None:
        """Creates or re-points the image record `name`. Either call may find the other
        case (the record made or deleted meanwhile, by anyone), and the other follows; with
        `exists` (a name thought to be there: a pull of an image the node has) the update is
        sent first, one round trip where create-then-update took two."""
        image = images_pb2.Image(
            name=name, target=_pb_descriptor(target), labels={MANAGED_LABEL: "true"}
        )
        if exists:
            with contextlib.suppress(errors.NotFound):
                await self._update_image(image)
                return
        try:
            await self.containerd.call(
                "create image",
                self.containerd.images.Create(
                    images_pb2.CreateImageRequest(image=image), metadata=self.containerd.metadata
                ),
            )
        except errors.AlreadyExists:
            await self._update_image(image)

    async def _update_image(self, image: images_pb2.Image) -> None:
        await self.containerd.call(
            "update image",
            self.containerd.images.Update(
                images_pb2.UpdateImageRequest(
                    image=image,
                    update_mask=FieldMask(paths=["target", f"labels.{MANAGED_LABEL}"]),
                ),
                metadata=self.containerd.metadata,
            ),
        )
