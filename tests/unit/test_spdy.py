"""SPDY/3.1 codec: round trips, the bytes moby/spdystream writes, every ProtocolError rule, and
property tests (any split of the stream; arbitrary or damaged input only ever yields frames or
ProtocolError). CRICTLD_FUZZ_EXAMPLES raises the example count for a longer fuzz run."""

from __future__ import annotations

import itertools
import os
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crictl.streaming import spdy
from crictl.streaming.spdy import (
    CANCEL,
    DICT,
    GOAWAY_OK,
    GOAWAY_PROTOCOL_ERROR,
    REFUSED_STREAM,
    DataFrame,
    Decoder,
    Encoder,
    Frame,
    GoAway,
    Headers,
    Ping,
    ProtocolError,
    RstStream,
    Settings,
    SynReply,
    SynStream,
    WindowUpdate,
)

FUZZ_EXAMPLES = int(os.environ.get("CRICTLD_FUZZ_EXAMPLES", "300"))
FRAME_TYPES = (
    DataFrame,
    SynStream,
    SynReply,
    RstStream,
    Settings,
    Ping,
    GoAway,
    Headers,
    WindowUpdate,
)
PROPERTY = settings(max_examples=100, deadline=None)
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

EVERY_TYPE: list[Frame] = [
    SynStream(1, {"streamtype": "error"}),
    SynStream(3, {"streamtype": "stdin", "x-multi": "a\0b\0"}, associated_id=1, priority=7),
    SynStream(0x7FFFFFFF, {}, fin=True, unidirectional=True),
    SynReply(1, {}),
    SynReply(3, {"streamtype": "stdin"}, fin=True),
    DataFrame(1, b"hello\n"),
    DataFrame(3, b"", fin=True),
    DataFrame(5, bytes(range(256)) * 300, fin=True),
    RstStream(5, CANCEL),
    RstStream(7, 0xFFFFFFFF),
    Settings(),
    Settings(((1, 7, 65536), (0, 0xFFFFFF, 0xFFFFFFFF))),
    Ping(1),
    Ping(0xFFFFFFFF),
    GoAway(0),
    GoAway(0x7FFFFFFF, GOAWAY_PROTOCOL_ERROR),
    Headers(1, {"trailer-ish": "\xff\x01"}),
    Headers(1, {}, fin=True),
    WindowUpdate(0, 0x7FFFFFFF),
    WindowUpdate(3, 4096),
    SynReply(5, {"big": "z" * 100_000}),  # spans several deflate blocks
    Headers(5, {"after": "big"}),
]

# Written by moby/spdystream v0.5.1 (spdy.Framer.WriteFrame), one frame per entry, in this order
# on one connection: the header blocks share one zlib stream, so they only decode in sequence.
GO_FRAMES: list[tuple[str, Frame]] = [
    (
        "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851"
        "c29a0a0a6800000000ffff",
        SynStream(1, {"streamtype": "error"}),
    ),
    (
        "80030001000000190000000300000000e000c22ac5565c92925f5a02000000ffff",
        SynStream(3, {"streamtype": "stdout"}, priority=7),
    ),
    (
        "800300010300003d0000000500000003000002e50a48b15d04ce21160616060c0c0c9c459068"
        "ce04257f4690087b856e6e694e4926b8b86548c2300f546a2502000000ffff",
        SynStream(
            5,
            {"streamtype": "data", "port": "8080", "requestid": "0", "x-multi": "a\0b"},
            associated_id=3,
            fin=True,
            unidirectional=True,
        ),
    ),
    ("800300020000000e000000026260606000000000ffff", SynReply(2, {})),
    ("000000030000000668656c6c6f0a", DataFrame(3, b"hello\n")),
    ("0000000101000000", DataFrame(1, b"", fin=True)),
    ("0000000301000003627965", DataFrame(3, b"bye", fin=True)),
    ("800300060000000400000001", Ping(1)),
    ("80030003000000080000000500000005", RstStream(5, CANCEL)),
    (
        "80030004000000140000000201000007000100000000000400000064",
        Settings(((1, 7, 65536), (0, 4, 100))),
    ),
    ("80030009000000080000000300001000", WindowUpdate(3, 4096)),
    ("800300080100000c00000003c2671b000000ffff", Headers(3, {"streamtype": "stdout"}, fin=True)),
    ("80030007000000080000000500000000", GoAway(5, GOAWAY_OK)),
]
GO_STREAM = bytes.fromhex("".join(hex_ for hex_, _ in GO_FRAMES))


