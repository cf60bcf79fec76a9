"""The containerd supervisor's probe (crictl.reconciler.events.Supervisor): while containerd
answers calls it is not asked, a quiet one is asked after QUIET_PROBE_INTERVAL, and one that is
down is asked every PROBE_INTERVAL until it answers."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import pytest

from crictl import errors
from crictl.reconciler import events
from crictl.reconciler.events import Supervisor


class Containerd:
    """Counts `version` probes; fails them while `down`."""

    address = "/fake/containerd.sock"

    def __init__(self) -> None:
        self.answered_at = -math.inf  # never
        self.probes = 0
        self.down = False

    async def version(self, timeout: float | None = None) -> None:
        self.probes += 1
        if self.down:
            raise errors.Unavailable("containerd is away")
        self.answered_at = time.monotonic()


async def until(what: str, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.005)


async def test_probes_only_a_quiet_containerd_and_a_down_one_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events, "PROBE_INTERVAL", 0.01)
    monkeypatch.setattr(events, "QUIET_PROBE_INTERVAL", 1000.0)
    ctd = Containerd()
    back: list[bool] = []
    sup = Supervisor(ctd, None, on_back=lambda: back.append(True))  # type: ignore[arg-type]
    sup.start()
    try:
        await until("the first probe", lambda: ctd.probes == 1)  # never answered before
        # it answered: no probe for QUIET_PROBE_INTERVAL, however many ticks pass
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert ctd.probes == 1
        # quiet for longer: asked again, once
        ctd.answered_at = time.monotonic() - 1001.0
        await until("the quiet probe", lambda: ctd.probes == 2)
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert ctd.probes == 2
        # down: the next probe sees it, then it is asked every tick until it answers
        ctd.down = True
        ctd.answered_at = -math.inf
        await until("the outage", lambda: not sup.connected)
        assert sup.outages == 1
        before = ctd.probes
        await until("probes while down", lambda: ctd.probes >= before + 5)
        ctd.down = False
        await until("containerd back", lambda: sup.connected)
        assert back == [True]
    finally:
        await sup.stop()
