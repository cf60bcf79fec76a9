"""kubelet end to end: a real kubelet v1.34 (hack/install-kubelet.sh), standalone with static pods,
drives a real crictld on the run's private containerd, with the local registry's images.

One kubelet and one crictld serve the whole module (starting them is most of the cost); each
check is its own test with its own pods, removed at its end, except the two long-lived pods
(`steady`, a busybox that logs, and `web`, the nginx stand-in) that several checks share and
that the kill -9 check requires to survive untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crictl.containerd.managed import ManagedContainerd
from tests.rig.cni import CniNetwork, make_network
from tests.rig.daemon import Daemon
from tests.rig.inventory import purge_namespace
from tests.rig.kubelet import (
    Json,
    Kubelet,
    KubeletStream,
    free_port,
    kubelet_bin,
    unmount_below,
)
from tests.rig.leaks import Holdings, holdings
from tests.rig.registry import Registry
from tests.rig.shims import remove_runc_states

pytestmark = pytest.mark.integration

# Ends at once on SIGTERM (a shell as PID 1 has no default SIGTERM action).
LOOP = "trap 'exit 0' TERM; while :; do sleep 1; done"
GRACE = 2


@dataclass
class Node:
    daemon: Daemon
    kubelet: Kubelet
    net: CniNetwork
    registry: Registry
    root: Path

    def image(self, name: str) -> str:
        return f"{self.registry.host}/e2e-test-images/{name}"

    @property
    def busybox(self) -> str:
        return self.image("busybox:1.29-2")

    @property
    def nginx(self) -> str:
        return self.image("nginx:1.14-2")

    def container(self, name: str, script: str, **extra: Any) -> Json:
        return {
            "name": name,
            "image": self.busybox,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", script],
            **extra,
        }

    def pod(self, name: str, containers: list[Json], **spec: Any) -> Json:
        return {
            "metadata": {"name": name, "labels": {"test": name}},
            "spec": {
                "terminationGracePeriodSeconds": GRACE,
                "containers": containers,
                **spec,
            },
        }

    def crictl_json(self, *args: str) -> Any:
        r = self.daemon.crictl(*args)
        assert r.returncode == 0, f"crictl {' '.join(args)}: {r.stderr}"
        return json.loads(r.stdout)

    def sandbox_ids(self, pod: str) -> list[str]:
        """Every sandbox crictld holds for the static pod `pod` (any state)."""
        items = self.crictl_json(
            "pods", "-o", "json", "--label", f"io.kubernetes.pod.name={self.kubelet.pod_name(pod)}"
        )["items"]
        return [str(p["id"]) for p in items]

    def container_ids(self, pod: str) -> list[str]:
        items = self.crictl_json(
            "ps",
            "-a",
            "-o",
            "json",
            "--label",
            f"io.kubernetes.pod.name={self.kubelet.pod_name(pod)}",
        )["containers"]
        return [str(c["id"]) for c in items]

    def inspect(self, cid: str) -> Json:
        info: Json = self.crictl_json("inspect", cid)
        return info

    def held(self) -> Holdings:
        return holdings(
            self.daemon.containerd_address, self.daemon.namespace, self.root / "netns", self.net
        )

    def daemon_log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.root.glob("crictld*.log"))
        )


def cid_of(status: Json) -> str:
    """The runtime's id in a containerStatus ("crictld://<id>" or "containerd://<id>")."""
    return str(status["containerID"]).split("://", 1)[1]


def statuses(pod: Json, init: bool = False) -> dict[str, Json]:
    key = "initContainerStatuses" if init else "containerStatuses"
    return {c["name"]: c for c in pod["status"].get(key) or []}


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, detail: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{detail()}")
        time.sleep(0.25)


# For a check of what kubelet does apart from its PLEG (the container GC, the log manager, the
# portmap rules, host networking, cgroup limits): run with the generic PLEG only, the default.
# Pods reaching Running and containers' state changes are checked under both PLEGs by the rest.
ONE_PLEG = pytest.mark.parametrize("node", ["generic-pleg"], indirect=True)


@pytest.fixture(scope="module", params=["generic-pleg", "evented-pleg"])
def node(
    request: pytest.FixtureRequest, containerd_address: str, registry: Registry, crictl_path: Path
) -> Iterator[Node]:
    """Every check runs twice: with kubelet's generic PLEG (relisting every second) and with
    the EventedPLEG feature gate (kubelet follows GetContainerEvents), but those marked
    ONE_PLEG, which check what the PLEG does not carry."""
    started = time.monotonic()
    binary = kubelet_bin()
    root = Path(tempfile.mkdtemp(prefix="crk-", dir="/tmp"))
    net = make_network(root / "cni")
    namespace = f"crictld-kubelet-{secrets.token_hex(4)}"
    d = Daemon(
        state_dir=root / "state",
        socket=root / "crictld.sock",
        crictl_bin=crictl_path,
        cni_conf_dir=net.conf_dir,
        cni_bin_dirs=net.bin_dirs,
        containerd=containerd_address,
        namespace=namespace,
        extra_args=["--pause-image", f"{registry.host}/pause:3.10"],
    )
    gates = {"EventedPLEG": True} if request.param == "evented-pleg" else {}
    k = Kubelet(binary, root / "kubelet", d.endpoint, feature_gates=gates)
    n = Node(d, k, net, registry, root)
    try:
        d.start()
        k.start()
        print(f"\nkubelet up {time.monotonic() - started:.1f}s after the module started")
        yield n
    finally:
        for name in k.manifest_names():
            k.remove_manifest(name)
        if k.process is not None and k.process.poll() is None and d.process is not None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = d.crictl("ps", "-q")
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.5)
        k.cleanup()
        keep = os.environ.get("CRICTLD_KEEP_KUBELET_LOGS")
        if keep:  # a directory to copy kubelet's and crictld's logs to, for a post-mortem
            Path(keep).mkdir(parents=True, exist_ok=True)
            for log in [*k.root.glob("kubelet*.log"), *root.glob("crictld*.log")]:
                shutil.copy(log, Path(keep) / log.name)
        if d.process is not None and d.process.poll() is None:
            d.crictl("rmp", "-fa", timeout=120)
        d.stop()
        asyncio.run(purge_namespace(containerd_address, namespace))
        remove_runc_states(namespace)  # left only by a shim a failed test left stuck
        with contextlib.suppress(OSError):
            Path("/run/containerd/runc", namespace).rmdir()
        net.remove()
        unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)
        print(f"\nkubelet module total {time.monotonic() - started:.1f}s")


