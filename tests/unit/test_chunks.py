"""crictl/api/chunks.py: runs bounded in bytes and items, nothing lost or reordered."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crictl.api.chunks import CHUNK_ITEMS, chunks
from crictl.gen.cri.runtime.v1 import api_pb2


@given(st.lists(st.integers(0, 5000), max_size=60), st.integers(100, 20_000))
def test_chunks_keep_order_and_bounds(sizes: list[int], limit: int) -> None:
    items = [api_pb2.Container(id=str(i), image_ref="x" * n) for i, n in enumerate(sizes)]
    runs = list(chunks(items, limit))
    assert [c for run in runs for c in run] == items
    for run in runs:
        assert run and len(run) <= CHUNK_ITEMS
        assert len(run) == 1 or sum(c.ByteSize() + 8 for c in run) <= limit


def test_many_small_items_are_capped_by_count() -> None:
    items = [api_pb2.Container(id=str(i)) for i in range(CHUNK_ITEMS * 2 + 1)]
    assert [len(r) for r in chunks(items)] == [CHUNK_ITEMS, CHUNK_ITEMS, 1]
