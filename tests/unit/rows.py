"""Rows for unit tests of the reconcilers: a store at the schema's head holding one READY pod
and one CREATED container in it, as the daemon's writes leave them; and the container
reconciler around a fake containerd."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select

from crictl.reconciler.containers import ContainerReconciler
from crictl.store import containers as sc
from crictl.store import sandboxes as ss
from crictl.store.common import Tx
from crictl.store.engine import Store, make_engine
from crictl.store.migrate import upgrade_to_head
from crictl.store.orm import Event


def new_container(
    cid: str,
    sid: str,
    name: str = "c",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> sc.NewContainer:
    """A container of busybox with an empty config, as CreateContainer records one."""
    return sc.NewContainer(
        id=cid,
        sandbox_id=sid,
        name=name,
        attempt=0,
        config="{}",
        config_digest="d",
        image="busybox",
        image_ref=None,
        image_id=None,
        log_path=None,
        labels=labels or {},
        annotations=annotations or {},
    )


def store_with_created_container(directory: Path, sid: str, cid: str, pause_pid: int) -> Store:
    db = directory / "crictld.db"
    upgrade_to_head(db)
    s = Store(make_engine(db))
    pod = ss.NewSandbox(
        id=sid, name="p", namespace="d", uid="u", attempt=0, config="{}", config_digest="d"
    )
    s.write_sync(lambda x: ss.create_sandbox(x, pod))
    s.write_sync(lambda x: ss.record_sandbox_started(x, sid, sid, pause_pid))
    new = new_container(cid, sid)
    s.write_sync(lambda x: sc.create_container(x, new))
    s.write_sync(lambda x: sc.record_container_created(x, cid, 0, 0, []))
    return s


def container_reconciler(store: Store, containerd: Any, tmp_path: Path) -> ContainerReconciler:
    """The real reconciler around a fake containerd (which gets its `on_exit`): no images (the
    containers' config names none) and no sandbox reconciler (a stop and a removal ask it
    only for the cgroup driver: a removal's rmdir of the task's cgroup, which is not there)."""
    fakes: dict[str, Any] = {
        "containerd": containerd,
        "images": None,
        "sandboxes": SimpleNamespace(
            containers_hook=None,
            removals_hook=None,
            settings=SimpleNamespace(systemd_cgroup=False),
        ),
    }
    r = ContainerReconciler(store, state_dir=tmp_path / "state", logger="/bin/true", **fakes)
    containerd.on_exit = r.on_exit
    return r


def list_events(
    session: Tx, object_kind: str | None = None, object_id: str | None = None
) -> list[Event]:
    """Every event row, oldest first, of one kind and object if given: the whole log as the
    tests read it (the daemon reads an object's last ones, `last_events`)."""
    query = select(Event).order_by(Event.id)
    if object_kind is not None:
        query = query.where(Event.object_kind == object_kind)
    if object_id is not None:
        query = query.where(Event.object_id == object_id)
    return list(session.orm.scalars(query))