@pytest.fixture(scope="module")
def steady(node: Node) -> Json:
    """A busybox that logs to both streams, then a line a second (for logs, exec, attach, stats);
    and the nginx stand-in (for networking and port-forward). Both live for the whole module."""
    node.kubelet.write_manifest(
        node.pod(
            "steady",
            [
                node.container(
                    "main",
                    "echo hello-out; echo hello-err >&2; trap 'exit 0' TERM; "
                    "i=0; while :; do i=$((i+1)); echo tick $i; sleep 1; done",
                )
            ],
        )
    )
    node.kubelet.write_manifest(
        node.pod(
            "web",
            [{"name": "nginx", "image": node.nginx, "imagePullPolicy": "IfNotPresent"}],
        )
    )
    node.kubelet.wait_running("web")
    return node.kubelet.wait_running("steady")


@pytest.fixture
def pods(node: Node) -> Iterator[list[str]]:
    """Names of the static pods a test writes; their manifests are removed when it ends."""
    names: list[str] = []
    yield names
    for name in names:
        node.kubelet.remove_manifest(name)


def start(node: Node, names: list[str], manifest: Json) -> str:
    name = str(manifest["metadata"]["name"])
    names.append(name)
    node.kubelet.write_manifest(manifest)
    return name


# ------------------------------------------------------------------------------------------------


def test_evented_pleg_follows_container_events(node: Node, steady: Json) -> None:
    """With the gate, kubelet holds a GetContainerEvents stream on crictld; without, none."""
    evented = bool(node.kubelet.feature_gates.get("EventedPLEG"))
    info = json.loads(node.daemon.status().info["daemon"])
    assert info["containerEventSubscribers"] == (1 if evented else 0), info


def test_pod_running_with_its_image_pulled(node: Node, steady: Json) -> None:
    pod = steady
    main = statuses(pod)["main"]
    assert pod["status"]["phase"] == "Running", pod["status"]
    assert main["ready"] is True and main["restartCount"] == 0, main
    assert main["imageID"].startswith(f"{node.registry.host}/e2e-test-images/busybox@sha256:"), (
        f"imageID is not the pulled image's repo digest: {main}"
    )
    assert pod["status"].get("podIP"), f"no pod IP: {pod['status']}"
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions.get("Ready") == "True", conditions
    images = node.crictl_json("images", "-o", "json")["images"]
    tags = [t for i in images for t in i.get("repoTags") or []]
    assert node.busybox in tags and node.nginx in tags, f"kubelet's pulls not in crictld: {tags}"
    ctr = node.inspect(cid_of(main))
    assert ctr["status"]["state"] == "CONTAINER_RUNNING", ctr["status"]
    assert ctr["status"]["labels"]["io.kubernetes.container.name"] == "main"


def test_pod_status_reports_the_image_name(node: Node, steady: Json) -> None:
    main = statuses(steady)["main"]
    assert main["image"] == node.busybox, f"containerStatuses[].image is {main['image']!r}"


def test_container_logs_through_kubelet(node: Node, steady: Json) -> None:
    k = node.kubelet
    wait_for(
        "a few ticks logged",
        lambda: "tick 2" in k.container_logs("steady", "main"),
        15,
        lambda: k.container_logs("steady", "main"),
    )
    logs = k.container_logs("steady", "main")
    lines = logs.splitlines()
    # Both streams in one log; across the two pipes the order is the logger's reads, not the
    # writes' (as with containerd), within a stream it is the writes'.
    assert {"hello-out", "hello-err", "tick 1", "tick 2"} <= set(lines), lines[:5]
    assert lines.index("hello-out") < lines.index("tick 1") < lines.index("tick 2"), lines[:5]
    tail = k.container_logs("steady", "main", tailLines="1")
    assert len(tail.splitlines()) == 1 and tail.startswith("tick "), repr(tail)
    stamped = k.container_logs("steady", "main", timestamps="true").splitlines()[0]
    stamp, _, text = stamped.partition(" ")
    assert stamp[:4].isdigit() and "T" in stamp and stamp.endswith("Z"), stamped
    assert text in ("hello-out", "hello-err"), stamped


