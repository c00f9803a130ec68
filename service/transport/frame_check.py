"""The one check on WebSocket frames that aiohttp's reader does not make: a client's frames must
be masked (RFC 6455 5.1). It follows only the frame headers in the byte stream; aiohttp parses
the frames themselves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

__all__ = ["ClientFrameCheck"]


class ClientFrameCheck(asyncio.Protocol):
    """Sits between a socket's transport and aiohttp's protocol and follows the frame headers in
    the byte stream: a client frame without a mask fails the connection (RFC 6455 5.1), which
    aiohttp's reader does not check. Only headers are read; payloads pass untouched.

    Installed before the handshake's answer goes out, when a conforming client has sent nothing
    yet (RFC 6455 4.1: it waits for the answer before its first frame).
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._inner = cast(asyncio.Protocol, transport.get_protocol())
        # Told of the bad frame: the socket's Connection closes with 1002. Before it is set (a
        # client that did not wait for the handshake's answer) the connection is cut instead.
        self.unmasked: Callable[[], None] | None = None
        self._header = bytearray()  # the current frame's header, as far as it has arrived
        self._payload_left = 0
        self._failed = False

    def _header_size(self) -> int:
        if len(self._header) < 2:
            return 2
        length = self._header[1] & 0x7F
        extended = 2 if length == 126 else 8 if length == 127 else 0
        return 2 + extended + (4 if self._header[1] & 0x80 else 0)

    def _frame_length(self) -> int:
        length = self._header[1] & 0x7F
        if length == 126:
            return int.from_bytes(self._header[2:4], "big")
        if length == 127:
            return int.from_bytes(self._header[2:10], "big")
        return length

    def data_received(self, data: bytes) -> None:
        if self._failed:
            return
        at = started = 0  # started: where in this chunk the frame being read began
        while at < len(data):
            if self._payload_left:
                step = min(self._payload_left, len(data) - at)
                self._payload_left -= step
                at += step
                continue
            if not self._header:
                started = at
            take = min(self._header_size() - len(self._header), len(data) - at)
            self._header += data[at : at + take]
            at += take
            if len(self._header) < self._header_size():
                continue
            if not self._header[1] & 0x80:
                self._failed = True
                self._inner.data_received(data[:started])  # the frames before it, whole
                if self.unmasked is not None:
                    self.unmasked()
                else:
                    self._transport.abort()
                return
            self._payload_left = self._frame_length()
            self._header.clear()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
