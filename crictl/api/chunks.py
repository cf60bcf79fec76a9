"""The Stream* list RPCs send the items of their unary list in chunks, each well under gRPC's
default 4 MiB message limit, so a node with thousands of containers is never one message too
large (kubelet's limit is 16 MiB; a unary ListContainers past it fails)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

CHUNK_BYTES = 1 << 20
CHUNK_ITEMS = 500


def chunks(items: Iterable[M], limit: int = CHUNK_BYTES) -> Iterator[list[M]]:
    """Consecutive runs of `items` of at most `limit` bytes (an item larger than `limit` goes
    alone) and CHUNK_ITEMS items; nothing when there are no items."""
    run: list[M] = []
    size = 0
    for item in items:
        n = item.ByteSize() + 8  # the field's tag and length prefix, at most
        if run and (size + n > limit or len(run) >= CHUNK_ITEMS):
            yield run
            run, size = [], 0
        run.append(item)
        size += n
    if run:
        yield run
