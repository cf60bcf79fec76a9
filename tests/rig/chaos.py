"""Chaos: pod and container lifecycles driven as kubelet drives them (every call retried with
the same request until it answers), while the daemon and its containerd are killed with
SIGKILL at random moments. What matters afterwards: no lifecycle lost its objects (a call that
answered OK is never undone behind the caller's back), nothing is stuck, nothing leaks."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.rig.daemon import Daemon

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class Lost(Exception):
    """A call answered NOT_FOUND for an object an earlier call of this lifecycle made."""


@dataclass
class Stats:
    kills_daemon: int = 0
    kills_containerd: int = 0
    lifecycles: int = 0
    retries: int = 0
    lost: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def kills(self) -> int:
        return self.kills_daemon + self.kills_containerd


class Chaos:
    def __init__(
        self,
        d: Daemon,
        image: str,
        logs: Path,
        workers: int = 3,
        containerd_share: float = 0.25,
    ) -> None:
        self.d = d
        self.containerd_share = containerd_share  # of the kills, those of containerd
        self.image = image
        self.logs = logs
        self.workers = workers
        self.stats = Stats()
        self.stopping = threading.Event()
        self.daemon_lock = threading.Lock()  # held while the daemon is being restarted

    # -- kubelet-like calls ------------------------------------------------------------------

    def call(self, method: str, request: Any, timeout: float = 30) -> Any:
        """Retries transient failures (the daemon or containerd died) with the same request,
        as kubelet does."""
        deadline = time.monotonic() + 300
        while True:
            try:
                return self.d.runtime_call(method, request, timeout=timeout)
            except grpc.RpcError as e:
                code = e.code()
                if code not in TRANSIENT or time.monotonic() > deadline:
                    raise
                with self.stats.lock:
                    self.stats.retries += 1
                time.sleep(0.2)

    def lifecycle(self, worker: int, n: int) -> None:
        uid = f"chaos-{worker}-{n}"
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=uid, namespace="chaos", uid=uid),
            hostname=uid,
            log_directory=str(self.logs / uid),
            labels={"io.kubernetes.pod.uid": uid},
        )
        sid = self.call("RunPodSandbox", api_pb2.RunPodSandboxRequest(config=config)).pod_sandbox_id
        cconfig = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="app"),
            image=api_pb2.ImageSpec(image=self.image),
            command=["sleep", "3600"],
            log_path="app.log",
        )
        try:
            cid = self.call(
                "CreateContainer",
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=sid, config=cconfig, sandbox_config=config
                ),
            ).container_id
            self.call("StartContainer", api_pb2.StartContainerRequest(container_id=cid))
            status = self.call(
                "ContainerStatus", api_pb2.ContainerStatusRequest(container_id=cid)
            ).status
            if status.state != api_pb2.CONTAINER_RUNNING:
                # A kill between start and now may have found it exited for real: only a
                # missing object is a loss; an exit is the truth being told.
                with self.stats.lock:
                    self.stats.errors.append(
                        f"{uid}: container {cid} {status.state} {status.reason} "
                        f"exit {status.exit_code}: {status.message}"
                    )
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise Lost(f"{uid}: {e.details()}") from None
            raise
        finally:
            self.call("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid))
            self.call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid))
        with self.stats.lock:
            self.stats.lifecycles += 1

    def worker(self, index: int) -> None:
        n = 0
        while not self.stopping.is_set():
            try:
                self.lifecycle(index, n)
            except Lost as e:
                with self.stats.lock:
                    self.stats.lost.append(str(e))
            except Exception as e:
                with self.stats.lock:
                    self.stats.errors.append(f"worker {index}: {type(e).__name__}: {e}")
            n += 1

    # -- the killer ----------------------------------------------------------------------------

    def containerd_pid(self) -> int | None:
        try:
            return int((self.d.state_dir / "containerd" / "containerd.pid").read_text())
        except (OSError, ValueError):
            return None

    def kill_once(self, rng: random.Random) -> None:
        if rng.random() >= self.containerd_share:
            assert self.d.process is not None
            self.d.process.send_signal(signal.SIGKILL)
            self.d.process.wait(30)
            self.d.start()
            self.stats.kills_daemon += 1
        else:
            pid = self.containerd_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.stats.kills_containerd += 1

    def run(self, kills: int, seed: int, pause: Callable[[random.Random], float]) -> Stats:
        rng = random.Random(seed)
        threads = [threading.Thread(target=self.worker, args=(i,)) for i in range(self.workers)]
        for t in threads:
            t.start()
        try:
            while self.stats.kills < kills:
                time.sleep(pause(rng))
                self.kill_once(rng)
        finally:
            self.stopping.set()
            for t in threads:
                t.join(600)
        return self.stats