def feed_bytewise(decoder: Decoder, data: bytes) -> list[Frame]:
    frames: list[Frame] = []
    for i in range(len(data)):
        frames += decoder.feed(data[i : i + 1])
    return frames


def control(kind: int, payload: bytes, flags: int = 0, version: int = 3) -> bytes:
    """A control frame built by hand, so that its fields can be wrong."""
    return struct.pack(">HHI", 0x8000 | version, kind, flags << 24 | len(payload)) + payload


def raw_block(pairs: list[tuple[bytes, bytes]], count: int | None = None) -> bytes:
    """An uncompressed header block, any names allowed."""
    out = struct.pack(">I", len(pairs) if count is None else count)
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


SYNC = b"\0\0\xff\xff"  # how Z_SYNC_FLUSH output ends


def compress(raw: bytes, zdict: bytes = DICT) -> bytes:
    """The first block of a fresh connection's zlib stream, as a peer would send it."""
    z = zlib.compressobj(zdict=zdict)
    return z.compress(raw) + z.flush(zlib.Z_SYNC_FLUSH)


def syn_stream(block: bytes, sid: int = 1) -> bytes:
    return control(1, struct.pack(">IIBB", sid, 0, 0, 0) + block)


def expect_error(data: bytes, match: str, decoder: Decoder | None = None) -> None:
    decoder = decoder or Decoder()
    with pytest.raises(ProtocolError, match=match):
        decoder.feed(data)
    with pytest.raises(ProtocolError, match="failed earlier"):  # the decoder stays dead
        decoder.feed(Encoder().encode(Ping(1)))


# --- the dictionary and fixed layouts -----------------------------------------------------------


def test_dictionary_is_the_spdy3_one() -> None:
    assert len(DICT) == 1423
    assert zlib.adler32(DICT) == 0xE3C6A7C2


def test_status_constants() -> None:
    assert (spdy.PROTOCOL_ERROR, spdy.INVALID_STREAM, REFUSED_STREAM) == (1, 2, 3)
    assert (spdy.UNSUPPORTED_VERSION, CANCEL, spdy.INTERNAL_ERROR) == (4, 5, 6)
    assert (spdy.FLOW_CONTROL_ERROR, spdy.STREAM_IN_USE, spdy.STREAM_ALREADY_CLOSED) == (7, 8, 9)
    assert spdy.FRAME_TOO_LARGE == 11
    assert (GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, spdy.GOAWAY_INTERNAL_ERROR) == (0, 1, 2)


@pytest.mark.parametrize(
    ("hex_", "frame"),
    [(h, f) for h, f in GO_FRAMES if not isinstance(f, SynStream | SynReply | Headers)],
)
def test_frames_without_headers_encode_as_spdystream_does(hex_: str, frame: Frame) -> None:
    assert Encoder().encode(frame).hex() == hex_


def test_syn_stream_layout() -> None:
    raw = Encoder().encode(SynStream(0x7FFFFFFF, {}, associated_id=9, priority=5, fin=True))
    assert raw[:4] == bytes.fromhex("80030001")
    assert raw[4] == 0x01  # FIN; UNIDIRECTIONAL would be 0x02
    assert int.from_bytes(raw[5:8], "big") == len(raw) - 8
    assert raw[8:18] == bytes.fromhex("7fffffff 00000009 a0 00")  # priority in the top 3 bits
    assert Decoder().feed(raw) == [SynStream(0x7FFFFFFF, {}, associated_id=9, priority=5, fin=True)]


# --- round trips -------------------------------------------------------------------------------


def test_every_type_round_trips_whole_and_bytewise() -> None:
    encoder = Encoder()
    stream = b"".join(encoder.encode(frame) for frame in EVERY_TYPE)
    assert Decoder().feed(stream) == EVERY_TYPE
    assert feed_bytewise(Decoder(), stream) == EVERY_TYPE


def test_zlib_contexts_carry_across_frames() -> None:
    encoder = Encoder()
    first = encoder.encode(SynStream(1, {"streamtype": "stdout"}))
    second = encoder.encode(SynStream(3, {"streamtype": "stdout"}))
    assert len(second) < len(first)  # the second block refers back into the first
    with pytest.raises(ProtocolError):
        Decoder().feed(second)  # so it does not decode on its own
    decoder = Decoder()
    assert decoder.feed(first) + decoder.feed(second) == [
        SynStream(1, {"streamtype": "stdout"}),
        SynStream(3, {"streamtype": "stdout"}),
    ]


