"""The Kubernetes channel protocols over WebSocket (`*.channel.k8s.io`): pure, no I/O.

Each message is one channel byte and its payload (binary protocols), or the ASCII digit of the
channel followed by the payload in base64 (`base64.` protocols, text messages). Channels for
exec and attach: 0 stdin, 1 stdout, 2 stderr, 3 error (the final status), 4 resize. Version 5
adds a client message `[255, channel]` that closes one channel (stdin half-close). Port-forward
uses channel 2i for port i's data and 2i+1 for its errors.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

STDIN = 0
STDOUT = 1
STDERR = 2
ERROR = 3
RESIZE = 4
CLOSE_SIGNAL = 255

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
BASE64 = "base64.channel.k8s.io"
V1 = "channel.k8s.io"

# What the server offers, in preference order, for exec/attach and for legacy port-forward.
REMOTE_COMMAND_PROTOCOLS = (V5, V4, V4_BASE64, BASE64, V1, "")
PORT_FORWARD_PROTOCOLS = (V4, V4_BASE64, "")


class ChannelError(Exception):
    """A message that no channel protocol allows: the connection must be closed."""


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str

    @property
    def base64(self) -> bool:
        return "base64" in self.name

    @property
    def version(self) -> int:
        """5, 4 or 1 (the unversioned protocols)."""
        if self.name.startswith("v5."):
            return 5
        return 4 if self.name.startswith("v4.") else 1

    def encode(self, channel: int, data: bytes) -> bytes | str:
        if self.base64:
            return chr(ord("0") + channel) + base64.b64encode(data).decode()
        return bytes((channel,)) + data

    def decode(self, message: bytes | str) -> tuple[int, bytes]:
        """(channel, payload) of one client message."""
        if self.base64:
            if isinstance(message, bytes):
                raise ChannelError("binary message on a base64 channel protocol")
            if not message:
                raise ChannelError("empty message")
            channel = ord(message[0]) - ord("0")
            if not 0 <= channel <= 9:
                raise ChannelError(f"bad channel digit {message[0]!r}")
            try:
                return channel, base64.b64decode(message[1:], validate=True)
            except (binascii.Error, ValueError) as e:
                raise ChannelError(f"bad base64 payload on channel {channel}: {e}") from None
        if isinstance(message, str):
            raise ChannelError("text message on a binary channel protocol")
        if not message:
            raise ChannelError("empty message")
        return message[0], message[1:]

    def close_of(self, channel: int, payload: bytes) -> int | None:
        """The channel a v5 close message closes, else None."""
        if self.version < 5 or channel != CLOSE_SIGNAL:
            return None
        if len(payload) != 1:
            raise ChannelError("a close message names exactly one channel")
        return payload[0]
