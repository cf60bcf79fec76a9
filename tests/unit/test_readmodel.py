"""The read model against the rows: after any sequence of writes (committed or rolled back),
the model equals a fresh build from the database; and it answers lookups and filters as SQL did.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import class_mapper

from crictl.errors import CrictlError, InvalidArgument, NotFound
from crictl.store import containers as sc
from crictl.store import orm
from crictl.store import sandboxes as ss
from crictl.store.common import Tx
from crictl.store.engine import Store, make_engine
from crictl.store.migrate import upgrade_to_head
from crictl.store.models import ContainerDesired, ContainerPhase, SandboxDesired, SandboxPhase
from crictl.store.orm import Container, PodSandbox
from crictl.store.readmodel import (
    ContainerView,
    SandboxView,
    change,
    container_now,
    load_all,
    sandbox_now,
)
from crictl.store.transitions import switch_container_phase, switch_sandbox_phase
from tests.unit import rows


def fresh(store: Store) -> Any:
    with store.session() as session:
        return load_all(Tx.of(session))


def new_sandbox(sid: str, name: str, labels: dict[str, str] | None = None) -> ss.NewSandbox:
    return ss.NewSandbox(
        id=sid,
        name=name,
        namespace="default",
        uid=f"uid-{name}",
        attempt=0,
        config="{}",
        config_digest="d",
        netns_path=f"/run/netns/{sid[:8]}",
        labels=labels if labels is not None else {"app": name},
        annotations={"note": name},
    )


def new_container(cid: str, sandbox_id: str, name: str, labels: dict[str, str]) -> sc.NewContainer:
    return rows.new_container(cid, sandbox_id, name, labels, annotations={"a": "1"})


def sandbox_writer(new: ss.NewSandbox) -> Callable[[Tx], object]:
    return lambda s: ss.create_sandbox(s, new)


def container_writer(new: sc.NewContainer) -> Callable[[Tx], object]:
    return lambda s: sc.create_container(s, new)


def sandbox_lister(flt: ss.SandboxFilter | None) -> Callable[[Tx], list[PodSandbox]]:
    return lambda s: orm.list_sandboxes(s, flt)


def test_views_carry_every_column() -> None:
    """A column added to a table must be added to its view (or the model would drop it),
    but for the ones the ORM defers: those are read from the row when asked for (the specs,
    crictl/store/specs.py), never held in memory."""
    for view, model in ((SandboxView, PodSandbox), (ContainerView, Container)):
        fields = {f.name for f in dataclasses.fields(view)} - {"labels", "annotations"}
        columns = class_mapper(model).column_attrs
        assert fields == {c.key for c in columns if not c.deferred}
        assert {c.key for c in columns if c.deferred} == {"runtime_spec"}


def test_model_answers_as_sql_did(store: Store) -> None:
    store.write_sync(lambda s: ss.create_sandbox(s, new_sandbox("ab" + "0" * 62, "web")))
    store.write_sync(lambda s: ss.create_sandbox(s, new_sandbox("ac" + "0" * 62, "db")))
    snap = store.snapshot
    assert snap.sandbox("ab").id == "ab" + "0" * 62
    assert snap.sandbox("ab" + "0" * 62).labels == {"app": "web"}
    with pytest.raises(InvalidArgument, match="ambiguous"):
        snap.sandbox("a")
    with pytest.raises(NotFound):
        snap.sandbox("ff")
    with pytest.raises(NotFound):
        snap.sandbox("a%")  # never a pattern
    with pytest.raises(NotFound):
        snap.sandbox("ab\n")
    with pytest.raises(InvalidArgument, match="empty"):
        snap.sandbox("")
    with pytest.raises(NotFound):
        snap.container("ab")
    # the same selections as SQL
    for flt in (
        None,
        ss.SandboxFilter(),
        ss.SandboxFilter(id_prefix="ab"),
        ss.SandboxFilter(id_prefix="zz"),
        ss.SandboxFilter(phases=frozenset({SandboxPhase.PENDING})),
        ss.SandboxFilter(phases=frozenset({SandboxPhase.READY})),
        ss.SandboxFilter(labels={"app": "db"}),
        ss.SandboxFilter(labels={"app": "db", "x": "y"}),
    ):
        from_sql = [r.id for r in store.read_sync(sandbox_lister(flt))]
        assert [v.id for v in ss.select_sandboxes(store.snapshot, flt)] == from_sql, flt


def test_a_rolled_back_write_changes_nothing(store: Store) -> None:
    sid = "a" * 64
    store.write_sync(lambda s: ss.create_sandbox(s, new_sandbox(sid, "web")))
    before = store.snapshot

    def fails(session: Tx) -> None:
        ss.set_sandbox_desired(session, sid, SandboxDesired.NOTREADY)
        session.orm.flush()
        raise NotFound("no")

    with pytest.raises(NotFound):
        store.write_sync(fails)
    assert store.snapshot is before
    assert store.snapshot == fresh(store)


def _container_row(store: Store) -> str:
    sid, cid = "a" * 64, "c" * 64
    store.build_model()
    store.write_sync(lambda s: ss.create_sandbox(s, new_sandbox(sid, "web")))
    store.write_sync(lambda s: sc.create_container(s, new_container(cid, sid, "app", {"k": "v"})))
    return cid


def _row(store: Store, cid: str) -> ContainerView:
    view = fresh(store).containers[cid]
    assert store.snapshot.containers[cid] == view
    return view  # type: ignore[no-any-return]


def test_a_lean_change_lands_in_the_row_and_the_model(store: Store) -> None:
    cid = _container_row(store)
    view = store.write_sync(lambda s: sc.set_container_desired(s, cid, ContainerDesired.RUNNING))
    assert view.desired == ContainerDesired.RUNNING and view.generation == 2
    assert _row(store, cid) == view


def test_a_row_held_as_an_orm_object_is_changed_through_it(store: Store) -> None:
    cid = _container_row(store)

    def tx(s: Tx) -> None:
        orm = s.orm.get(Container, cid)
        assert orm is not None
        orm.message = "through the ORM"  # pending, not flushed
        sc.set_container_desired(s, cid, ContainerDesired.RUNNING)
        assert orm.desired == ContainerDesired.RUNNING

    store.write_sync(tx)
    row = _row(store, cid)
    assert (row.message, row.desired, row.generation) == ("through the ORM", "RUNNING", 2)


def test_an_orm_change_after_a_lean_one_keeps_both(store: Store) -> None:
    cid = _container_row(store)

    def tx(s: Tx) -> None:
        sc.set_container_desired(s, cid, ContainerDesired.RUNNING)
        orm = s.orm.get(Container, cid)
        assert orm is not None and orm.desired == ContainerDesired.RUNNING  # the row, as changed
        orm.message = "after"
        s.orm.flush()
        sc.mark_container_observed(s, cid, 2)  # through the ORM object again

    store.write_sync(tx)
    row = _row(store, cid)
    assert (row.desired, row.message, row.observed_generation) == ("RUNNING", "after", 2)


def test_changes_in_one_transaction_build_on_each_other(store: Store) -> None:
    cid = _container_row(store)

    def tx(s: Tx) -> None:
        sc.set_container_desired(s, cid, ContainerDesired.RUNNING)
        sc.record_container_created(s, cid, 1, 2, [3])
        sc.record_container_started(s, cid, 42)
        sc.set_container_desired(s, cid, ContainerDesired.EXITED)

    store.write_sync(tx)
    row = _row(store, cid)
    assert (row.phase, row.desired, row.generation, row.task_pid, row.uid) == (
        "RUNNING",
        "EXITED",
        3,
        42,
        1,
    )


def test_a_change_through_an_older_view_keeps_the_changes_since(store: Store) -> None:
    cid = _container_row(store)

    def tx(s: Tx) -> None:
        old = container_now(s, cid)
        assert old is not None
        sc.set_container_desired(s, cid, ContainerDesired.RUNNING)
        change(s, old, message="from the older view")

    store.write_sync(tx)
    row = _row(store, cid)
    assert (row.desired, row.message) == ("RUNNING", "from the older view")


def test_a_deleted_row_is_gone_for_the_rest_of_the_transaction(store: Store) -> None:
    cid = _container_row(store)

    def tx(s: Tx) -> None:
        s.orm.get(Container, cid)
        sc.delete_container(s, cid)
        assert container_now(s, cid) is None
        with pytest.raises(NotFound):
            sc.set_container_desired(s, cid, ContainerDesired.REMOVED)

    store.write_sync(tx)
    assert cid not in store.snapshot.containers and cid not in fresh(store).containers


def test_a_failed_publish_rebuilds_from_the_rows(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = "a" * 64
    store.write_sync(lambda s: ss.create_sandbox(s, new_sandbox(sid, "web")))

    def broken(session: Tx) -> None:
        raise RuntimeError("defect")

    monkeypatch.setattr(store.model, "publish", broken)
    store.write_sync(lambda s: ss.set_sandbox_desired(s, sid, SandboxDesired.NOTREADY))
    assert store.snapshot.sandboxes[sid].desired == SandboxDesired.NOTREADY
    assert store.snapshot == fresh(store)


# ------------------------------------------------------------------------------------------
# Random writes


prefixes = st.sampled_from(["a", "ab", "b"])
names = st.sampled_from(["a", "b", "c", "d"])
label_sets = st.dictionaries(st.sampled_from(["app", "tier", "x"]), names, max_size=2)


SANDBOX_ACTIONS = [
    "desired",
    "phase",
    "network",
    "started",
    "notready",
    "failed",
    "error",
    "released",
    "observed",
    "config",
    "orm",
    "delete",
]
CONTAINER_ACTIONS = [
    "desired",
    "phase",
    "created",
    "started",
    "exited",
    "config",
    "observed",
    "orm",
    "delete",
]


def sandbox_change(sid: str, action: str, value: str) -> Callable[[Tx], object]:
    def phase(s: Tx) -> None:
        if value in list(SandboxDesired):
            s.orm.get(
                PodSandbox, sid
            )  # an ORM object of the row in the session: changed through it
        row = sandbox_now(s, sid)
        if row is None:
            raise NotFound(sid)
        switch_sandbox_phase(
            s, row, SandboxPhase(value) if value in list(SandboxPhase) else SandboxPhase.READY
        )

    def orm(s: Tx) -> None:
        row = s.orm.get(PodSandbox, sid)
        if row is None:
            raise NotFound(sid)
        row.message = f"orm {value}"
        row.generation += 1

    fns: dict[str, Callable[[Tx], object]] = {
        "desired": lambda s: ss.set_sandbox_desired(
            s,
            sid,
            SandboxDesired(value) if value in list(SandboxDesired) else SandboxDesired.NOTREADY,
        ),
        "phase": phase,
        "network": lambda s: ss.record_sandbox_network(
            s, sid, '{"r": 1}', "10.0.0.2", ["fd00::2"], '{"name": "n"}'
        ),
        "started": lambda s: ss.record_sandbox_started(s, sid, "p" * 64, 42),
        "notready": lambda s: ss.record_sandbox_not_ready(s, sid, "Exited", "gone"),
        "failed": lambda s: ss.record_setup_failed(s, sid, "cni failed"),
        "error": lambda s: ss.record_sandbox_error(s, sid, "containerd down"),
        "released": lambda s: ss.record_network_released(s, sid),
        "observed": lambda s: ss.mark_sandbox_observed(s, sid, 5),
        "config": lambda s: ss.update_sandbox_config(s, sid, '{"x": 1}', "cpu"),
        "orm": orm,
        "delete": lambda s: ss.delete_sandbox(s, sid, "Removed"),
    }
    return fns[action]


def container_change(cid: str, action: str, value: str) -> Callable[[Tx], object]:
    def phase(s: Tx) -> None:
        if value in list(ContainerDesired):
            s.orm.get(
                Container, cid
            )  # an ORM object of the row in the transaction: changed through it
        row = container_now(s, cid)
        if row is None:
            raise NotFound(cid)
        target = ContainerPhase(value) if value in list(ContainerPhase) else ContainerPhase.RUNNING
        switch_container_phase(s, row, target)

    def orm(s: Tx) -> None:
        row = s.orm.get(Container, cid)
        if row is None:
            raise NotFound(cid)
        row.message = f"orm {value}"
        row.generation += 1

    fns: dict[str, Callable[[Tx], object]] = {
        "desired": lambda s: sc.set_container_desired(
            s,
            cid,
            ContainerDesired(value)
            if value in list(ContainerDesired)
            else ContainerDesired.RUNNING,
        ),
        "phase": phase,
        "created": lambda s: sc.record_container_created(s, cid, 1000, 1000, [1, 2]),
        "started": lambda s: sc.record_container_started(s, cid, 77),
        "exited": lambda s: sc.record_container_exited(s, cid, 137, "Killed", "oom"),
        "config": lambda s: sc.update_container_config(s, cid, '{"y": 2}', '{"z": 3}'),
        "observed": lambda s: sc.mark_container_observed(s, cid, 9),
        "orm": orm,
        "delete": lambda s: sc.delete_container(s, cid),
    }
    return fns[action]


class Writes(RuleBasedStateMachine):
    """Every store function that writes a sandbox or container row, with any arguments, in
    any order, some several in one transaction, some rolled back."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(__import__("tempfile").mkdtemp(prefix="crd-readmodel-"))
        db = self.dir / "crictld.db"
        upgrade_to_head(db)
        self.store = Store(make_engine(db))
        self.store.build_model()
        self.sandboxes: list[str] = []
        self.containers: list[str] = []
        self.n = 0

    def teardown(self) -> None:
        self.store.close()
        __import__("shutil").rmtree(self.dir, ignore_errors=True)

    def write(self, *fns: Callable[[Tx], object], fail: bool = False, flush: bool = True) -> None:
        def tx(session: Tx) -> None:
            for fn in fns:
                try:
                    fn(session)
                except CrictlError:
                    if len(fns) == 1:
                        raise
                if flush:
                    session.orm.flush()
            if fail:
                raise InvalidArgument("rolled back on purpose")

        # a refused write (a CRI error, or a constraint: a container of a removed pod) rolls
        # back, and the model must not have moved either
        with contextlib.suppress(CrictlError, IntegrityError):
            self.store.write_sync(tx)

    def next_id(self, prefix: str) -> str:
        self.n += 1
        return (prefix + f"{self.n:x}").ljust(64, "0")

    @rule(prefix=prefixes, name=names, labels=label_sets)
    def create_sandbox(self, prefix: str, name: str, labels: dict[str, str]) -> None:
        sid = self.next_id(prefix)
        self.write(lambda s: ss.create_sandbox(s, new_sandbox(sid, name, labels)))
        self.sandboxes.append(sid)

    @precondition(lambda self: self.sandboxes)
    @rule(data=st.data(), prefix=prefixes, name=names, labels=label_sets)
    def create_container(self, data: Any, prefix: str, name: str, labels: dict[str, str]) -> None:
        cid = self.next_id(prefix)
        sid = data.draw(st.sampled_from(self.sandboxes))
        self.write(lambda s: sc.create_container(s, new_container(cid, sid, name, labels)))
        self.containers.append(cid)

    @precondition(lambda self: self.sandboxes)
    @rule(
        data=st.data(),
        action=st.sampled_from(SANDBOX_ACTIONS),
        value=st.sampled_from(list(SandboxPhase) + list(SandboxDesired)),
        fail=st.booleans(),
    )
    def change_sandbox(self, data: Any, action: str, value: str, fail: bool) -> None:
        sid = data.draw(st.sampled_from(self.sandboxes))
        self.write(sandbox_change(sid, action, value), fail=fail)

    @precondition(lambda self: self.containers)
    @rule(
        data=st.data(),
        action=st.sampled_from(CONTAINER_ACTIONS),
        value=st.sampled_from(list(ContainerPhase) + list(ContainerDesired)),
        fail=st.booleans(),
    )
    def change_container(self, data: Any, action: str, value: str, fail: bool) -> None:
        cid = data.draw(st.sampled_from(self.containers))
        self.write(container_change(cid, action, value), fail=fail)

    @precondition(lambda self: self.containers)
    @rule(data=st.data(), fail=st.booleans())
    def several(self, data: Any, fail: bool) -> None:
        """Several changes in one transaction, on the same rows or not, the lean path and the
        ORM's mixed (a row loaded as an ORM object, changed through it, then changed again)."""
        values = list(SandboxPhase) + list(SandboxDesired) + list(ContainerPhase)
        values += list(ContainerDesired)
        steps = data.draw(
            st.lists(
                st.one_of(
                    st.tuples(
                        st.just("sandbox"),
                        st.sampled_from(self.sandboxes),
                        st.sampled_from(SANDBOX_ACTIONS),
                        st.sampled_from(values),
                    ),
                    st.tuples(
                        st.just("container"),
                        st.sampled_from(self.containers),
                        st.sampled_from(CONTAINER_ACTIONS),
                        st.sampled_from(values),
                    ),
                ),
                min_size=2,
                max_size=6,
            )
        )
        fns = [
            (sandbox_change if kind == "sandbox" else container_change)(rid, action, value)
            for kind, rid, action, value in steps
        ]
        self.write(*fns, fail=fail, flush=data.draw(st.booleans()))

    @precondition(lambda self: self.sandboxes)
    @rule(data=st.data())
    def remove_pod(self, data: Any) -> None:
        """What a pod's removal does: its containers and then the sandbox, one transaction."""
        sid = data.draw(st.sampled_from(self.sandboxes))

        def remove(s: Tx) -> None:
            for c in orm.list_containers(s, sc.ContainerFilter(sandbox_id=sid)):
                sc.delete_container(s, c.id)
            ss.delete_sandbox(s, sid, "Removed")

        self.write(remove)

    @invariant()
    def model_equals_rows(self) -> None:
        assert self.store.model.snapshot == fresh(self.store)
        # and its order is the lists' order
        assert list(self.store.model.snapshot.containers) == self.store.read_sync(
            lambda s: [c.id for c in orm.list_containers(s)]
        )


