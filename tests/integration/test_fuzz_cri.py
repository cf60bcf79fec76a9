"""The CRI fuzzer: hypothesis requests for every RPC of RuntimeService and ImageService, built
from the protobuf descriptors (tests/rig/fuzz.py), sent to a real daemon on a real containerd
with a real pod and container to aim at.

Every answer must be OK or one of the precise refusals; INTERNAL, UNKNOWN or no answer at all is
a defect, reported with the request. After each example the daemon must still answer, and a
valid neighbour of the request (the same read on the real objects, or a whole pod and container
lifecycle after a write) must still work. At the end, once every pod is removed, nothing is
left: no netns, IP, containerd container, task, snapshot, lease, veth or logger, and `crictld
doctor` finds nothing.

The short run is in `make test`; CRICTLD_FUZZ_CRI_EXAMPLES sets the number of examples (the long
run: 20000), CRICTLD_FUZZ_CRI_SEED the seed."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, seed, settings

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_chaos import loggers
from tests.integration.test_images import pull
from tests.integration.test_sandboxes import held, pod_config
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.fuzz import Pools, Requests, summary
from tests.rig.registry import Registry

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("CRICTLD_FUZZ_CRI_EXAMPLES", "250"))
SEED = int(os.environ.get("CRICTLD_FUZZ_CRI_SEED", "0"))
CALL_TIMEOUT = 45.0  # no answer in this long is a hang

C = grpc.StatusCode
REFUSALS = {
    C.INVALID_ARGUMENT,
    C.NOT_FOUND,
    C.ALREADY_EXISTS,
    C.FAILED_PRECONDITION,
    C.RESOURCE_EXHAUSTED,  # streaming tokens in flight, gRPC's message size limit
    C.OUT_OF_RANGE,
}
# What a few RPCs may also answer: a pull from a registry that is not there, and ExecSync's own
# timeout (answered by the daemon, its message says so; the client's deadline is a hang).
ALSO = {
    "PullImage": {C.UNAVAILABLE},
    "ExecSync": {C.DEADLINE_EXCEEDED},
}
WRITES = {
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "UpdateRuntimeConfig",
    "UpdatePodSandboxResources",
    "CheckpointContainer",
    "CheckpointPod",
    "RestorePod",
    "PullImage",
    "RemoveImage",
}
MAX_PODS = 6  # pods the fuzzer made are removed beyond this many, so the node stays small


@dataclass
class Answer:
    code: grpc.StatusCode
    message: str
    response: Message | None = None
    client_deadline: bool = False


class Client:
    """One persistent channel, as kubelet holds it; calls any method by its descriptor."""

    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(
            endpoint,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        self.started = time.monotonic()

    def close(self) -> None:
        self.channel.close()

    def __call__(
        self, method: MethodDescriptor, request: Message, timeout: float = CALL_TIMEOUT
    ) -> Answer:
        path = f"/{method.containing_service.full_name}/{method.name}"
        decode = message_factory.GetMessageClass(method.output_type).FromString
        start = time.monotonic()
        try:
            if method.server_streaming:
                call = self.channel.unary_stream(
                    path,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=decode,
                )(request, timeout=timeout)
                items = list(itertools.islice(call, 20))
                call.cancel()
                return Answer(C.OK, "", items[0] if items else None)
            response = self.channel.unary_unary(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=decode,
            )(request, timeout=timeout)
            return Answer(C.OK, "", response)
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            hung = code == C.DEADLINE_EXCEEDED and time.monotonic() - start >= timeout - 0.5
            return Answer(code, details, None, client_deadline=hung)

    def runtime(self, name: str, request: Message, timeout: float = CALL_TIMEOUT) -> Any:
        return self._ok(METHOD[name], request, timeout)

    def _ok(self, method: MethodDescriptor, request: Message, timeout: float) -> Any:
        answer = self(method, request, timeout)
        if answer.code != C.OK:
            raise AssertionError(f"{method.name}: {answer.code.name}: {answer.message}")
        return answer.response


METHOD = {m.name: m for s in api_pb2.DESCRIPTOR.services_by_name.values() for m in s.methods}


@dataclass
class Fixture:
    """A READY pod with a RUNNING container, remade when a fuzzed request removed them."""

    client: Client
    images: list[str]
    logs: Path
    pools: Pools
    pod: str = ""
    container: str = ""
    made: int = 0
    config: api_pb2.PodSandboxConfig = field(default_factory=api_pb2.PodSandboxConfig)

    def alive(self) -> bool:
        if not self.container:
            return False
        ans = self.client(
            METHOD["ContainerStatus"], api_pb2.ContainerStatusRequest(container_id=self.container)
        )
        pod = self.client(
            METHOD["PodSandboxStatus"], api_pb2.PodSandboxStatusRequest(pod_sandbox_id=self.pod)
        )
        return (
            ans.code == C.OK
            and pod.code == C.OK
            and ans.response.status.state == api_pb2.CONTAINER_RUNNING  # type: ignore[union-attr]
            and pod.response.status.state == api_pb2.SANDBOX_READY  # type: ignore[union-attr]
        )

    def ensure(self) -> None:
        if self.alive():
            return
        self.pull()
        self.made += 1
        self.config = pod_config(f"fixture-{self.made}", uid=f"fixture-uid-{self.made}")
        self.config.log_directory = str(self.logs)
        self.pod = self.client.runtime(
            "RunPodSandbox", api_pb2.RunPodSandboxRequest(config=self.config), 120
        ).pod_sandbox_id
        self.container = self.create(self.pod, self.config, "app", ["sleep", "3600"])
        self.client.runtime(
            "StartContainer", api_pb2.StartContainerRequest(container_id=self.container)
        )
        self.pools.pods.append(self.pod)
        self.pools.containers.append(self.container)

    def pull(self) -> None:
        """Pulls the fixture images again where a fuzzed RemoveImage removed them."""
        for image in self.images:
            spec = api_pb2.ImageSpec(image=image)
            if not self.client.runtime(
                "ImageStatus", api_pb2.ImageStatusRequest(image=spec)
            ).image.id:
                self.client.runtime("PullImage", api_pb2.PullImageRequest(image=spec), 120)

    def create(
        self, pod: str, config: api_pb2.PodSandboxConfig, name: str, command: list[str]
    ) -> str:
        container = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=self.images[1]),
            command=command,
            log_path=f"{name}.log",
        )
        return str(
            self.client.runtime(
                "CreateContainer",
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=pod, config=container, sandbox_config=config
                ),
            ).container_id
        )

    def lifecycle(self) -> None:
        """A whole pod and container lifecycle, as a valid neighbour of any write."""
        self.ensure()
        self.pull()
        config = pod_config("neighbour", uid="neighbour-uid")
        config.log_directory = str(self.logs)
        pod = self.client.runtime(
            "RunPodSandbox", api_pb2.RunPodSandboxRequest(config=config), 120
        ).pod_sandbox_id
        cid = self.create(pod, config, "n", ["sh", "-c", "echo hi; sleep 3600"])
        self.client.runtime("StartContainer", api_pb2.StartContainerRequest(container_id=cid))
        out = self.client.runtime(
            "ExecSync", api_pb2.ExecSyncRequest(container_id=cid, cmd=["echo", "ok"], timeout=10)
        )
        assert out.stdout == b"ok\n" and out.exit_code == 0, out
        self.client.runtime(
            "StopContainer", api_pb2.StopContainerRequest(container_id=cid, timeout=0)
        )
        self.client.runtime("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=cid))
        self.client.runtime("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod))
        self.client.runtime("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod))

    def templates(self) -> dict[str, Callable[[], Message]]:
        """Valid requests for every RPC the fuzzer starts from (reads and writes)."""
        c = self.container
        app = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="fz"),
            image=api_pb2.ImageSpec(image=self.images[1]),
            command=["sleep", "3600"],
            log_path="fz.log",
        )
        pod = pod_config("fz", uid="fz-uid")
        pod.log_directory = str(self.logs)
        return {
            **self.neighbours(),
            "RunPodSandbox": lambda: api_pb2.RunPodSandboxRequest(config=pod),
            "CreateContainer": lambda: api_pb2.CreateContainerRequest(
                pod_sandbox_id=self.pod, config=app, sandbox_config=self.config
            ),
            "UpdateContainerResources": lambda: api_pb2.UpdateContainerResourcesRequest(
                container_id=c,
                linux=api_pb2.LinuxContainerResources(
                    cpu_shares=512, memory_limit_in_bytes=1 << 28
                ),
            ),
            "ReopenContainerLog": lambda: api_pb2.ReopenContainerLogRequest(container_id=c),
            "PullImage": lambda: api_pb2.PullImageRequest(
                image=api_pb2.ImageSpec(image=self.images[1])
            ),
        }

    def neighbours(self) -> dict[str, Callable[[], Message]]:
        """For each read, a valid request on the real objects."""
        c, p = self.container, self.pod
        return {
            "Version": lambda: api_pb2.VersionRequest(),
            "Status": lambda: api_pb2.StatusRequest(verbose=True),
            "RuntimeConfig": lambda: api_pb2.RuntimeConfigRequest(),
            "ListPodSandbox": lambda: api_pb2.ListPodSandboxRequest(),
            "PodSandboxStatus": lambda: api_pb2.PodSandboxStatusRequest(
                pod_sandbox_id=p, verbose=True
            ),
            "ListContainers": lambda: api_pb2.ListContainersRequest(),
            "ContainerStatus": lambda: api_pb2.ContainerStatusRequest(container_id=c, verbose=True),
            "ContainerStats": lambda: api_pb2.ContainerStatsRequest(container_id=c),
            "ListContainerStats": lambda: api_pb2.ListContainerStatsRequest(),
            "PodSandboxStats": lambda: api_pb2.PodSandboxStatsRequest(pod_sandbox_id=p),
            "ListPodSandboxStats": lambda: api_pb2.ListPodSandboxStatsRequest(),
            "ExecSync": lambda: api_pb2.ExecSyncRequest(container_id=c, cmd=["true"], timeout=10),
            "Exec": lambda: api_pb2.ExecRequest(container_id=c, cmd=["true"], stdout=True),
            "Attach": lambda: api_pb2.AttachRequest(container_id=c, stdout=True),
            "PortForward": lambda: api_pb2.PortForwardRequest(pod_sandbox_id=p, port=[80]),
            "ListImages": lambda: api_pb2.ListImagesRequest(),
            "ImageStatus": lambda: api_pb2.ImageStatusRequest(
                image=api_pb2.ImageSpec(image=self.images[1])
            ),
            "ImageFsInfo": lambda: api_pb2.ImageFsInfoRequest(),
        }


@dataclass
class Tally:
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
    defects: list[str] = field(default_factory=list)
    examples: int = 0
    lifecycles: int = 0

    def defect(self, what: str) -> None:
        if len(self.defects) < 200:
            self.defects.append(what)


def trim(client: Client, fixture: Fixture) -> None:
    """Removes pods the fuzzer made beyond MAX_PODS (never the fixture's)."""
    pods = client.runtime("ListPodSandbox", api_pb2.ListPodSandboxRequest()).items
    extra = sorted((p for p in pods if p.id != fixture.pod), key=lambda p: p.created_at)
    for pod in extra[: max(0, len(extra) - MAX_PODS)]:
        remove_pod(client, pod.id)
    containers = client.runtime("ListContainers", api_pb2.ListContainersRequest()).containers
    extra_c = sorted(
        (c for c in containers if c.id != fixture.container), key=lambda c: c.created_at
    )
    for c in extra_c[: max(0, len(extra_c) - 2 * MAX_PODS)]:
        client.runtime("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=c.id))


def remove_pod(client: Client, pod_id: str) -> None:
    client.runtime("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    client.runtime("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def doctor(d: Daemon) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "crictl.cli",
            "doctor",
            "--state-dir",
            str(d.state_dir),
            "--containerd",
            d.containerd_address,
            "--containerd-namespace",
            d.namespace,
            "--netns-dir",
            str(d.state_dir.parent / "netns"),
            "--cni-conf-dir",
            str(d.cni_conf_dir),
            *(x for b in d.cni_bin_dirs for x in ("--cni-bin-dir", str(b))),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def places(root: Path) -> list[str]:
    """Safe host paths for the path-shaped fields: a dir, a file, a FIFO, seccomp profiles."""
    (root / "dir").mkdir()
    (root / "file").write_text("x")
    os.mkfifo(root / "fifo")
    (root / "profile.json").write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    (root / "bad.json").write_text("{not json")
    return [str(root / n) for n in ("dir", "file", "fifo", "profile.json", "bad.json")]


@pytest.mark.timeout(max(600, EXAMPLES * 2))
def test_fuzz_every_rpc(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    d = image_daemon
    images = [f"{registry.host}/pause:3.10", f"{registry.host}/e2e-test-images/busybox:1.29-2"]
    for image in images:
        pull(d, image)
    logs = short_tmp / "logs"
    logs.mkdir()
    (short_tmp / "places").mkdir()
    pools = Pools(images=list(images), paths=[str(logs), *places(short_tmp / "places")])
    client = Client(d.endpoint)
    fixture = Fixture(client, images, logs, pools)
    fixture.ensure()
    assert loggers(short_tmp) == 1  # the fixture's: the count sees this daemon's loggers
    pid = d.process.pid if d.process else 0
    requests = Requests(pools, fixture.templates)
    tally = Tally()
    started = time.monotonic()

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(requests.call())
    def one(call: tuple[MethodDescriptor, Message]) -> None:
        method, request = call
        fixture.ensure()
        tally.examples += 1
        timeout, may_outlast = CALL_TIMEOUT, False
        if method.name == "GetContainerEvents":  # a stream without end: read what comes in 1 s
            timeout, may_outlast = 1.0, True
        elif isinstance(request, api_pb2.ExecSyncRequest) and not 0 < request.timeout <= 30:
            # no limit, or a long one: a command that runs on is not a hang, and the call
            # given up on must take its process with it
            timeout, may_outlast = 5.0, True
        answer = client(method, request, timeout)
        tally.answers[(method.name, answer.code.name)] += 1
        allowed = answer.code == C.OK or answer.code in REFUSALS | ALSO.get(method.name, set())
        if answer.client_deadline and may_outlast:
            pass
        elif not allowed or answer.client_deadline:
            what = "no answer" if answer.client_deadline else answer.code.name
            tally.defect(f"{method.name}: {what}: {answer.message[:300]}\n    {summary(request)}")
        if client(METHOD["Version"], api_pb2.VersionRequest(), 10).code != C.OK:
            tally.defect(f"daemon stopped answering after {method.name}: {summary(request)}")
            raise AssertionError("\n".join(tally.defects))
        fixture.ensure()
        neighbour = fixture.neighbours().get(method.name)
        if neighbour is not None:
            good = client(method, neighbour())
            if good.code != C.OK:
                tally.defect(
                    f"{method.name} on the real objects failed after {summary(request)}: "
                    f"{good.code.name}: {good.message}"
                )
        elif method.name in WRITES and tally.examples % 10 == 0:
            try:
                fixture.lifecycle()
                tally.lifecycles += 1
            except AssertionError as e:
                tally.defect(f"a lifecycle failed after {method.name} {summary(request)}: {e}")
        trim(client, fixture)

    one()
    elapsed = time.monotonic() - started
    fixture.lifecycle()
    tally.lifecycles += 1

    # everything removed: nothing may stay behind
    for pod in client.runtime("ListPodSandbox", api_pb2.ListPodSandboxRequest()).items:
        remove_pod(client, pod.id)
    assert not client.runtime("ListContainers", api_pb2.ListContainersRequest()).containers
    client.close()
    by_code = Counter[str]()
    for (_, code), n in tally.answers.items():
        by_code[code] += n
    report = (
        f"{tally.examples} requests over {len({m for m, _ in tally.answers})} RPCs in "
        f"{elapsed:.0f} s (seed {SEED}), {tally.lifecycles} neighbour lifecycles, "
        f"{fixture.made} fixture pods; answers: {dict(by_code.most_common())}"
    )
    print("\n" + report)
    assert not tally.defects, report + "\n" + "\n".join(tally.defects)
    assert d.process is not None and d.process.poll() is None and d.process.pid == pid
    h = held(d, cni_network)
    assert (h.netns, h.ips, h.containers, h.tasks, h.rw_snapshots, h.leases, h.veths) == (
        frozenset(),
    ) * 7, h
    deadline = time.monotonic() + 10
    while loggers(short_tmp) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loggers(short_tmp) == 0
    found = doctor(d)
    assert found.returncode == 0, found.stdout + found.stderr


def test_no_rpc_is_unimplemented(image_daemon: Daemon) -> None:
    """Every RPC of cri-api v0.37 answers something other than UNIMPLEMENTED, even empty."""
    client = Client(image_daemon.endpoint)
    try:
        missing = {
            name
            for name, m in METHOD.items()
            if client(m, message_factory.GetMessageClass(m.input_type)(), 2).code == C.UNIMPLEMENTED
        }
    finally:
        client.close()
    assert missing == set(), missing
