"""transport.frame_check.ClientFrameCheck: follows frame headers however the bytes are split."""

from __future__ import annotations

import asyncio
import os

import pytest

from service.transport.frame_check import ClientFrameCheck
from tests.support import client_frame


class Inner(asyncio.Protocol):
    def __init__(self) -> None:
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data


class Transport:
    def __init__(self, protocol: asyncio.Protocol) -> None:
        self.protocol = protocol
        self.aborted = False

    def get_protocol(self) -> asyncio.Protocol:
        return self.protocol

    def abort(self) -> None:
        self.aborted = True


def frame(payload: bytes, masked: bool = True) -> bytes:
    return client_frame(payload, opcode=0x2, masked=masked)


def check() -> tuple[ClientFrameCheck, Inner, list[str]]:
    inner = Inner()
    told: list[str] = []
    checker = ClientFrameCheck(Transport(inner))  # type: ignore[arg-type]
    checker.unmasked = lambda: told.append("unmasked")
    return checker, inner, told


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100, 70_000, 1_000_000])
def test_masked_frames_of_every_length_class_pass_whole_however_split(chunk):
    stream = b"".join(frame(os.urandom(n)) for n in (0, 5, 125, 126, 300, 65_535, 65_536, 70_000))
    checker, inner, told = check()
    for at in range(0, len(stream), chunk):
        checker.data_received(stream[at : at + chunk])
    assert inner.received == stream and not told


@pytest.mark.parametrize("chunk", [1, 3, 200, 1_000_000])
def test_an_unmasked_frame_stops_the_stream_where_it_begins(chunk):
    good = frame(b"x" * 300) + frame(b"y" * 10)
    stream = good + frame(b"z" * 40, masked=False) + frame(b"after")
    checker, inner, told = check()
    for at in range(0, len(stream), chunk):
        checker.data_received(stream[at : at + chunk])
    assert told == ["unmasked"]
    # The frames before it went through, and of it at most the header byte a chunk split off
    # (the connection is closed anyway); nothing after it.
    assert stream.startswith(inner.received) and len(inner.received) in (len(good), len(good) + 1)


def test_without_a_connection_yet_the_transport_is_cut():
    inner = Inner()
    transport = Transport(inner)
    checker = ClientFrameCheck(transport)  # type: ignore[arg-type]
    checker.data_received(frame(b"early", masked=False))
    assert transport.aborted and inner.received == b""
