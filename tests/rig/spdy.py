"""A minimal blocking SPDY streaming client (what kubelet's and crictl's client sends), on the
project's own codec, for tests that must misbehave on purpose: abort sessions midway, leave
them half-open."""

from __future__ import annotations

import socket
import urllib.parse

from crictl.streaming import spdy


class SpdyClient:
    def __init__(self, url: str, protocol: str = "v4.channel.k8s.io", timeout: float = 10) -> None:
        u = urllib.parse.urlsplit(url)
        assert u.hostname is not None and u.port is not None
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        self.sock.sendall(
            (
                f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: Upgrade\r\n"
                f"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed during the upgrade: {head!r}"
            head += chunk
        self.status = int(head.split(b" ", 2)[1])
        self.head, self.pending = head.split(b"\r\n\r\n", 1)
        self.encoder = spdy.Encoder()
        self.decoder = spdy.Decoder()
        self.next_id = 1

    def open(self, **headers: str) -> int:
        sid = self.next_id
        self.next_id += 2
        self.sock.sendall(self.encoder.encode(spdy.SynStream(sid, headers)))
        return sid

    def frames(self) -> list[spdy.Frame]:
        """The next frames the server sends ([] once it closed)."""
        data, self.pending = self.pending, b""
        while True:
            frames = self.decoder.feed(data) if data else []
            if frames:
                return frames
            data = self.sock.recv(65536)
            if not data:
                return []

    def read_until(self, stream_id: int, marker: bytes) -> bytes:
        got = b""
        while marker not in got:
            frames = self.frames()
            assert frames, f"closed before {marker!r}; got {got!r}"
            for f in frames:
                if isinstance(f, spdy.DataFrame) and f.stream_id == stream_id:
                    got += f.data
        return got

    def close(self) -> None:
        self.sock.close()
