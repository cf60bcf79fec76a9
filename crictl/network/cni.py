"""CNI configuration loading, as the CNI spec and libcni define it.

The network is the lexically first `*.conflist`, `*.conf` or `*.json` file in the config dir
(a `.conf` holds a single plugin and is wrapped into a list). It is usable when it parses, names
a network and a cniVersion, and every plugin's binary is found in one of the bin dirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crictl import errors

CONFIG_SUFFIXES = (".conflist", ".conf", ".json")


@dataclass(frozen=True)
class NetworkConfig:
    path: Path
    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    raw: dict[str, Any]
    plugin_paths: dict[str, Path]


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
    if not isinstance(raw, dict):
        raise NetworkNotReady("InvalidCNIConfig", f"CNI config {path}: not a JSON object")
    if path.suffix == ".conflist" or "plugins" in raw:
        plugins = raw.get("plugins")
        if not isinstance(plugins, list) or not plugins:
            raise NetworkNotReady("InvalidCNIConfig", f"CNI config {path}: no plugins")
    else:
        plugins = [raw]
    name, version = raw.get("name"), raw.get("cniVersion")
    if not isinstance(name, str) or not name:
        raise NetworkNotReady("InvalidCNIConfig", f"CNI config {path}: no network name")
    if not isinstance(version, str) or not version:
        raise NetworkNotReady("InvalidCNIConfig", f"CNI config {path}: no cniVersion")
    paths: dict[str, Path] = {}
    for plugin in plugins:
        plugin_type = plugin.get("type") if isinstance(plugin, dict) else None
        if not isinstance(plugin_type, str):
            raise NetworkNotReady("InvalidCNIConfig", f"CNI config {path}: a plugin has no type")
        found = find_plugin(plugin_type, bin_dirs)
        if found is None:
            dirs = ":".join(str(d) for d in bin_dirs)
            raise NetworkNotReady(
                "CNIPluginMissing", f"CNI plugin {plugin_type!r} ({path}) not found in {dirs}"
            )
        paths[plugin_type] = found
    return NetworkConfig(path, name, version, plugins, raw, paths)
