"""The private registry and the fixture images: pushed, pulled back, and their programs run.

The images' programs are run without a container runtime: the image is unpacked and its entry
point started under `unshare` (new PID, network and mount namespaces) with the rootfs as root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.images import (
    DEFAULT_PATH,
    HTTPD_PATH,
    FixtureImage,
    build_images,
    get_blob,
    get_manifest,
    push_images,
    unpack_rootfs,
)
from tests.rig.registry import Registry, api_ready

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("docker-registry") is None and not Path("/usr/bin/docker-registry").exists(),
        reason="needs Debian's docker-registry",
    ),
]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
    reason="needs root, unshare and nsenter",
)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[FixtureImage]:
    return build_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    with Registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def pushed(registry: Registry, images: list[FixtureImage]) -> dict[str, str]:
    return push_images(registry.host, images)


def find(images: list[FixtureImage], ref: str) -> FixtureImage:
    repo, _, tag = ref.rpartition(":")
    return next(i for i in images if i.repository == repo and tag in i.tags)


def test_registry_lifecycle(tmp_path: Path) -> None:
    with Registry() as reg:
        host = reg.host
        assert host.startswith("127.0.0.1:")
        assert api_ready(host)
        root = reg.root
        assert (root / "config.yml").read_text().count(host) == 1
    assert not api_ready(host)
    assert not root.exists()
    # With a directory of our own, the storage is kept.
    with Registry(tmp_path / "reg") as reg:
        assert api_ready(reg.host)
    assert (tmp_path / "reg" / "storage").is_dir()


def test_every_tag_pulls_back_with_its_digest(
    registry: Registry, images: list[FixtureImage], pushed: dict[str, str]
) -> None:
    assert len(pushed) == sum(len(i.tags) for i in images)
    for image in images:
        for tag in image.tags:
            assert pushed[f"{registry.host}/{image.repository}:{tag}"] == image.digest
            resp = get_manifest(registry.host, image.repository, tag)
            assert resp.body == image.data
            assert sha256(resp.body) == image.digest
            assert resp.headers["docker-content-digest"] == image.digest
            assert resp.headers["content-type"] == image.descriptor.media_type
        for m in image.manifests:
            resp = get_manifest(registry.host, image.repository, m.descriptor.digest)
            assert sha256(resp.body) == m.descriptor.digest
            assert resp.headers["content-type"] == m.descriptor.media_type


def test_a_puller_selects_amd64_from_an_index(
    registry: Registry, images: list[FixtureImage], pushed: dict[str, str]
) -> None:
    for ref in ("pause:3.10", "k8s-staging-cri-tools/test-image-tag:all"):
        image = find(images, ref)
        repo, _, tag = ref.rpartition(":")
        index = json.loads(get_manifest(registry.host, repo, tag).body)
        entry = next(
            e
            for e in index["manifests"]
            if e["platform"] == {"architecture": "amd64", "os": "linux"}
        )
        manifest = json.loads(get_manifest(registry.host, repo, entry["digest"]).body)
        config = json.loads(get_blob(registry.host, repo, manifest["config"]["digest"]))
        assert config["architecture"] == "amd64"
        assert entry["digest"] == image.manifest_for("amd64").descriptor.digest


def test_every_blob_downloads_with_its_digest(
    registry: Registry, images: list[FixtureImage], pushed: dict[str, str]
) -> None:
    for image in images:
        for desc in image.blobs():
            data = get_blob(registry.host, image.repository, desc.digest)
            assert len(data) == desc.size
            assert sha256(data) == desc.digest


def test_pushing_again_changes_nothing(
    registry: Registry, images: list[FixtureImage], pushed: dict[str, str]
) -> None:
    assert push_images(registry.host, images) == pushed


# ---- the images' programs, run from the unpacked rootfs -------------------------------------


class Sandboxed:
    """An image's program started as PID 1 of new PID, network and mount namespaces."""

    def __init__(self, rootfs: Path, argv: list[str], env_path: str, cwd: str = "/") -> None:
        self.rootfs = rootfs
        self.stderr_path = rootfs.parent / f"{rootfs.name}.stderr"
        (rootfs / "proc").mkdir(exist_ok=True)  # a runtime makes the mount point too
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--net",
                    "--mount",
                    "--fork",
                    "--mount-proc",
                    f"--root={rootfs}",
                    f"--wd={cwd}",
                    *argv,
                ],
                env={"PATH": env_path},
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        self.pid = self._child_pid()
        subprocess.run(
            ["nsenter", "-t", str(self.pid), "-n", "ip", "link", "set", "lo", "up"],
            check=True,
            timeout=10,
        )

    def _child_pid(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = children.read_text().split() if children.exists() else []
            if text:
                return int(text[0])
            time.sleep(0.05)
        raise AssertionError("the sandboxed process did not start")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def http_get(self, port: int, timeout: float = 10.0) -> tuple[int, str]:
        """GET / on 127.0.0.1:PORT inside the sandbox's network namespace (retried)."""
        code = (
            "import http.client,sys\n"
            f"c=http.client.HTTPConnection('127.0.0.1',{port},timeout=5)\n"
            "c.request('GET','/')\n"
            "r=c.getresponse()\n"
            "sys.stdout.write(str(r.status)+'\\n'+r.read().decode())\n"
        )
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(
                ["nsenter", "-t", str(self.pid), "-n", sys.executable, "-c", code],
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            )
            if out.returncode == 0:
                status, _, body = out.stdout.partition("\n")
                return int(status), body
            if time.monotonic() > deadline:
                raise AssertionError(f"GET :{port} failed: {out.stderr}\n{self.stderr}")
            time.sleep(0.2)

    def run_inside(self, *argv: str) -> str:
        """Run ARGV from the image in the sandbox's PID, mount and network namespaces."""
        out = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-p", "-m", "-n", "-r", "-w", *argv],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        )
        return out.stdout

    def signal_and_wait(self, sig: int, timeout: float = 10.0) -> int:
        os.kill(self.pid, sig)
        return self.proc.wait(timeout=timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def sandboxes() -> Iterator[list[Sandboxed]]:
    started: list[Sandboxed] = []
    yield started
    for s in started:
        s.cleanup()


@needs_root
@pytest.mark.parametrize(
    ("ref", "port"),
    [
        ("e2e-test-images/nginx:1.14-2", 80),
        ("k8s-staging-cri-tools/hostnet-nginx-amd64:latest", 12003),
    ],
)
def test_nginx_entry_point(
    images: list[FixtureImage], tmp_path: Path, sandboxes: list[Sandboxed], ref: str, port: int
) -> None:
    image = find(images, ref)
    rootfs = unpack_rootfs(image, tmp_path / "rootfs")
    cmd = json.loads(image.blob_path(image.manifest_for().config.digest).read_bytes())["config"]
    assert cmd["Cmd"] == ["nginx", "-g", "daemon off;"]
    nginx = Sandboxed(rootfs, cmd["Cmd"], DEFAULT_PATH)
    sandboxes.append(nginx)

    status, body = nginx.http_get(port)
    assert status == 200
    assert "Welcome to nginx!" in body
    # critest reads these (security_context_linux.go): PID 1's command line, the pid file,
    # and pidof nginx from a container sharing the PID namespace.
    cmdline = Path(f"/proc/{nginx.pid}/cmdline").read_bytes()
    assert cmdline.startswith(b"nginx: master process nginx -g daemon off;")
    assert Path(f"/proc/{nginx.pid}/comm").read_text() == "nginx\n"
    assert (rootfs / "var/run/nginx.pid").read_text() == "1\n"
    assert (
        nginx.run_inside("sh", "-c", "cat /proc/1/cmdline | grep -q 'master process' && echo ok")
        == "ok\n"
    )
    assert nginx.run_inside("pidof", "nginx").split() == ["1"]

    assert nginx.signal_and_wait(signal.SIGTERM) == 0
    assert not (rootfs / "var/run/nginx.pid").exists()


@needs_root
def test_httpd_entry_point(
    images: list[FixtureImage], tmp_path: Path, sandboxes: list[Sandboxed]
) -> None:
    image = find(images, "e2e-test-images/httpd:2.4.39-4")
    rootfs = unpack_rootfs(image, tmp_path / "rootfs")
    httpd = Sandboxed(rootfs, ["httpd-foreground"], HTTPD_PATH, cwd="/usr/local/apache2")
    sandboxes.append(httpd)

    status, body = httpd.http_get(80)
    assert status == 200
    assert "It works!" in body
    assert "Command line: 'httpd -D FOREGROUND'" in httpd.stderr
    assert Path(f"/proc/{httpd.pid}/comm").read_text() == "httpd\n"
    # The image's StopSignal.
    assert httpd.signal_and_wait(signal.SIGWINCH) == 0


@needs_root
def test_pause_entry_point(
    images: list[FixtureImage], tmp_path: Path, sandboxes: list[Sandboxed]
) -> None:
    rootfs = unpack_rootfs(find(images, "pause:3.10"), tmp_path / "rootfs")
    for sig in (signal.SIGTERM, signal.SIGINT):
        pause = Sandboxed(rootfs, ["/pause"], DEFAULT_PATH)
        sandboxes.append(pause)
        assert Path(f"/proc/{pause.pid}/cmdline").read_bytes() == b"/pause\0"
        time.sleep(0.2)
        assert pause.proc.poll() is None
        assert pause.signal_and_wait(sig) == 0
        assert "warning" not in pause.stderr


@needs_root
def test_nonewprivs_entry_point(images: list[FixtureImage], tmp_path: Path) -> None:
    rootfs = unpack_rootfs(find(images, "e2e-test-images/nonewprivs:1.3"), tmp_path / "rootfs")
    nnp = rootfs / "usr/local/bin/nnp"
    assert nnp.stat().st_mode & 0o4000
    if os.statvfs(nnp).f_flag & os.ST_NOSUID:
        pytest.skip(f"{tmp_path} is mounted nosuid")

    def run(*extra: str) -> str:
        argv = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", *extra, str(nnp)]
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=10).stdout

    assert run() == "Effective uid: 0\n"
    assert run("--no-new-privs") == "Effective uid: 1000\n"


@needs_root
def test_busybox_helpers(
    images: list[FixtureImage], tmp_path: Path, sandboxes: list[Sandboxed]
) -> None:
    rootfs = unpack_rootfs(find(images, "e2e-test-images/busybox:1.29-2"), tmp_path / "rootfs")
    # ipcs -m shows the host's segment in the host IPC namespace, not in a new one.
    out = subprocess.run(["ipcmk", "-M", "1048576"], capture_output=True, text=True, check=True)
    segment = out.stdout.strip().removeprefix("Shared memory id: ")
    try:
        host = subprocess.run([rootfs / "bin/ipcs", "-m"], capture_output=True, text=True)
        assert segment in host.stdout.split()
        fresh = subprocess.run(
            ["unshare", "--ipc", rootfs / "bin/ipcs", "-m"], capture_output=True, text=True
        )
        assert "Shared Memory Segments" in fresh.stdout
        assert segment not in fresh.stdout
        assert not any(c.isdigit() for c in fresh.stdout)
    finally:
        subprocess.run(["ipcrm", "-m", segment], check=False)

    # critest's "sh -c 'pgrep sleep || true'" (consts.go), inside the image with a sleeper.
    # The runtime execs /bin/sleep (a hard link to busybox), so its name is "sleep".
    sleeper = Sandboxed(rootfs, ["sleep", "4321"], DEFAULT_PATH)
    sandboxes.append(sleeper)
    assert sleeper.run_inside("sh", "-c", "pgrep sleep || true") == "1\n"
    assert sleeper.run_inside("pgrep", "-l", "-x", "sleep") == "1 sleep\n"
    assert sleeper.run_inside("pgrep", "-f", "sleep 4321") == "1\n"
    assert sleeper.run_inside("sh", "-c", "pgrep -x slee || true") == ""
    assert sleeper.run_inside("pidof", "sleep") == "1\n"


@needs_root
def test_masked_applet_is_not_run_by_the_shell(images: list[FixtureImage], tmp_path: Path) -> None:
    """critest's MaskedPaths test masks /bin/ls and expects `/bin/sh -c ls` to fail to exec it."""
    rootfs = unpack_rootfs(find(images, "e2e-test-images/busybox:1.29-2"), tmp_path / "rootfs")
    kind = subprocess.run(
        ["chroot", rootfs, "/bin/sh", "-c", "type ls"], capture_output=True, text=True, timeout=10
    ).stdout
    if kind == "ls is ls\n":
        pytest.fail(
            "this busybox (Debian's busybox-static) prefers its applets to files in PATH: "
            "a masked /bin/ls still runs; hack/install-deps.sh unpacks Debian's dynamic "
            "busybox into .cache/busybox (see BUSYBOX_CANDIDATES in tests/rig/images.py)"
        )
    script = f"mount --bind /dev/null {rootfs}/bin/ls && exec chroot {rootfs} /bin/sh -c ls"
    out = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=10
    )
    assert out.returncode != 0
    assert out.stderr == "/bin/sh: ls: Permission denied\n"
