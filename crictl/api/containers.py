"""CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
ListContainers, ExecSync, ReopenContainerLog.

Mutations write desired state and wait for the container's reconcile pass; reads come from the
store alone."""

from __future__ import annotations

import contextlib
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
from crictl.api.validation import (
    label_selector,
    validate_container_in_sandbox,
    validate_container_request,
    validate_container_resources,
    validate_exec_sync,
)
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.oci import apparmor
from crictl.reconciler import checkpoint, faults, inspect
from crictl.reconciler.configs import parsed_copy
from crictl.reconciler.containers import (
    CONTAINER_CONFIGS,
    ContainerReconciler,
    container_config_of,
)
from crictl.reconciler.sandboxes import config_of
from crictl.store.containers import (
    ContainerFilter,
    NewContainer,
    create_container,
    live_container,
    removal_asked,
    resolve_container_id,
    select_containers,
    set_container_desired,
)
from crictl.store.engine import Store
from crictl.store.models import ContainerDesired, ContainerPhase
from crictl.store.readmodel import ContainerView, Snapshot

STATES = {
    ContainerPhase.CREATED: api_pb2.CONTAINER_CREATED,
    ContainerPhase.RUNNING: api_pb2.CONTAINER_RUNNING,
    ContainerPhase.EXITED: api_pb2.CONTAINER_EXITED,
}


def _state(row: ContainerView) -> api_pb2.ContainerState.ValueType:
    return STATES.get(ContainerPhase(row.phase), api_pb2.CONTAINER_UNKNOWN)


def _static_container(r: ContainerView) -> api_pb2.Container:
    return api_pb2.Container(
        id=r.id,
        pod_sandbox_id=r.sandbox_id,
        metadata=api_pb2.ContainerMetadata(name=r.name, attempt=r.attempt),
        image=api_pb2.ImageSpec(image=r.image),
        image_ref=r.image_ref or "",
        image_id=r.image_id or "",
        created_at=r.created_at,
        labels=r.labels,
        annotations=r.annotations,
    )


def _torn_down(row: ContainerView) -> errors.CrictlError:
    why = f"{row.reason}: {row.message}" if row.reason else "it is being removed"
    return errors.Unavailable(
        f"container {row.id} with this name is being torn down ({why}); retry once it is gone"
    )


