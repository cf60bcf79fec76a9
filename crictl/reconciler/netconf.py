"""UpdateRuntimeConfig's pod CIDR: the CNI config template rendered for it (crictl/network/
conftemplate.py) when one is configured (`cni_conf_template`), and the change recorded in the
event log. Without a template the CIDR is recorded and nothing is written, as containerd does:
the node's CNI config is then the operator's."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from crictl.network import conftemplate
from crictl.store.engine import Store
from crictl.store.events import record_event

log = logging.getLogger(__name__)


class PodCidr:
    def __init__(self, store: Store, conf_dir: Path, template: Path | None) -> None:
        self.store = store
        self.conf_dir = conf_dir
        self.template = template

    async def update(self, pod_cidr: str) -> None:
        if not pod_cidr:
            return  # kubelet's way of saying nothing changed
        cidrs = conftemplate.parse_cidrs(pod_cidr)
        message = ",".join(cidrs)
        if self.template is not None:
            written = await asyncio.to_thread(
                conftemplate.write, self.conf_dir, self.template, cidrs
            )
            message += f" -> {written}"
            log.info(
                "CNI config written for the pod CIDR", extra={"cidrs": cidrs, "file": str(written)}
            )
        await self.store.write(
            lambda s: record_event(s, "runtime", "network", "pod-cidr", message=message)
        )