def test_partial_frames_are_buffered() -> None:
    decoder = Decoder()
    ping = Encoder().encode(Ping(7))
    assert decoder.feed(ping[:3]) == []
    assert decoder.feed(ping[3:] + ping[:9]) == [Ping(7)]
    assert decoder.feed(ping[9:]) == [Ping(7)]


def test_spdystream_bytes_decode() -> None:
    expected = [frame for _, frame in GO_FRAMES]
    assert Decoder().feed(GO_STREAM) == expected
    assert feed_bytewise(Decoder(), GO_STREAM) == expected


def test_unknown_control_frames_are_skipped() -> None:
    stream = control(5, b"") + control(10, b"credential") + control(0xFFFF, b"\0" * 100, flags=0xFF)
    assert Decoder().feed(stream + control(6, struct.pack(">I", 3))) == [Ping(3)]


def test_reserved_bits_are_ignored() -> None:
    frames = [
        control(
            1, struct.pack(">IIBB", 0x80000001, 0x80000003, 0xFF, 0xFF) + compress(raw_block([]))
        ),
        control(7, struct.pack(">II", 0x80000005, 1)),
        control(9, struct.pack(">II", 0x80000005, 0xFFFFFFFF)),
    ]
    assert Decoder().feed(b"".join(frames)) == [
        SynStream(1, {}, associated_id=3, priority=7),
        GoAway(5, 1),
        WindowUpdate(5, 0x7FFFFFFF),
    ]


# --- ProtocolError rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (control(6, struct.pack(">I", 1), version=2), "version 2, expected 3"),
        (control(0xFFFF, b"", version=1), "version 1"),  # the version is checked first
        (control(3, b"\0" * 7), "RST_STREAM length 7, must be 8"),
        (control(3, b"\0" * 9), "RST_STREAM length 9, must be 8"),
        (control(7, b"\0" * 4), "GOAWAY length 4, must be 8"),
        (control(7, b"\0" * 12), "GOAWAY length 12, must be 8"),
        (control(6, b"\0" * 8), "PING length 8, must be 4"),
        (control(9, b"\0" * 4), "WINDOW_UPDATE length 4, must be 8"),
        (control(4, b"\0" * 3), "SETTINGS length 3, must be at least 4"),
        (control(4, b"\0" * 13), "SETTINGS length 13 is not 4 \\+ 8n"),
        (control(4, struct.pack(">I", 2) + b"\0" * 8), "SETTINGS declares 2 entries in 12 bytes"),
        (control(1, b"\0" * 9), "SYN_STREAM length 9, must be at least 10"),
        (control(2, b"\0" * 3), "SYN_REPLY length 3, must be at least 4"),
        (control(8, b""), "HEADERS length 0, must be at least 4"),
        (b"\0\0\0\0\0\0\0\x01x", "DATA frame on stream 0"),
        (syn_stream(compress(raw_block([])), sid=0), "SYN_STREAM on stream 0"),
        (control(2, b"\0" * 4 + compress(raw_block([]))), "SYN_REPLY on stream 0"),
        (control(8, b"\0" * 4 + compress(raw_block([]))), "HEADERS on stream 0"),
        (control(3, struct.pack(">II", 0, CANCEL)), "RST_STREAM on stream 0"),
        (control(3, struct.pack(">II", 1, 0)), "RST_STREAM with status 0"),
    ],
)
def test_frame_rules(data: bytes, match: str) -> None:
    expect_error(data, match)


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (b"", "does not end with a zlib sync flush"),
        (b"not zlib at all\0\0\xff\xff", "does not decompress"),
        (compress(raw_block([(b"name", b"value")]))[:-4], "does not end with a zlib sync flush"),
        (compress(b"\0\0"), "truncated before its count"),
        (compress(raw_block([(b"a", b"1")], count=2)), "truncated in a name length"),
        (compress(raw_block([(b"a", b"1")])[:-1]), "value declares 1 bytes, only 0 left"),
        (compress(raw_block([(b"a", b"1")])[:-3]), "truncated in a value length"),
        (compress(struct.pack(">II", 1, 100) + b"abc"), "name declares 100 bytes, only 3 left"),
        (compress(raw_block([(b"a", b"1")]) + b"x"), "1 bytes after 1 headers"),
        (compress(raw_block([(b"", b"1")])), "invalid header name b''"),
        (compress(raw_block([(b"Streamtype", b"1")])), "invalid header name b'Streamtype'"),
        (compress(raw_block([(b"a\0b", b"1")])), "invalid header name"),
        (compress(raw_block([(b"a", b"1"), (b"a", b"2")])), "duplicate header 'a'"),
        (compress(raw_block([]), zdict=b"another dictionary"), "does not decompress"),
    ],
)
def test_header_block_rules(block: bytes, match: str) -> None:
    expect_error(syn_stream(block), match)


