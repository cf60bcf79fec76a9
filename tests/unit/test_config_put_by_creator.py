"""CreateContainer and RunPodSandbox put the config they wrote in the parsed-config cache: the
create's pass, the row's first reader, finds it there and parses nothing (crictl/reconciler/
configs.py `ConfigCache.put`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from crictl.api.containers import Containers
from crictl.api.sandboxes import PodSandboxes
from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.reconciler.containers import CONTAINER_CONFIGS, container_config_of
from crictl.reconciler.sandboxes import SANDBOX_CONFIGS, config_of
from tests.unit.rows import store_with_created_container

SID = "a" * 64


async def _woken(_row_id: str) -> None:  # the queue's wait: no pass runs here
    return None


@pytest.fixture
def no_parse(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The caches' parsers, made to record what they parse."""
    parsed: list[str] = []
    for cache in (CONTAINER_CONFIGS, SANDBOX_CONFIGS):

        def recorded(text: str, parse: Any = cache._parse) -> Any:
            parsed.append(text)
            return parse(text)

        monkeypatch.setattr(cache, "_parse", recorded)
    yield parsed


async def test_a_created_containers_config_is_not_parsed(
    tmp_path: Path, no_parse: list[str]
) -> None:
    store = store_with_created_container(tmp_path, SID, "b" * 64, 1)
    reconciler = SimpleNamespace(
        images=SimpleNamespace(status=lambda _ref: None), queue=SimpleNamespace(wait=_woken)
    )
    api = Containers(store, cast(Any, reconciler))
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="app"),
        image=api_pb2.ImageSpec(image="busybox"),
        command=["sleep", "1"],
        labels={"k": "v"},
    )
    request = api_pb2.CreateContainerRequest(pod_sandbox_id=SID, config=config)
    cid = (await api.create_container(request, cast(Any, None))).container_id
    no_parse.clear()  # the pod's config, read to validate the request against, was parsed
    got = container_config_of(store.snapshot.containers[cid])
    assert got == config and got is not request.config
    assert no_parse == []


async def test_a_run_pods_config_is_not_parsed(tmp_path: Path, no_parse: list[str]) -> None:
    store = store_with_created_container(tmp_path, SID, "b" * 64, 1)
    reconciler = SimpleNamespace(
        settings=SimpleNamespace(runtime_handlers={}),
        netns_path=lambda sid: tmp_path / "netns" / sid,
        queue=SimpleNamespace(wait=_woken),
    )
    api = PodSandboxes(store, cast(Any, reconciler))
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="p2", namespace="d", uid="u2"),
        hostname="p2",
        labels={"k": "v"},
    )
    request = api_pb2.RunPodSandboxRequest(config=config)
    sid = (await api.run_pod_sandbox(request, cast(Any, None))).pod_sandbox_id
    got = config_of(store.snapshot.sandboxes[sid])
    assert got == config and got is not request.config
    assert no_parse == []
