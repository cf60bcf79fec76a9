"""Images: pulls (shared between concurrent callers of the same reference), removals, the
image cache in the store (refreshed from containerd at start and from its image events, since
containerd's image store is authoritative), and the image filesystem's usage.

A pull is not desired state kept across restarts: kubelet retries a pull that failed, and a pull
cut short by a crash leaves only a lease and ingests, which `collect_pull_leftovers()` removes
at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from google.protobuf.any_pb2 import Any as AnyPb

from crictl import errors, metrics
from crictl.containerd.client import ContainerdClient
from crictl.containerd.usage import SnapshotUsage
from crictl.gen.containerd.api.events import image_pb2 as image_events
from crictl.gen.containerd.api.services.content.v1 import content_pb2
from crictl.gen.containerd.api.services.images.v1 import images_pb2
from crictl.gen.containerd.api.services.leases.v1 import leases_pb2
from crictl.images import reference
from crictl.images.pull import INGEST_PREFIX, PULL_LEASE_LABEL, ImageContent, Puller
from crictl.images.registry import Credentials, Descriptor, RegistryClient
from crictl.store.common import Tx
from crictl.store.engine import Store
from crictl.store.events import record_event
from crictl.store.images import (
    ImageRecord,
    ImageRow,
    NameRecord,
    delete_image_names,
    image_rows,
    put_image,
    replace_all_images,
)

log = logging.getLogger(__name__)

FS_USAGE_PERIOD = 10.0
_HEX = re.compile(r"^(sha256:)?[0-9a-f]+$")


@dataclass(frozen=True)
class FsUsage:
    timestamp: int
    mountpoint: str
    used_bytes: int
    inodes_used: int


@dataclass(frozen=True)
class ImageLookup:
    """How a CRI ImageSpec may name an image: its full id, one of its names, or an id prefix.
    Tried in that order, as containerd does."""

    image_id: str | None = None
    names: tuple[str, ...] = ()
    id_prefix: str | None = None


@dataclass(frozen=True)
class ImageView:
    """One image as CRI reports it, held in memory."""

    id: str
    size: int
    uid: int | None
    username: str
    config: str
    manifest_digest: str
    chain_id: str | None
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]  # its digest records' and its tags' (`repo@<tag's target>`)
    pinned: bool
    records: tuple[str, ...]  # the names of its records in containerd: what RemoveImage deletes


@dataclass(frozen=True)
class _IndexState:
    by_id: dict[str, ImageView]
    by_name: dict[str, str]  # record name -> image id
    targets: dict[str, str]  # record name -> the digest it points at in containerd
    # a tag's repository digest no record holds -> the images whose tags stand for it (one,
    # but for records that disagree with the registry; the least id is found)
    derived: dict[str, frozenset[str]]


class ImageIndex:
    """The image cache's in-memory read model, so ImageStatus and ListImages (kubelet asks
    before every container start and for every GC pass) cost no SQL and no thread hop.

    It is derived, never written on its own: every change goes to SQLite first, and the rows
    that transaction changed are read back in it and applied here once it committed, in the
    writer thread under the store's write lock (`ImageManager._write`), so updates land in
    commit order. Each update makes a new state and swaps it in whole: a reader on the event
    loop sees one commit or the next, never half of one.
    """

    def __init__(self) -> None:
        self._state = _IndexState({}, {}, {}, {})

    @property
    def by_id(self) -> dict[str, ImageView]:
        return self._state.by_id

    @property
    def by_name(self) -> dict[str, str]:
        return self._state.by_name

    @property
    def targets(self) -> dict[str, str]:
        return self._state.targets

    @property
    def derived(self) -> dict[str, frozenset[str]]:
        return self._state.derived

    def rebuild(self, rows: Sequence[ImageRow], pinned_names: set[str]) -> None:
        """The whole index from every row."""
        self._state = self._with(_IndexState({}, {}, {}, {}), rows, pinned_names)

    def update(self, rows: Sequence[ImageRow], touched: set[str], pinned_names: set[str]) -> None:
        """Replaces the images with ids in `touched` by `rows` (their rows as now committed;
        an id without a row is gone)."""
        old = self._state
        kept = _IndexState(
            {k: v for k, v in old.by_id.items() if k not in touched},
            {n: i for n, i in old.by_name.items() if i not in touched},
            {},
            {n: left for n, ids in old.derived.items() if (left := ids - touched)},
        )
        kept.targets.update((n, old.targets[n]) for n in kept.by_name if n in old.targets)
        self._state = self._with(kept, rows, pinned_names)

    @staticmethod
    def _with(state: _IndexState, rows: Sequence[ImageRow], pinned: set[str]) -> _IndexState:
        for row in rows:
            image = row.image
            state.by_id[image.id] = ImageView(
                id=image.id,
                size=image.size,
                uid=image.uid,
                username=image.username,
                config=image.config,
                manifest_digest=image.manifest_digest,
                chain_id=image.chain_id,
                repo_tags=tuple(row.tags),
                repo_digests=tuple(row.digests),
                pinned=any(n.name in pinned for n in row.names),
                records=tuple(n.name for n in row.names),
            )
            for name in row.derived_digests:
                state.derived[name] = state.derived.get(name, frozenset()) | {image.id}
            for n in row.names:
                state.by_name[n.name] = image.id
                state.targets[n.name] = n.target_digest
        return state

    def find(self, lookup: ImageLookup) -> ImageView | None:
        """The full id, then a name, then a unique id prefix (containerd's order)."""
        state = self._state
        if lookup.image_id is not None and lookup.image_id in state.by_id:
            return state.by_id[lookup.image_id]
        for name in lookup.names:
            if name in state.by_name:
                return state.by_id[state.by_name[name]]
            if name in state.derived:
                return state.by_id[min(state.derived[name])]
        if lookup.id_prefix:
            found = [v for k, v in state.by_id.items() if k.startswith(lookup.id_prefix)]
            if len(found) > 1:
                raise errors.InvalidArgument(f"image id prefix {lookup.id_prefix!r} is ambiguous")
            if found:
                return found[0]
        return None

    def all(self) -> list[ImageView]:
        return sorted(self._state.by_id.values(), key=lambda v: v.id)


def lookup_for(spec: str) -> ImageLookup:
    """How to find the image a CRI ImageSpec names: id, reference, or id prefix."""
    if not spec:
        raise errors.InvalidArgument("image is empty")
    if reference.is_image_id(spec):
        return ImageLookup(image_id=reference.normalize_id(spec))
    names: tuple[str, ...] = ()
    with contextlib.suppress(errors.InvalidArgument):
        ref = reference.parse(spec)
        names = (ref.with_digest(ref.digest),) if ref.digest else (ref.tagged_name or "",)
    prefix = reference.normalize_id(spec) if _HEX.match(spec) else None
    if not names and prefix is None:
        raise errors.InvalidArgument(f"image {spec!r} is neither a reference nor an image id")
    return ImageLookup(names=names, id_prefix=prefix)


def credentials_from(auth: Any) -> Credentials | None:
    """Registry credentials from a CRI AuthConfig."""
    return Credentials.from_auth_config(
        username=auth.username,
        password=auth.password,
        auth=auth.auth,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )


def user_of(config: dict[str, object]) -> tuple[int | None, str]:
    """(uid, username) from the image config's USER, as containerd's CRI reports them."""
    inner = config.get("config")
    user = inner.get("User") if isinstance(inner, dict) else None
    if not isinstance(user, str) or not user:
        return None, ""
    name = user.split(":", 1)[0]
    if name.isascii() and name.isdigit():
        return int(name), ""
    return None, name


def _descriptor(d: images_pb2.Image) -> Descriptor:
    return Descriptor(d.target.media_type, d.target.digest, d.target.size)


def _record(content: ImageContent) -> ImageRecord:
    uid, username = user_of(dict(content.config_json))
    return ImageRecord(
        id=content.id,
        size=content.size,
        uid=uid,
        username=username,
        config=json.dumps(content.config_json, sort_keys=True),
        manifest_digest=content.manifest.digest,
        chain_id=content.chain_id,
    )


def _name_record(name: str, target: Descriptor) -> NameRecord:
    kind = "digest" if "@" in name else "tag"
    return NameRecord(name, kind, target.digest, target.media_type)


class ImageManager:
    def __init__(
        self,
        store: Store,
        containerd: ContainerdClient,
        registry: RegistryClient,
        pause_image: str,
        snapshotter: str = "overlayfs",
        spool: Path | None = None,
    ) -> None:
        self.store = store
        self.containerd = containerd
        self.registry = registry
        self.snapshotter = snapshotter
        self.layers = SnapshotUsage(containerd, snapshotter)
        self.puller = Puller(containerd, registry, snapshotter, spool=spool)
        pause = reference.parse(pause_image)
        self.pinned_names = {n for n in (pause.tagged_name,) if n}
        if pause.digest:
            self.pinned_names.add(pause.with_digest(pause.digest))
        self.index = ImageIndex()
        self._pulls: dict[str, asyncio.Task[str]] = {}
        # Names a RemoveImage is deleting now: containerd's events for them are its own
        # deletes echoed back, which the removal records itself.
        self._removing: set[str] = set()
        # Repositories a pull is writing image records in (how many pulls), and the names
        # whose events arrived meanwhile: refreshed once those pulls end, but for the names
        # a pull recorded itself (else each pull's own records came back as a second
        # describe and write, beside the pull and the next call).
        self._pulling: dict[str, int] = {}
        self._held_events: dict[str, set[str]] = {}
        # RemoveImage's last delete, waiting for containerd's event that it committed.
        self._delete_seen: dict[str, set[asyncio.Event]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._events: asyncio.Queue[str] = asyncio.Queue()  # names to refresh
        self._fs_usage: FsUsage | None = None
        self._fs_root: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.collect_pull_leftovers()
        try:
            await self.resync()
        except (errors.Unavailable, errors.DeadlineExceeded) as e:
            # containerd went away meanwhile: serve what the database holds; the resync
            # after the event subscription (crictl.reconciler.events) follows containerd
            log.warning(
                "image cache resync failed; serving the stored one", extra={"error": str(e)}
            )
            await self._write(lambda s: None, off_loop=True)
        self._tasks.append(asyncio.create_task(self._handle_events(), name="image-events"))
        self._tasks.append(asyncio.create_task(self._measure_fs(), name="image-fs-usage"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for pull in list(self._pulls.values()):
            pull.cancel()
        await self.registry.close()

    async def collect_pull_leftovers(self) -> None:
        """Removes what pulls cut short by a crash left: their partial ingests and their leases
        (containerd then collects the content and snapshots only those leases held). After a
        start no pull is in flight, so every crictld pull lease and ingest is a leftover, and
        so is every file in the spool (a layer downloaded beside containerd's store)."""
        for name in await self.puller.collect_spooled():
            await self._cleanup_event(name, "spooled download of a pull cut short")
        md = self.containerd.metadata
        statuses = await self.containerd.call(
            "list ingests",
            self.containerd.content.ListStatuses(
                content_pb2.ListStatusesRequest(filters=[f"ref~=^{INGEST_PREFIX}"]), metadata=md
            ),
        )
        for st in statuses.statuses:
            with contextlib.suppress(errors.NotFound):
                await self.containerd.call(
                    "abort ingest",
                    self.containerd.content.Abort(
                        content_pb2.AbortRequest(ref=st.ref), metadata=md
                    ),
                )
            await self._cleanup_event(st.ref, "partial download of a pull cut short")
        leases = await self.containerd.call(
            "list leases",
            self.containerd.leases.List(
                leases_pb2.ListRequest(filters=[f'labels."{PULL_LEASE_LABEL}"']), metadata=md
            ),
        )
        for lease in leases.leases:
            with contextlib.suppress(errors.NotFound):
                await self.containerd.call(
                    "delete lease",
                    self.containerd.leases.Delete(
                        leases_pb2.DeleteRequest(id=lease.id, sync=True), metadata=md
                    ),
                )
            await self._cleanup_event(lease.id, "lease of a pull cut short by a restart")

    async def _write(self, change: Callable[[Tx], set[str] | None], off_loop: bool = False) -> None:
        """Applies a change to the image tables; the index takes the rows it changed (the ids
        `change` returns; None: all of them), as the same transaction reads them back.
        `off_loop`: the change and the index made again from every row run in the store's
        writer thread (`Store.write`), for the whole cache's."""

        def txn(tx: Tx) -> tuple[set[str] | None, list[ImageRow]]:
            touched = change(tx)
            return touched, image_rows(tx, touched)

        def publish(result: tuple[set[str] | None, list[ImageRow]]) -> None:
            touched, rows = result
            try:
                if touched is None:
                    self.index.rebuild(rows, self.pinned_names)
                else:
                    self.index.update(rows, touched, self.pinned_names)
            except Exception:  # a defect; the rows are right, so the index is made again
                log.exception("image index update failed: rebuilding it from the rows")
                self.index.rebuild(self.store.read_sync(image_rows), self.pinned_names)

        await self.store.write(txn, then=publish, off_loop=off_loop)

    async def _cleanup_event(self, what: str, message: str) -> None:
        def write(tx: Tx) -> None:
            record_event(tx, "gc", what, "cleanup", reason="PullInterrupted", message=message)

        await self.store.write(write)

    # -- the cache -------------------------------------------------------------------------

    async def resync(self) -> None:
        """Rebuilds the image cache from containerd's image store."""
        started = time.perf_counter()
        images = await self.containerd.list_images()
        described: dict[str, ImageContent] = {}
        entries: dict[str, tuple[ImageRecord, list[NameRecord]]] = {}
        for image in images:
            target = _descriptor(image)
            if target.digest not in described:
                try:
                    described[target.digest] = await self.puller.describe(target)
                except (errors.Unavailable, errors.DeadlineExceeded):
                    # containerd went away mid-resync: that says nothing of the image. The
                    # cache stays as it was (replacing it would drop every image not read yet,
                    # and creates would answer "not found" until the next resync).
                    raise
                except errors.CrictlError as e:
                    log.warning(
                        "skipping an image containerd holds but crictld cannot read",
                        extra={"image": image.name, "error": str(e)},
                    )
                    continue
            content = described[target.digest]
            entry = entries.setdefault(content.id, (_record(content), []))
            if _looks_like_reference(image.name):
                entry[1].append(_name_record(image.name, target))
        await self._write(lambda s: replace_all_images(s, list(entries.values())), off_loop=True)
        log.info(
            "image cache resynced",
            extra={"images": len(entries), "ms": round((time.perf_counter() - started) * 1000, 1)},
        )

    async def refresh(self, name: str) -> None:
        """Brings one image name in the cache up to date with containerd."""
        if name in self._removing:
            # Asking containerd now would run beside the removal's synchronous garbage
            # collection and slow it (measured: ~2 ms of its ~7); the removal records the
            # outcome itself.
            return
        repository = _repository(name)
        if repository in self._pulling:
            self._held_events.setdefault(repository, set()).add(name)
            return
        image = await self.containerd.get_image(name)
        if image is None:
            if name in self.index.by_name:
                await self._write(lambda s: delete_image_names(s, [name]))
            return
        target = _descriptor(image)
        if self.index.targets.get(name) == target.digest:
            return  # already known: most often our own write, echoed back by containerd
        if not _looks_like_reference(name):
            return
        content = await self.puller.describe(target)
        await self._write(lambda s: put_image(s, _record(content), [_name_record(name, target)]))

    async def on_event(self, topic: str, name: str) -> None:
        """containerd's event for image `name`: wakes a removal waiting for it, and brings the
        name's cache entry up to date."""
        self._wake_removal(topic, name)
        await self._refresh_logged(name)

    def _wake_removal(self, topic: str, name: str) -> None:
        if topic == "/images/delete":
            for seen in self._delete_seen.get(name, ()):
                seen.set()

    async def _refresh_logged(self, name: str) -> None:
        try:
            await self.refresh(name)
        except errors.CrictlError as e:
            log.warning("image refresh failed", extra={"image": name, "error": str(e)})

    def on_containerd_event(self, topic: str, event: AnyPb) -> None:
        """An /images/ event off the shared subscription (crictl.reconciler.events): a
        removal waiting for it wakes at once; the refresh is queued for the image worker,
        in order, so a slow one never holds up task exits or a later removal's wake."""
        name = _event_image_name(event.type_url, event.value)
        log.debug("image event", extra={"topic": topic, "image": name})
        if name:
            self._wake_removal(topic, name)
            self._events.put_nowait(name)

    async def _handle_events(self) -> None:
        while True:
            name = await self._events.get()
            try:
                await self._refresh_logged(name)
            except Exception:  # a bug must not end the worker: the next resync repairs
                log.exception("image event failed", extra={"image": name})

    # -- pull and remove -------------------------------------------------------------------

    async def pull(self, spec: str, creds: Credentials | None = None) -> str:
        """Pulls `spec`; returns the image id. Callers pulling the same reference at the same
        time share one pull and all get its result; a caller that gives up (its deadline
        passed) does not stop the pull for the others, or for its own retry."""
        ref = reference.parse(spec)
        key = str(ref)
        task = self._pulls.get(key)
        if task is None:
            task = asyncio.create_task(self._pull(ref, creds), name=f"pull {key}")
            self._pulls[key] = task
            task.add_done_callback(lambda t: self._pull_done(key, t))
        return await asyncio.shield(task)

    def _pull_done(self, key: str, task: asyncio.Task[str]) -> None:
        if self._pulls.get(key) is task:
            del self._pulls[key]
        if not task.cancelled():
            task.exception()  # retrieved, so an unawaited failure is not reported as lost

    def _config_of(self, image_id: str) -> str | None:
        view = self.index.by_id.get(image_id)
        return None if view is None else view.config

    async def _pull(self, ref: reference.Reference, creds: Credentials | None) -> str:
        async def record(content: ImageContent, names: list[str]) -> None:
            records = [_name_record(n, content.target) for n in names]
            await self._write(lambda s: put_image(s, _record(content), records))

        repository = ref.repository
        self._pulling[repository] = self._pulling.get(repository, 0) + 1
        recorded: list[str] = []
        try:
            content, recorded = await self.puller.pull(
                ref,
                creds,
                record,
                known=self.index.targets.get,
                known_config=self._config_of,
            )
        except Exception:
            metrics.IMAGE_PULLS.labels("error").inc()
            raise
        finally:
            left = self._pulling.pop(repository) - 1
            if left:
                self._pulling[repository] = left
            held = self._held_events.pop(repository, set()) - set(recorded)
            for name in sorted(held):  # mostly none: another client's records meanwhile
                await self.on_event("", name)
        metrics.IMAGE_PULLS.labels("ok").inc()
        self._fs_usage = None  # measure again on the next ImageFsInfo
        return content.id

    async def remove(self, spec: str) -> None:
        """RemoveImage: by a tag, that tag (and the image with it when it was the last tag); by
        id or digest, every name. Missing image: nothing to do."""
        lookup = lookup_for(spec)
        image = self.index.find(lookup)
        if image is None:
            await self._remove_uncached(lookup)
            return
        tags = list(image.repo_tags)
        by_tag = [n for n in lookup.names if n in tags and lookup.image_id is None]
        if by_tag and len(tags) > 1 and image.id != lookup.image_id:
            names = by_tag
        else:
            names = list(image.records)  # a tag's repository digest is no record of its own
        removing = set(names) - self._removing  # a concurrent removal owns the others
        self._removing |= removing
        deleted: list[str] = []  # by containerd, not yet recorded in the cache
        try:
            await self._delete_all(names, deleted)
        except BaseException:
            if deleted:
                # The cache drops what containerd no longer has; the delete's error is the
                # answer (a failed write leaves the names to the next resync).
                with contextlib.suppress(Exception):
                    await self._write(lambda s: delete_image_names(s, deleted))
            raise
        finally:
            self._removing -= removing
        self._fs_usage = None

    async def _delete_all(self, names: list[str], deleted: list[str]) -> None:
        """Deletes `names` at once, each with containerd's synchronous garbage collection, and
        records them gone; `deleted` holds what containerd deleted and the cache does not yet
        say (emptied once recorded).

        containerd's CRI deletes an image's names one after the other, the last synchronously.
        Sent at once, every delete is synchronous, because their order is not known: each
        waits for a collection that started after its own delete committed (containerd's
        collector runs one at a time and serves the waiters present when it starts), so once
        every answer is in, a collection that began after the last commit has ended and what
        the image held is freed, as before, one round trip sooner per extra name.

        containerd commits a delete and publishes its event before it collects: once every
        name's event (or answer) is in, the cache write runs while the collections do."""
        seen = {name: asyncio.Event() for name in names}
        for name, event in seen.items():
            self._delete_seen.setdefault(name, set()).add(event)
        deletes = {
            name: asyncio.ensure_future(self.containerd.delete_image(name, sync=True))
            for name in names
        }
        events = {name: asyncio.ensure_future(event.wait()) for name, event in seen.items()}
        recorded = False

        def gone(name: str) -> bool:
            """containerd deleted `name`, so far as this call knows."""
            d = deletes[name]
            answered = d.done() and not d.cancelled() and d.exception() is None
            return answered or seen[name].is_set()

        try:
            pending = set(names)
            while pending:
                await asyncio.wait(
                    [f for n in pending for f in (deletes[n], events[n])],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for name in names:
                    if name in pending and deletes[name].done() and not gone(name):
                        await deletes[name]  # its error is the answer
                pending = {n for n in pending if not gone(n)}
            deleted += names
            await self._write(lambda s: delete_image_names(s, deleted))
            deleted.clear()
            recorded = True
            await asyncio.gather(*deletes.values())
        except BaseException:
            for d in deletes.values():
                d.cancel()
            if not recorded:
                # committed in containerd, whatever the answers were
                deleted[:] = [n for n in names if gone(n)]
            raise
        finally:
            for name, event in seen.items():
                waiters = self._delete_seen.get(name, set())
                waiters.discard(event)
                if not waiters:
                    self._delete_seen.pop(name, None)
            for waiting in events.values():
                waiting.cancel()

    async def _remove_uncached(self, lookup: ImageLookup) -> None:
        """An image containerd has but the cache missed (an event not yet seen)."""
        for name in lookup.names:
            if await self.containerd.delete_image(name, sync=True):
                await self._write(partial(delete_image_names, names=[name]))

    # -- reads -----------------------------------------------------------------------------

    async def ensure(self, spec: str) -> ImageView:
        """The image, pulled first if it is not here (the pause image on first need)."""
        image = self.status(spec)
        if image is None:
            await self.pull(spec)
            image = self.status(spec)
        if image is None:
            raise errors.Unavailable(f"image {spec} vanished right after its pull")
        return image

    def list(self) -> list[ImageView]:
        return self.index.all()

    def status(self, spec: str) -> ImageView | None:
        return self.index.find(lookup_for(spec))

    def measured_fs_usage(self) -> FsUsage | None:
        """The image filesystem's usage as last measured, None when it is to be measured again
        (`fs_usage`); read from any thread (a frozen value, set whole)."""
        return self._fs_usage

    async def fs_usage(self) -> FsUsage:
        if self._fs_usage is None:
            await self._measure_fs_once()
        assert self._fs_usage is not None
        return self._fs_usage

    async def _measure_fs(self) -> None:
        while True:
            try:
                await self._measure_fs_once()
            except errors.CrictlError as e:
                log.warning("image fs usage failed", extra={"error": str(e)})
            await asyncio.sleep(FS_USAGE_PERIOD)

    async def _measure_fs_once(self) -> None:
        if self._fs_root is None:
            self._fs_root = await self.containerd.snapshotter_root(self.snapshotter) or ""
        size, inodes = await self.layers.total()
        self._fs_usage = FsUsage(time.time_ns(), self._fs_root, size, inodes)


def _repository(name: str) -> str | None:
    try:
        return reference.parse(name, default_tag=False).repository
    except errors.InvalidArgument:
        return None


def _looks_like_reference(name: str) -> bool:
    """containerd image names crictld reports: references, not bare ids (sha256:...)."""
    try:
        reference.parse(name, default_tag=False)
    except errors.InvalidArgument:
        return False
    return not reference.is_image_id(name)


def _event_image_name(type_url: str, value: bytes) -> str | None:
    kind = type_url.rsplit("/", 1)[-1]
    if kind == "containerd.services.images.v1.ImageCreate":
        return image_events.ImageCreate.FromString(value).name
    if kind == "containerd.services.images.v1.ImageUpdate":
        return image_events.ImageUpdate.FromString(value).name
    if kind == "containerd.services.images.v1.ImageDelete":
        return image_events.ImageDelete.FromString(value).name
    return None


__all__: Sequence[str] = ["FsUsage", "ImageManager", "credentials_from", "lookup_for", "user_of"]
