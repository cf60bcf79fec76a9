"""The read model: every sandbox and container row, held in memory as immutable views.

kubelet reads all the time (ListPodSandbox and ListContainers every second, the statuses of a
pod and its containers on each pod sync); served from SQLite, each read paid a hop to a reader
thread, a transaction and ORM loading, about 0.9 ms over the gRPC floor. Served from here, a
read is a dict lookup in the event loop's thread.

The rows stay the truth. The model is derived from them and never written on its own:

- `ReadModel.build` loads every row (the daemon does it once at start, after the migrations);
- each write transaction records which rows it touched: the new views `insert` and `change`
  made (the write path's statements, below), the ORM objects flushed (`track`), the rows
  deleted (`gone`); once it committed, `Store.write_sync` hands them to `ReadModel.publish`
  under the store's write lock, before the write returns to its caller. So a CRI call that
  waited for a write then reads the model with that write in it, and publishes land in commit
  order;
- a publish builds a new `Snapshot` (copied dicts) and swaps it in with one assignment: a reader
  takes `model.snapshot` once and sees whole transactions, never half of one.

Labels and annotations never change after a row is created, so a publish rebuilds a view from
the flushed ORM object's columns and the previous view's labels; only a row with neither (no
previous view, or labels written through the ORM) is read back, labels included.
`tests/unit/test_readmodel.py` runs random writes and checks the model equals a fresh build from
the rows after each.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from sqlalchemy import select

from crictl.errors import InvalidArgument, NotFound
from crictl.store.common import (
    ID_LENGTH,
    Tx,
    execute,
    execute_many,
    is_id_text,
    label_maps,
    tx_info,
)
from crictl.store.models import (
    LabelKind,
    container_label_table,
    container_table,
    pod_sandbox_label_table,
    pod_sandbox_table,
)

if TYPE_CHECKING:  # ORM objects come only from a session a test or a tool made
    from sqlalchemy.orm import Session

    from crictl.store.orm import Container, PodSandbox

Kind = Literal["sandbox", "container"]

# Tx.info keys: what a transaction touched, collected while it runs.
_TOUCHED = "crictld.readmodel.touched"  # {(kind, id): the ORM object, or None: read it back}
_GONE = "crictld.readmodel.gone"  # {(kind, id)}
_SNAPSHOT = "crictld.readmodel.snapshot"  # the model the transaction started from


@dataclass(frozen=True, slots=True)
class SandboxView:
    """A pod_sandbox row (every column, same names) with its labels and annotations."""

    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    runtime_handler: str
    config: str
    config_digest: str
    desired: str
    phase: str
    reason: str
    message: str
    generation: int
    observed_generation: int
    netns_path: str | None
    cni_result: str | None
    cni_config: str | None
    ip: str | None
    additional_ips: str
    pause_container_id: str | None
    task_pid: int | None
    network_released: bool
    created_at: int
    started_at: int | None
    finished_at: int | None
    updated_at: int
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContainerView:
    """A container row (every column, same names) with its labels and annotations."""

    id: str
    sandbox_id: str
    name: str
    attempt: int
    config: str
    config_digest: str
    image: str
    image_ref: str | None
    image_id: str | None
    log_path: str | None
    desired: str
    phase: str
    reason: str
    message: str
    exit_code: int | None
    generation: int
    observed_generation: int
    task_pid: int | None
    uid: int | None
    gid: int | None
    supplemental_groups: str
    created_at: int
    started_at: int | None
    finished_at: int | None
    updated_at: int
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


_LABEL_FIELDS = frozenset({"labels", "annotations"})
_SANDBOX_COLUMNS = tuple(
    f.name for f in dataclasses.fields(SandboxView) if f.name not in _LABEL_FIELDS
)
_CONTAINER_COLUMNS = tuple(
    f.name for f in dataclasses.fields(ContainerView) if f.name not in _LABEL_FIELDS
)


def _sandbox_view(
    row: PodSandbox, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> SandboxView:
    return _sandbox_of({c: getattr(row, c) for c in _SANDBOX_COLUMNS}, labels, annotations)


def _sandbox_of(
    values: dict[str, Any], labels: Mapping[str, str], annotations: Mapping[str, str]
) -> SandboxView:
    cni_config = values["cni_config"]
    if cni_config is not None:
        values["cni_config"] = sys.intern(cni_config)  # the pods of a network share one
    return SandboxView(**values, labels=labels, annotations=annotations)


def _container_view(
    row: Container, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> ContainerView:
    return _container_of({c: getattr(row, c) for c in _CONTAINER_COLUMNS}, labels, annotations)


def _container_of(
    values: dict[str, Any], labels: Mapping[str, str], annotations: Mapping[str, str]
) -> ContainerView:
    return ContainerView(**values, labels=labels, annotations=annotations)


@dataclass(frozen=True)
class Snapshot:
    """One consistent state: every sandbox and container, oldest first (the rows' created_at
    order, as the SQL lists gave)."""

    sandboxes: Mapping[str, SandboxView]
    containers: Mapping[str, ContainerView]

    def sandbox(self, id_or_prefix: str) -> SandboxView:
        return self.sandboxes[_resolve(self.sandboxes, id_or_prefix, "pod sandbox")]

    def container(self, id_or_prefix: str) -> ContainerView:
        return self.containers[_resolve(self.containers, id_or_prefix, "container")]

    def sandbox_id(self, id_or_prefix: str) -> str:
        return _resolve(self.sandboxes, id_or_prefix, "pod sandbox")

    def container_id(self, id_or_prefix: str) -> str:
        return _resolve(self.containers, id_or_prefix, "container")

    def containers_of(self, sandbox_id: str) -> Iterator[ContainerView]:
        return (c for c in self.containers.values() if c.sandbox_id == sandbox_id)


EMPTY = Snapshot({}, {})


def _resolve(rows: Mapping[str, Any], id_or_prefix: str, what: str) -> str:
    """The full id of the one row whose id starts with `id_or_prefix`: the same answers, and the
    same errors, as `common.resolve_id` gives from SQL."""
    if not id_or_prefix:
        raise InvalidArgument(f"{what} id is empty")
    if id_or_prefix in rows:
        return id_or_prefix
    if not is_id_text(id_or_prefix):
        raise NotFound(f"{what} {id_or_prefix[:80]!r} not found")
    found = None
    if len(id_or_prefix) < ID_LENGTH:
        for rid in rows:
            if rid.startswith(id_or_prefix):
                if found is not None:
                    raise InvalidArgument(f"{what} id prefix {id_or_prefix!r} is ambiguous")
                found = rid
    if found is None:
        raise NotFound(f"{what} {id_or_prefix!r} not found")
    return found


# ------------------------------------------------------------------------------------------
# What a transaction touched


def track(session: Session, _flush_context: object) -> None:
    """`after_flush` listener (`orm.sessions` registers it): records the sandbox and
    container rows a flush wrote, and the owners of label rows it wrote."""
    from crictl.store.orm import Container, ContainerLabel, PodSandbox, PodSandboxLabel

    info = tx_info(session)
    touched: dict[tuple[Kind, str], object | None] = info.setdefault(_TOUCHED, {})
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, PodSandbox):
            _orm_written(touched, ("sandbox", obj.id), obj)
        elif isinstance(obj, Container):
            _orm_written(touched, ("container", obj.id), obj)
        elif isinstance(obj, PodSandboxLabel):
            _labels_written(touched, ("sandbox", obj.sandbox_id))
        elif isinstance(obj, ContainerLabel):
            _labels_written(touched, ("container", obj.container_id))
    for obj in session.deleted:
        if isinstance(obj, PodSandbox):
            _gone(info, "sandbox", obj.id)
        elif isinstance(obj, Container):
            _gone(info, "container", obj.id)


def _orm_written(
    touched: dict[tuple[Kind, str], object | None], key: tuple[Kind, str], obj: object
) -> None:
    """An ORM object was flushed. It is the row's latest state unless the row is owed a read
    back (labels written); it replaces a view `change` or `insert` made earlier in the
    transaction (it was loaded after it)."""
    if key not in touched or isinstance(touched[key], SandboxView | ContainerView):
        touched[key] = obj


def _labels_written(touched: dict[tuple[Kind, str], object | None], key: tuple[Kind, str]) -> None:
    """Label rows of an owner were written through the ORM: its view is read back."""
    touched[key] = None


def gone(tx: Tx, kind: Kind, row_id: str) -> None:
    """The transaction deleted this row (a Core DELETE: the ORM does not see it)."""
    _gone(tx.info, kind, row_id)


def _gone(info: dict[str, Any], kind: Kind, row_id: str) -> None:
    info.setdefault(_GONE, set()).add((kind, row_id))
    info.get(_TOUCHED, {}).pop((kind, row_id), None)


# ------------------------------------------------------------------------------------------
# Row changes without the ORM's unit of work
#
# The write path's transitions (a desired state, a phase, an exit) touch one row each. Through
# the ORM each cost ~0.45 ms of CPU in the writer thread, most of it loading the row and
# flushing it, more under load (the writer thread shares the GIL with the event loop). The row
# as committed is already in the model, so these start from its view (`sandbox_now`,
# `container_now`) and `change` writes the changed columns in one UPDATE and hands the new
# view to the publish: ~0.1 ms a write. A row the transaction already holds as an ORM object
# is changed through that object instead, so the two never disagree.

V = TypeVar("V", SandboxView, ContainerView)


def begin(tx: Tx, snapshot: Snapshot | None) -> None:
    """The transaction starts from `snapshot` (the store's write lock held: it is what is
    committed); None when the model is not built, and rows are then read."""
    tx.info[_SNAPSHOT] = snapshot


def sandbox_now(tx: Tx, sandbox_id: str) -> SandboxView | None:
    """The sandbox row as this transaction sees it, or None."""
    view = _now(tx, "sandbox", sandbox_id)
    assert view is None or isinstance(view, SandboxView)
    return view


def container_now(tx: Tx, container_id: str) -> ContainerView | None:
    """The container row as this transaction sees it, or None."""
    view = _now(tx, "container", container_id)
    assert view is None or isinstance(view, ContainerView)
    return view


def _orm_object(tx: Tx, kind: Kind, rid: str) -> PodSandbox | Container | None:
    orm = tx.orm_made
    if orm is None or not orm.identity_map:  # the write path loads none: no key to build
        return None
    from sqlalchemy.orm.util import identity_key

    from crictl.store.orm import Container, PodSandbox

    model = PodSandbox if kind == "sandbox" else Container
    obj = orm.identity_map.get(identity_key(model, rid))
    return obj if isinstance(obj, PodSandbox | Container) else None


def _now(tx: Tx, kind: Kind, rid: str) -> SandboxView | ContainerView | None:
    key = (kind, rid)
    if key in tx.info.get(_GONE, ()):
        return None
    entry = tx.info.get(_TOUCHED, {}).get(key, _ABSENT)
    obj = _orm_object(tx, kind, rid)
    if obj is None and isinstance(entry, SandboxView | ContainerView):
        return entry
    snap: Snapshot | None = tx.info.get(_SNAPSHOT)
    prev = None
    if snap is not None:
        prev = (snap.sandboxes if kind == "sandbox" else snap.containers).get(rid)
    if obj is not None:
        # labels from the view this transaction made, else the model's; None: read back
        base = entry if isinstance(entry, SandboxView | ContainerView) else prev
        if base is not None and entry is not None:
            return _view(obj, base.labels, base.annotations)
    elif snap is not None and entry is _ABSENT:
        return prev
    loaded = (_load_sandboxes if kind == "sandbox" else _load_containers)(tx, [rid])
    return loaded.get(rid)


_ABSENT = object()


def _view(
    obj: PodSandbox | Container, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> SandboxView | ContainerView:
    from crictl.store.orm import PodSandbox

    if isinstance(obj, PodSandbox):
        return _sandbox_view(obj, labels, annotations)
    return _container_view(obj, labels, annotations)


def change(tx: Tx, view: V, **columns: Any) -> V:
    """Sets `columns` on the row `view` shows (as `sandbox_now`/`container_now` gave it) and
    returns its new view."""
    cols: dict[str, Any] = {
        k: v.value if isinstance(v, enum.Enum) else v for k, v in columns.items()
    }
    kind: Kind = "sandbox" if isinstance(view, SandboxView) else "container"
    # built on the latest view this transaction made of the row, should `view` be older
    latest = tx.info.get(_TOUCHED, {}).get((kind, view.id))
    new = dataclasses.replace(latest if isinstance(latest, type(view)) else view, **cols)
    obj = _orm_object(tx, kind, view.id)
    if obj is not None:
        for k, v in cols.items():
            setattr(obj, k, v)
        return new
    table = (pod_sandbox_table if kind == "sandbox" else container_table).name
    execute(tx, _update_sql(table, tuple(cols)), (*cols.values(), view.id))
    tx.info.setdefault(_TOUCHED, {})[(kind, view.id)] = new
    return new


def insert(tx: Tx, view: V, unique: tuple[str, ...]) -> bool:
    """Inserts the row `view` shows, with its labels and annotations, unless a row with the
    same `unique` columns exists (then nothing is written): True if it was inserted."""
    kind: Kind = "sandbox" if isinstance(view, SandboxView) else "container"
    if kind == "sandbox":
        table, label_table = pod_sandbox_table.name, pod_sandbox_label_table.name
        columns, owner = _SANDBOX_COLUMNS, "sandbox_id"
    else:
        table, label_table = container_table.name, container_label_table.name
        columns, owner = _CONTAINER_COLUMNS, "container_id"
    result = execute(
        tx, _insert_sql(table, columns, unique), tuple(getattr(view, c) for c in columns)
    )
    if result.rowcount != 1:
        return False
    rows = [
        (view.id, kind_, k, v)
        for kind_, items in (
            (LabelKind.LABEL.value, view.labels),
            (LabelKind.ANNOTATION.value, view.annotations),
        )
        for k, v in items.items()
    ]
    if rows:
        execute_many(
            tx,
            f"INSERT INTO {label_table} ({owner}, kind, key, value) VALUES (?, ?, ?, ?)",
            rows,
        )
    tx.info.get(_GONE, set()).discard((kind, view.id))
    tx.info.setdefault(_TOUCHED, {})[(kind, view.id)] = view
    return True


@functools.cache
def _insert_sql(table: str, columns: tuple[str, ...], unique: tuple[str, ...]) -> str:
    if not set(unique) <= set(columns):
        raise ValueError(f"not columns of {table}: {sorted(set(unique) - set(columns))}")
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    return (
        f"INSERT INTO {table} ({names}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(unique)}) DO NOTHING"
    )


def delete(tx: Tx, kind: Kind, rid: str) -> None:
    """Deletes the row (the database cascades to its labels)."""
    obj = _orm_object(tx, kind, rid)
    if obj is not None:
        tx.orm.expunge(obj)
    table = (pod_sandbox_table if kind == "sandbox" else container_table).name
    execute(tx, f"DELETE FROM {table} WHERE id = ?", (rid,))
    gone(tx, kind, rid)


def untouched(tx: Tx) -> Snapshot | None:
    """The model the transaction started from while it has written nothing: it then answers
    for the rows (id lookups without SQL). None: ask the rows."""
    info = tx.info
    if info.get(_TOUCHED) or info.get(_GONE):
        return None
    orm = tx.orm_made
    if orm is not None and (orm.new or orm.dirty or orm.deleted):
        return None
    snap: Snapshot | None = info.get(_SNAPSHOT)
    return snap


@functools.cache
def _update_sql(table: str, columns: tuple[str, ...]) -> str:
    allowed = _SANDBOX_COLUMNS if table == pod_sandbox_table.name else _CONTAINER_COLUMNS
    if not set(columns) <= set(allowed) - {"id"}:
        raise ValueError(f"not columns of {table}: {sorted(set(columns) - set(allowed))}")
    sets = ", ".join(f"{c} = ?" for c in columns)
    return f"UPDATE {table} SET {sets} WHERE id = ?"  # names checked above


# ------------------------------------------------------------------------------------------
# The model


class ReadModel:
    """The current `snapshot`; `build` and `publish` must be called in commit order (the
    store's write lock does it), readers just take `snapshot`."""

    def __init__(self) -> None:
        self.snapshot: Snapshot = EMPTY
        self.built = False
        self.publishes = 0
        self._lock = threading.Lock()

    def build(self, tx: Tx) -> Snapshot:
        """Every row, read in the transaction `tx`."""
        with self._lock:
            snap = load_all(tx)
            self.snapshot, self.built = snap, True
            return snap

    def publish(self, tx: Tx) -> None:
        """Applies what the committed transaction `tx` touched; reads back, in a new transaction
        on its connection, the rows it has no complete object for."""
        touched: dict[tuple[Kind, str], object | None] = tx.info.pop(_TOUCHED, {})
        removed: set[tuple[Kind, str]] = tx.info.pop(_GONE, set())
        if not self.built or not (touched or removed):
            return
        with self._lock:
            old = self.snapshot
            sandboxes = dict(old.sandboxes)
            containers = dict(old.containers)
            for kind, rid in removed:
                (sandboxes if kind == "sandbox" else containers).pop(rid, None)
            reread: dict[Kind, list[str]] = {"sandbox": [], "container": []}
            reorder = False
            for (kind, rid), obj in touched.items():
                if isinstance(obj, SandboxView):
                    reorder = reorder or rid not in sandboxes
                    sandboxes[rid] = obj
                elif isinstance(obj, ContainerView):
                    reorder = reorder or rid not in containers
                    containers[rid] = obj
                elif kind == "sandbox":
                    prev_s = sandboxes.get(rid)
                    if obj is not None and prev_s is not None:  # an ORM object (`track`)
                        sandboxes[rid] = _sandbox_view(
                            cast("PodSandbox", obj), prev_s.labels, prev_s.annotations
                        )
                    else:
                        reread["sandbox"].append(rid)
                else:
                    prev_c = containers.get(rid)
                    if obj is not None and prev_c is not None:  # an ORM object (`track`)
                        containers[rid] = _container_view(
                            cast("Container", obj), prev_c.labels, prev_c.annotations
                        )
                    else:
                        reread["container"].append(rid)
            if reread["sandbox"]:
                fresh_s = _load_sandboxes(tx, reread["sandbox"])
                for rid in reread["sandbox"]:
                    view = fresh_s.get(rid)
                    if view is None:
                        sandboxes.pop(rid, None)
                    else:
                        sandboxes[rid] = view
            if reread["container"]:
                fresh_c = _load_containers(tx, reread["container"])
                for rid in reread["container"]:
                    view_c = fresh_c.get(rid)
                    if view_c is None:
                        containers.pop(rid, None)
                    else:
                        containers[rid] = view_c
            if reorder or reread["sandbox"] or reread["container"]:
                sandboxes = _oldest_first(sandboxes)
                containers = _oldest_first(containers)
            self.snapshot = Snapshot(sandboxes, containers)
            self.publishes += 1


def _oldest_first(rows: dict[str, Any]) -> dict[str, Any]:
    """A new row is appended, which is its place unless clocks went back: sorted only then."""
    views = list(rows.values())
    if all(a.created_at <= b.created_at for a, b in itertools.pairwise(views)):
        return rows
    return {v.id: v for v in sorted(views, key=lambda v: v.created_at)}


# The rows are read as tuples of the views' columns, not as ORM objects: at start this read is
# the whole model, and the ORM built an object per row with its runtime spec, which no view
# holds (at 100 pods and 300 containers the step took 54-66 ms that way, 22-35 since).
def _load_sandboxes(tx: Tx, ids: Iterable[str] | None) -> dict[str, SandboxView]:
    t = pod_sandbox_table.c
    query = select(*(t[c] for c in _SANDBOX_COLUMNS)).order_by(t.created_at)
    if ids is not None:
        query = query.where(t.id.in_(list(ids)))
    rows = tx.connection.execute(query).all()
    maps = label_maps(
        tx, pod_sandbox_label_table, "sandbox_id", [r.id for r in rows], every=ids is None
    )
    return {
        r.id: _sandbox_of(dict(zip(_SANDBOX_COLUMNS, r, strict=True)), *maps[r.id]) for r in rows
    }


def _load_containers(tx: Tx, ids: Iterable[str] | None) -> dict[str, ContainerView]:
    t = container_table.c
    query = select(*(t[c] for c in _CONTAINER_COLUMNS)).order_by(t.created_at)
    if ids is not None:
        query = query.where(t.id.in_(list(ids)))
    rows = tx.connection.execute(query).all()
    maps = label_maps(
        tx, container_label_table, "container_id", [r.id for r in rows], every=ids is None
    )
    return {
        r.id: _container_of(dict(zip(_CONTAINER_COLUMNS, r, strict=True)), *maps[r.id])
        for r in rows
    }


def load_all(tx: Tx) -> Snapshot:
    """A snapshot built from the rows alone (the model at start; what tests compare it with)."""
    return Snapshot(_load_sandboxes(tx, None), _load_containers(tx, None))