@ONE_PLEG
def test_kubelet_rotates_a_container_log(node: Node, pods: list[str]) -> None:
    """kubelet's log manager rotates a log past containerLogMaxSize (64Ki in the rig, checked
    every 3 s): it renames the file and calls ReopenContainerLog, and crictld's logger goes on
    in a new file, not a line lost or repeated. kubelet keeps containerLogMaxFiles (3,
    compressing the older ones), and serves the newest lines."""
    k = node.kubelet
    line = f"i=$((i+1)); echo line $i {'x' * 100}"  # ~120 bytes a line in the CRI format
    script = f"i=0; while :; do {line}; [ $((i % 100)) = 0 ] && sleep 1; done"
    name = start(node, pods, node.pod("chatty", [node.container("c", script)]))
    pod = k.wait_running(name)
    log_dir = k.pod_logs_dir / f"default_{k.pod_name(name)}_{pod['metadata']['uid']}" / "c"

    def numbers(path: Path) -> list[int]:
        # Missing is empty: between kubelet's rename and its ReopenContainerLog there is no
        # 0.log (a CI run read it then), and compressing renames the older rotated files.
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        text = gzip.decompress(data) if path.suffix == ".gz" else data
        return [int(line.split()[4]) for line in text.decode().splitlines()]

    def rotated() -> list[Path]:  # oldest first (their names end with the time of the rotation)
        return sorted(
            p for p in log_dir.iterdir() if p.name.startswith("0.log.") and p.suffix != ".tmp"
        )

    def files() -> str:
        return str(sorted(p.name for p in log_dir.iterdir()))

    wait_for("two rotations", lambda: len(rotated()) >= 2, 60, files)
    deadline = time.monotonic() + 30
    while True:  # the newest rotated file and the current one, with no rotation in between
        before = rotated()
        current = numbers(log_dir / "0.log")  # empty until reopened and the writer's next line
        newest = numbers(before[-1])
        if (rotated() == before and current) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert newest and current, (newest[-3:], current[:3])
    assert current[0] == newest[-1] + 1, (newest[-3:], current[:3])
    assert before[0].suffix == ".gz", files()
    wait_for(
        "at most containerLogMaxFiles files", lambda: len(list(log_dir.iterdir())) <= 3, 15, files
    )
    tail = k.container_logs(name, "c", tailLines="1")
    assert tail.startswith("line ") and int(tail.split()[1]) >= current[-1], tail


