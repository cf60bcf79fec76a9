"""crictl/gen is exactly what hack/gen-protos.sh makes from the pinned, published sources."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crictl.gen.cri.runtime.v1 import api_pb2

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _differences(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    out = [f"only in repo: {a / n}" for n in cmp.left_only]
    out += [f"only in regenerated: {b / n}" for n in cmp.right_only]
    out += [f"differs: {a / n}" for n in cmp.diff_files]
    for sub in cmp.common_dirs:
        out += _differences(a / sub, b / sub)
    return out


def test_regenerating_yields_no_diff(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PATH": os.environ.get("PATH", "") + ":/usr/local/go/bin",
    }
    subprocess.run(
        ["bash", str(REPO / "hack" / "gen-protos.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    assert _differences(REPO / "crictl" / "gen", tmp_path / "crictl" / "gen") == []


def test_cri_api_has_every_rpc() -> None:
    runtime = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"]
    image = api_pb2.DESCRIPTOR.services_by_name["ImageService"]
    assert len(runtime.methods) == 37
    assert len(image.methods) == 6
    assert "UpdatePodSandboxResources" in runtime.methods_by_name