TestWrites = Writes.TestCase
TestWrites.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@settings(max_examples=40, deadline=None)
@given(
    prefix=st.one_of(st.text(alphabet="0123456789abcdefg%_\n", max_size=6), st.just("")),
    phases=st.one_of(st.none(), st.frozensets(st.sampled_from(list(ContainerPhase)))),
    labels=label_sets,
    by_pod=st.booleans(),
)
def test_container_selections_equal_sql(
    tmp_path_factory: pytest.TempPathFactory,
    prefix: str,
    phases: frozenset[str] | None,
    labels: dict[str, str],
    by_pod: bool,
) -> None:
    db = tmp_path_factory.mktemp("sel") / "crictld.db"
    upgrade_to_head(db)
    store = Store(make_engine(db))
    try:
        sids = ["ab" + "0" * 62, "ac" + "1" * 62]
        for i, sid in enumerate(sids):
            store.write_sync(sandbox_writer(new_sandbox(sid, f"p{i}")))
        made = [
            ("ab" + "2" * 62, {"app": "a"}),
            ("b0" + "3" * 62, {"app": "b", "tier": "c"}),
            ("ac" + "4" * 62, {}),
        ]
        for i, (cid, lab) in enumerate(made):
            store.write_sync(container_writer(new_container(cid, sids[i % 2], f"c{i}", lab)))
        flt = sc.ContainerFilter(
            id_prefix=prefix or None,
            sandbox_id=(prefix or None) if by_pod else None,
            phases=phases,
            labels=labels,
        )
        from_sql = store.read_sync(lambda s: [c.id for c in orm.list_containers(s, flt)])
        assert [v.id for v in sc.select_containers(store.snapshot, flt)] == from_sql
    finally:
        store.close()