def test_crash_loop_restart_count_grows(node: Node, pods: list[str]) -> None:
    k = node.kubelet
    name = start(node, pods, node.pod("crash", [node.container("c", "echo attempt; exit 3")]))

    seen: list[tuple[int, str]] = []  # (restartCount, waiting reason) at each poll

    def restarted_twice(p: Json) -> bool:
        c = statuses(p)["c"]
        seen.append((int(c["restartCount"]), c["state"].get("waiting", {}).get("reason", "")))
        # Between an attempt's exit and kubelet's next sync the state is that exit itself
        # ("terminated"), and lastState would be the attempt before, which kubelet's container
        # GC (one dead container kept per container) may have removed already: a CI run polled
        # exactly then. Waiting or running again, lastState is the exit just seen.
        return seen[-1][0] >= 2 and "terminated" not in c["state"]

    pod = k.wait_pod(name, "restartCount >= 2, waiting or running", restarted_twice, timeout=60)
    counts = sorted({n for n, _ in seen})
    assert counts[-1] >= 2 and len(counts) >= 2, f"restartCount did not grow: {seen}"
    c = statuses(pod)["c"]
    last = c["lastState"].get("terminated")
    assert last and last["exitCode"] == 3 and last["reason"] == "Error", c
    # The attempts crictld holds are numbered by kubelet: the newest is the restart count or more.
    attempts = sorted(
        int(x["metadata"]["attempt"])
        for x in node.crictl_json(
            "ps", "-a", "-o", "json", "--label", f"io.kubernetes.pod.name={k.pod_name(name)}"
        )["containers"]
    )
    assert attempts and attempts[-1] >= 2, attempts
    assert "attempt" in k.container_logs(name, "c")
    assert "attempt" in k.container_logs(name, "c", previous="true")  # the attempt before
    if not any(reason == "CrashLoopBackOff" for _, reason in seen):
        k.wait_pod(
            name,
            "waiting in CrashLoopBackOff",
            lambda p: (
                statuses(p)["c"]["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
            ),
            timeout=30,
        )


def test_an_oom_kill_is_reported_as_oomkilled(node: Node, pods: list[str]) -> None:
    """A container past its memory limit is killed by the kernel: kubelet reports it terminated
    with reason OOMKilled and exit code 137, from crictld's ContainerStatus (which learns of the
    kill from containerd's /tasks/oom event); its log stays readable through kubelet."""
    k = node.kubelet
    limits = {"limits": {"memory": "32Mi"}}
    hog = node.container("c", "echo filling; dd if=/dev/zero of=/dev/null bs=64M", resources=limits)
    name = start(node, pods, node.pod("oom", [hog], restartPolicy="Never"))
    pod = k.wait_pod(
        name,
        "the container terminated",
        lambda p: "terminated" in statuses(p).get("c", {}).get("state", {}),
        timeout=60,
    )
    terminated = statuses(pod)["c"]["state"]["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137), terminated
    assert "filling" in k.container_logs(name, "c")


def test_termination_messages(node: Node, pods: list[str]) -> None:
    """kubelet's termination message, from the file it mounts at terminationMessagePath and,
    with FallbackToLogsOnError, from the tail of the container's log (read in crictld's CRI
    log format) when that file is empty and the container failed."""
    k = node.kubelet
    written = node.container("file", "echo -n 'written to the file' > /dev/termination-log")
    fallback = node.container(
        "logs",
        "echo earlier; echo 'last words'; exit 2",
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    name = start(node, pods, node.pod("bye", [written, fallback], restartPolicy="Never"))

    def both_terminated(p: Json) -> bool:
        cs = statuses(p)
        return all("terminated" in cs.get(c, {}).get("state", {}) for c in ("file", "logs"))

    pod = k.wait_pod(name, "both containers terminated", both_terminated, timeout=60)
    file = statuses(pod)["file"]["state"]["terminated"]
    assert (file["exitCode"], file.get("message")) == (0, "written to the file"), file
    logs = statuses(pod)["logs"]["state"]["terminated"]
    assert logs["exitCode"] == 2 and logs.get("message") == "earlier\nlast words\n", logs


def test_exec_readiness_probe(node: Node, pods: list[str]) -> None:
    """Not ready, ready while the probe's file exists, not ready again. Each phase lasts 8 s:
    with EventedPLEG, kubelet's pod worker sees a container it just started as running only
    when its status cache next moves past the sync that started it, which for an event sent
    during that sync (containerd's CRI sends them there too) is the 5 s global cache update
    (pleg/evented.go globalCacheUpdatePeriod); no probe runs before. With 3 s phases the
    container showed "waiting" until the file existed, and "running, not ready" never came."""
    k = node.kubelet
    probe = {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1}
    script = "sleep 8; touch /tmp/ready; sleep 8; rm /tmp/ready; " + LOOP
    name = start(node, pods, node.pod("ready", [node.container("c", script, readinessProbe=probe)]))
    seen: list[bool] = []

    def track(want: bool) -> Callable[[Json], bool]:
        def check(p: Json) -> bool:
            c = statuses(p)["c"]
            if "running" in c["state"]:
                seen.append(bool(c["ready"]))
            return "running" in c["state"] and c["ready"] is want

        return check

    k.wait_pod(name, "running but not ready (probe failing)", track(False), timeout=30)
    k.wait_pod(name, "ready once /tmp/ready exists", track(True), timeout=30)
    pod = k.wait_pod(name, "not ready again once it is gone", track(False), timeout=30)
    c = statuses(pod)["c"]
    assert c["restartCount"] == 0, f"a readiness failure must not restart: {c}"
    conditions = {x["type"]: x["status"] for x in pod["status"]["conditions"]}
    assert conditions["Ready"] == "False", conditions


def test_exec_liveness_probe_restarts_the_container(node: Node, pods: list[str]) -> None:
    k = node.kubelet
    probe = {
        "exec": {"command": ["cat", "/tmp/healthy"]},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }
    script = "echo started; touch /tmp/healthy; sleep 3; rm /tmp/healthy; " + LOOP
    name = start(node, pods, node.pod("live", [node.container("c", script, livenessProbe=probe)]))
    running = k.wait_running(name)
    first = cid_of(statuses(running)["c"])
    pod = k.wait_pod(
        name,
        "a restart after the liveness probe failed",
        lambda p: statuses(p)["c"]["restartCount"] >= 1 and "running" in statuses(p)["c"]["state"],
        timeout=40,
    )
    c = statuses(pod)["c"]
    assert cid_of(c) != first, c
    last = c["lastState"]["terminated"]
    assert last["containerID"].endswith(first), c
    # Killed by kubelet after the probe failed: SIGTERM ends the trap loop with 0 (or 137/143).
    assert last["exitCode"] in (0, 137, 143), last


def test_init_containers_run_in_order_with_a_shared_empty_dir(node: Node, pods: list[str]) -> None:
    k = node.kubelet
    mount = [{"name": "work", "mountPath": "/work"}]
    manifest = node.pod(
        "init",
        [node.container("main", "cat /work/order; " + LOOP, volumeMounts=mount)],
        initContainers=[
            node.container("first", "echo first >> /work/order; sleep 1", volumeMounts=mount),
            node.container("second", "echo second >> /work/order", volumeMounts=mount),
        ],
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    name = start(node, pods, manifest)
    pod = k.wait_running(name)
    inits = statuses(pod, init=True)
    for n in ("first", "second"):
        t = inits[n]["state"].get("terminated")
        assert t and t["exitCode"] == 0 and t["reason"] == "Completed", inits[n]
    assert (
        inits["first"]["state"]["terminated"]["finishedAt"]
        <= (inits["second"]["state"]["terminated"]["startedAt"])
    ), inits
    wait_for(
        "main's log shows both init writes",
        lambda: k.container_logs(name, "main") == "first\nsecond\n",
        15,
        lambda: repr(k.container_logs(name, "main")),
    )
    conditions = {x["type"]: x["status"] for x in pod["status"]["conditions"]}
    assert conditions["Initialized"] == "True", conditions


def http_get(url: str, timeout: float = 3) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        body: bytes = r.read()
        return body.decode(errors="replace")


def test_host_to_pod_and_pod_to_pod_networking(node: Node, steady: Json, pods: list[str]) -> None:
    k = node.kubelet
    web = k.wait_running("web")
    ip = web["status"]["podIP"]
    assert ip, web["status"]
    ping = subprocess.run(["ping", "-c", "1", "-W", "2", ip], capture_output=True, text=True)
    assert ping.returncode == 0, f"host cannot ping pod {ip}: {ping.stdout}{ping.stderr}"
    body = http_get(f"http://{ip}/")
    assert "Welcome to nginx" in body, f"host -> pod http://{ip}/: {body[:300]}"
    script = (
        f"until wget -q -O /tmp/page http://{ip}/; do sleep 0.5; done; "
        "echo FETCHED; cat /tmp/page; " + LOOP
    )
    name = start(node, pods, node.pod("client", [node.container("c", script)]))
    client = k.wait_running(name)
    assert client["status"]["podIP"] != ip, client["status"]
    wait_for(
        f"pod -> pod wget http://{ip}/",
        lambda: "Welcome to nginx" in k.container_logs(name, "c"),
        20,
        lambda: k.container_logs(name, "c"),
    )


@ONE_PLEG
def test_host_port_reaches_the_pod(node: Node, pods: list[str]) -> None:
    """A hostPort: kubelet passes the pod's port mappings in RunPodSandbox, crictld hands them
    to the configuration's portmap plugin (its portMappings capability), and the port on the
    node reaches the pod; the pod's removal takes the mapping away."""
    k = node.kubelet
    port = free_port()

    def nat_rules() -> str:
        save = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True)
        return save.stdout

    web = {
        "name": "nginx",
        "image": node.nginx,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": 80, "hostPort": port, "protocol": "TCP"}],
    }
    name = start(node, pods, node.pod("hostport", [web]))
    k.wait_running(name)
    # The node's loopback: portmap DNATs it and masquerades the source (its route_localnet
    # path). The rig's pods have no default route, so the node's other addresses, whose
    # replies would need one, are not what this checks.
    url = f"http://127.0.0.1:{port}/"
    wait_for(f"{url} reaches the pod", lambda: "Welcome to nginx" in fetch(url), 20, lambda: url)
    assert f"--dport {port} " in nat_rules() and f"--dports {port} " in nat_rules()
    k.remove_manifest(name)
    pods.remove(name)
    k.wait_gone(name, timeout=30)
    wait_for(
        "portmap's rules gone",
        lambda: f" {port} " not in nat_rules(),  # neither --dport nor --dports
        30,
        nat_rules,
    )


@ONE_PLEG
def test_host_network_pod(node: Node, pods: list[str]) -> None:
    """hostNetwork: kubelet asks for the node's network and UTS namespaces, and crictld runs no
    CNI for the pod: its container is in the node's network and UTS namespaces (the same
    namespace inodes as this process's), and the pod holds no netns or IP of its own."""
    k = node.kubelet
    script = "readlink /proc/self/ns/net; readlink /proc/self/ns/uts; hostname; " + LOOP
    name = start(node, pods, node.pod("hostnet", [node.container("c", script)], hostNetwork=True))
    k.wait_running(name)
    [sid] = node.sandbox_ids(name)
    wait_for(
        "the container's output", lambda: len(k.container_logs(name, "c").split()) >= 3, 15, str
    )
    net, uts, hostname = k.container_logs(name, "c").split()[:3]
    assert (net, uts) == (os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/uts"))
    assert hostname == socket.gethostname()
    assert sid not in node.held().netns
    assert node.crictl_json("inspectp", sid)["status"]["network"]["ip"] == ""
    # kubelet read its statuses: a status without a network field would have made it log this
    assert "doesn't have network information" not in k.log()


@ONE_PLEG
def test_a_pod_in_a_user_namespace_of_its_own_is_refused_by_kubelet(
    node: Node, pods: list[str]
) -> None:
    """`hostUsers: false` (kubelet's UserNamespacesSupport, on by default since 1.33): crictld's
    Status says no handler runs user namespaces, so kubelet refuses the pod with its own words
    before it asks for a sandbox, rather than the pod running in the node's user namespace."""
    k = node.kubelet
    handlers = {h.name: h.features for h in node.daemon.status().runtime_handlers}
    assert handlers and not any(f.user_namespaces for f in handlers.values()), handlers
    name = start(node, pods, node.pod("userns", [node.container("c", LOOP)], hostUsers=False))
    refusal = "can't set `spec.hostUsers: false`, runtime does not support user namespaces"
    wait_for("kubelet's refusal", lambda: refusal in k.log(), 30, lambda: k.log()[-3000:])
    assert node.sandbox_ids(name) == []


def fetch(url: str) -> str:
    """The page at `url`, or "" if nothing answers."""
    try:
        return http_get(url, timeout=1)
    except OSError:
        return ""


def cgroup_dir(pid: int, controller: str) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup") / controllers / path.lstrip("/")
    raise AssertionError(f"no {controller} cgroup for pid {pid}")


@ONE_PLEG
def test_resources_reach_the_cgroup(node: Node, pods: list[str]) -> None:
    k = node.kubelet
    resources = {
        "limits": {"memory": "64Mi", "cpu": "250m"},
        "requests": {"memory": "32Mi", "cpu": "100m"},
    }
    name = start(node, pods, node.pod("limits", [node.container("c", LOOP, resources=resources)]))
    pod = k.wait_running(name)
    cid = cid_of(statuses(pod)["c"])
    pid = int(node.inspect(cid)["info"]["pid"])
    memory = cgroup_dir(pid, "memory")
    cpu = cgroup_dir(pid, "cpu")
    limit = int((memory / "memory.limit_in_bytes").read_text())
    quota = int((cpu / "cpu.cfs_quota_us").read_text())
    period = int((cpu / "cpu.cfs_period_us").read_text())
    shares = int((cpu / "cpu.shares").read_text())
    assert limit == 64 << 20, f"memory.limit_in_bytes {limit} in {memory}"
    assert (quota, period) == (25000, 100000), f"CFS quota/period {quota}/{period} in {cpu}"
    assert shares == 102, f"cpu.shares {shares} (100m requested) in {cpu}"


def test_stats_summary_has_the_pod(node: Node, steady: Json) -> None:
    k = node.kubelet
    full = k.pod_name("steady")
    found: dict[str, Json] = {}

    def complete() -> bool:
        for p in k.stats_summary().get("pods") or []:
            if p["podRef"]["name"] == full:
                found["pod"] = p
                c = {x["name"]: x for x in p.get("containers") or []}.get("main")
                return bool(
                    c
                    and p.get("cpu", {}).get("usageCoreNanoSeconds")
                    and p.get("memory", {}).get("workingSetBytes")
                    and c.get("cpu", {}).get("usageCoreNanoSeconds")
                    and c.get("cpu", {}).get("usageNanoCores") is not None
                    and c.get("memory", {}).get("workingSetBytes")
                    and c.get("rootfs", {}).get("usedBytes") is not None
                    and c.get("logs", {}).get("usedBytes")
                )
        return False

    wait_for(
        f"/stats/summary with {full}'s cpu, memory, rootfs and logs",
        complete,
        40,
        lambda: json.dumps(found.get("pod"), indent=1)[-3000:],
    )
    p = found["pod"]
    main = {x["name"]: x for x in p["containers"]}["main"]
    assert main["logs"]["usedBytes"] > 0 and main["rootfs"]["capacityBytes"] > 0, main
    assert p.get("ephemeral-storage", {}).get("usedBytes") is not None, p


def test_exec_through_kubelet(node: Node, steady: Json) -> None:
    r = node.kubelet.exec("steady", "main", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert r.status == 101, f"kubelet's /exec did not upgrade: {r.status} {r.error}"
    assert (r.stdout, r.stderr) == (b"out\n", b"err\n"), r
    assert r.exit_code == 3, r
    ok = node.kubelet.exec("steady", "main", ["cat", "/etc/hostname"])
    assert ok.exit_code == 0 and ok.stdout.decode().strip() == node.kubelet.pod_name("steady"), ok


def test_attach_through_kubelet(node: Node, steady: Json) -> None:
    k = node.kubelet
    s = k.stream(
        f"/attach/default/{k.pod_name('steady')}/main?output=1&error=1", "v4.channel.k8s.io"
    )
    try:
        assert s.status == 101, f"kubelet's /attach did not upgrade: {s.head!r}"
        s.open(streamtype="error")
        stdout = s.open(streamtype="stdout")
        s.open(streamtype="stderr")
        got = s.collect({stdout}, until=lambda g: g[stdout].count(b"tick") >= 2)
        assert got[stdout].count(b"tick") >= 2, got
    finally:
        s.close()


def test_port_forward_through_kubelet(node: Node, steady: Json) -> None:
    k = node.kubelet
    k.wait_running("web")
    s = KubeletStream(k.port, f"/portForward/default/{k.pod_name('web')}", "portforward.k8s.io")
    try:
        assert s.status == 101, f"kubelet's /portForward did not upgrade: {s.head!r}"
        error = s.open(streamtype="error", port="80", requestid="0")
        data = s.open(streamtype="data", port="80", requestid="0")
        s.send(data, b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        got = s.collect({error, data}, until_closed={data}, until=lambda g: b"</html>" in g[data])
        assert b"200" in got[data].split(b"\r\n", 1)[0], got
        assert b"Welcome to nginx" in got[data], got
        assert got[error] == b"", got
    finally:
        s.close()


def test_a_pod_whose_pause_dies_gets_a_new_sandbox(node: Node, pods: list[str]) -> None:
    """The pause process killed under kubelet: crictld makes the sandbox NOTREADY (and says
    why), kubelet stops it and runs the pod again in a new sandbox, the container restarted
    there; the old sandbox's netns and IP are released."""
    k = node.kubelet
    name = start(node, pods, node.pod("phoenix", [node.container("c", LOOP)]))
    pod = k.wait_running(name)
    [old] = node.sandbox_ids(name)
    old_ip = pod["status"]["podIP"]
    first = cid_of(statuses(pod)["c"])
    pause_pid = int(node.crictl_json("inspectp", old)["info"]["pid"])
    os.kill(pause_pid, signal.SIGKILL)

    def again() -> bool:
        p = k.pod(name)
        c = statuses(p).get("c") if p else None
        return bool(
            p
            and c
            and "running" in c["state"]
            and cid_of(c) != first
            and len(node.sandbox_ids(name)) == 2
        )

    wait_for("the pod runs again", again, 60, lambda: "\n".join(k.errors()[-20:]))
    pod = k.wait_running(name)
    new = [sid for sid in node.sandbox_ids(name) if sid != old]
    assert len(new) == 1, node.sandbox_ids(name)
    states = {p["id"]: p["state"] for p in node.crictl_json("pods", "-o", "json")["items"]}
    assert (states[old], states[new[0]]) == ("SANDBOX_NOTREADY", "SANDBOX_READY"), states
    assert statuses(pod)["c"]["restartCount"] == 1, statuses(pod)["c"]
    lost = [
        json.loads(line)
        for line in node.daemon_log().splitlines()
        if '"pod not ready"' in line and old in line
    ]
    assert [r["reason"] for r in lost] == ["PauseExited"], lost
    new_ip = pod["status"]["podIP"]

    def released() -> bool:
        h = node.held()
        return old not in h.netns and (old_ip == new_ip or old_ip not in h.ips)

    wait_for("the old sandbox's netns and IP released", released, 30, lambda: str(node.held()))
    assert new_ip in node.held().ips


LONG_LIVED = ("steady", "web")
Survivors = tuple[dict[tuple[str, str], tuple[str, int, int]], dict[str, list[str]]]


def survivors(node: Node, timeout: float = 60.0) -> Survivors:
    """The long-lived pods as kubelet reports them: each container's (id, restartCount, pid),
    and each pod's sandbox ids."""
    containers = {}
    for name in LONG_LIVED:
        pod = node.kubelet.wait_running(name, timeout=timeout)
        for cname, c in statuses(pod).items():
            cid = cid_of(c)
            pid = int(node.inspect(cid)["info"]["pid"])
            containers[(name, cname)] = (cid, int(c["restartCount"]), pid)
    return containers, {name: node.sandbox_ids(name) for name in LONG_LIVED}


def assert_survived(node: Node, before: Survivors) -> None:
    """After several PLEG relists and pod syncs: the same containers, restart counts, processes
    and sandboxes (else a post-mortem of what changed), and the busybox still logging."""
    time.sleep(8)
    after = survivors(node, timeout=30)
    changed = [key for key in before[0] if after[0].get(key) != before[0][key]]
    assert not changed, (
        f"(container id, restartCount, pid) changed: {before[0]} -> {after[0]}\n"
        + restart_post_mortem(
            node,
            [before[0][key][0] for key in changed]
            + [sid for key in changed for sid in before[1][key[0]]],
        )
    )
    assert after == before
    ticks = node.kubelet.container_logs("steady", "main", tailLines="1")
    time.sleep(1.5)
    assert "tick" in ticks and node.kubelet.container_logs("steady", "main", tailLines="1") != ticks


def test_kill_9_of_crictld_restarts_no_container(node: Node, steady: Json) -> None:
    d = node.daemon
    before = survivors(node)
    assert d.process is not None
    d.process.kill()
    d.process.wait(timeout=30)
    time.sleep(3)  # kubelet notices: PLEG relists and Status fail while crictld is down
    d.start()
    assert_survived(node, before)


def test_kill_9_of_containerd_restarts_no_container(
    node: Node, steady: Json, session_containerd: ManagedContainerd
) -> None:
    """containerd killed under a running kubelet, then started again as an init system would:
    the shims and containers live on, crictld answers kubelet from its store meanwhile
    (RuntimeReady=false) and resyncs once containerd answers. kubelet restarts nothing, and
    exec and logs go on working."""
    k, d = node.kubelet, node.daemon
    before = survivors(node)
    assert session_containerd.pid is not None
    os.kill(session_containerd.pid, signal.SIGKILL)

    def runtime_ready() -> bool:
        conditions = {c.type: c for c in d.status().status.conditions}
        return conditions["RuntimeReady"].status

    wait_for("crictld sees containerd gone", lambda: not runtime_ready(), 15, d.log)
    wait_for("the old containerd is reaped", lambda: not session_containerd.alive(), 15, str)
    time.sleep(3)  # kubelet relists and syncs against crictld while containerd is away
    asyncio.run(session_containerd.ensure_running())
    wait_for("crictld sees containerd back", runtime_ready, 30, d.log)
    assert_survived(node, before)
    ok = k.exec("steady", "main", ["cat", "/etc/hostname"])  # a new exec through the new shim
    assert ok.exit_code == 0 and ok.stdout.decode().strip() == k.pod_name("steady"), ok


def test_restart_of_kubelet_restarts_no_container(node: Node, steady: Json) -> None:
    """kubelet stopped and started again (an upgrade, a config change): it finds its pods'
    sandboxes and containers through crictld (labels, annotations, the container hash it
    compares with the manifest) and adopts them; nothing is restarted."""
    before = survivors(node)
    node.kubelet.stop()
    node.kubelet.start()
    assert_survived(node, before)


def restart_post_mortem(node: Node, ids: list[str]) -> str:
    """What ended containers (or pods) that should have lived through a restart: their last
    state, a container's last output, every kubelet and crictld log line naming them and
    crictld's event rows for them; then crictld's starts and warnings, kubelet's PLEG lines and
    its reasons for a new sandbox."""
    out = []
    for cid in ids:
        r = node.daemon.crictl("inspect", "-o", "json", cid)
        container = r.returncode == 0
        if not container:
            r = node.daemon.crictl("inspectp", "-o", "json", cid)
        status = json.loads(r.stdout)["status"] if r.returncode == 0 else r.stderr
        if isinstance(status, dict):
            keys = ("state", "exitCode", "reason", "message", "finishedAt", "network")
            status = {k: status[k] for k in keys if k in status}
        out.append(f"{cid[:12]}: {status}")
        if container:
            logs = node.daemon.crictl("logs", "--tail=10", cid)
            text = "".join(
                line
                for line in (logs.stdout + logs.stderr).splitlines(True)
                if "crictl.yaml" not in line
            )
            out.append(f"  output: {text[-1500:]!r}")
        for source, text in (("kubelet", node.kubelet.log()), ("crictld", node.daemon_log())):
            lines = [line for line in text.splitlines() if cid in line or cid[:12] in line]
            out.append(f"  {source} ({len(lines)} lines):\n    " + "\n    ".join(lines[-25:]))
        # crictld's own record of the object (its phases as committed), whatever its log level
        rows = node.daemon.sql(
            "SELECT at, action, from_phase, to_phase, reason, message FROM events "
            f"WHERE object_id = '{cid}' ORDER BY id"
        )
        out.append(f"  crictld's events:\n    {(rows.stdout + rows.stderr).strip()[-2500:]}")
    notable = ('"level": "warning"', '"level": "error"', "re-adopted", "serving CRI")
    lines = [line for line in node.daemon_log().splitlines() if any(n in line for n in notable)]
    out.append("crictld's warnings, errors and starts:\n  " + "\n  ".join(lines[-30:]))
    # how kubelet's PLEG saw the restart: evented stream errors, fallbacks to relisting
    pleg = [line for line in node.kubelet.log().splitlines() if "PLEG" in line or "pleg" in line]
    out.append("kubelet's PLEG lines:\n  " + "\n  ".join(pleg[-40:]))
    # why kubelet made a new sandbox (runtimeutil.PodSandboxChanged, at --v=2)
    why = [line for line in node.kubelet.log().splitlines() if "Need to" in line]
    out.append("kubelet's reasons for a new sandbox:\n  " + "\n  ".join(why[-10:]))
    return "\n".join(out)


@ONE_PLEG
def test_garbage_collection_after_manifest_removed(node: Node) -> None:
    k = node.kubelet
    mount = [{"name": "scratch", "mountPath": "/scratch"}]
    manifest = node.pod(
        "gc",
        [
            node.container("a", "echo a > /scratch/a; " + LOOP, volumeMounts=mount),
            node.container("b", LOOP, volumeMounts=mount),
        ],
        volumes=[{"name": "scratch", "emptyDir": {}}],
    )
    k.write_manifest(manifest)
    pod = k.wait_running("gc")
    uid = pod["metadata"]["uid"]
    ip = pod["status"]["podIP"]
    sids = node.sandbox_ids("gc")
    cids = node.container_ids("gc")
    assert len(sids) == 1 and len(cids) == 2, (sids, cids)
    pod_dir = k.root_dir / "pods" / uid
    assert pod_dir.is_dir(), pod_dir
    k.remove_manifest("gc")
    k.wait_gone("gc", timeout=30)
    ours = frozenset(sids + cids)

    def released() -> bool:
        h = node.held()
        return not (
            ours & (h.netns | h.containers | h.tasks | h.rw_snapshots) or ip in h.ips
        ) and not (node.sandbox_ids("gc") or node.container_ids("gc"))

    # kubelet stops the pod at once; its container GC removes the dead sandbox on its next
    # pass (every minute).
    wait_for(
        "the pod's sandbox, containers, netns, IP and snapshots released",
        released,
        90,
        lambda: (
            f"{node.held()}\nsandboxes {node.sandbox_ids('gc')}\n"
            f"containers {node.container_ids('gc')}\n" + "\n".join(k.errors()[-20:])
        ),
    )
    assert not ours & node.held().cgroups, f"cgroups left: {ours & node.held().cgroups}"
    wait_for(
        "kubelet removes the pod's dir", lambda: not pod_dir.exists(), 30, lambda: str(pod_dir)
    )
    # Nothing beyond what the pods still running hold. Other pods of the module keep living
    # (a crash-looping one gets new containers, kubelet's GC removes old ones), so the holdings
    # are read between two listings that agree.
    h, live, ready = settled_holdings(node)
    assert h.netns <= ready, h
    assert h.containers <= live, h
    assert h.rw_snapshots <= live, h
    assert h.leases == frozenset(), h
    assert len(h.ips) == len(ready) and len(h.veths) == len(ready), h


def settled_holdings(node: Node) -> tuple[Holdings, frozenset[str], frozenset[str]]:
    """The node's holdings with the live ids and ready sandboxes, listed before and after them
    with the same result."""

    def listing() -> tuple[frozenset[str], frozenset[str]]:
        pods = node.crictl_json("pods", "-o", "json")["items"]
        ctrs = node.crictl_json("ps", "-a", "-o", "json")["containers"]
        live = frozenset(p["id"] for p in pods) | frozenset(c["id"] for c in ctrs)
        return live, frozenset(p["id"] for p in pods if p["state"] == "SANDBOX_READY")

    deadline = time.monotonic() + 60
    while True:
        before = listing()
        h = node.held()
        if listing() == before or time.monotonic() > deadline:
            return h, before[0], before[1]
        time.sleep(0.5)


def test_no_internal_or_unknown_error_from_crictld(node: Node) -> None:
    """Runs last: everything the module did, as kubelet and crictld logged it."""
    bad_calls = []
    for line in node.daemon_log().splitlines():
        if '"code"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("code") in ("INTERNAL", "UNKNOWN"):
            bad_calls.append(line)
    assert not bad_calls, "crictld answered INTERNAL/UNKNOWN:\n" + "\n".join(bad_calls[:20])
    kubelet_bad = [
        line
        for line in node.kubelet.log().splitlines()
        if "rpc error: code = Unknown" in line or "rpc error: code = Internal" in line
    ]
    assert not kubelet_bad, "kubelet got Unknown/Internal from crictld:\n" + "\n".join(
        kubelet_bad[:20]
    )
