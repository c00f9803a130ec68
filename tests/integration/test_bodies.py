"""Request bodies under attack: read only after the key is checked, within a deadline, and
within the memory budget (service/transport/bodies.py), on /v1 and /api/remove, against a real
server and raw sockets that declare large bodies and stall."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.integration.test_hardening import rss_kib
from tests.support import UNIT, b64, fixture_bytes, new_uuid

pytestmark = pytest.mark.integration

KEY = "body-key"
DECLARED = 16_000_000  # each stalled body declares this much ...
SENT = 15_900_000  # ... and sends this much, then stalls
# --working-memory-bytes: room for four such bodies and a small removal beside them, not five
BUDGET = 78_000_000
CAR = fixture_bytes("car-1.jpg")


@pytest.fixture(scope="module")
def body_server(fast_server_with):
    return fast_server_with(
        "--api-key",
        KEY,
        "--frame-error-bytes",
        str(DECLARED),
        "--working-memory-bytes",
        str(BUDGET),
        "--body-timeout",
        str(8 * UNIT),  # longer than the 5 s a body waits for room in the budget
    )


async def _open(server, path: str, length: int, headers: dict[str, str] | None = None):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    return reader, writer


async def _status(reader: asyncio.StreamReader, timeout: float) -> int | None:
    """The status of the answer, or None when the server closed without one."""
    line = await asyncio.wait_for(reader.readline(), timeout)
    return int(line.split()[1]) if line else None


def _task() -> bytes:
    task = {
        "taskType": "removeBackground",
        "taskUUID": new_uuid(),
        "model": "fast",
        "inputImage": b64(CAR),
        "outputType": "base64Data",
        "outputFormat": "PNG",
    }
    return json.dumps([task]).encode()


async def _legitimate(server) -> int:
    body = _task()
    reader, writer = await _open(
        server,
        "/v1",
        len(body),
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    writer.write(body)
    await writer.drain()
    status = await _status(reader, 60 * UNIT)
    writer.close()
    return status or 0


async def test_a_wrong_or_missing_key_is_refused_before_the_body(body_server):
    started = time.monotonic()
    # A bad header: 401 before a single body byte is sent.
    reader, writer = await _open(body_server, "/v1", DECLARED, {"Authorization": "Bearer nope"})
    assert await _status(reader, 5 * UNIT) == 401
    writer.close()
    reader, writer = await _open(body_server, "/api/remove", DECLARED)
    assert await _status(reader, 5 * UNIT) == 401
    writer.close()
    # No header: the body's first element must be an accepted authentication element.
    starts = (
        b'[{"taskType":"removeBackground","taskUUID":"x","inputImage":"AAAA"}',
        b'[{"taskType":"authentication","apiKey":"wrong"},',
    )
    for start in starts:
        reader, writer = await _open(body_server, "/v1", DECLARED)
        writer.write(start)
        await writer.drain()
        assert await _status(reader, 5 * UNIT) == 401
        writer.close()
    assert time.monotonic() - started < 14 * UNIT


async def test_keyless_bodies_cost_no_memory(body_server):
    """40 connections without a key each send 15.9 MB: all refused, the server's memory flat
    (before the fix each body was read whole: ~620 MiB)."""
    pid = body_server.process.pid
    before = rss_kib(pid, "VmRSS")

    async def attack() -> int | None:
        reader, writer = await _open(body_server, "/v1", DECLARED)
        try:
            writer.write(b"[" + b" " * (SENT - 1))
            await asyncio.wait_for(writer.drain(), 20 * UNIT)
        except (ConnectionError, TimeoutError):
            pass  # the server stopped reading or hung up: what it should do
        try:
            return await _status(reader, 20 * UNIT)
        except (ConnectionError, TimeoutError):
            return None
        finally:
            writer.close()

    statuses = await asyncio.gather(*(attack() for _ in range(40)))
    grown_mib = (rss_kib(pid, "VmRSS") - before) / 1024
    assert set(statuses) <= {401, None} and 401 in statuses
    assert grown_mib < 64, f"RSS grew {grown_mib:.0f} MiB"
    assert await _legitimate(body_server) == 200


async def test_stalled_keyed_bodies_stay_within_the_budget_and_others_are_served(body_server):
    """Keyed bodies that stall hold at most the working-memory budget; a new one waits for room
    and gets 503; each stalled one gets 408 at the deadline; a small legitimate request is
    served meanwhile."""
    pid = body_server.process.pid
    before = rss_kib(pid, "VmRSS")
    stalled = []
    for _ in range(4):  # 4 x 16 MB of the 78 MB budget
        reader, writer = await _open(
            body_server, "/v1", DECLARED, {"Authorization": f"Bearer {KEY}"}
        )
        writer.write(b"[" + b" " * (SENT - 1))
        stalled.append((reader, writer))
    await asyncio.gather(*(writer.drain() for _, writer in stalled))
    assert await _legitimate(body_server) == 200
    # A fifth does not fit: it waits 5 s for room, then 503, before the first ones time out.
    reader, writer = await _open(body_server, "/v1", DECLARED, {"Authorization": f"Bearer {KEY}"})
    assert await _status(reader, 20 * UNIT) == 503
    writer.close()
    grown_mib = (rss_kib(pid, "VmRSS") - before) / 1024
    assert grown_mib < BUDGET / 2**20 + 64, f"RSS grew {grown_mib:.0f} MiB"
    for reader, writer in stalled:
        assert await _status(reader, 20 * UNIT) == 408
        await asyncio.wait_for(reader.read(), 5 * UNIT)  # and the server hung up
        writer.close()


@pytest.mark.parametrize("path", ["/v1", "/api/remove"])
async def test_a_trickled_body_gets_408_at_the_deadline(body_server, path):
    reader, writer = await _open(
        body_server,
        path,
        1000,
        {"Authorization": f"Bearer {KEY}", "Content-Type": "multipart/form-data; boundary=x"},
    )
    started = time.monotonic()

    async def trickle() -> None:
        try:
            for _ in range(100):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.5)
        except ConnectionError:
            pass

    dripping = asyncio.create_task(trickle())
    status = await _status(reader, 30 * UNIT)
    dripping.cancel()
    writer.close()
    assert status == 408
    assert time.monotonic() - started < 14 * UNIT
