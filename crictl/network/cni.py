"""CNI configuration loading, as the CNI spec and libcni define it.

The network is the lexically first `*.conflist`, `*.conf` or `*.json` file in the config dir
(a `.conf` holds a single plugin and is wrapped into a list). It is usable when it parses, names
a network and a cniVersion, and every plugin's binary is found in one of the bin dirs.

A pod's ADD runs with that network; its CHECK and DEL run with the configuration the ADD ran
with, which its row keeps (`NetworkConfig.stored`, `pod_network_config`), as libcni's cache lets
a runtime do: the config dir may have changed in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crictl import errors, trace

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")


@dataclass(frozen=True)
class NetworkConfig:
    path: Path | None  # None: the configuration a pod was set up with, from its row
    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    raw: dict[str, Any]
    plugin_paths: dict[str, Path]

    def stored(self) -> str:
        """The network as a conflist in JSON (a `.conf` wrapped, as libcni does): what a pod's
        row keeps of the configuration its network was added with, so that its CHECK and DEL
        run with it even once the files in the config dir have changed."""
        conflist = self.raw
        if "plugins" not in conflist:
            conflist = {"cniVersion": self.cni_version, "name": self.name, "plugins": self.plugins}
        return json.dumps(conflist, sort_keys=True, separators=(",", ":"))


class NetworkNotReady(errors.FailedPrecondition):
    """No usable CNI network configuration; `reason` is a CamelCase word for CRI conditions."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def find_plugin(plugin_type: str, bin_dirs: list[Path]) -> Path | None:
    if "/" in plugin_type or not plugin_type:
        return None
    for directory in bin_dirs:
        candidate = directory / plugin_type
        if candidate.is_file() and candidate.stat().st_mode & 0o111:
            return candidate
    return None


