"""Typed queries on pod sandboxes. The caller owns the transaction (`Tx`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import select

from crictl.errors import AlreadyExists, NotFound
from crictl.store import readmodel
from crictl.store.common import Tx, is_id_text, resolve_id
from crictl.store.events import now_ns, record_event
from crictl.store.models import SandboxDesired, SandboxPhase, pod_sandbox_table
from crictl.store.readmodel import SandboxView, Snapshot, change, sandbox_now
from crictl.store.specs import set_runtime_spec
from crictl.store.transitions import switch_sandbox_phase

SETUP_FAILED = "SetupFailed"


@dataclass(frozen=True)
class NewSandbox:
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    config: str
    config_digest: str
    runtime_handler: str = ""
    netns_path: str | None = None  # recorded before the netns is made; None: host network
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxFilter:
    id_prefix: str | None = None
    phases: frozenset[str] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def create_sandbox(tx: Tx, new: NewSandbox) -> tuple[SandboxView, bool]:
    """Inserts the sandbox unless one with the same CRI metadata exists.

    Returns (row, created). The same metadata with the same config is the retry of an earlier
    request and yields the earlier row; with another config it is AlreadyExists.
    """
    now = now_ns()
    view = SandboxView(
        id=new.id,
        name=new.name,
        namespace=new.namespace,
        uid=new.uid,
        attempt=new.attempt,
        runtime_handler=new.runtime_handler,
        config=new.config,
        config_digest=new.config_digest,
        desired=SandboxDesired.READY.value,
        phase=SandboxPhase.PENDING.value,
        reason="",
        message="",
        generation=1,
        observed_generation=0,
        netns_path=new.netns_path,
        cni_result=None,
        cni_config=None,
        ip=None,
        additional_ips="[]",
        pause_container_id=None,
        task_pid=None,
        network_released=False,
        created_at=now,
        started_at=None,
        finished_at=None,
        updated_at=now,
        labels=dict(new.labels),
        annotations=dict(new.annotations),
    )
    if readmodel.insert(tx, view, ("name", "namespace", "uid", "attempt")):
        record_event(tx, "sandbox", new.id, "created", to_phase=SandboxPhase.PENDING)
        return view, True
    s = pod_sandbox_table.c
    earlier = tx.connection.scalars(
        select(s.id).where(
            s.name == new.name,
            s.namespace == new.namespace,
            s.uid == new.uid,
            s.attempt == new.attempt,
        )
    ).one()
    row = _must(tx, earlier)
    if row.config_digest != new.config_digest:
        raise AlreadyExists(
            f"pod sandbox {new.namespace}/{new.name} (uid {new.uid}, attempt {new.attempt}) "
            f"already exists as {row.id} with a different config"
        )
    return row, False


def resolve_sandbox_id(tx: Tx, id_or_prefix: str) -> str:
    """The full id of the one sandbox whose id starts with `id_or_prefix`."""
    snap = readmodel.untouched(tx)
    if snap is not None:
        return snap.sandbox_id(id_or_prefix)
    return resolve_id(tx, pod_sandbox_table.c.id, id_or_prefix, "pod sandbox")


def set_sandbox_desired(tx: Tx, sandbox_id: str, desired: SandboxDesired) -> SandboxView:
    """Records what CRI asked; a change bumps the generation the reconciler must observe."""
    sandbox = _must(tx, sandbox_id)
    order = [SandboxDesired.READY, SandboxDesired.NOTREADY, SandboxDesired.REMOVED]
    if order.index(SandboxDesired(desired)) > order.index(SandboxDesired(sandbox.desired)):
        record_event(
            tx,
            "sandbox",
            sandbox_id,
            "desired",
            reason=str(desired),
            message=f"{sandbox.desired} -> {desired}",
        )
        sandbox = change(
            tx,
            sandbox,
            desired=desired,
            generation=sandbox.generation + 1,
            updated_at=now_ns(),
        )
    return sandbox


def record_sandbox_network(
    tx: Tx,
    sandbox_id: str,
    cni_result: str | None,
    ip: str | None,
    additional_ips: list[str],
    cni_config: str,
) -> None:
    """The CNI ADD's result, with the network configuration it ran with (kept once in memory
    for all the pods that share it)."""
    change(
        tx,
        _must(tx, sandbox_id),
        cni_result=cni_result,
        cni_config=sys.intern(cni_config),
        ip=ip,
        additional_ips=json.dumps(additional_ips),
        updated_at=now_ns(),
    )
    record_event(tx, "sandbox", sandbox_id, "network", message=f"ip {ip}")


def record_sandbox_started(
    tx: Tx,
    sandbox_id: str,
    container_id: str,
    pid: int,
    runtime_spec: str | None = None,
) -> None:
    """`runtime_spec`: the spec containerd's record of the pause container was made with,
    where this pass made it."""
    sandbox = _must(tx, sandbox_id)
    set_runtime_spec(tx, "sandbox", sandbox_id, runtime_spec)
    switch_sandbox_phase(
        tx,
        sandbox,
        SandboxPhase.READY,
        reason="Started",
        message=f"pause pid {pid}",
        pause_container_id=container_id,
        task_pid=pid,
        started_at=now_ns(),
        observed_generation=sandbox.generation,
    )


def record_sandbox_not_ready(tx: Tx, sandbox_id: str, reason: str, message: str = "") -> None:
    """The sandbox stopped being ready (stopped, or its pause task or netns vanished)."""
    sandbox = _must(tx, sandbox_id)
    if sandbox.phase in (SandboxPhase.PENDING, SandboxPhase.READY):
        switch_sandbox_phase(
            tx,
            sandbox,
            SandboxPhase.NOTREADY,
            reason,
            message,
            finished_at=sandbox.finished_at or now_ns(),
        )


def record_sandbox_lost(tx: Tx, sandbox_id: str, reason: str, message: str) -> bool:
    """The loop saw a ready pod lose its pause task, netns or network, from a snapshot read
    before this write: a pod removed or asked to stop since is left to that request, which
    reports it. Returns whether the pod was marked NOTREADY."""
    sandbox = sandbox_now(tx, sandbox_id)
    if sandbox is None or sandbox.desired != SandboxDesired.READY:
        return False
    if sandbox.phase != SandboxPhase.READY:
        return False
    record_sandbox_not_ready(tx, sandbox_id, reason, message)
    return True


def record_setup_failed(tx: Tx, sandbox_id: str, error: str) -> SandboxView:
    """A setup failed: its undo (a removal) is recorded before it starts, with the reason, so
    a crash in the undo is finished by the next pass and still says why."""
    sandbox = set_sandbox_desired(tx, sandbox_id, SandboxDesired.REMOVED)
    return change(tx, sandbox, reason=SETUP_FAILED, message=error)


def record_sandbox_error(tx: Tx, sandbox_id: str, error: str) -> None:
    """A stop or remove that failed: its error on the row (the pass is retried)."""
    sandbox = sandbox_now(tx, sandbox_id)
    if sandbox is not None and sandbox.desired != SandboxDesired.READY:
        if sandbox.reason != SETUP_FAILED:  # an undo keeps saying why it undoes
            change(tx, sandbox, reason="TeardownFailed", message=error, updated_at=now_ns())
        else:
            change(tx, sandbox, updated_at=now_ns())


def record_network_released(tx: Tx, sandbox_id: str) -> None:
    sandbox = _must(tx, sandbox_id)
    if not sandbox.network_released:
        change(tx, sandbox, network_released=True)
        record_event(
            tx,
            "sandbox",
            sandbox_id,
            "network-released",
            message=f"CNI DEL done; ip {sandbox.ip} released",
        )


def mark_sandbox_observed(tx: Tx, sandbox_id: str, generation: int) -> None:
    sandbox = sandbox_now(tx, sandbox_id)
    if sandbox is not None and generation > sandbox.observed_generation:
        change(tx, sandbox, observed_generation=generation)


def delete_sandbox(tx: Tx, sandbox_id: str, reason: str, message: str = "") -> None:
    sandbox = sandbox_now(tx, sandbox_id)
    if sandbox is None:
        return
    readmodel.delete(tx, "sandbox", sandbox_id)
    record_event(
        tx,
        "sandbox",
        sandbox_id,
        "removed",
        from_phase=sandbox.phase,
        reason=reason,
        message=message,
    )


def _must(tx: Tx, sandbox_id: str) -> SandboxView:
    sandbox = sandbox_now(tx, sandbox_id)
    if sandbox is None:
        raise NotFound(f"pod sandbox {sandbox_id} not found")
    return sandbox


def update_sandbox_config(tx: Tx, sandbox_id: str, config: str, detail: str) -> None:
    """A new config after UpdatePodSandboxResources; its digest (the sandbox's identity for
    retried runs) stays that of the run request."""
    change(tx, _must(tx, sandbox_id), config=config, updated_at=now_ns())
    record_event(tx, "sandbox", sandbox_id, "resources-updated", message=detail)


def select_sandboxes(snap: Snapshot, flt: SandboxFilter | None = None) -> list[SandboxView]:
    """The sandboxes of the read model `flt` selects, oldest first: what `list_sandboxes`
    answers from SQL."""
    views = snap.sandboxes.values()
    if flt is None:
        return list(views)
    if flt.id_prefix and not is_id_text(flt.id_prefix):
        return []
    selector = flt.labels.items()
    return [
        s
        for s in views
        if (not flt.id_prefix or s.id.startswith(flt.id_prefix))
        and (flt.phases is None or s.phase in flt.phases)
        and selector <= s.labels.items()
    ]
