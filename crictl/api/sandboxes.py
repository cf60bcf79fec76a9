"""RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.

Mutations: validate, write the desired state in one transaction, wake the reconciler for that
sandbox and wait for its pass (bounded by the call's deadline: past it the work goes on, and a
retry of the same request attaches to it). Reads come from the store alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import AsyncIterator

from google.protobuf import json_format

from crictl import errors
from crictl.api.chunks import chunks
from crictl.api.front import on_front
from crictl.api.inspect_info import crictld_view, info_json, runtime_spec_and_events
from crictl.api.interceptor import Context
from crictl.api.validation import label_selector, validate_resources, validate_sandbox_config
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.reconciler import checkpoint, faults, inspect
from crictl.reconciler.configs import parsed_copy
from crictl.reconciler.sandboxes import (
    SANDBOX_CONFIGS,
    SandboxReconciler,
    config_of,
    host_network,
)
from crictl.store.engine import Store
from crictl.store.models import SandboxDesired, SandboxPhase
from crictl.store.readmodel import SandboxView, Snapshot
from crictl.store.sandboxes import (
    NewSandbox,
    SandboxFilter,
    create_sandbox,
    resolve_sandbox_id,
    select_sandboxes,
    set_sandbox_desired,
)


def _state(row: SandboxView) -> api_pb2.PodSandboxState.ValueType:
    return api_pb2.SANDBOX_READY if row.phase == SandboxPhase.READY else api_pb2.SANDBOX_NOTREADY


def config_digest(config: api_pb2.PodSandboxConfig, handler: str) -> str:
    h = hashlib.sha256(config.SerializeToString(deterministic=True))
    h.update(b"\0" + handler.encode())
    return h.hexdigest()


def _static_sandbox(r: SandboxView) -> api_pb2.PodSandbox:
    return api_pb2.PodSandbox(
        id=r.id,
        metadata=api_pb2.PodSandboxMetadata(
            name=r.name, namespace=r.namespace, uid=r.uid, attempt=r.attempt
        ),
        created_at=r.created_at,
        labels=r.labels,
        annotations=r.annotations,
        runtime_handler=r.runtime_handler,
    )


class PodSandboxes:
    def __init__(self, store: Store, reconciler: SandboxReconciler) -> None:
        self.store = store
        self.reconciler = reconciler
        # ListPodSandbox (PLEG, every second): all but a sandbox's state never changes, so its
        # entry is built once and copied with the state of the moment. The unfiltered answer
        # is kept with the snapshot it was built from (see Containers).
        self._listed: dict[str, api_pb2.PodSandbox] = {}
        self._unfiltered: tuple[Snapshot, api_pb2.ListPodSandboxResponse] | None = None

    async def run_pod_sandbox(
        self, request: api_pb2.RunPodSandboxRequest, context: Context
    ) -> api_pb2.RunPodSandboxResponse:
        config, handler = request.config, request.runtime_handler
        validate_sandbox_config(config, handler, self.reconciler.settings.runtime_handlers)
        m = config.metadata
        new = NewSandbox(
            id=secrets.token_hex(32),
            name=m.name,
            namespace=m.namespace,
            uid=m.uid,
            attempt=m.attempt,
            runtime_handler=handler,
            config=json_format.MessageToJson(
                config, preserving_proto_field_name=True, sort_keys=True, indent=None
            ),
            config_digest=config_digest(config, handler),
            labels=dict(config.labels),
            annotations=dict(config.annotations),
        )
        if not host_network(config):
            new = dataclasses.replace(new, netns_path=str(self.reconciler.netns_path(new.id)))
        row, created = await self.store.write(lambda s: create_sandbox(s, new))
        if created:
            SANDBOX_CONFIGS.put(row.id, new.config, parsed_copy(config))
            faults.point("sandbox-run:after-insert")
        if row.desired == SandboxDesired.REMOVED:
            raise self._torn_down(row)
        await self.reconciler.queue.wait(row.id)
        # A retry may have attached to a setup that then failed and is being undone: never
        # answer OK with an id that is going away (the caller would lose its pod).
        after = self.store.snapshot.sandboxes.get(row.id)
        if after is None or after.desired == SandboxDesired.REMOVED:
            raise self._torn_down(after or row)
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=row.id)

    @staticmethod
    def _torn_down(row: SandboxView) -> errors.CrictlError:
        why = f"{row.reason}: {row.message}" if row.reason else "it is being removed"
        return errors.Unavailable(
            f"pod sandbox {row.id} with this name is being torn down ({why}); retry once it is gone"
        )

    async def _change(self, sandbox_id: str, desired: SandboxDesired, fault: str) -> None:
        try:
            row = await self.store.write(
                lambda s: set_sandbox_desired(s, resolve_sandbox_id(s, sandbox_id), desired)
            )
        except errors.NotFound:
            # CRI: stopping or removing what does not exist succeeds (kubelet relies on it).
            return
        faults.point(fault)
        await self.reconciler.queue.wait(row.id)

    async def stop_pod_sandbox(
        self, request: api_pb2.StopPodSandboxRequest, context: Context
    ) -> api_pb2.StopPodSandboxResponse:
        await self._change(
            request.pod_sandbox_id, SandboxDesired.NOTREADY, "sandbox-stop:after-desired"
        )
        return api_pb2.StopPodSandboxResponse()

    async def remove_pod_sandbox(
        self, request: api_pb2.RemovePodSandboxRequest, context: Context
    ) -> api_pb2.RemovePodSandboxResponse:
        await self._change(
            request.pod_sandbox_id, SandboxDesired.REMOVED, "sandbox-remove:after-desired"
        )
        return api_pb2.RemovePodSandboxResponse()

    @on_front(falls_back=True)
    async def pod_sandbox_status(
        self, request: api_pb2.PodSandboxStatusRequest, context: Context
    ) -> api_pb2.PodSandboxStatusResponse:
        if not request.pod_sandbox_id:
            raise errors.InvalidArgument("pod_sandbox_id is empty")
        row = self.store.snapshot.sandbox(request.pod_sandbox_id)
        config = config_of(row)
        status = api_pb2.PodSandboxStatus(
            id=row.id,
            metadata=config.metadata,
            state=_state(row),
            created_at=row.created_at,
            labels=row.labels,
            annotations=row.annotations,
            runtime_handler=row.runtime_handler,
            # Always present, as containerd's CRI sends it: without it kubelet logs "doesn't
            # have network information" at each status of a ready host-network pod.
            network=api_pb2.PodSandboxNetworkStatus(ip=row.ip or ""),
        )
        if row.ip:
            status.network.additional_ips.extend(
                api_pb2.PodIP(ip=ip) for ip in json.loads(row.additional_ips)
            )
        status.linux.namespaces.options.CopyFrom(config.linux.security_context.namespace_options)
        response = api_pb2.PodSandboxStatusResponse(status=status)
        if request.verbose:
            containerd = self.reconciler.containerd
            netns_path = row.netns_path or str(self.reconciler.netns_path(row.id))
            spec, events = await runtime_spec_and_events(self.store, containerd, "sandbox", row.id)
            # a stat of a file under /run (tmpfs): no hop to a thread for it
            netns_exists = os.path.exists(netns_path)
            view = crictld_view(row, events, self.reconciler.queue.failures)
            response.info["info"] = info_json(
                {
                    "pid": row.task_pid or 0,
                    "image": self.reconciler.settings.pause_image,
                    **inspect.runtime_keys(containerd, row.id),
                    "runtimeHandler": row.runtime_handler,
                    "netnsPath": netns_path,
                    "netNamespaceClosed": bool(row.network_released) or not netns_exists,
                    "reason": row.reason,
                    "message": row.message,
                    "crictld": view,
                },
                {"config": row.config, "runtimeSpec": spec, "cniResult": row.cni_result or None},
            )
        return response

    @on_front()
    async def list_pod_sandbox(
        self, request: api_pb2.ListPodSandboxRequest, context: Context
    ) -> api_pb2.ListPodSandboxResponse:
        f = request.filter
        flt = SandboxFilter(
            id_prefix=f.id or None,
            phases=(
                frozenset({SandboxPhase.READY})
                if f.state.state == api_pb2.SANDBOX_READY
                else frozenset({SandboxPhase.PENDING, SandboxPhase.NOTREADY, SandboxPhase.REMOVING})
            )
            if f.HasField("state")
            else None,
            labels=label_selector(f.label_selector, "filter.label_selector"),
        )
        snapshot = self.store.snapshot
        unfiltered = not (flt.id_prefix or flt.phases or flt.labels)
        if unfiltered and self._unfiltered is not None and self._unfiltered[0] is snapshot:
            return self._unfiltered[1]
        known = self._listed
        views = select_sandboxes(snapshot, flt)
        if unfiltered:
            # An unfiltered list sees every sandbox: forget the removed ones.
            self._listed = known = {v.id: known[v.id] for v in views if v.id in known}
        resp = api_pb2.ListPodSandboxResponse()
        add = resp.items.add  # built in place: one copy of each entry, not two
        for view in views:
            # still being set up: not created yet, as far as CRI is concerned
            if view.phase == SandboxPhase.PENDING and view.desired == SandboxDesired.READY:
                continue
            static = known.get(view.id)
            if static is None:
                static = known[view.id] = _static_sandbox(view)
            item = add()
            item.CopyFrom(static)
            item.state = _state(view)
        if unfiltered:
            self._unfiltered = (snapshot, resp)
        return resp

    @on_front()
    async def stream_pod_sandboxes(
        self, request: api_pb2.StreamPodSandboxesRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamPodSandboxesResponse]:
        listed = await self.list_pod_sandbox(
            api_pb2.ListPodSandboxRequest(filter=request.filter), context
        )
        for run in chunks(listed.items):
            yield api_pb2.StreamPodSandboxesResponse(pod_sandboxes=run)

    async def update_pod_sandbox_resources(
        self, request: api_pb2.UpdatePodSandboxResourcesRequest, context: Context
    ) -> api_pb2.UpdatePodSandboxResourcesResponse:
        if not request.pod_sandbox_id:
            raise errors.InvalidArgument("pod_sandbox_id is empty")
        validate_resources(request.overhead, "overhead")
        validate_resources(request.resources, "resources")
        sid = self.store.snapshot.sandbox_id(request.pod_sandbox_id)
        await self.reconciler.update_resources(sid, request.overhead, request.resources)
        return api_pb2.UpdatePodSandboxResourcesResponse()

    async def checkpoint_pod(
        self, request: api_pb2.CheckpointPodRequest, context: Context
    ) -> api_pb2.CheckpointPodResponse:
        if not request.output_path or not os.path.isabs(request.output_path):
            raise errors.InvalidArgument(
                f"output_path {request.output_path[:80]!r} is not an absolute path"
            )
        row = self.store.snapshot.sandbox(request.pod_sandbox_id)
        if row.phase != SandboxPhase.READY:
            raise errors.FailedPrecondition(
                f"pod sandbox {row.id} is {row.phase}, not READY: nothing to checkpoint"
            )
        raise await checkpoint.refuse("CheckpointPod")

    async def restore_pod(
        self, request: api_pb2.RestorePodRequest, context: Context
    ) -> api_pb2.RestorePodResponse:
        path = request.checkpoint_path
        if not path or not os.path.isabs(path) or "\0" in path:
            raise errors.InvalidArgument(f"checkpoint_path {path[:80]!r} is not an absolute path")
        if not await asyncio.to_thread(os.path.exists, path):
            raise errors.NotFound(f"checkpoint_path {path[:80]!r}: no such archive")
        raise await checkpoint.refuse("RestorePod")
