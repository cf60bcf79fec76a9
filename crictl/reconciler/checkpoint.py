"""Checkpoint and restore (KEP-2008) need CRIU. Whether it can run here is asked of CRIU itself
(`criu check`, once, then remembered): its answer names what the kernel or VM lacks, and every
checkpoint RPC that cannot proceed says so as FAILED_PRECONDITION.

Where CRIU does run, crictld still answers FAILED_PRECONDITION: writing the checkpoint archive
kubelet expects (through containerd's task Checkpoint) and restoring from one are not built yet,
and this machine's kernel (CRIU: "vdso: Unexpected rt vDSO area bounds") cannot test them."""

from __future__ import annotations

import asyncio
import shutil

from crictl import errors

_verdict: str | None = None


async def criu_verdict() -> str:
    """Why CRIU cannot run here, or "" when `criu check` passes."""
    global _verdict
    if _verdict is None:
        _verdict = await _check()
    return _verdict


async def _check() -> str:
    criu = shutil.which("criu")
    if criu is None:
        return "criu is not installed (Debian's criu package)"
    try:
        proc = await asyncio.create_subprocess_exec(
            criu,
            "check",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    except (OSError, TimeoutError) as e:
        return f"criu check could not run: {e}"
    if proc.returncode == 0:
        return ""
    lines = [line.strip() for line in out.decode(errors="replace").splitlines() if line.strip()]
    return "criu check failed: " + "; ".join(lines[-4:])


async def refuse(what: str) -> errors.FailedPrecondition:
    """The precise refusal for a checkpoint RPC on this node."""
    verdict = await criu_verdict()
    if verdict:
        return errors.FailedPrecondition(f"{what} needs CRIU, which cannot run here: {verdict}")
    return errors.FailedPrecondition(
        f"{what}: CRIU runs here, but crictld does not write or read checkpoint archives yet"
    )
