"""Every containerd call has a deadline, so a wedged shim or containerd cannot hang a
reconcile pass for good (a chaos run saw a sandbox pass wait on one for minutes, and every
RunPodSandbox retry with it); waits on a process have none."""

from __future__ import annotations

import asyncio

import pytest

from crictl import errors
from crictl.containerd.client import ContainerdClient


async def never() -> None:
    await asyncio.Event().wait()


async def soon() -> str:
    await asyncio.sleep(0.01)
    return "answered"


def test_a_call_that_never_answers_fails_naming_itself() -> None:
    async def go() -> None:
        c = ContainerdClient("/nonexistent/containerd.sock")
        try:
            with pytest.raises(errors.DeadlineExceeded, match="did not answer create task in 0s"):
                await c.call("create task", never(), deadline=0.05)
            assert await c.call("get task", soon(), deadline=5) == "answered"
            # no deadline: only the caller's own limit (a wait for an exit) ends it
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await c.call("wait task", never(), deadline=None)
        finally:
            await c.close()

    asyncio.run(go())
