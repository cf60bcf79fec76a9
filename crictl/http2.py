"""HTTP/2's framing (RFC 9113), the few HPACK encodings (RFC 7541) crictld writes and gRPC's
status codes, shared by the CRI server (`crictl.api.server`) and the containerd client
(`crictl.containerd.h2`). Header blocks are decoded by hpack (python-hyper); `Decoder` keeps
what a block that left hpack's table unchanged decoded to, for the containerd client."""

from __future__ import annotations

import enum
from collections.abc import Iterator

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# flags
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
# settings
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 1, 2, 3, 4, 5
MAX_HEADER_LIST_SIZE = 6


class StatusCode(enum.IntEnum):
    """gRPC's status codes (grpc/doc/statuscodes.md), named as grpc's Python package names
    them: what the CRI server answers and what containerd's answers carry."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class Http2Error(Exception):
    """An HTTP/2 connection error: GOAWAY with `code`, then the connection is closed."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream: int, payload: bytes | bytearray = b"") -> bytes:
    """One HTTP/2 frame: its 9-byte header, then PAYLOAD."""
    head = len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big")
    return head + payload


def hpack_int(value: int, prefix: int, first: int) -> bytes:
    """HPACK's integer (RFC 7541 5.1) in a PREFIX-bit prefix, FIRST's other bits set."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field not indexed, with a literal name (RFC 7541 6.2.2), no Huffman."""
    return b"\x00" + hpack_int(len(name), 7, 0) + name + hpack_int(len(value), 7, 0) + value


def indexed_name(index: int, value: bytes) -> bytes:
    """A header field not indexed, its name the static table's INDEX (RFC 7541 6.2.2), no
    Huffman."""
    return hpack_int(index, 4, 0) + hpack_int(len(value), 7, 0) + value


def frames(buf: bytearray, max_size: int) -> Iterator[tuple[int, int, int, bytes]]:
    """The whole frames at the start of BUF, each taken out of it before it is given: (type,
    flags, stream id, payload); what is left is the start of a frame still to come. A frame
    over MAX_SIZE (what this side advertised) is a connection error."""
    while len(buf) >= 9:
        length = int.from_bytes(buf[:3], "big")
        if length > max_size:
            raise Http2Error(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
        if len(buf) < 9 + length:
            return
        kind, flags = buf[3], buf[4]
        stream_id = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload = bytes(buf[9 : 9 + length])
        del buf[: 9 + length]  # CPython moves the start of a bytearray: no copy
        yield kind, flags, stream_id, payload


def unpad(flags: int, payload: bytes) -> bytes:
    """A DATA or HEADERS frame's payload without its padding (RFC 9113 6.1, 6.2)."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise Http2Error(PROTOCOL_ERROR, "padding longer than its frame")
    return payload[1 : len(payload) - payload[0]]


class Decoder:
    """hpack's decoder, keeping what a block decoded to while the dynamic table stays as it was.

    A peer that indexes its fields (grpc-go's encoder: containerd) sends, once its table
    holds them, the same few blocks again and again: a unary answer's `:status` and
    `content-type`, its `grpc-status` trailer, each a byte or two of table indexes. A block's
    meaning is its bytes read against the table, so a block that left the table as it found
    it decodes the same while the table does not change; every block that changed it (an
    insertion, an eviction, a size update, a failed decode) forgets every block kept. The
    table changes only by `add` (the new entry put first, evictions from the end, or the
    whole table emptied) or by a new size, so its first entry (by identity: the kept one is
    alive, so no new entry can have its id), its length and its size tell whether it
    changed. A kept block is answered without hpack, whose decode costs ~15 us of CPU hot
    and more from a cold cache, on every answer containerd sends
    (docs/performance.md, "The containerd client")."""

    KEEP = 32  # kept blocks at most: containerd's answers use a handful

    def __init__(self, max_header_list_size: int) -> None:
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = max_header_list_size
        self._table = self._decoder.header_table
        self._kept: dict[bytes, tuple[tuple[str, str], ...]] = {}

    def decode(self, block: bytes) -> tuple[tuple[str, str], ...]:
        """The block's fields, as (name, value) strings, in order. Raises hpack's
        `HPACKError` for a block it cannot decode (a COMPRESSION_ERROR)."""
        fields = self._kept.get(block)
        if fields is not None:
            return fields
        entries = self._table.dynamic_entries
        first = entries[0] if entries else None
        count, size = len(entries), self._table.maxsize
        try:
            fields = tuple((str(k), str(v)) for k, v in self._decoder.decode(block))
        except BaseException:
            self._kept.clear()
            raise
        same = (entries[0] if entries else None) is first
        if same and len(entries) == count and self._table.maxsize == size:
            if len(self._kept) >= self.KEEP:
                self._kept.clear()
            self._kept[block] = fields
        else:
            self._kept.clear()
        return fields
