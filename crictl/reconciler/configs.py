"""The parsed CRI configs of the rows the daemon holds, kept by row id for as long as the row.

A row's config is stored as protobuf JSON; parsing one takes ~130 us (a container config as
the benchmarks send it), and status reads, stats, streams and every pass ask for it, so the
parse is kept. A parsed message lives in protobuf's own arenas: ~3 KiB for that config,
beside its JSON text, more for kubelet's (env, mounts, annotations). Kept by text in an LRU
of 8192, as before, the configs of containers long removed stayed until it was full: 6.9 MiB
more after 1460 container lives, ~30 MiB after 8192 (the daemon is ~68 MiB). Kept by row id,
an entry goes when its row is removed (`forget`), so what is kept follows the rows that exist.

A config can change (UpdateContainerResources, UpdatePodSandboxResources write the new one into
the row), so an entry answers only for the text it was parsed from. Should a removal be missed,
the cache is emptied once it holds `limit` entries, and fills again from the rows in use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from google.protobuf.message import Message

M = TypeVar("M")
P = TypeVar("P", bound=Message)

LIMIT = 8192


class ConfigCache(Generic[M]):
    """`parse(text)` of each row's config, by row id (shared: do not modify what it gives)."""

    def __init__(self, parse: Callable[[str], M], limit: int = LIMIT) -> None:
        self._parse = parse
        self._limit = limit
        self._by_id: dict[str, tuple[str, M]] = {}

    def get(self, rid: str, text: str) -> M:
        hit = self._by_id.get(rid)
        if hit is not None and hit[0] == text:
            return hit[1]
        parsed = self._parse(text)
        self.put(rid, text, parsed)
        return parsed

    def put(self, rid: str, text: str, parsed: M) -> None:
        """Keeps `parsed` as what `text` parses to: the row's creator holds the message the
        text was encoded from (`parsed_copy`), so the row's first reader, the create's pass,
        does not parse it (~60 us for a container's config alone, ~275 in the daemon at 100
        pods: 2.9 % of its GIL samples there, in a py-spy profile)."""
        if len(self._by_id) >= self._limit:
            self._by_id.clear()
        self._by_id[rid] = (text, parsed)

    def forget(self, rid: str) -> None:
        """The row is removed: its config goes too."""
        self._by_id.pop(rid, None)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, rid: object) -> bool:
        return rid in self._by_id


def parsed_copy(message: P) -> P:
    """What parsing `message`'s JSON text gives back: a copy of it without the fields this
    build's protos do not know, which protobuf's JSON does not carry (a newer kubelet's)."""
    copy = type(message)()
    copy.CopyFrom(message)
    copy.DiscardUnknownFields()
    return copy
