"""Exec, Attach and PortForward for real: crictl v1.37.0 against a crictld on a real containerd,
over SPDY (crictl's default) and WebSocket (`-r websocket`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import IO

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.integration.test_containers import Pod, wait_for
from tests.integration.test_images import pull
from tests.rig.cni import CniNetwork
from tests.rig.daemon import Daemon
from tests.rig.registry import Registry
from tests.rig.spdy import SpdyClient

pytestmark = pytest.mark.integration


def crictl_input(
    d: Daemon, data: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(d.crictl_bin), "--runtime-endpoint", d.endpoint, "--timeout", "30s", *args],
        input=data,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def sleeper(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> tuple[Pod, str]:
    pod = Pod(image_daemon, registry, short_tmp / "logs")
    cid = pod.create("sleeper", ["sleep", "3600"])
    pod.start(cid)
    return pod, cid


def test_exec_output_and_exit_code(sleeper: tuple[Pod, str]) -> None:
    pod, cid = sleeper
    d = pod.d
    r = d.crictl("exec", cid, "echo", "hello")
    assert (r.returncode, r.stdout) == (0, "hello\n"), (r, d.log()[-3000:])
    r = d.crictl("exec", cid, "sh", "-c", "echo out; echo err >&2; exit 7")
    # crictl exits 1 and names the code the status carried
    assert r.returncode == 1 and "command terminated with exit code 7" in r.stderr, r
    assert r.stdout == "out\n" and "\nerr\n" in "\n" + r.stderr, r


def stdin_container(
    pod: Pod, name: str, command: list[str], stdin_once: bool = False, tty: bool = False
) -> str:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name),
        image=api_pb2.ImageSpec(image=pod.image),
        command=command,
        log_path=f"{name}.log",
        stdin=True,
        stdin_once=stdin_once,
        tty=tty,
    )
    resp = pod.d.runtime_call(
        "CreateContainer",
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
        ),
    )
    cid = str(resp.container_id)
    pod.start(cid)
    return cid


def test_attach_stdin(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    pod = Pod(image_daemon, registry, short_tmp / "logs")
    cid = stdin_container(pod, "cat", ["cat"], stdin_once=True)
    r = crictl_input(pod.d, "hello\n", "attach", "-i", cid, timeout=20)
    assert r.returncode == 0 and r.stdout == "hello\n", (r, pod.d.log()[-5000:])


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_exec_stdin(sleeper: tuple[Pod, str], transport: str) -> None:
    pod, cid = sleeper
    data = "".join(f"line {i}\n" for i in range(2000))
    r = crictl_input(pod.d, data, "exec", "-i", "-r", transport, cid, "sh", "-c", "cat; echo done")
    assert r.returncode == 0 and r.stdout == data + "done\n", (r.returncode, r.stderr[-500:])


def test_exec_websocket_exit_code(sleeper: tuple[Pod, str]) -> None:
    pod, cid = sleeper
    r = pod.d.crictl("exec", "-r", "websocket", cid, "sh", "-c", "echo hi; exit 7")
    assert r.stdout == "hi\n" and "exit code 7" in r.stderr, r


def test_exec_tty(sleeper: tuple[Pod, str]) -> None:
    """`crictl exec -it` needs a terminal: `script` gives it one. The client sends the size
    once the process runs (as with containerd), hence the pause before reading it."""
    pod, cid = sleeper
    d = pod.d
    crictl = f"{d.crictl_bin} --runtime-endpoint {d.endpoint}"
    cmd = f"{crictl} exec -it {cid} sh -c 'tty; sleep 1; stty size'"
    r = subprocess.run(
        ["script", "-qec", f"stty cols 91 rows 37; {cmd}", "/dev/null"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r
    assert "/dev/pts/" in r.stdout and "37 91" in r.stdout, r.stdout


def test_exec_ends_with_the_process_not_its_children(sleeper: tuple[Pod, str]) -> None:
    """kubernetes#44371: a background child holding the pipes must not keep the session."""
    pod, cid = sleeper
    started = time.monotonic()
    r = pod.d.crictl("exec", cid, "sh", "-c", "sleep 60 & echo parent")
    assert r.returncode == 0 and r.stdout == "parent\n", r
    assert time.monotonic() - started < 15