def load_network_config(conf_dir: Path, bin_dirs: list[Path]) -> NetworkConfig:
    try:
        files = sorted(p for p in conf_dir.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    except OSError as e:
        raise NetworkNotReady("NoCNIConfig", f"cannot read CNI config dir {conf_dir}: {e}") from e
    if not files:
        raise NetworkNotReady("NoCNIConfig", f"no CNI network config found in {conf_dir}")
    path = files[0]
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NetworkNotReady("InvalidCNIConfig", f"CNI config {path}: {e}") from e
    return _parse(raw, path, path.suffix == ".conflist", bin_dirs)


def stored_network_config(text: str, bin_dirs: list[Path]) -> NetworkConfig:
    """A pod's network configuration from its row (`NetworkConfig.stored`)."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise NetworkNotReady("InvalidCNIConfig", f"the stored CNI config: {e}") from e
    return _parse(raw, None, True, bin_dirs)


def pod_network_config(
    stored: str | None, conf_dir: Path, bin_dirs: list[Path]
) -> tuple[NetworkConfig, str]:
    """The network a pod's CHECK and DEL run with: the configuration its ADD ran with (`stored`,
    from its row), so that they act on what the pod holds even after the config dir changed (a
    network renamed keeps host-local's addresses under the old name). With none stored (a row
    from before crictld kept it), or one that can no longer run (a plugin gone), the config
    dir's network, as containerd's CRI always uses; the second value then says why ("" when
    the stored one is used or there was none)."""
    if stored is None:
        return load_network_config(conf_dir, bin_dirs), ""
    try:
        return stored_network_config(stored, bin_dirs), ""
    except NetworkNotReady as e:
        return load_network_config(conf_dir, bin_dirs), str(e)


def _parse(raw: object, path: Path | None, conflist: bool, bin_dirs: list[Path]) -> NetworkConfig:
    where = f"CNI config {path}" if path is not None else "the stored CNI config"
    if not isinstance(raw, dict):
        raise NetworkNotReady("InvalidCNIConfig", f"{where}: not a JSON object")
    if conflist or "plugins" in raw:
        plugins = raw.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise NetworkNotReady("InvalidCNIConfig", f"{where}: no plugins")
    else:
        plugins = [raw]
    name, version = raw.get("name"), raw.get("cniVersion")
    if not isinstance(name, str) or not name:
        raise NetworkNotReady("InvalidCNIConfig", f"{where}: no network name")
    if not isinstance(version, str) or not version:
        raise NetworkNotReady("InvalidCNIConfig", f"{where}: no cniVersion")
    paths: dict[str, Path] = {}
    for plugin in plugins:
        plugin_type = plugin.get("type") if isinstance(plugin, dict) else None
        if not isinstance(plugin_type, str):
            raise NetworkNotReady("InvalidCNIConfig", f"{where}: a plugin has no type")
        found = find_plugin(plugin_type, bin_dirs)
        if found is None:
            dirs = ":".join(str(d) for d in bin_dirs)
            raise NetworkNotReady(
                "CNIPluginMissing", f"CNI plugin {plugin_type!r} ({where}) not found in {dirs}"
            )
        paths[plugin_type] = found
    return NetworkConfig(path, name, version, plugins, raw, paths)


# -- executing plugins (CNI spec 1.0) ---------------------------------------------------------

PLUGIN_TIMEOUT = 60.0
IFNAME = "eth0"


@dataclass(frozen=True)
class CniResult:
    raw: dict[str, Any]
    ip: str | None
    additional_ips: list[str]


def parse_result(raw: dict[str, Any]) -> CniResult:
    """The pod IPs of a CNI result: addresses on interfaces inside the pod (`sandbox` set), or
    all addresses when the result does not say; IPv4 first, as kubelet expects."""
    interfaces = raw.get("interfaces") or []
    in_pod = {i for i, itf in enumerate(interfaces) if isinstance(itf, dict) and itf.get("sandbox")}
    ips: list[str] = []
    for entry in raw.get("ips") or []:
        if not isinstance(entry, dict) or "address" not in entry:
            continue
        itf = entry.get("interface")
        if in_pod and isinstance(itf, int) and itf not in in_pod:
            continue
        ips.append(str(entry["address"]).split("/")[0])
    ips.sort(key=lambda a: ":" in a)  # IPv4 before IPv6
    return CniResult(raw, ips[0] if ips else None, ips[1:])


SYS_CLASS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class MovedMac:
    interface: str
    added: str  # the MAC the ADD's result gave
    now: str  # the MAC the host's interface has now


def with_host_macs_now(
    prev: dict[str, Any], sys_class_net: Path = SYS_CLASS_NET
) -> tuple[dict[str, Any], list[MovedMac]]:
    """A pod's ADD result with the MACs of its host-side interfaces (those without `sandbox`:
    a bridge, a veth's host end) as the host has them now, and what moved.

    A host-side MAC is the host's, shared with every pod on it, not something the pod's ADD
    set up: the bridge plugin (v1.1.1 and upstream's main alike) pins the bridge's MAC to the
    value each ADD read before attaching its veth, so when the first pods of a new bridge are
    added at once, the last pin can land after another pod's ADD read the MAC for its result,
    and that pod's CHECK fails ("Bridge interface ... Mac doesn't match") while its network is
    whole. Interfaces the host no longer has, and every pod-side interface, address and route,
    are left as the ADD gave them, for the CHECK to hold against the pod."""
    interfaces = prev.get("interfaces")
    if not isinstance(interfaces, list):
        return prev, []
    moved: list[MovedMac] = []
    fresh: list[Any] = []
    for itf in interfaces:
        name = itf.get("name") if isinstance(itf, dict) else None
        mac = itf.get("mac") if isinstance(itf, dict) else None
        if (
            isinstance(itf, dict)
            and not itf.get("sandbox")
            and isinstance(name, str)
            and isinstance(mac, str)
            and name not in ("", ".", "..")
            and "/" not in name
        ):
            try:
                now = (sys_class_net / name / "address").read_text().strip()
            except OSError:
                now = mac
            if now and now.lower() != mac.lower():
                moved.append(MovedMac(name, mac, now))
                itf = {**itf, "mac": now}
        fresh.append(itf)
    if not moved:
        return prev, []
    return {**prev, "interfaces": fresh}, moved


def _plugin_config(
    net: NetworkConfig,
    plugin: dict[str, Any],
    prev: dict[str, Any] | None,
    capability_args: dict[str, Any],
) -> bytes:
    conf = dict(plugin)
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    if prev is not None:
        conf["prevResult"] = prev
    caps = plugin.get("capabilities") or {}
    runtime = {k: v for k, v in capability_args.items() if caps.get(k) and v}
    if runtime:
        conf["runtimeConfig"] = runtime
    return json.dumps(conf).encode()


class CniError(errors.Unavailable):
    """A CNI plugin failed; the message names the plugin, the command and the container."""


# Plugins run from threads of their own, not from the event loop: spawning one there held the
# loop for the whole vfork (until the plugin's exec), and asyncio's pipe transports cost more
# than blocking reads in a thread. Measured at 100 pods at once, the spawn was ~19 % of the
# loop thread's busy samples (py-spy); a spawn loop alone: the loop's lag p99 22-36 ms with
# asyncio's subprocesses against 9-13 ms with threads, at the same CPU per spawn.
PLUGIN_THREADS = 8
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=PLUGIN_THREADS, thread_name_prefix="cni")
    return _pool


class _PluginRun:
    """One plugin execution, run in a thread: (exit status, stdout, stderr). A run abandoned
    (its caller cancelled) kills the plugin, or never starts it."""

    def __init__(self, binary: str, env: dict[str, str], stdin: bytes) -> None:
        self.binary = binary
        self.env = env
        self.stdin = stdin
        self._lock = threading.Lock()
        self._abandoned = False
        self._proc: subprocess.Popen[bytes] | None = None

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            if self._proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()

    def __call__(self) -> tuple[int, bytes, bytes]:
        with self._lock:
            if self._abandoned:
                return -signal.SIGKILL, b"", b"abandoned before it started"
            proc = subprocess.Popen(
                [self.binary],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
            )
            self._proc = proc
        with proc:
            try:
                out, err = proc.communicate(self.stdin, timeout=PLUGIN_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
            return proc.returncode, out, err


async def _exec(
    net: NetworkConfig,
    plugin: dict[str, Any],
    command: str,
    container_id: str,
    netns: str,
    cni_args: str,
    stdin: bytes,
    bin_dirs: list[Path],
) -> dict[str, Any] | None:
    plugin_type = str(plugin.get("type"))
    binary = net.plugin_paths.get(plugin_type) or find_plugin(plugin_type, bin_dirs)
    if binary is None:
        raise CniError(f"CNI {command} {container_id}: plugin {plugin_type!r} not found")
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": IFNAME,
        "CNI_ARGS": cni_args,
        "CNI_PATH": ":".join(str(d) for d in bin_dirs),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    with trace.span(f"cni {plugin_type} {command}"):
        plugin_run = _PluginRun(str(binary), env, stdin)
        future = asyncio.get_running_loop().run_in_executor(_executor(), plugin_run)
        try:
            returncode, out, err = await asyncio.shield(future)
        except asyncio.CancelledError:
            plugin_run.abandon()  # the plugin is killed; its thread reaps it
            with contextlib.suppress(BaseException):
                await future
            raise
        except subprocess.TimeoutExpired as e:
            raise CniError(
                f"CNI {command} {container_id}: plugin {plugin_type} did not answer within "
                f"{PLUGIN_TIMEOUT:g}s (killed)"
            ) from e
        except OSError as e:
            raise CniError(
                f"CNI {command} {container_id}: plugin {plugin_type} ({binary}) could not run: "
                f"{e.strerror or e}"
            ) from e
    if returncode != 0:
        detail = err.decode(errors="replace").strip()
        with contextlib.suppress(ValueError):
            doc = json.loads(out)
            detail = f"{doc.get('msg', '')} {doc.get('details', '')}".strip() or detail
        raise CniError(
            f"CNI {command} {container_id}: plugin {plugin_type} failed "
            f"(exit {returncode}): {detail}"
        )
    if command != "ADD" or not out.strip():
        return None
    try:
        result = json.loads(out)
    except ValueError as e:
        raise CniError(f"CNI ADD {container_id}: plugin {plugin_type} answered non-JSON") from e
    if not isinstance(result, dict):
        raise CniError(f"CNI ADD {container_id}: plugin {plugin_type} answered {result!r}")
    return result


async def add(
    net: NetworkConfig,
    container_id: str,
    netns: str,
    cni_args: str,
    capability_args: dict[str, Any],
    bin_dirs: list[Path],
) -> CniResult:
    prev: dict[str, Any] | None = None
    for plugin in net.plugins:
        stdin = _plugin_config(net, plugin, prev, capability_args)
        result = await _exec(net, plugin, "ADD", container_id, netns, cni_args, stdin, bin_dirs)
        if result is not None:
            prev = result
    if prev is None:
        raise CniError(f"CNI ADD {container_id}: the network {net.name} gave no result")
    return parse_result(prev)


async def check(
    net: NetworkConfig,
    container_id: str,
    netns: str,
    cni_args: str,
    capability_args: dict[str, Any],
    prev: dict[str, Any],
    bin_dirs: list[Path],
) -> bool:
    """CHECK in plugin order with the stored result; False when nothing was checked: the
    network's cniVersion predates CHECK (0.4.0), or its config says `disableCheck` (the spec
    then forbids running it)."""
    major, _, rest = net.cni_version.partition(".")
    minor = rest.partition(".")[0]
    if not (major.isdigit() and minor.isdigit()) or (int(major), int(minor)) < (0, 4):
        return False
    if net.raw.get("disableCheck") is True:
        return False
    for plugin in net.plugins:
        stdin = _plugin_config(net, plugin, prev, capability_args)
        await _exec(net, plugin, "CHECK", container_id, netns, cni_args, stdin, bin_dirs)
    return True


async def delete(
    net: NetworkConfig,
    container_id: str,
    netns: str,
    cni_args: str,
    capability_args: dict[str, Any],
    prev: dict[str, Any] | None,
    bin_dirs: list[Path],
) -> None:
    """DEL in reverse plugin order. The spec makes DEL succeed for what is already gone, so it
    is run whenever a pod's network may exist, even with its netns gone ("" is passed then)."""
    for plugin in reversed(net.plugins):
        stdin = _plugin_config(net, plugin, prev, capability_args)
        await _exec(net, plugin, "DEL", container_id, netns, cni_args, stdin, bin_dirs)
