"""The streaming requests the CRI RPCs accepted, and the single-use tokens that name them.

Exec, Attach and PortForward only validate their request and cache it here; the URL they return
carries the token. The cached request, never the URL's query, decides which streams a session
has, whether it has a TTY and which ports it may reach. A token is consumed by the first HTTP
request that names it, even if the upgrade then fails (as kubelet's request cache does), and
lives one minute at most.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from crictl import errors

TOKEN_TTL = 60.0
MAX_IN_FLIGHT = 1000


@dataclass(frozen=True, slots=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True, slots=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True, slots=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...]


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest

ROUTES: dict[type[StreamRequest], str] = {
    ExecRequest: "exec",
    AttachRequest: "attach",
    PortForwardRequest: "portforward",
}


def new_token() -> str:
    """8 URL-safe characters from 6 random bytes, as kubelet's cache makes them."""
    return base64.urlsafe_b64encode(secrets.token_bytes(6)).decode()


class RequestCache:
    """Pending streaming requests by token: bounded, expiring, single-use."""

    def __init__(
        self,
        ttl: float = TOKEN_TTL,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self.clock = clock
        self._pending: OrderedDict[str, tuple[float, StreamRequest]] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._pending)

    def insert(self, request: StreamRequest) -> str:
        self._expire()
        if len(self._pending) >= self.max_in_flight:
            raise errors.ResourceExhausted(
                f"{self.max_in_flight} streaming requests are already waiting to be used; "
                "retry in a minute"
            )
        token = new_token()
        while token in self._pending:
            token = new_token()
        self._pending[token] = (self.clock() + self.ttl, request)
        return token

    def consume(self, token: str) -> StreamRequest | None:
        """The request behind `token`, removed; None if unknown, used or expired."""
        self._expire()
        entry = self._pending.pop(token, None)
        return entry[1] if entry is not None else None

    def _expire(self) -> None:
        now = self.clock()
        # Insertion order is expiry order (one TTL for all).
        while self._pending:
            token, (deadline, _) = next(iter(self._pending.items()))
            if deadline > now:
                break
            del self._pending[token]
