"""Exec, Attach and PortForward: validate, cache the request under a single-use token, and
answer with the streaming server's absolute URL. The streams themselves are served by
`crictl.streaming`; a refused request caches nothing."""

from __future__ import annotations

from crictl import errors
from crictl.api.interceptor import Context
from crictl.api.validation import validate_exec_command
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.store.containers import live_container
from crictl.store.engine import Store
from crictl.store.models import ContainerPhase, SandboxPhase
from crictl.streaming.requests import AttachRequest, ExecRequest, PortForwardRequest
from crictl.streaming.server import StreamServer


def _check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if tty and stderr:
        raise errors.InvalidArgument("tty and stderr cannot both be set: a tty has one output")
    if not (stdin or stdout or stderr):
        raise errors.InvalidArgument("one of stdin, stdout and stderr must be set")


class Streaming:
    def __init__(self, store: Store, server: StreamServer) -> None:
        self.store = store
        self.server = server

    async def _running_container(self, container_id: str) -> str:
        if not container_id:
            raise errors.InvalidArgument("container_id is empty")
        row = live_container(self.store.snapshot, container_id)
        if row.phase != ContainerPhase.RUNNING:
            raise errors.FailedPrecondition(
                f"container {row.id} is {row.phase}, not RUNNING: nothing to stream"
            )
        return row.id

    async def exec(self, request: api_pb2.ExecRequest, context: Context) -> api_pb2.ExecResponse:
        validate_exec_command(request.cmd)
        _check_streams(request.tty, request.stdin, request.stdout, request.stderr)
        cid = await self._running_container(request.container_id)
        url = self.server.url_for(
            ExecRequest(
                cid,
                tuple(request.cmd),
                request.tty,
                request.stdin,
                request.stdout,
                request.stderr,
            )
        )
        return api_pb2.ExecResponse(url=url)

    async def attach(
        self, request: api_pb2.AttachRequest, context: Context
    ) -> api_pb2.AttachResponse:
        _check_streams(request.tty, request.stdin, request.stdout, request.stderr)
        cid = await self._running_container(request.container_id)
        url = self.server.url_for(
            AttachRequest(cid, request.tty, request.stdin, request.stdout, request.stderr)
        )
        return api_pb2.AttachResponse(url=url)

    async def port_forward(
        self, request: api_pb2.PortForwardRequest, context: Context
    ) -> api_pb2.PortForwardResponse:
        if not request.pod_sandbox_id:
            raise errors.InvalidArgument("pod_sandbox_id is empty")
        bad = [p for p in request.port if not 0 < p < 65536]
        if bad:
            raise errors.InvalidArgument(f"port {bad[0]} is out of range 1-65535")
        row = self.store.snapshot.sandbox(request.pod_sandbox_id)
        if row.phase != SandboxPhase.READY:
            raise errors.FailedPrecondition(
                f"pod sandbox {row.id} is {row.phase}, not READY: nothing to forward to"
            )
        url = self.server.url_for(PortForwardRequest(row.id, tuple(request.port)))
        return api_pb2.PortForwardResponse(url=url)
