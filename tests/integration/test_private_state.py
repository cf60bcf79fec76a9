"""Private state (issue 11): the state dir is 0700, the database and its WAL and SHM 0600, the
CRI socket 0660 owned by `socket_group`, each born so (never wider, whatever the umask); env
values and registry credentials reach neither the daemon's log nor the events; `crictld sql` run
by a user who cannot read the database says so plainly."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import pytest

from crictl.gen.cri.runtime.v1 import api_pb2
from crictl.log import REDACTED, JsonFormatter
from tests.integration.test_containers import Pod, exited, wait_for
from tests.integration.test_images import BUSYBOX, failure, pull
from tests.integration.test_sandboxes import remove
from tests.rig.cni import CniNetwork
from tests.rig.daemon import REPO, Daemon
from tests.rig.images import FixtureImage, push_images
from tests.rig.registry import Registry

integration = pytest.mark.integration

NOBODY, NOGROUP = 65534, 65534
ANOTHER_GID = 65533  # a group nobody is not in (and not the socket's)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@contextlib.contextmanager
def repo_traversable() -> Iterator[None]:
    """The checkout reachable by any user while it runs crictld's code: a clone made in a 0700
    directory (`mktemp -d`) would otherwise stop another user at that directory, not at the
    state under test. Its ancestors get search permission, the checkout itself search and
    list (Python lists a directory it imports from); taken back after."""
    wanted = {p: stat.S_IXOTH for p in REPO.parents} | {REPO: stat.S_IXOTH | stat.S_IROTH}
    granted = {p: bits & ~mode(p) for p, bits in wanted.items() if bits & ~mode(p)}
    for p, bits in granted.items():
        os.chmod(p, mode(p) | bits)
    try:
        yield
    finally:
        for p, bits in granted.items():
            os.chmod(p, mode(p) & ~bits)


def as_user(uid: int, gid: int, *cmd: str) -> subprocess.CompletedProcess[str]:
    """`cmd` as uid:gid with no supplementary groups (setpriv: util-linux)."""
    with repo_traversable():
        return subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *cmd],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            timeout=60,
        )


def sql_as_nobody(state_dir: Path) -> subprocess.CompletedProcess[str]:
    return as_user(
        NOBODY,
        NOGROUP,
        sys.executable,
        "-m",
        "crictl.cli",
        "sql",
        "--state-dir",
        str(state_dir),
        "SELECT * FROM containers",
    )


def can_connect(uid: int, gid: int, socket: Path) -> subprocess.CompletedProcess[str]:
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(socket)!r})\n"
        "except PermissionError:\n"
        "    sys.exit(13)\n"
    )
    return as_user(uid, gid, sys.executable, "-c", code)


@dataclass
class ModeWatch:
    """Polls the modes of some paths while a daemon starts: the widest mode each ever had."""

    paths: list[Path]
    widest: dict[Path, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self.stop.is_set():
            for p in self.paths:
                try:
                    m = mode(p)
                except FileNotFoundError:
                    continue
                self.widest[p] = self.widest.get(p, 0) | m
            time.sleep(0.0005)

    def __enter__(self) -> ModeWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join()


@integration
def test_state_dir_database_socket_and_locks_are_private(daemon: Daemon) -> None:
    d = daemon
    state, db = d.state_dir, d.state_dir / "crictld.db"
    # The rig made the state dir before the start (0755): the daemon tightened it.
    assert mode(state) == 0o700
    assert d.sql("SELECT count(*) FROM events").returncode == 0  # a write happened: WAL in use
    for name in ("crictld.db", "crictld.db-wal", "crictld.db-shm", "crictld.lock"):
        assert (state / name).exists(), name
        assert mode(state / name) == 0o600, name
    assert stat.S_ISSOCK(d.socket.lstat().st_mode)
    assert mode(d.socket) == 0o660
    assert d.socket.stat().st_gid == os.getegid() == 0  # default: root's group
    assert mode(d.socket.with_name(d.socket.name + ".lock")) == 0o600
    # Nothing in the state dir is open to others.
    for path in state.rglob("*"):
        if path.is_symlink() or path.is_socket() or path.is_fifo():
            continue
        assert not mode(path) & 0o007 or path.is_dir(), f"{path}: {oct(mode(path))}"

    # Another user: the state dir (0700) stops them first, the file (0600) next; either way
    # one plain sentence and exit status 2, no traceback.
    os.chmod(state.parent, 0o711)  # mkdtemp's 0700 must not be what stops them
    expected = (
        f"crictld: cannot read the database {db}: permission denied "
        "(it is private to root; run crictld sql as root)\n"
    )
    r = sql_as_nobody(state)
    assert (r.returncode, r.stderr, r.stdout) == (2, expected, "")
    os.chmod(state, 0o755)
    try:
        r = sql_as_nobody(state)
        assert (r.returncode, r.stderr, r.stdout) == (2, expected, "")
    finally:
        os.chmod(state, 0o700)
    r = d.sql("SELECT 1 AS one")
    assert r.returncode == 0 and "(1 row)" in r.stdout


@integration
def test_born_private_under_any_umask_with_a_socket_group(
    short_tmp: Path, crictl_path: Path, cni_network: CniNetwork, containerd_address: str
) -> None:
    """A state dir that does not exist yet, a umask of 0 (so anything made without an explicit
    mode would be 0777/0666), and the modes polled all through the start: never wider."""
    os.chmod(short_tmp, 0o711)
    state = short_tmp / "new" / "state"
    socket = short_tmp / "crictld.sock"
    d = Daemon(
        state_dir=short_tmp / "rig" / "state",  # only where the rig keeps the daemon's log
        socket=socket,
        crictl_bin=crictl_path,
        cni_conf_dir=cni_network.conf_dir,
        cni_bin_dirs=cni_network.bin_dirs,
        containerd=containerd_address,
        extra_args=["--state-dir", str(state), "--socket-group", "nogroup"],
    )
    watched = [
        state,
        state / "crictld.db",
        state / "crictld.db-wal",
        state / "crictld.db-shm",
        state / "crictld.lock",
        socket,
    ]
    with ModeWatch(watched) as watch:
        old = os.umask(0)
        try:
            d.start(wait=False)
        finally:
            os.umask(old)
        try:
            d.wait_ready()
            assert d.sql("--state-dir", str(state), "SELECT count(*) FROM events").returncode == 0
        finally:
            time.sleep(0.05)
    try:
        assert watch.widest == {
            state: 0o700,
            state / "crictld.db": 0o600,
            state / "crictld.db-wal": 0o600,
            state / "crictld.db-shm": 0o600,
            state / "crictld.lock": 0o600,
            socket: 0o660,
        }
        assert socket.stat().st_gid == NOGROUP
        # The socket's group may connect, others may not (nor may the group reach the database).
        assert can_connect(NOBODY, NOGROUP, socket).returncode == 0
        assert can_connect(NOBODY, ANOTHER_GID, socket).returncode == 13
        assert sql_as_nobody(state).returncode == 2
        d.version()
    finally:
        d.stop()


def test_an_unknown_socket_group_is_named(short_tmp: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "crictl.cli",
            "serve",
            "--state-dir",
            str(short_tmp / "state"),
            "--socket",
            str(short_tmp / "crictld.sock"),
            "--socket-group",
            "no-such-group-crictld",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert r.returncode == 2
    assert "socket_group 'no-such-group-crictld': no such group" in r.stderr
    assert not (short_tmp / "crictld.sock").exists()


@pytest.fixture
def locked_registry(
    short_tmp: Path, fixture_images: list[FixtureImage]
) -> Iterator[tuple[Registry, str, str]]:
    """A registry of its own holding busybox, behind basic auth: (registry, user, password)."""
    user, password = "alice", f"pw-{secrets.token_hex(8)}"
    reg = Registry(short_tmp / "registry")
    reg.start()
    push_images(reg.host, [i for i in fixture_images if i.repository == BUSYBOX.split(":")[0]])
    reg.stop()
    htpasswd = short_tmp / "htpasswd"
    htpasswd.write_text(
        subprocess.run(
            ["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True
        ).stdout
    )
    locked = Registry(reg.root, port=reg.port, htpasswd=htpasswd)
    locked.start()
    try:
        yield locked, user, password
    finally:
        locked.stop()


@integration
def test_env_values_and_registry_credentials_stay_out_of_log_and_events(
    image_daemon: Daemon,
    registry: Registry,
    locked_registry: tuple[Registry, str, str],
    short_tmp: Path,
) -> None:
    d = image_daemon
    env_secret = f"env-{secrets.token_hex(8)}"
    wrong_password = f"wrong-{secrets.token_hex(8)}"
    locked, user, password = locked_registry

    # Env values: a container that runs, and one whose start fails (its error is recorded).
    pod = Pod(d, registry, short_tmp / "logs")
    env = [api_pb2.KeyValue(key="API_KEY", value=env_secret.encode())]
    ok = pod.d.runtime_call(
        "CreateContainer",
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod.id,
            sandbox_config=pod.config,
            config=api_pb2.ContainerConfig(
                metadata=api_pb2.ContainerMetadata(name="app"),
                image=api_pb2.ImageSpec(image=pod.image),
                command=["sh", "-c", "echo started; exec sleep 3600"],
                envs=env,
                log_path="app.log",
            ),
        ),
    ).container_id
    pod.start(ok)
    assert pod.exec(ok, ["sh", "-c", "echo $API_KEY"]).stdout == f"{env_secret}\n".encode()
    bad = pod.d.runtime_call(
        "CreateContainer",
        api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod.id,
            sandbox_config=pod.config,
            config=api_pb2.ContainerConfig(
                metadata=api_pb2.ContainerMetadata(name="bad"),
                image=api_pb2.ImageSpec(image=pod.image),
                command=["/no/such/binary"],
                envs=env,
                log_path="bad.log",
            ),
        ),
    ).container_id
    code, _ = failure(pod.start, bad)
    assert code != grpc.StatusCode.OK
    pod.stop(ok, timeout=0)
    wait_for("app exits", partial(exited, pod, ok))

    # Registry credentials: refused ones, accepted ones, in both of AuthConfig's forms (the
    # refused first: once a pull succeeded, the registry client reuses that endpoint's auth).
    ref = f"{locked.host}/{BUSYBOX}"
    code, _ = failure(lambda: pull(d, ref, username=user, password=wrong_password))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    wrong_basic = base64.b64encode(f"{user}:{wrong_password}".encode()).decode()
    code, _ = failure(lambda: pull(d, ref, auth=wrong_basic))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert pull(d, ref, username=user, password=password).startswith("sha256:")
    assert d.crictl("rmi", ref).returncode == 0
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert pull(d, ref, auth=basic).startswith("sha256:")

    # The container table keeps each config as sent, env values included (bytes since cri-api
    # 0.37: base64 in the JSON): that is why the database is private (docs/schema.md names the
    # columns). This also shows the marker went all the way through.
    env_b64 = base64.b64encode(env_secret.encode()).decode()
    r = d.sql("--json", "SELECT config FROM container")
    assert r.returncode == 0 and env_b64 in r.stdout
    for cid in (ok, bad):
        pod.remove(cid)
    remove(d, pod.id)

    markers = {
        "env value": env_secret,
        "env value in base64": env_b64,
        "password": password,
        "wrong password": wrong_password,
        "user:password in base64": basic,
        "wrong password in base64": wrong_basic,
    }
    log = d.log()
    assert '"rpc": "/runtime.v1.ImageService/PullImage"' in log  # the log does cover the calls
    r = d.sql("--json", "--max-rows", "0", "SELECT * FROM events")
    assert r.returncode == 0, r.stderr
    events = r.stdout
    # the events do cover both containers, the failed start among them
    assert {ok, bad} <= {e["object_id"] for e in json.loads(events)}
    for what, marker in markers.items():
        assert marker not in log, f"{what} in the daemon's log"
        assert marker not in events, f"{what} in the events"


def test_the_log_formatter_redacts_what_slips_through() -> None:
    class Credentials:
        username, password = "u", "hunter2"

        def __repr__(self) -> str:
            return f"Credentials(username={self.username!r}, password={self.password!r})"

    record = logging.LogRecord(
        "t",
        logging.INFO,
        __file__,
        1,
        "GET with Authorization: Basic YWxpY2U6aHVudGVyMg==",
        None,
        None,
    )
    record.creds = Credentials()
    record.request = {"image": "busybox", "auth": {"password": "hunter2"}, "Password": "hunter2"}
    record.spec = {"process": {"env": ["API_KEY=hunter2"]}, "args": ["sh"]}
    record.who = Credentials()
    record.header = "Bearer abc.def-ghi"
    line = JsonFormatter().format(record)
    assert "hunter2" not in line and "YWxpY2U6aHVudGVyMg" not in line and "abc.def" not in line
    entry = json.loads(line)
    assert entry["msg"] == f"GET with Authorization: Basic {REDACTED}"
    assert entry["creds"] == REDACTED and entry["who"] == REDACTED
    assert entry["request"] == {"image": "busybox", "auth": REDACTED, "Password": REDACTED}
    assert entry["spec"] == {"process": {"env": REDACTED}, "args": ["sh"]}
    assert entry["header"] == f"Bearer {REDACTED}"
