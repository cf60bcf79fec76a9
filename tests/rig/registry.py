"""A private OCI registry for the tests: Debian's docker-registry on a free 127.0.0.1 port.

    with Registry() as reg:          # storage in a temp dir, removed on exit
        push_images(reg.host, build_images(workdir))

CLI (for `make registry`): `python -m tests.rig.registry --dir D --port N` serves in the
foreground with its storage in D (kept), after pushing the fixture images unless --no-push.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType, TracebackType

from .images import DEFAULT_WORKDIR, build_images, push_images

DEFAULT_BINARY = "/usr/bin/docker-registry"
START_TIMEOUT = 20.0

CONFIG_TEMPLATE = """\
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: crictld-test-registry
health:
  storagedriver:
    enabled: false
"""


class RegistryError(Exception):
    """The registry could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _binary() -> str:
    explicit = os.environ.get("RIG_DOCKER_REGISTRY")
    if explicit:
        return explicit
    found = shutil.which("docker-registry") or (
        DEFAULT_BINARY if Path(DEFAULT_BINARY).exists() else None
    )
    if not found:
        raise RegistryError("docker-registry not found: install Debian's docker-registry package")
    return found


def api_ready(host: str, timeout: float = 2.0) -> bool:
    """True when GET /v2/ on HOST ("ip:port") answers (200, or 401 with auth on)."""
    address, _, port = host.partition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=timeout)
    try:
        conn.request("GET", "/v2/")
        resp = conn.getresponse()
        resp.read()
        return resp.status in (200, 401)
    except OSError:
        return False
    finally:
        conn.close()


class Registry:
    """docker-registry serving plain HTTP on 127.0.0.1, no auth, deletes enabled.

    ROOT holds config.yml, registry.log and storage/; without ROOT a temp dir is made and removed
    on exit. PORT 0 (the default) picks a free port.
    """

    def __init__(
        self, root: Path | None = None, port: int = 0, htpasswd: Path | None = None
    ) -> None:
        """With `htpasswd` (a bcrypt file, `htpasswd -Bbn user pass`) every request needs
        basic auth: start once without it to push, then again with it on the same root."""
        self.htpasswd = htpasswd
        self._own_root = root is None
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="crictld-registry-"))
        self.requested_port = port
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        if not self.port:
            raise RegistryError("registry not started")
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> Registry:
        binary = _binary()
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        attempts = 1 if self.requested_port else 3
        for attempt in range(attempts):
            self.port = self.requested_port or free_port()
            config = self.root / "config.yml"
            text = CONFIG_TEMPLATE.format(storage=self.storage, port=self.port)
            if self.htpasswd is not None:
                text += f"auth:\n  htpasswd:\n    realm: crictld-test\n    path: {self.htpasswd}\n"
            config.write_text(text)
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [binary, "serve", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return self
            self._stop_process()
            if attempt + 1 == attempts:
                break
        port, self.port = self.port, 0
        raise RegistryError(
            f"docker-registry did not answer on 127.0.0.1:{port} within {START_TIMEOUT}s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if api_ready(f"127.0.0.1:{self.port}", timeout=1.0):
                return True
            time.sleep(0.1)
        return False

    def _stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        self._stop_process()
        self.port = 0
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Registry:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.rig.registry",
        description="Serve a private registry on 127.0.0.1 in the foreground.",
    )
    parser.add_argument("--dir", type=Path, required=True, help="config, log and storage (kept)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument(
        "--no-push", action="store_true", help="do not build and push the fixture images"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="image build dir")
    args = parser.parse_args(argv)

    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        with Registry(args.dir.resolve(), args.port) as reg:
            print(f"registry serving on {reg.host} (storage {reg.storage}, log {reg.log_path})")
            if not args.no_push:
                images = build_images(args.workdir or DEFAULT_WORKDIR)
                for ref, digest in push_images(reg.host, images).items():
                    print(f"{ref} {digest}")
            print("ready; Ctrl-C stops it", flush=True)
            while not stop:
                if reg.proc is None or reg.proc.poll() is not None:
                    print(f"docker-registry exited:\n{reg.log_tail()}", file=sys.stderr)
                    return 1
                time.sleep(0.5)
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
