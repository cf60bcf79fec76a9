"""Builds crictld-logger (logger/crictld-logger.c) into the wheel, so `pip install .` gives a
daemon that runs containers: one logger runs per container, started by containerd's shim, so
it is a small C program rather than a Python one. The wheel is then platform-specific."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = "logger/crictld-logger.c"
TARGET = "crictl/_bin/crictld-logger"


class LoggerBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "crictld-logger"
    _build_dir: Path | None = None

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return  # an editable install uses the logger hack/install-deps.sh builds
        # musl where it is installed: one logger runs per container, and statically linked
        # against musl an idle one keeps ~12 KiB private, against glibc ~52 (hack/install-deps.sh).
        cc = (
            os.environ.get("CC")
            or shutil.which("musl-gcc")
            or shutil.which("cc")
            or shutil.which("gcc")
        )
        if cc is None:
            raise RuntimeError("crictld-logger needs a C compiler (cc or gcc) to build")
        # Removed by finalize once the wheel holds the binary: a build leaves nothing in /tmp.
        self._build_dir = Path(tempfile.mkdtemp(prefix="crictld-logger-"))
        out = self._build_dir / "crictld-logger"
        command = [cc, "-O2", "-Wall", "-Wextra", "-o", str(out), str(Path(self.root) / SOURCE)]
        # Static where the C library allows it (no dynamic loader's and libc's relocated pages
        # in each logger); dynamic where it does not.
        if subprocess.run([*command, "-static"], check=False).returncode != 0:
            try:
                subprocess.run(command, check=True)
            except subprocess.CalledProcessError:
                self.finalize(version, build_data, "")  # no build follows to finalize it
                raise
        build_data["force_include"][str(out)] = TARGET
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._build_dir is not None:
            shutil.rmtree(self._build_dir, ignore_errors=True)
            self._build_dir = None