def test_header_block_of_a_later_frame_is_checked_too() -> None:
    encoder = Encoder()
    good = encoder.encode(SynStream(1, {"streamtype": "stdout"}))
    expect_error(
        good + control(2, struct.pack(">I", 1) + b"\xff" * 8 + SYNC), "does not decompress"
    )


def test_ended_zlib_stream() -> None:
    z = zlib.compressobj(zdict=DICT)
    block = z.compress(raw_block([])) + z.flush(zlib.Z_FINISH) + SYNC
    expect_error(syn_stream(block), "ended by the peer")


def test_zlib_bomb_is_bounded() -> None:
    bomb = compress(raw_block([(b"a", b"\0" * (16 << 20))]))
    assert len(bomb) < 20_000  # 16 MiB of zeros, deflated
    expect_error(syn_stream(bomb), "exceeds 262144 bytes decompressed")
    expect_error(
        syn_stream(compress(raw_block([(b"a", b"x" * 1000)]))),
        "exceeds 1000",
        Decoder(max_header_block=1000),
    )


def test_header_block_at_the_limit_is_accepted() -> None:
    raw = raw_block([(b"a", b"x" * 991)])
    assert len(raw) == 1004
    assert Decoder(max_header_block=1004).feed(syn_stream(compress(raw))) == [
        SynStream(1, {"a": "x" * 991})
    ]


def test_frame_length_limit_is_checked_on_the_header() -> None:
    decoder = Decoder(max_frame_size=16)
    assert decoder.feed(Encoder().encode(DataFrame(1, b"x" * 16))) == [DataFrame(1, b"x" * 16)]
    expect_error(
        Encoder().encode(DataFrame(1, b"x" * 17))[:8], "length 17 exceeds the limit 16", decoder
    )
    expect_error(control(0xFFFF, b"\0" * 17), "exceeds", Decoder(max_frame_size=16))


def test_frames_before_an_error_in_the_same_feed_are_dropped() -> None:
    with pytest.raises(ProtocolError):
        Decoder().feed(Encoder().encode(Ping(1)) + control(6, b"", version=2))


