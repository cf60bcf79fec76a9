"""SPDY/3.1 framing codec: bytes in, frames out, and frames back to bytes.

Owns the frame layout, the per-type length and field rules, and the two zlib contexts of a
connection (one per direction, SPDY/3 dictionary, shared by every header block on it). Never does
I/O, stream state, flow control, ping timing or header semantics: that is the session's job. The
peer is moby/spdystream (the old code.google.com spdy framer), so the encoder refuses anything that
framer would reject.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import TypeAlias


class ProtocolError(Exception):
    """Malformed SPDY input: the connection must be closed."""


@dataclass(frozen=True, slots=True)
class DataFrame:
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True, slots=True)
class SynStream:
    stream_id: int
    headers: dict[str, str]
    associated_id: int = 0
    priority: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True, slots=True)
class SynReply:
    stream_id: int
    headers: dict[str, str]
    fin: bool = False


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class Settings:
    entries: tuple[tuple[int, int, int], ...] = ()  # (flags, id, value)


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status: int = 0


@dataclass(frozen=True, slots=True)
class Headers:
    stream_id: int
    headers: dict[str, str]
    fin: bool = False


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int
    delta: int


Frame: TypeAlias = (
    DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway | Headers | WindowUpdate
)

# RST_STREAM status codes.
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
FRAME_TOO_LARGE = 11
# GOAWAY status codes.
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

# The SPDY/3 header dictionary (draft 3 §2.6.10.1, moby/spdystream spdy/dictionary.go): 65 u32
# length-prefixed words, then raw text. Its adler32 is 0xe3c6a7c2; zlib checks it on both ends.
_DICT_WORDS = (
    "options|head|post|put|delete|trace|accept|accept-charset|accept-encoding|accept-language|"
    "accept-ranges|age|allow|authorization|cache-control|connection|content-base|content-encoding|"
    "content-language|content-length|content-location|content-md5|content-range|content-type|date|"
    "etag|expect|expires|from|host|if-match|if-modified-since|if-none-match|if-range|"
    "if-unmodified-since|last-modified|location|max-forwards|pragma|proxy-authenticate|"
    "proxy-authorization|range|referer|retry-after|server|te|trailer|transfer-encoding|upgrade|"
    "user-agent|vary|via|warning|www-authenticate|method|get|status|200 OK|version|HTTP/1.1|url|"
    "public|set-cookie|keep-alive|origin"
)
DICT = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _DICT_WORDS.split("|")) + (
    b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    b"203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    b"401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    b"503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    b"Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    b"application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    b"gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)

VERSION = 3
_SYN_STREAM, _SYN_REPLY, _RST_STREAM, _SETTINGS = 1, 2, 3, 4
_PING, _GOAWAY, _HEADERS, _WINDOW_UPDATE = 6, 7, 8, 9
_NAMES = {
    **{_SYN_STREAM: "SYN_STREAM", _SYN_REPLY: "SYN_REPLY", _RST_STREAM: "RST_STREAM"},
    **{_SETTINGS: "SETTINGS", _PING: "PING", _GOAWAY: "GOAWAY", _HEADERS: "HEADERS"},
    _WINDOW_UPDATE: "WINDOW_UPDATE",
}
# Payload length rules checked on the 8-byte header, before buffering a payload that cannot be
# valid: exact lengths, and the fixed part that precedes a header block or the SETTINGS entries.
_EXACT = {_RST_STREAM: 8, _PING: 4, _GOAWAY: 8, _WINDOW_UPDATE: 8}
_MIN = {_SYN_STREAM: 10, _SYN_REPLY: 4, _HEADERS: 4, _SETTINGS: 4}
_FIN, _UNIDIRECTIONAL = 0x01, 0x02
_MAX_LENGTH = 0xFFFFFF  # 24-bit length field
_U31 = 0x7FFFFFFF
_U32 = 0xFFFFFFFF
_WORD = struct.Struct(">I")
_TWO = struct.Struct(">II")
# spdystream rejects a SYN_STREAM/SYN_REPLY carrying these (HTTP/1 hop-by-hop headers).
_FORBIDDEN = frozenset(
    {"connection", "host", "keep-alive", "proxy-connection", "transfer-encoding"}
)


class Decoder:
    """Incoming direction of one connection: owns the zlib decompression context (SPDY/3
    dictionary) for header blocks. feed() may be given any split of the byte stream."""

    def __init__(self, max_frame_size: int = 1 << 24, max_header_block: int = 256 * 1024) -> None:
        self._max_frame_size = max_frame_size
        self._max_header_block = max_header_block
        self._zlib = zlib.decompressobj(zdict=DICT)
        self._buf = bytearray()
        self._failed: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """Decode every complete frame; buffer the rest. Raises ProtocolError, after which every
        call raises again: the zlib context may be out of step, so nothing later can be trusted.
        Frames decoded earlier in a failing call are dropped with it (the connection is closing)."""
        if self._failed is not None:
            raise ProtocolError(f"decoder failed earlier: {self._failed}")
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        try:
            while len(buf) - pos >= 8:
                word, flags_length = _TWO.unpack_from(buf, pos)
                flags, length = flags_length >> 24, flags_length & _MAX_LENGTH
                self._check_header(word, length)
                if len(buf) - pos - 8 < length:
                    break
                payload = bytes(buf[pos + 8 : pos + 8 + length])
                pos += 8 + length
                frame = self._parse(word, flags, payload)
                if frame is not None:
                    frames.append(frame)
        except ProtocolError as e:
            self._failed = e
            buf.clear()
            raise
        del buf[:pos]
        return frames

    def _check_header(self, word: int, length: int) -> None:
        control, version, kind = word & 0x80000000, (word >> 16) & 0x7FFF, word & 0xFFFF
        if control and version != VERSION:  # first: it is what a non-SPDY peer gets wrong
            raise ProtocolError(f"control frame version {version}, expected {VERSION}")
        if length > self._max_frame_size:
            raise ProtocolError(f"frame length {length} exceeds the limit {self._max_frame_size}")
        if not control:
            if word == 0:
                raise ProtocolError("DATA frame on stream 0")
            return
        name = _NAMES.get(kind)
        if kind in _EXACT and length != _EXACT[kind]:
            raise ProtocolError(f"{name} length {length}, must be {_EXACT[kind]}")
        if kind in _MIN and length < _MIN[kind]:
            raise ProtocolError(f"{name} length {length}, must be at least {_MIN[kind]}")
        if kind == _SETTINGS and (length - 4) % 8:
            raise ProtocolError(f"SETTINGS length {length} is not 4 + 8n")

    def _parse(self, word: int, flags: int, payload: bytes) -> Frame | None:
        fin = bool(flags & _FIN)
        if not word & 0x80000000:
            return DataFrame(word, payload, fin)
        kind = word & 0xFFFF
        if kind == _SYN_STREAM:
            sid, assoc = _TWO.unpack_from(payload)
            sid = _stream_id(sid, "SYN_STREAM")
            headers = self._headers(payload[10:])
            uni = bool(flags & _UNIDIRECTIONAL)
            return SynStream(sid, headers, assoc & _U31, payload[8] >> 5, fin, uni)
        if kind in (_SYN_REPLY, _HEADERS):
            sid = _stream_id(_WORD.unpack_from(payload)[0], _NAMES[kind])
            headers = self._headers(payload[4:])
            return SynReply(sid, headers, fin) if kind == _SYN_REPLY else Headers(sid, headers, fin)
        if kind == _RST_STREAM:
            sid, status = _TWO.unpack(payload)
            if status == 0:
                raise ProtocolError("RST_STREAM with status 0")
            return RstStream(_stream_id(sid, "RST_STREAM"), status)
        if kind == _SETTINGS:
            (count,) = _WORD.unpack_from(payload)
            if count != (len(payload) - 4) // 8:
                raise ProtocolError(f"SETTINGS declares {count} entries in {len(payload)} bytes")
            pairs = _TWO.iter_unpack(payload[4:])
            return Settings(tuple((fid >> 24, fid & 0xFFFFFF, value) for fid, value in pairs))
        if kind == _PING:
            return Ping(_WORD.unpack(payload)[0])
        if kind == _GOAWAY:
            last, status = _TWO.unpack(payload)
            return GoAway(last & _U31, status)
        if kind == _WINDOW_UPDATE:
            sid, delta = _TWO.unpack(payload)
            return WindowUpdate(sid & _U31, delta & _U31)
        return None  # NOOP (5), CREDENTIAL (10) and unknown types: SPDY/3 says ignore them

    def _headers(self, block: bytes) -> dict[str, str]:
        limit = self._max_header_block
        # Every block ends with Z_SYNC_FLUSH's empty stored block. One that does not may still
        # inflate to whole headers, but its tail would be misread as the start of the next block.
        if not block.endswith(b"\x00\x00\xff\xff"):
            raise ProtocolError("header block does not end with a zlib sync flush")
        try:
            # max_length bounds the output, so a zlib bomb costs at most limit + 1 bytes.
            raw = self._zlib.decompress(block, limit + 1)
        except zlib.error as e:
            raise ProtocolError(f"header block does not decompress: {e}") from None
        if len(raw) > limit:
            raise ProtocolError(f"header block exceeds {limit} bytes decompressed")
        if self._zlib.eof:
            # The context spans the connection; an ended stream cannot carry the next block.
            raise ProtocolError("header compression stream was ended by the peer")
        if len(raw) < 4:
            raise ProtocolError("header block truncated before its count")
        (count,) = _WORD.unpack_from(raw)
        pos = 4
        headers: dict[str, str] = {}
        for _ in range(count):  # each pair takes >= 8 bytes, so a huge count fails fast
            name, pos = _field(raw, pos, "name")
            value, pos = _field(raw, pos, "value")
            if not name or b"\0" in name or name.lower() != name:
                raise ProtocolError(f"invalid header name {name!r}: must be non-empty lowercase")
            key = name.decode("latin-1")  # latin-1 maps bytes 1:1, so any value round-trips
            if key in headers:
                raise ProtocolError(f"duplicate header {key!r}")
            headers[key] = value.decode("latin-1")
        if pos != len(raw):
            raise ProtocolError(f"header block has {len(raw) - pos} bytes after {count} headers")
        return headers


def _stream_id(word: int, what: str) -> int:
    sid = word & _U31
    if sid == 0:
        raise ProtocolError(f"{what} on stream 0")
    return sid


def _field(raw: bytes, pos: int, what: str) -> tuple[bytes, int]:
    if pos + 4 > len(raw):
        raise ProtocolError(f"header block truncated in a {what} length")
    (n,) = _WORD.unpack_from(raw, pos)
    pos += 4
    if n > len(raw) - pos:
        raise ProtocolError(f"header {what} declares {n} bytes, only {len(raw) - pos} left")
    return raw[pos : pos + n], pos + n


class Encoder:
    """Outgoing direction: owns the zlib compression context (SPDY/3 dictionary, Z_SYNC_FLUSH
    after each block). encode() raises ValueError for a frame the wire cannot carry or spdystream
    would reject, and does so before touching the zlib context, which stays usable."""

    def __init__(self) -> None:
        # Best compression, as spdystream does; header blocks are small and rare.
        self._zlib = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICT)

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case DataFrame(sid, data, fin):
                _uint(sid, 1, _U31, "DATA stream_id")
                _uint(len(data), 0, _MAX_LENGTH, "DATA length")
                return _TWO.pack(sid, (_FIN if fin else 0) << 24 | len(data)) + data
            case SynStream(sid, headers, assoc, priority, fin, uni):
                _uint(sid, 1, _U31, "SYN_STREAM stream_id")
                _uint(assoc, 0, _U31, "SYN_STREAM associated_id")
                _uint(priority, 0, 7, "SYN_STREAM priority")
                fixed = struct.pack(">IIBB", sid, assoc, priority << 5, 0)  # slot byte unused
                flags = (_FIN if fin else 0) | (_UNIDIRECTIONAL if uni else 0)
                return _control(_SYN_STREAM, flags, fixed + self._block(headers, 10))
            case SynReply(sid, headers, fin) | Headers(sid, headers, fin):
                kind = _SYN_REPLY if isinstance(frame, SynReply) else _HEADERS
                _uint(sid, 1, _U31, f"{_NAMES[kind]} stream_id")
                block = self._block(headers, 4)
                return _control(kind, _FIN if fin else 0, _WORD.pack(sid) + block)
            case RstStream(sid, status):
                _uint(sid, 1, _U31, "RST_STREAM stream_id")
                _uint(status, 1, _U32, "RST_STREAM status")
                return _control(_RST_STREAM, 0, _TWO.pack(sid, status))
            case Settings(entries):
                _uint(len(entries), 0, (_MAX_LENGTH - 4) // 8, "SETTINGS entry count")
                body = [_WORD.pack(len(entries))]
                for flags, sid, value in entries:
                    _uint(flags, 0, 0xFF, "SETTINGS flags")
                    _uint(sid, 0, 0xFFFFFF, "SETTINGS id")
                    _uint(value, 0, _U32, "SETTINGS value")
                    body.append(_TWO.pack(flags << 24 | sid, value))
                return _control(_SETTINGS, 0, b"".join(body))
            case Ping(ping_id):
                _uint(ping_id, 1, _U32, "PING id")  # spdystream rejects id 0
                return _control(_PING, 0, _WORD.pack(ping_id))
            case GoAway(last, status):
                _uint(last, 0, _U31, "GOAWAY last_good_stream_id")
                _uint(status, 0, _U32, "GOAWAY status")
                return _control(_GOAWAY, 0, _TWO.pack(last, status))
            case WindowUpdate(sid, delta):
                _uint(sid, 0, _U31, "WINDOW_UPDATE stream_id")
                _uint(delta, 0, _U31, "WINDOW_UPDATE delta")
                return _control(_WINDOW_UPDATE, 0, _TWO.pack(sid, delta))
        raise TypeError(f"not a SPDY frame: {frame!r}")

    def _block(self, headers: dict[str, str], fixed: int) -> bytes:
        parts = [_WORD.pack(len(headers))]
        for name, value in headers.items():
            if not name or not name.isascii() or name.lower() != name or "\0" in name:
                raise ValueError(f"header name {name!r} must be non-empty lowercase ASCII")
            if name in _FORBIDDEN:
                raise ValueError(f"header {name!r} is not allowed in SPDY")
            try:
                raw_value = value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"header {name!r}: value is not latin-1") from None
            parts += (_WORD.pack(len(name)), name.encode(), _WORD.pack(len(raw_value)), raw_value)
        raw = b"".join(parts)
        # Refuse before compressing: a block compressed and then dropped would leave the peer's
        # decompressor behind ours. The bound is zlib's compressBound plus the flush marker.
        if len(raw) + (len(raw) >> 12) + (len(raw) >> 14) + 64 + fixed > _MAX_LENGTH:
            raise ValueError(f"header block of {len(raw)} bytes does not fit in one frame")
        return self._zlib.compress(raw) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


def _control(kind: int, flags: int, payload: bytes) -> bytes:
    return _TWO.pack(0x80000000 | VERSION << 16 | kind, flags << 24 | len(payload)) + payload


def _uint(value: int, low: int, high: int, what: str) -> None:
    if not low <= value <= high:
        raise ValueError(f"{what} {value} is outside {low}..{high}")
