"""The streaming backend (`crictl.streaming.backend.Backend`): exec and attach on running
containers, and dials into pods' network namespaces."""

from __future__ import annotations

import asyncio
import socket

from crictl import errors
from crictl.network import netns
from crictl.reconciler.containers import ContainerReconciler, container_config_of
from crictl.reconciler.sandboxes import config_of, host_network
from crictl.reconciler.stdio import AttachProcess, ExecProcess
from crictl.store.engine import Store
from crictl.store.models import ContainerPhase, SandboxPhase
from crictl.store.readmodel import ContainerView
from crictl.streaming.requests import AttachRequest, ExecRequest


class StreamBackend:
    """`crictl.streaming.backend.Backend` on the store, containerd and the pod netns."""

    def __init__(self, store: Store, containers: ContainerReconciler) -> None:
        self.store = store
        self.containers = containers
        self.containerd = containers.containerd

    async def _running(self, container_id: str) -> ContainerView:
        row = self.store.snapshot.containers.get(container_id)
        if row is None:
            raise errors.NotFound(f"container {container_id} not found")
        if row.phase != ContainerPhase.RUNNING:
            raise errors.FailedPrecondition(f"container {container_id} is not running")
        return row

    async def exec(self, request: ExecRequest) -> ExecProcess:
        await self._running(request.container_id)
        return await self.containers.start_exec(
            request.container_id,
            list(request.cmd),
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
        )

    async def attach(self, request: AttachRequest) -> AttachProcess:
        row = await self._running(request.container_id)
        config = container_config_of(row)
        return await AttachProcess.connect(
            self.containerd,
            request.container_id,
            self.containers.container_dir(request.container_id),
            config.tty,
            config.stdin_once,
        )

    async def dial(self, sandbox_id: str, port: int) -> socket.socket:
        sandbox = self.store.snapshot.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise errors.NotFound(f"pod sandbox {sandbox_id} not found")
        if sandbox.phase != SandboxPhase.READY:
            raise errors.FailedPrecondition(f"pod sandbox {sandbox_id} is not ready")
        path = (
            None
            if host_network(config_of(sandbox))
            else self.containers.sandboxes.netns_path(sandbox_id)
        )
        return await asyncio.to_thread(netns.connect, path, port)
