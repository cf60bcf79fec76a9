"""The pure parts of crictl.streaming: the request cache (tokens, TTL, bound), protocol
negotiation and header parsing, the WebSocket channel protocols, and remotecommand's status
messages and resize decoder. Property tests use hypothesis; CRICTLD_FUZZ_EXAMPLES sizes them."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crictl import errors
from crictl.streaming import channels as ch
from crictl.streaming.channels import ChannelError, Protocol
from crictl.streaming.remotecommand import (
    ResizeDecoder,
    error_status,
    exit_status,
    status_bytes,
    success_status,
)
from crictl.streaming.requests import (
    ROUTES,
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    RequestCache,
    new_token,
)
from crictl.streaming.server import header_values, negotiate

FUZZ_EXAMPLES = int(os.environ.get("CRICTLD_FUZZ_EXAMPLES", "50"))
PROPERTY = settings(
    max_examples=max(100, FUZZ_EXAMPLES),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

EXEC = ExecRequest("c1", ("sh",), tty=False, stdin=True, stdout=True, stderr=True)
ATTACH = AttachRequest("c1", tty=True, stdin=True, stdout=True, stderr=False)
PORT_FORWARD = PortForwardRequest("s1", (80,))
TOKEN = re.compile(r"^[A-Za-z0-9_-]{8}$")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- RequestCache -------------------------------------------------------------------------------


def test_new_token_is_eight_url_safe_characters() -> None:
    tokens = {new_token() for _ in range(2000)}
    assert all(TOKEN.match(t) for t in tokens)
    assert len(tokens) == 2000  # 48 random bits: no collision expected
    # 6 random bytes, as kubelet's cache: base64url without padding.
    assert all(len(base64.urlsafe_b64decode(t)) == 6 for t in tokens)


def test_routes_name_every_request_type() -> None:
    assert {
        ExecRequest: "exec",
        AttachRequest: "attach",
        PortForwardRequest: "portforward",
    } == ROUTES


def test_insert_then_consume_is_single_use() -> None:
    cache = RequestCache(clock=Clock())
    tokens = [cache.insert(r) for r in (EXEC, ATTACH, PORT_FORWARD)]
    assert all(TOKEN.match(t) for t in tokens)
    assert len(set(tokens)) == 3
    assert len(cache) == 3
    assert cache.consume(tokens[1]) is ATTACH
    assert cache.consume(tokens[1]) is None
    assert cache.consume(tokens[0]) is EXEC
    assert cache.consume(tokens[2]) is PORT_FORWARD
    assert len(cache) == 0


def test_unknown_token() -> None:
    cache = RequestCache(clock=Clock())
    cache.insert(EXEC)
    assert cache.consume("AAAAAAAA") is None
    assert cache.consume("") is None
    assert len(cache) == 1


def test_tokens_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = RequestCache(ttl=60, clock=clock)
    first = cache.insert(EXEC)
    clock.now += 30
    second = cache.insert(ATTACH)
    clock.now += 29.999
    assert len(cache) == 2
    clock.now += 0.001  # first is exactly 60 s old: gone (deadline <= now)
    assert cache.consume(first) is None
    assert len(cache) == 1
    clock.now += 29.999
    assert cache.consume(second) is ATTACH


def test_expired_token_is_not_found_even_before_other_calls() -> None:
    clock = Clock()
    cache = RequestCache(ttl=1, clock=clock)
    token = cache.insert(EXEC)
    clock.now += 5
    assert cache.consume(token) is None


def test_resource_exhausted_at_max_in_flight() -> None:
    clock = Clock()
    cache = RequestCache(ttl=60, max_in_flight=3, clock=clock)
    tokens = [cache.insert(EXEC) for _ in range(3)]
    with pytest.raises(errors.ResourceExhausted):
        cache.insert(EXEC)
    # Consuming one makes room for exactly one.
    assert cache.consume(tokens[0]) is EXEC
    cache.insert(ATTACH)
    with pytest.raises(errors.ResourceExhausted):
        cache.insert(ATTACH)
    # Expiry makes room for all.
    clock.now += 60
    assert len(cache) == 0
    for _ in range(3):
        cache.insert(PORT_FORWARD)
    with pytest.raises(errors.ResourceExhausted) as raised:
        cache.insert(PORT_FORWARD)
    assert isinstance(raised.value, errors.CrictlError)


def test_default_limits_are_kubelets() -> None:
    cache = RequestCache()
    assert cache.ttl == 60
    assert cache.max_in_flight == 1000


@PROPERTY
@given(
    st.lists(
        st.tuples(st.sampled_from(["insert", "consume", "tick"]), st.floats(0, 40)),
        max_size=60,
    )
)
def test_cache_matches_a_model(ops: list[tuple[str, float]]) -> None:
    """Against a dict model: a token is returned once, only within its TTL, never past the
    bound."""
    clock = Clock()
    cache = RequestCache(ttl=60, max_in_flight=5, clock=clock)
    model: dict[str, tuple[float, object]] = {}
    issued: list[str] = []
    for op, amount in ops:
        live = {t: v for t, v in model.items() if v[0] > clock.now}
        if op == "insert":
            request = ExecRequest(str(len(issued)), (), False, False, True, False)
            if len(live) >= 5:
                with pytest.raises(errors.ResourceExhausted):
                    cache.insert(request)
            else:
                token = cache.insert(request)
                assert token not in model
                model[token] = (clock.now + 60, request)
                issued.append(token)
        elif op == "consume" and issued:
            token = issued[int(amount) % len(issued)]
            expected = live[token][1] if token in live else None
            assert cache.consume(token) is expected
            model.pop(token, None)
        else:
            clock.now += amount
        assert len(cache) == len({t for t, v in model.items() if v[0] > clock.now})


# -- negotiation and headers --------------------------------------------------------------------


def test_negotiate_picks_the_first_client_protocol_the_server_supports() -> None:
    supported = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
    offer = ["v5.channel.k8s.io", "v2.channel.k8s.io", "v4.channel.k8s.io"]
    assert negotiate(offer, supported) == "v2.channel.k8s.io"  # the client's order wins
    assert negotiate(["v5.channel.k8s.io", "v4.channel.k8s.io"], supported) == "v4.channel.k8s.io"
    assert negotiate(["portforward.k8s.io"], supported) is None
    assert negotiate([], supported) is None
    assert negotiate([""], ("a", "")) == ""


def test_header_values_repeated_and_comma_separated() -> None:
    headers = [
        (b"x-stream-protocol-version", b"v5.channel.k8s.io"),
        (b"host", b"h"),
        (b"x-stream-protocol-version", b"v4.channel.k8s.io, v3.channel.k8s.io,v2.channel.k8s.io"),
        (b"x-stream-protocol-version", b" , "),
        (b"x-stream-protocol-version", b"channel.k8s.io "),
    ]
    assert header_values(headers, b"x-stream-protocol-version") == [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ]
    assert header_values(headers, b"host") == ["h"]
    assert header_values(headers, b"upgrade") == []
    assert header_values([(b"upgrade", b"\xe9t\xe9")], b"upgrade") == ["\xe9t\xe9"]  # latin-1


# -- channel protocols --------------------------------------------------------------------------

ALL_PROTOCOLS = sorted({*ch.REMOTE_COMMAND_PROTOCOLS, *ch.PORT_FORWARD_PROTOCOLS})
BINARY = [p for p in ALL_PROTOCOLS if "base64" not in p]
BASE64 = [p for p in ALL_PROTOCOLS if "base64" in p]


def test_protocol_lists() -> None:
    assert ch.REMOTE_COMMAND_PROTOCOLS == (
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v4.base64.channel.k8s.io",
        "base64.channel.k8s.io",
        "channel.k8s.io",
        "",
    )
    assert ch.PORT_FORWARD_PROTOCOLS == ("v4.channel.k8s.io", "v4.base64.channel.k8s.io", "")
    assert BASE64 == ["base64.channel.k8s.io", "v4.base64.channel.k8s.io"]


@pytest.mark.parametrize(
    ("name", "b64", "version"),
    [
        ("v5.channel.k8s.io", False, 5),
        ("v4.channel.k8s.io", False, 4),
        ("v4.base64.channel.k8s.io", True, 4),
        ("base64.channel.k8s.io", True, 1),
        ("channel.k8s.io", False, 1),
        ("", False, 1),
    ],
)
def test_protocol_properties(name: str, b64: bool, version: int) -> None:
    assert Protocol(name).base64 is b64
    assert Protocol(name).version == version


@pytest.mark.parametrize("name", BINARY)
def test_binary_encode_decode(name: str) -> None:
    p = Protocol(name)
    assert p.encode(ch.STDOUT, b"hello") == b"\x01hello"
    assert p.encode(ch.ERROR, b"") == b"\x03"
    assert p.decode(b"\x00abc") == (ch.STDIN, b"abc")
    assert p.decode(b"\x04") == (ch.RESIZE, b"")
    assert p.decode(b"\xff\x00") == (255, b"\x00")


@pytest.mark.parametrize("name", BASE64)
def test_base64_encode_decode(name: str) -> None:
    p = Protocol(name)
    assert p.encode(ch.STDOUT, b"hello") == "1aGVsbG8="
    assert p.encode(ch.STDERR, b"") == "2"
    assert p.decode("0aGVsbG8=") == (ch.STDIN, b"hello")
    assert p.decode("4") == (ch.RESIZE, b"")
    assert p.decode("9AAE=") == (9, b"\x00\x01")


@pytest.mark.parametrize("name", ALL_PROTOCOLS)
def test_empty_message_is_an_error(name: str) -> None:
    with pytest.raises(ChannelError):
        Protocol(name).decode("" if "base64" in name else b"")


@pytest.mark.parametrize("name", BINARY)
def test_text_message_on_binary_protocol(name: str) -> None:
    with pytest.raises(ChannelError):
        Protocol(name).decode("1aGVsbG8=")


@pytest.mark.parametrize("name", BASE64)
@pytest.mark.parametrize("message", [b"\x01hi", "x", ":AA==", "/AA==", "0!!!", "0AAE", "0A"])
def test_bad_base64_messages(name: str, message: bytes | str) -> None:
    with pytest.raises(ChannelError):
        Protocol(name).decode(message)


def test_v5_close_message() -> None:
    v5 = Protocol("v5.channel.k8s.io")
    channel, payload = v5.decode(b"\xff\x00")
    assert v5.close_of(channel, payload) == ch.STDIN
    assert v5.close_of(*v5.decode(b"\xff\x04")) == ch.RESIZE
    assert v5.close_of(*v5.decode(b"\x00data")) is None
    with pytest.raises(ChannelError):
        v5.close_of(*v5.decode(b"\xff"))
    with pytest.raises(ChannelError):
        v5.close_of(*v5.decode(b"\xff\x00\x01"))


@pytest.mark.parametrize("name", [p for p in ALL_PROTOCOLS if not p.startswith("v5.")])
def test_close_message_is_plain_data_before_v5(name: str) -> None:
    p = Protocol(name)
    assert p.close_of(255, b"\x00") is None
    assert p.close_of(255, b"") is None


@PROPERTY
@given(name=st.sampled_from(ALL_PROTOCOLS), message=st.binary(max_size=64) | st.text(max_size=64))
def test_decode_raises_only_channel_error(name: str, message: bytes | str) -> None:
    p = Protocol(name)
    try:
        channel, payload = p.decode(message)
    except ChannelError:
        return
    assert isinstance(payload, bytes)
    assert 0 <= channel <= 255
    with contextlib.suppress(ChannelError):
        p.close_of(channel, payload)


@PROPERTY
@given(
    name=st.sampled_from(ALL_PROTOCOLS),
    channel=st.integers(0, 9),
    data=st.binary(max_size=256),
)
def test_encode_decode_round_trip(name: str, channel: int, data: bytes) -> None:
    p = Protocol(name)
    message = p.encode(channel, data)
    assert isinstance(message, str if p.base64 else bytes)
    assert p.decode(message) == (channel, data)


@PROPERTY
@given(name=st.sampled_from(BINARY), channel=st.integers(10, 255), data=st.binary(max_size=64))
def test_binary_round_trip_any_channel_byte(name: str, channel: int, data: bytes) -> None:
    p = Protocol(name)
    assert p.decode(p.encode(channel, data)) == (channel, data)


# -- remotecommand status -----------------------------------------------------------------------


def test_success_status_json_is_kubelets() -> None:
    assert status_bytes(success_status(), True) == b'{"metadata":{},"status":"Success"}'
    assert exit_status(0, "command ['true']") == success_status()
    assert status_bytes(exit_status(0, "x"), True) == b'{"metadata":{},"status":"Success"}'


def test_exit_status_json_is_what_client_go_parses() -> None:
    raw = status_bytes(exit_status(3, "command ['sh', '-c', 'exit 3']"), True)
    status = json.loads(raw)
    assert list(status) == ["metadata", "status", "message", "reason", "details"]
    assert status["metadata"] == {}
    assert status["status"] == "Failure"
    assert status["reason"] == "NonZeroExitCode"
    assert status["message"].startswith("command terminated with non-zero exit code: ")
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
    assert "code" not in status  # kubelet sets no HTTP code for an exit status
    assert b" " not in raw.split(b'"message"')[0]  # compact separators, as Go's encoder


@pytest.mark.parametrize("code", [1, 2, 126, 127, 128, 137, 255])
def test_exit_code_cause_parses_as_uint8(code: int) -> None:
    """client-go: strconv.ParseUint(cause.Message, 10, 8)."""
    cause = exit_status(code, "x")["details"]["causes"][0]
    assert cause == {"reason": "ExitCode", "message": str(code)}
    assert re.fullmatch(r"[0-9]+", cause["message"]) and int(cause["message"]) <= 255


def test_error_status_is_an_internal_error() -> None:
    status = error_status("container c1 is not running")
    assert json.loads(status_bytes(status, True)) == {
        "metadata": {},
        "status": "Failure",
        "message": "container c1 is not running",
        "reason": "InternalError",
        "details": {"causes": [{"message": "container c1 is not running"}]},
        "code": 500,
    }


def test_status_before_v4_is_plain_text_and_nothing_on_success() -> None:
    assert status_bytes(success_status(), False) == b""
    assert status_bytes(exit_status(0, "x"), False) == b""
    failure = exit_status(3, "command ['false']")
    assert status_bytes(failure, False) == failure["message"].encode()
    assert status_bytes(error_status("boom"), False) == b"boom"


def test_status_json_is_utf8() -> None:
    raw = status_bytes(error_status("caf\u00e9 \u2603"), True)
    assert json.loads(raw.decode("utf-8"))["message"] == "caf\u00e9 \u2603"


# -- ResizeDecoder ------------------------------------------------------------------------------


def size_json(width: int, height: int) -> bytes:
    return json.dumps({"Width": width, "Height": height}, separators=(",", ":")).encode()


def test_resize_one_object() -> None:
    assert ResizeDecoder().feed(b'{"Width":80,"Height":24}') == [(80, 24)]


def test_resize_split_anywhere() -> None:
    stream = b'{"Width":80,"Height":24}\n{"Width":120,"Height":40}\n'
    for cut in range(len(stream) + 1):
        decoder = ResizeDecoder()
        sizes = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert sizes == [(80, 24), (120, 40)], cut


def test_resize_byte_by_byte() -> None:
    decoder = ResizeDecoder()
    stream = b'{"Width":1,"Height":2}{"Height":4,"Width":3}'
    sizes = [s for i in range(len(stream)) for s in decoder.feed(stream[i : i + 1])]
    assert sizes == [(1, 2), (3, 4)]


def test_resize_several_per_chunk_and_whitespace() -> None:
    chunk = (
        b' \n{"Width":80,"Height":24}\r\n\t{ "Width" : 100 ,\n "Height" : 50 }'
        b'\n\n{"Width":0,"Height":0}  '
    )
    decoder = ResizeDecoder()
    assert decoder.feed(chunk) == [(80, 24), (100, 50), (0, 0)]
    assert decoder.feed(b"\n   \n") == []
    assert decoder.buffer == ""


def test_resize_extra_fields_are_ignored() -> None:
    assert ResizeDecoder().feed(b'{"Width":80,"Height":24,"X":"y"}') == [(80, 24)]


def test_resize_largest_size() -> None:
    assert ResizeDecoder().feed(size_json(65535, 65535)) == [(65535, 65535)]


@pytest.mark.parametrize(
    "bad",
    [
        b"[80,24]",
        b"42\n",
        b'"Width"\n',
        b"null ",
        b'{"Width":80}',
        b'{"Height":24}',
        b'{"Width":-1,"Height":24}',
        b'{"Width":80,"Height":65536}',
        b'{"Width":80.5,"Height":24}',
        b'{"Width":"80","Height":24}',
        b"garbage}",
        b'{"Width":80,"Height":24',  # unfinished, then garbage: the second feed raises
    ],
)
def test_resize_bad_input_raises_value_error(bad: bytes) -> None:
    decoder = ResizeDecoder()
    with pytest.raises(ValueError):
        decoder.feed(bad)
        decoder.feed(b"x}")


def test_resize_too_long_without_an_object_raises() -> None:
    decoder = ResizeDecoder()
    decoder.feed(b'{"Width":' + b" " * 4000)
    with pytest.raises(ValueError):
        decoder.feed(b" " * 200)


def test_resize_valid_object_after_a_good_one_in_the_same_chunk_is_kept() -> None:
    decoder = ResizeDecoder()
    assert decoder.feed(b'{"Width":1,"Height":1}{"Width":2,') == [(1, 1)]
    assert decoder.feed(b'"Height":2}') == [(2, 2)]


def test_resize_many_objects_in_one_chunk() -> None:
    chunk = b"".join(size_json(80 + i, 24) + b"\n" for i in range(300))  # ~7.5 KB
    assert ResizeDecoder().feed(chunk) == [(80 + i, 24) for i in range(300)]


def test_resize_field_names_are_case_insensitive() -> None:
    assert ResizeDecoder().feed(b'{"width":80,"height":24}') == [(80, 24)]


@pytest.mark.parametrize("nested", [b"[" * 1500, b"[" * 1200 + b"]" * 1200])
def test_resize_deep_nesting_raises_value_error(nested: bytes) -> None:
    with pytest.raises(ValueError):
        ResizeDecoder().feed(nested)


SIZES = st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 65535)), min_size=1, max_size=12)
SEPARATORS = st.sampled_from(["", "\n", " ", "\r\n", "\n\n", "\t"])


@st.composite
def resize_streams(draw: st.DrawFn) -> tuple[list[tuple[int, int]], bytes, list[int]]:
    sizes = draw(SIZES)
    parts = []
    for w, h in sizes:
        obj: dict[str, Any] = {"Width": w, "Height": h}
        if draw(st.booleans()):
            obj = {"Height": h, "Width": w}
        spaced = draw(st.booleans())
        text = json.dumps(obj, separators=(", ", ": ") if spaced else (",", ":"))
        parts.append(text + draw(SEPARATORS))
    stream = "".join(parts).encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    return sizes, stream, cuts


@PROPERTY
@given(resize_streams())
def test_resize_any_split_gives_the_same_sizes(
    case: tuple[list[tuple[int, int]], bytes, list[int]],
) -> None:
    sizes, stream, cuts = case
    decoder = ResizeDecoder()
    got: list[tuple[int, int]] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += decoder.feed(stream[start:end])
    assert got == sizes
    assert decoder.buffer.strip() == ""


@PROPERTY
@given(st.binary(max_size=200) | st.text(string.printable, max_size=200).map(str.encode))
def test_resize_arbitrary_input_gives_sizes_or_value_error(data: bytes) -> None:
    decoder = ResizeDecoder()
    for piece in (data[: len(data) // 2], data[len(data) // 2 :]):
        try:
            sizes = decoder.feed(piece)
        except ValueError:
            return
        assert all(
            isinstance(w, int) and isinstance(h, int) and 0 <= w < 65536 and 0 <= h < 65536
            for w, h in sizes
        )
