"""critest (cri-tools' conformance suite) run against a CRI endpoint, with its verdicts parsed.

critest's `-registry-prefix` cannot be used: in cri-tools v1.37.0 `PrepareImageName` rebuilds
the name from `reference.Path()` (dropping the tag) and several tests compare against the
unprefixed names. Instead the runtime under test maps the upstream registries critest names
(UPSTREAM_REGISTRIES) to the local registry as mirrors, so critest's own names are pulled from
local fixtures and reported back unchanged.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

UPSTREAM_REGISTRIES = ("registry.k8s.io", "gcr.io", "k8s.gcr.io")

# The one image test no offline fixture can satisfy: it pins an upstream digest.
UNREPRODUCIBLE = ("public image with digest should be pulled and removed",)


@dataclass(frozen=True)
class CritestResult:
    returncode: int
    ran: int
    passed: int
    failed: int
    failures: list[str]
    output: str


def mirror_args(registry_host: str) -> list[str]:
    out: list[str] = []
    for upstream in UPSTREAM_REGISTRIES:
        out += ["--registry-mirror", f"{upstream}=http://{registry_host}"]
    return out


def run_critest(
    critest: Path,
    endpoint: str,
    focus: str,
    skip: tuple[str, ...] = (),
    timeout: float = 1200,
    workdir: Path | None = None,
    extra: tuple[str, ...] = (),
) -> CritestResult:
    cmd = [
        str(critest),
        "-runtime-endpoint",
        endpoint,
        "-image-endpoint",
        endpoint,
        "-ginkgo.no-color",
        *extra,
    ]
    if focus:
        cmd += ["-ginkgo.focus", focus]
    if skip:
        cmd += ["-ginkgo.skip", "|".join(re.escape(s) for s in skip)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    except subprocess.TimeoutExpired as e:
        partial = (e.stdout or b"") + (e.stderr or b"")
        text = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        return CritestResult(-1, 0, 0, 0, [f"critest timed out after {timeout}s"], text)
    out = proc.stdout + proc.stderr
    ran = re.search(r"Ran (\d+) of \d+ Specs", out)
    counts = re.search(r"(\d+) Passed \| (\d+) Failed", out)
    failures = re.findall(r"^\s*\[FAIL\] (.*)$", out, re.M)
    return CritestResult(
        proc.returncode,
        int(ran.group(1)) if ran else 0,
        int(counts.group(1)) if counts else 0,
        int(counts.group(2)) if counts else 0,
        failures,
        out,
    )