class Containers:
    def __init__(self, store: Store, reconciler: ContainerReconciler) -> None:
        self.store = store
        self.reconciler = reconciler
        # ListContainers (PLEG, every second): everything but the state of a container never
        # changes, so its entry is built once and copied with the phase of the moment. The
        # unfiltered answer is kept with the snapshot it was built from: until the next
        # committed write it is the answer (a snapshot is immutable, replaced on each publish).
        self._listed: dict[str, api_pb2.Container] = {}
        self._unfiltered: tuple[Snapshot, api_pb2.ListContainersResponse] | None = None

    async def create_container(
        self, request: api_pb2.CreateContainerRequest, context: Context
    ) -> api_pb2.CreateContainerResponse:
        config = request.config
        validate_container_request(request)  # normalises config's mount paths in place
        sandbox = self.store.snapshot.sandbox(request.pod_sandbox_id)
        validate_container_in_sandbox(request, config_of(sandbox), sandbox.id)
        image = self.reconciler.images.status(config.image.image)
        for i, m in enumerate(config.mounts):
            if m.image.image and self.reconciler.images.status(m.image.image) is None:
                raise errors.NotFound(
                    f"config.mounts[{i}].image: image {m.image.image[:200]!r} not found: "
                    "pull it first"
                )
        log_path = None
        if request.sandbox_config.log_directory and config.log_path:
            log_path = os.path.join(request.sandbox_config.log_directory, config.log_path)
        digest = hashlib.sha256(config.SerializeToString(deterministic=True)).hexdigest()
        new = NewContainer(
            id=secrets.token_hex(32),
            sandbox_id=sandbox.id,
            name=config.metadata.name,
            attempt=config.metadata.attempt,
            config=json_format.MessageToJson(
                config, preserving_proto_field_name=True, sort_keys=True, indent=None
            ),
            config_digest=digest,
            image=config.image.image,
            image_ref=(
                image.repo_digests[0]
                if image and image.repo_digests
                else image.id
                if image
                else None
            ),
            image_id=image.id if image else None,
            log_path=log_path,
            labels=dict(config.labels),
            annotations=dict(config.annotations),
        )
        row, created = await self.store.write(lambda s: create_container(s, new))
        if not created and row.desired == ContainerDesired.REMOVED:
            # A container of this name and attempt is being torn down (removed by a
            # RemoveContainer that answered once that was recorded, or a failed create being
            # undone): once it is gone the name is free.
            with contextlib.suppress(errors.CrictlError):
                await self.reconciler.queue.wait(row.id)
            row, created = await self.store.write(lambda s: create_container(s, new))
        if created:
            CONTAINER_CONFIGS.put(row.id, new.config, parsed_copy(config))
            faults.point("container-create:after-insert")
        if row.desired == ContainerDesired.REMOVED:
            raise _torn_down(row)
        await self.reconciler.queue.wait(row.id)
        # A retry may have attached to a create that then failed and is being undone: never
        # answer OK with an id that is going away.
        after = self.store.snapshot.containers.get(row.id)
        if after is None or after.desired == ContainerDesired.REMOVED:
            raise _torn_down(after or row)
        return api_pb2.CreateContainerResponse(container_id=row.id)

    async def _change(
        self,
        container_id: str,
        desired: ContainerDesired,
        fault: str,
        missing_ok: bool,
        wait: bool = True,
        settled: bool = False,
    ) -> str | None:
        """Records `desired` and waits for the pass that brings it about (`wait`; with
        `settled`, until it settles: see KeyedQueue.wait), or only wakes it (the reconciler
        retries it until it is done)."""
        try:
            row = await self.store.write(
                lambda s: set_container_desired(s, resolve_container_id(s, container_id), desired)
            )
        except errors.NotFound:
            if missing_ok:
                return None  # CRI: stopping or removing what does not exist succeeds
            raise
        faults.point(fault)
        if wait:
            await self.reconciler.queue.wait(row.id, settled=settled)
        else:
            self.reconciler.queue.wake(row.id)
        return row.id

    async def start_container(
        self, request: api_pb2.StartContainerRequest, context: Context
    ) -> api_pb2.StartContainerResponse:
        row = live_container(self.store.snapshot, request.container_id)
        if row.phase not in (ContainerPhase.CREATED, ContainerPhase.RUNNING):
            raise errors.FailedPrecondition(
                f"container {row.id} is {row.phase}, not CREATED: it cannot be started"
            )
        await self._change(
            row.id, ContainerDesired.RUNNING, "container-start:after-desired", missing_ok=False
        )
        row = self.store.snapshot.container(request.container_id)
        if row.phase != ContainerPhase.RUNNING and row.reason == "StartError":
            raise errors.FailedPrecondition(f"container {row.id} failed to start: {row.message}")
        return api_pb2.StartContainerResponse()

    async def stop_container(
        self, request: api_pb2.StopContainerRequest, context: Context
    ) -> api_pb2.StopContainerResponse:
        try:
            cid = live_container(self.store.snapshot, request.container_id).id
        except errors.NotFound:
            return api_pb2.StopContainerResponse()
        self.reconciler.request_stop(cid, int(request.timeout))
        # Answered once the exit is recorded (the container is stopped, its status EXITED);
        # its task's delete, which ends the shim, goes on in the pass.
        await self._change(
            cid,
            ContainerDesired.EXITED,
            "container-stop:after-desired",
            missing_ok=True,
            settled=True,
        )
        return api_pb2.StopContainerResponse()

    async def remove_container(
        self, request: api_pb2.RemoveContainerRequest, context: Context
    ) -> api_pb2.RemoveContainerResponse:
        try:
            row = live_container(self.store.snapshot, request.container_id)
        except errors.NotFound:
            return api_pb2.RemoveContainerResponse()  # gone, or its removal already asked
        # A container whose process is dead (its exit recorded, or never started) is removed
        # once that is recorded: its containerd record, snapshot and directory go in the
        # background (retried until done; a pod's removal waits for them). One that may run
        # is waited for: it must be dead when this answers.
        dead = row.phase == ContainerPhase.EXITED or (
            row.phase in (ContainerPhase.PENDING, ContainerPhase.CREATED)
            and row.desired == ContainerDesired.CREATED
        )
        await self._change(
            row.id,
            ContainerDesired.REMOVED,
            "container-remove:after-desired",
            missing_ok=True,
            wait=not dead,
        )
        return api_pb2.RemoveContainerResponse()

    @on_front(falls_back=True)
    async def container_status(
        self, request: api_pb2.ContainerStatusRequest, context: Context
    ) -> api_pb2.ContainerStatusResponse:
        row = live_container(self.store.snapshot, request.container_id)
        config = container_config_of(row)
        status = api_pb2.ContainerStatus(
            id=row.id,
            metadata=config.metadata,
            state=_state(row),
            created_at=row.created_at,
            started_at=row.started_at or 0,
            finished_at=row.finished_at or 0,
            exit_code=row.exit_code or 0,
            image=self._image_spec(config.image),
            image_ref=row.image_ref or "",
            image_id=row.image_id or "",
            reason=row.reason if row.phase == ContainerPhase.EXITED else "",
            message=row.message if row.phase == ContainerPhase.EXITED else "",
            labels=row.labels,
            annotations=row.annotations,
            mounts=list(config.mounts),
            log_path=row.log_path or "",
        )
        if config.linux.HasField("resources"):
            status.resources.linux.CopyFrom(config.linux.resources)
        if row.uid is not None:
            status.user.linux.CopyFrom(
                api_pb2.LinuxContainerUser(
                    uid=row.uid,
                    gid=row.gid or 0,
                    supplemental_groups=json.loads(row.supplemental_groups),
                )
            )
        response = api_pb2.ContainerStatusResponse(status=status)
        if request.verbose:
            containerd = self.reconciler.containerd
            spec, events = await runtime_spec_and_events(
                self.store, containerd, "container", row.id
            )
            view = crictld_view(row, events, self.reconciler.queue.failures)
            response.info["info"] = info_json(
                {
                    "sandboxID": row.sandbox_id,
                    "pid": row.task_pid or 0,
                    "image": row.image_ref or row.image,
                    **inspect.runtime_keys(containerd, row.id),
                    "apparmor": _apparmor_reason(config.linux.security_context),
                    "logPath": row.log_path or "",
                    "crictld": view,
                },
                {"config": row.config, "runtimeSpec": spec},
            )
        return response

    def _image_spec(self, asked: api_pb2.ImageSpec) -> api_pb2.ImageSpec:
        """The image as kubelet shows it in a pod's status: kubelet creates containers with
        the resolved image id and the name the user wrote in `user_specified_image`; that
        name, else (an id) the image's first tag as containerd answers, else what was asked."""
        spec = api_pb2.ImageSpec()
        spec.CopyFrom(asked)
        if asked.user_specified_image:
            spec.image = asked.user_specified_image
        elif asked.image.startswith("sha256:"):
            image = self.reconciler.images.status(asked.image)
            if image is not None and image.repo_tags:
                spec.image = image.repo_tags[0]
        return spec

    @on_front()
    async def list_containers(
        self, request: api_pb2.ListContainersRequest, context: Context
    ) -> api_pb2.ListContainersResponse:
        f = request.filter
        phases = None
        if f.HasField("state"):
            wanted = {v: k for k, v in STATES.items()}.get(f.state.state)
            phases = (
                frozenset({wanted})
                if wanted
                else frozenset({ContainerPhase.UNKNOWN, ContainerPhase.REMOVING})
            )
        flt = ContainerFilter(
            id_prefix=f.id or None,
            sandbox_id=f.pod_sandbox_id or None,
            phases=phases,
            labels=label_selector(f.label_selector, "filter.label_selector"),
        )
        snapshot = self.store.snapshot
        unfiltered = not (flt.id_prefix or flt.sandbox_id or flt.phases or flt.labels)
        if unfiltered and self._unfiltered is not None and self._unfiltered[0] is snapshot:
            return self._unfiltered[1]
        known = self._listed
        views = [v for v in select_containers(snapshot, flt) if not removal_asked(v)]
        if unfiltered:
            # An unfiltered list sees every container: forget the removed ones.
            self._listed = known = {v.id: known[v.id] for v in views if v.id in known}
        resp = api_pb2.ListContainersResponse()
        add = resp.containers.add  # built in place: one copy of each entry, not two
        for view in views:
            if view.phase == ContainerPhase.PENDING:
                continue
            static = known.get(view.id)
            if static is None:
                static = known[view.id] = _static_container(view)
            c = add()
            c.CopyFrom(static)
            c.state = STATES.get(ContainerPhase(view.phase), api_pb2.CONTAINER_UNKNOWN)
        if unfiltered:
            self._unfiltered = (snapshot, resp)
        return resp

    @on_front()
    async def stream_containers(
        self, request: api_pb2.StreamContainersRequest, context: Context
    ) -> AsyncIterator[api_pb2.StreamContainersResponse]:
        listed = await self.list_containers(
            api_pb2.ListContainersRequest(filter=request.filter), context
        )
        for run in chunks(listed.containers):
            yield api_pb2.StreamContainersResponse(containers=run)

    async def update_container_resources(
        self, request: api_pb2.UpdateContainerResourcesRequest, context: Context
    ) -> api_pb2.UpdateContainerResourcesResponse:
        validate_container_resources(request.linux, "linux")
        cid = live_container(self.store.snapshot, request.container_id).id
        await self.reconciler.update_resources(cid, request.linux)
        return api_pb2.UpdateContainerResourcesResponse()

    async def exec_sync(
        self, request: api_pb2.ExecSyncRequest, context: Context
    ) -> api_pb2.ExecSyncResponse:
        validate_exec_sync(request)
        cid = live_container(self.store.snapshot, request.container_id).id
        result = await self.reconciler.exec_sync(cid, list(request.cmd), int(request.timeout))
        return api_pb2.ExecSyncResponse(
            stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code
        )

    async def reopen_container_log(
        self, request: api_pb2.ReopenContainerLogRequest, context: Context
    ) -> api_pb2.ReopenContainerLogResponse:
        cid = live_container(self.store.snapshot, request.container_id).id
        await self.reconciler.reopen_log(cid)
        return api_pb2.ReopenContainerLogResponse()

    async def checkpoint_container(
        self, request: api_pb2.CheckpointContainerRequest, context: Context
    ) -> api_pb2.CheckpointContainerResponse:
        if not request.location:
            raise errors.InvalidArgument("location is empty: the checkpoint archive's path")
        if not os.path.isabs(request.location) or "\0" in request.location:
            raise errors.InvalidArgument(
                f"location {request.location[:80]!r} is not an absolute path"
            )
        if request.timeout < 0:
            raise errors.InvalidArgument(f"timeout {request.timeout} is negative")
        row = live_container(self.store.snapshot, request.container_id)
        if row.phase != ContainerPhase.RUNNING:
            raise errors.FailedPrecondition(
                f"container {row.id} is {row.phase}, not RUNNING: nothing to checkpoint"
            )
        raise await checkpoint.refuse("CheckpointContainer")


def _apparmor_reason(sc: api_pb2.LinuxContainerSecurityContext) -> str:
    try:
        return apparmor.decide(sc, check_loaded=False).reason
    except errors.CrictlError as e:  # a row written before the profile was validated
        return f"not applied: {e}"