def test_refusals(sleeper: tuple[Pod, str]) -> None:
    pod, cid = sleeper
    d = pod.d

    def code(method: str, request: object) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as e:
            d.runtime_call(method, request)
        return e.value.code()

    assert (
        code("Exec", api_pb2.ExecRequest(container_id="nope", cmd=["true"], stdout=True))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code("Exec", api_pb2.ExecRequest(container_id=cid, cmd=[], stdout=True))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code("Exec", api_pb2.ExecRequest(container_id=cid, cmd=["true"]))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code("Exec", api_pb2.ExecRequest(container_id=cid, cmd=["true"], tty=True, stderr=True))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        code("Attach", api_pb2.AttachRequest(container_id="nope", stdout=True))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code("PortForward", api_pb2.PortForwardRequest(pod_sandbox_id="nope"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code("PortForward", api_pb2.PortForwardRequest(pod_sandbox_id=pod.id, port=[70000]))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    stopped = pod.create("stopped", ["true"])
    assert (
        code("Exec", api_pb2.ExecRequest(container_id=stopped, cmd=["true"], stdout=True))
        == grpc.StatusCode.FAILED_PRECONDITION
    )

    # The URL is absolute, its token single-use.
    resp = d.runtime_call("Exec", api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True))
    url = urllib.parse.urlsplit(resp.url)
    assert url.scheme == "http" and url.hostname == "127.0.0.1" and url.port, resp.url
    first = http_get(resp.url)
    assert first.startswith("HTTP/1.1 400"), first  # no upgrade: refused, and the token is spent
    assert http_get(resp.url).startswith("HTTP/1.1 404")
    assert http_get(urllib.parse.urljoin(resp.url, "/exec/AAAAAAAA")).startswith("HTTP/1.1 404")


def http_get(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\n\r\n".encode())
        return s.recv(65536).decode(errors="replace")


def test_port_forward_with_curl(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    pod = Pod(image_daemon, registry, short_tmp / "logs")
    pod.image = f"{registry.host}/e2e-test-images/nginx:1.14-2"
    pull(pod.d, pod.image)
    cid = pod.create("nginx", [])
    pod.start(cid)
    port = free_port()
    d = pod.d
    for transport in ("spdy", "websocket"):
        proc = subprocess.Popen(
            [
                str(d.crictl_bin),
                "--runtime-endpoint",
                d.endpoint,
                "port-forward",
                "-r",
                transport,
                pod.id,
                f"{port}:80",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for("port-forward listens", lambda: port_open(port))
            for _ in range(3):  # several connections over one session
                r = subprocess.run(
                    [
                        "curl",
                        "-sS",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        f"http://127.0.0.1:{port}/",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                assert r.stdout == "200", (transport, r, d.log()[-3000:])
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
        assert "lost connection" not in out and "error" not in out.lower().replace(
            "level=warning", ""
        ), out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_attach_after_a_daemon_kill(
    image_daemon: Daemon, registry: Registry, cni_network: CniNetwork, short_tmp: Path
) -> None:
    """A container started before a kill -9 of crictld is attached to after the restart:
    a line sent to its stdin comes back, and the container never noticed (same pid, its log
    has everything)."""
    pod = Pod(image_daemon, registry, short_tmp / "logs")
    cid = stdin_container(pod, "cat", ["cat"])
    talker = pod.create(
        "talker", ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
    )
    pod.start(talker)
    pids = pod.pid(cid), pod.pid(talker)
    d = pod.d
    d.signal(signal.SIGKILL)
    d.start()
    assert (pod.pid(cid), pod.pid(talker)) == pids

    proc = subprocess.Popen(
        [str(d.crictl_bin), "--runtime-endpoint", d.endpoint, "attach", "-i", cid],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"after the restart\n")
        proc.stdin.flush()
        assert read_line(proc.stdout, 20) == b"after the restart\n"
    finally:
        proc.kill()
        proc.wait()
    # The same for a container without stdin, whose logger the shim started.
    proc = subprocess.Popen(
        [str(d.crictl_bin), "--runtime-endpoint", d.endpoint, "attach", talker],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert read_line(proc.stdout, 20).startswith(b"tick ")
    finally:
        proc.kill()
        proc.wait()
    assert pod.status(cid).state == api_pb2.CONTAINER_RUNNING and pod.pid(cid) == pids[0]
    log = (short_tmp / "logs" / "cat.log").read_text()
    assert "stdout F after the restart" in log, log


def read_line(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a pipe, or a failure after `timeout` seconds."""
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert result, f"no line within {timeout}s"
    return result[0]


def exec_url(d: Daemon, cid: str, cmd: list[str]) -> str:
    resp = d.runtime_call(
        "Exec", api_pb2.ExecRequest(container_id=cid, cmd=cmd, stdout=True, stderr=True)
    )
    return str(resp.url)


def daemon_fds(d: Daemon) -> int:
    assert d.process is not None
    return len(os.listdir(f"/proc/{d.process.pid}/fd"))


def processes_named(needle: bytes) -> int:
    count = 0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                count += needle in (proc / "cmdline").read_bytes()
    return count


def test_aborted_sessions_leak_nothing(sleeper: tuple[Pod, str]) -> None:
    """200 sessions cut short by their clients (mid-exec, mid-handshake, never used): no exec'd
    process, FIFO or daemon fd is left."""
    pod, cid = sleeper
    d = pod.d
    marker = b"sleep 4242"
    exec_dir = d.state_dir / "exec"
    pod.exec(cid, ["true"])  # the first exec makes the exec dir; count fds after it
    fds_before = daemon_fds(d)
    for i in range(200):
        url = exec_url(d, cid, ["sh", "-c", f"echo started; exec {marker.decode()}"])
        if i % 4 == 3:  # a handshake that fails: no protocol in common
            client = SpdyClient(url, protocol="v9.nonsense")
            assert client.status == 403
            client.close()
            continue
        client = SpdyClient(url)
        assert client.status == 101
        client.open(streamtype="error")
        stdout = client.open(streamtype="stdout")
        client.open(streamtype="stderr")
        assert b"started" in client.read_until(stdout, b"started")
        client.close()  # gone mid-session: the process must go with it
    for _ in range(50):  # tokens never used: they expire; the cache is bounded meanwhile
        exec_url(d, cid, ["true"])
    wait_for("aborted exec processes are killed", lambda: processes_named(marker) == 0, 30)
    wait_for("exec FIFOs are removed", lambda: not any(exec_dir.iterdir()), 30)
    wait_for(
        "the daemon's fds are back",
        lambda: daemon_fds(d) <= fds_before + 2,
        30,
    )
    r = d.crictl("exec", cid, "echo", "still fine")
    assert r.stdout == "still fine\n", r
