"""Version, Status and RuntimeConfig: what kubelet asks before anything else."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from crictl import __version__, errors
from crictl.api.front import on_front
from crictl.api.interceptor import Context
from crictl.api.validation import RUNTIME_HANDLERS
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.oci.spec import recursive_read_only_supported
from crictl.reconciler.health import Health
from crictl.reconciler.netconf import PodCidr

# The CRI API version kubelet checks for; not crictld's own version.
CRI_VERSION = "0.1.0"
RUNTIME_NAME = "crictld"


class RuntimeInfo:
    def __init__(
        self,
        health: Health,
        verbose_info: dict[str, str],
        live_info: Callable[[], dict[str, object]] | None = None,
        systemd_cgroup: bool = False,
        pod_cidr: PodCidr | None = None,
        runtime_handlers: Iterable[str] = (),
    ) -> None:
        self.handlers = [*RUNTIME_HANDLERS, *runtime_handlers]
        self.pod_cidr = pod_cidr
        self.cgroup_driver = api_pb2.SYSTEMD if systemd_cgroup else api_pb2.CGROUPFS
        self.health = health
        self.verbose_info = verbose_info
        self.live_info = live_info

    @on_front()
    async def version(
        self, request: api_pb2.VersionRequest, context: Context
    ) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version=CRI_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=__version__,
            runtime_api_version="v1",
        )

    @on_front()  # its containerd probe has a client of its own there (crictl.reconciler.health)
    async def status(
        self, request: api_pb2.StatusRequest, context: Context
    ) -> api_pb2.StatusResponse:
        conditions = await self.health.conditions()
        response = api_pb2.StatusResponse(
            status=api_pb2.RuntimeStatus(
                conditions=[
                    api_pb2.RuntimeCondition(
                        type=c.type, status=c.status, reason=c.reason, message=c.message
                    )
                    for c in conditions
                ]
            )
        )
        features = api_pb2.RuntimeHandlerFeatures(
            recursive_read_only_mounts=recursive_read_only_supported(), user_namespaces=False
        )
        response.runtime_handlers.extend(
            api_pb2.RuntimeHandler(name=name, features=features) for name in self.handlers
        )
        if request.verbose:
            response.info["config"] = json.dumps(self.verbose_info, sort_keys=True)
            if self.live_info is not None:
                response.info["daemon"] = json.dumps(self.live_info(), sort_keys=True)
        return response

    @on_front()
    async def runtime_config(
        self, request: api_pb2.RuntimeConfigRequest, context: Context
    ) -> api_pb2.RuntimeConfigResponse:
        # kubelet reads the driver here and uses the same one (config cgroup_driver).
        return api_pb2.RuntimeConfigResponse(
            linux=api_pb2.LinuxRuntimeConfiguration(cgroup_driver=self.cgroup_driver)
        )

    async def update_runtime_config(
        self, request: api_pb2.UpdateRuntimeConfigRequest, context: Context
    ) -> api_pb2.UpdateRuntimeConfigResponse:
        if self.pod_cidr is None:
            raise errors.FailedPrecondition("UpdateRuntimeConfig: no CNI config dir to write to")
        await self.pod_cidr.update(request.runtime_config.network_config.pod_cidr)
        return api_pb2.UpdateRuntimeConfigResponse()
