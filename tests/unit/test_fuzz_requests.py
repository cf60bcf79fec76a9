"""The CRI fuzzer's generator (tests/rig/fuzz.py): every RPC gets requests that serialise, the
real objects' ids are drawn, and no generated argv names a program outside the harmless set."""

from __future__ import annotations

import functools
from collections import Counter

from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings

from crictl.gen.cri.runtime.v1 import api_pb2
from tests.rig.fuzz import METHODS, SAFE_ARGV0, Pools, Requests

POOLS = Pools(pods=["p" * 64], containers=["c" * 64], images=["img:1"], paths=["/tmp/x"])


def argvs(request: Message) -> list[list[str]]:
    found = []
    for field, value in request.ListFields():
        if field.name in ("command", "cmd") and field.is_repeated:
            found.append(list(value))
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in value if field.is_repeated else [value]:
                found += argvs(item)
    return found


def pair(method: object, request: Message) -> tuple[object, Message]:
    return method, request


def test_every_rpc_is_drawn_and_serialises() -> None:
    """Each RPC's own strategy is drawn (coverage by construction: 500 draws of a random method
    once left PodSandboxStats out by chance), then the fuzzer's mixed strategy as it runs."""
    requests = Requests(POOLS, lambda: {"ExecSync": lambda: api_pb2.ExecSyncRequest(cmd=["true"])})
    seen: Counter[str] = Counter()
    ids: Counter[str] = Counter()

    def check(method: object, request: Message) -> None:
        seen[method.name] += 1  # type: ignore[attr-defined]
        request.SerializeToString()
        for argv in argvs(request):
            assert not argv or argv[0] in SAFE_ARGV0 or argv[0].startswith("/nonexistent/"), argv
        text = str(request)
        ids["pod"] += "p" * 64 in text
        ids["container"] += "c" * 64 in text

    quiet = settings(
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    for method in METHODS:

        @settings(quiet, max_examples=8)
        @given(requests.request(method).map(functools.partial(pair, method)))
        def one(call: tuple[object, Message]) -> None:
            check(*call)

        one()

    @settings(quiet, max_examples=150)
    @given(requests.call())
    def mixed(call: tuple[object, Message]) -> None:
        check(*call)

    mixed()
    assert set(seen) == {m.name for m in METHODS}
    assert ids["pod"] and ids["container"]
