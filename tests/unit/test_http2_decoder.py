"""`crictl.http2.Decoder`: hpack's decoder with the blocks that left its table as it was
kept. It must answer what hpack answers, block by block, whatever the peer's encoder did to
the dynamic table between two blocks of the same bytes."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crictl.http2 import Decoder

LIMIT = 65536


def test_a_block_that_left_the_table_as_it_was_is_answered_without_hpack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoder, decoder = hpack.Encoder(), Decoder(LIMIT)
    answer = [(":status", "200"), ("content-type", "application/grpc")]
    first = encoder.encode(answer)  # inserts content-type: hpack decodes it
    again = encoder.encode(answer)  # table indexes only: the same bytes from now on
    assert again == encoder.encode(answer) != first
    assert decoder.decode(first) == tuple(answer)
    assert decoder.decode(again) == tuple(answer)
    calls: list[bytes] = []
    inner = decoder._decoder.decode

    def counted(block: bytes) -> object:
        calls.append(block)
        return inner(block)

    monkeypatch.setattr(decoder._decoder, "decode", counted)
    for _ in range(3):
        assert decoder.decode(again) == tuple(answer)
    assert calls == []


def test_the_same_bytes_after_the_table_changed_are_decoded_again() -> None:
    """b"\\xbe" is the dynamic table's first entry: what it means moves with every insertion."""
    encoder, decoder = hpack.Encoder(), Decoder(LIMIT)
    decoder.decode(encoder.encode([("x-a", "1")]))
    newest = encoder.encode([("x-a", "1")])
    assert newest == b"\xbe"
    assert decoder.decode(newest) == (("x-a", "1"),)
    decoder.decode(encoder.encode([("x-b", "2")]))  # now the first entry
    assert encoder.encode([("x-b", "2")]) == b"\xbe"
    assert decoder.decode(b"\xbe") == (("x-b", "2"),)


def test_a_size_update_forgets_what_was_kept() -> None:
    encoder, decoder = hpack.Encoder(), Decoder(LIMIT)
    decoder.decode(encoder.encode([("x-a", "1")]))
    assert decoder.decode(b"\xbe") == (("x-a", "1"),)
    encoder.header_table_size = 0  # the next block starts with a size update: the table emptied
    emptied = encoder.encode([(":status", "200")])
    assert decoder.decode(emptied) == ((":status", "200"),)
    with pytest.raises(hpack.HPACKError):
        decoder.decode(b"\xbe")  # no dynamic entry any more: an error, not the kept answer


def test_a_block_hpack_refuses_is_refused_every_time() -> None:
    decoder = Decoder(LIMIT)
    for _ in range(2):
        with pytest.raises(hpack.HPACKError):
            decoder.decode(b"\xff\xff\xff\xff\xff\xff\x7f")  # an index past any table


_names = st.sampled_from(["x-a", "x-b", "grpc-status", "grpc-message", "content-type", ":status"])
_values = st.sampled_from(["", "0", "1", "200", "application/grpc", "a longer value " * 8])
_field = st.tuples(_names, _values, st.booleans())  # the last: sensitive (never indexed)
_step = st.one_of(
    st.lists(_field, min_size=1, max_size=4),
    st.sampled_from([0, 64, 256, 4096]),  # the encoder's table size, sent at its next block
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_step, min_size=1, max_size=40), st.lists(st.integers(0, 39), max_size=20))
def test_it_decodes_every_block_as_hpack_does(steps: list[object], replays: list[int]) -> None:
    """A peer's blocks (insertions, evictions in a small table, size updates, fields never
    indexed), each also sent again later: the answers and the table are hpack's own."""
    encoder, ours, theirs = hpack.Encoder(), Decoder(LIMIT), hpack.Decoder()
    theirs.max_header_list_size = LIMIT
    sent: list[bytes] = []
    for i, step in enumerate(steps):
        if isinstance(step, int):
            encoder.header_table_size = step
            continue
        assert isinstance(step, list)
        fields = [hpack.NeverIndexedHeaderTuple(n, v) if s else (n, v) for n, v, s in step]
        sent.append(encoder.encode(fields))
        blocks = [sent[-1]]
        blocks += [sent[r % len(sent)] for r in replays if r % (i + 1) == 0]
        for block in blocks:
            try:
                expected = tuple((str(k), str(v)) for k, v in theirs.decode(block))
            except hpack.HPACKError:
                with pytest.raises(hpack.HPACKError):
                    ours.decode(block)
                return  # a connection error: the connection ends there
            assert ours.decode(block) == expected
            assert list(ours._table.dynamic_entries) == list(theirs.header_table.dynamic_entries)