# --- encoder refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (SynStream(1, {"Streamtype": "x"}), "lowercase"),
        (SynStream(1, {"": "x"}), "lowercase"),
        (SynStream(1, {"a\0b": "x"}), "lowercase"),
        (SynStream(1, {"stré": "x"}), "ASCII"),
        (SynReply(1, {"host": "x"}), "not allowed"),
        (Headers(1, {"transfer-encoding": "chunked"}), "not allowed"),
        (SynReply(1, {"a": "€"}), "latin-1"),
        (SynStream(0, {}), "stream_id 0"),
        (SynStream(1 << 31, {}), "stream_id"),
        (SynStream(1, {}, associated_id=-1), "associated_id"),
        (SynStream(1, {}, priority=8), "priority 8"),
        (SynReply(0, {}), "SYN_REPLY stream_id"),
        (Headers(0, {}), "HEADERS stream_id"),
        (DataFrame(0, b""), "DATA stream_id"),
        (DataFrame(1, b"\0" * (1 << 24)), "DATA length"),
        (RstStream(1, 0), "RST_STREAM status 0"),
        (RstStream(0, CANCEL), "RST_STREAM stream_id"),
        (Ping(0), "PING id 0"),
        (Ping(1 << 32), "PING id"),
        (GoAway(1 << 31), "last_good_stream_id"),
        (WindowUpdate(1, 1 << 31), "delta"),
        (Settings(((256, 1, 1),)), "SETTINGS flags"),
        (Settings(((0, 1 << 24, 1),)), "SETTINGS id"),
        (Settings(((0, 1, 1 << 32),)), "SETTINGS value"),
        (SynReply(1, {"a": "x" * (1 << 24)}), "does not fit in one frame"),
    ],
)
def test_encoder_refuses(frame: Frame, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Encoder().encode(frame)


def test_a_refused_frame_leaves_the_encoder_in_step() -> None:
    encoder, decoder = Encoder(), Decoder()
    assert decoder.feed(encoder.encode(SynStream(1, {"streamtype": "stdout"}))) != []
    for bad in ({"ok": "1", "Bad": "2"}, {"ok": "1", "big": "x" * (1 << 24)}):
        with pytest.raises(ValueError):
            encoder.encode(SynReply(1, bad))
    assert decoder.feed(encoder.encode(SynReply(1, {"ok": "1"}))) == [SynReply(1, {"ok": "1"})]


def test_encoder_rejects_non_frames() -> None:
    with pytest.raises(TypeError):
        Encoder().encode("PING")  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------------

u31 = st.integers(1, 0x7FFFFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_:.", min_size=1, max_size=12).filter(
    lambda n: n not in {"connection", "host", "keep-alive", "proxy-connection", "transfer-encoding"}
)
header_maps = st.dictionaries(
    names, st.text(st.characters(max_codepoint=255), max_size=40), max_size=6
)
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(DataFrame, u31, st.binary(max_size=300), st.booleans()),
    st.builds(
        SynStream,
        u31,
        header_maps,
        st.integers(0, 0x7FFFFFFF),
        st.integers(0, 7),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(SynReply, u31, header_maps, st.booleans()),
    st.builds(Headers, u31, header_maps, st.booleans()),
    st.builds(RstStream, u31, st.integers(1, 0xFFFFFFFF)),
    st.builds(
        Settings,
        st.lists(st.tuples(st.integers(0, 255), st.integers(0, 0xFFFFFF), u32), max_size=4).map(
            tuple
        ),
    ),
    st.builds(Ping, st.integers(1, 0xFFFFFFFF)),
    st.builds(GoAway, st.integers(0, 0x7FFFFFFF), u32),
    st.builds(WindowUpdate, st.integers(0, 0x7FFFFFFF), st.integers(0, 0x7FFFFFFF)),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@PROPERTY
@given(st.lists(frames, min_size=1, max_size=12), st.lists(st.integers(0, 1 << 16), max_size=20))
def test_any_frames_round_trip_under_any_split(sent: list[Frame], cuts: list[int]) -> None:
    encoder, decoder = Encoder(), Decoder()
    stream = b"".join(encoder.encode(frame) for frame in sent)
    received: list[Frame] = []
    for chunk in split(stream, cuts):
        received += decoder.feed(chunk)
    assert received == sent


def check_decoder(chunks: list[bytes]) -> None:
    """Only frames or ProtocolError, and once dead, dead for good."""
    decoder = Decoder(max_frame_size=1 << 16, max_header_block=1 << 16)
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert isinstance(frame, FRAME_TYPES)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            decoder.feed(b"")


@FUZZ
@given(st.binary(max_size=4000), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_fuzz_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    check_decoder(split(data, cuts))


# Valid control headers with random payloads, and header blocks that inflate (one zlib stream
# across the frames, as on a real connection) to random or near-valid content: these reach the
# payload and header-block parsers, which random bytes mostly do not get past.
header_block_content = st.one_of(
    st.binary(max_size=100),
    st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)), max_size=4).map(raw_block),
)

# Mostly the lengths the fixed-size frames need, so that their fields get parsed.
payloads = st.one_of(
    st.binary(max_size=64),
    *(st.binary(min_size=n, max_size=n) for n in (4, 8, 12)),
    st.binary(max_size=4).map(lambda b: struct.pack(">I", len(b) // 2) + b * 4),  # SETTINGS-ish
)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, 12), st.integers(0, 255), payloads, st.booleans()),
        max_size=6,
    ),
    st.data(),
)
def test_fuzz_control_frames(
    parts: list[tuple[int, int, bytes, bool]], data: st.DataObject
) -> None:
    z = zlib.compressobj(zdict=DICT)
    stream = b""
    for kind, flags, payload, with_block in parts:
        if with_block and kind in (1, 2, 8):
            fixed = struct.pack(">IIH", 1, 0, 0)[: 10 if kind == 1 else 4]
            content = data.draw(header_block_content)
            payload = fixed + z.compress(content) + z.flush(zlib.Z_SYNC_FLUSH)
        stream += control(kind, payload, flags)
    check_decoder([stream])


@FUZZ
@given(
    st.lists(frames, min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), min_size=1, max_size=4),
    st.integers(0, 1 << 16),
)
def test_fuzz_damaged_streams(sent: list[Frame], flips: list[tuple[int, int]], cut: int) -> None:
    encoder = Encoder()
    stream = bytearray(b"".join(encoder.encode(frame) for frame in sent))
    for index, mask in flips:
        stream[index % len(stream)] ^= mask
    check_decoder(split(bytes(stream[: cut % (len(stream) + 1)]), [cut // 3, cut // 7]))
