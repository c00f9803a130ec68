"""Hostile input, limits, overload, dead and slow peers, reconnects, shutdown: the real server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import socket
import struct
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import websockets
from PIL import Image

from tests.support import (
    ROOT,
    UNIT,
    Client,
    b64,
    client_frame,
    fixture_bytes,
    http_get,
    new_uuid,
    progressive_jpeg,
    removal_task,
    start_server,
)


def small_png(width: int = 64, height: int = 48, noise: bool = False) -> bytes:
    rng = np.random.default_rng(width * height)
    pixels = (
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        if noise
        else np.full((height, width, 3), 120, np.uint8)
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


SMALL = b64(small_png())


def fast(image: str = SMALL, **fields) -> dict:
    """A removal on the stand-in model: costs next to nothing."""
    return removal_task(image, **fields)


def png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", b"")
        + chunk(b"IEND", b"")
    )


U = "9ad4918a-e9d0-440a-ac59-057a966cd421"

# (name, task-or-raw-frame, expected code). Tasks are sent beside a good sibling in one frame.
BAD_TASKS = [
    ("missing taskType", {"taskUUID": new_uuid()}, "missingTaskType"),
    (
        "unknown taskType",
        {"taskType": "imageInference", "taskUUID": new_uuid()},
        "unsupportedTaskType",
    ),
    ("taskType not a string", {"taskType": 5, "taskUUID": new_uuid()}, "unsupportedTaskType"),
    ("missing taskUUID", {"taskType": "removeBackground", "inputImage": SMALL}, "missingTaskUUID"),
    ("taskUUID not a UUID", fast(taskUUID="1234"), "invalidTaskUUID"),
    (
        "no image",
        {"taskType": "removeBackground", "taskUUID": new_uuid(), "settings": {}},
        "missingInputImage",
    ),
    ("empty image", fast(""), "invalidInputImage"),
    ("image is a number", {**fast(), "inputs": {"image": 42}}, "invalidInputImage"),
    ("inputs not an object", {**fast(), "inputs": "x"}, "invalidInputs"),
    ("not base64", fast("!!!not base64!!!"), "invalidInputImage"),
    ("data URI without base64", fast("data:image/png,rawbytes"), "invalidInputImage"),
    ("text as base64", fast(b64(b"hello world, not an image")), "invalidImage"),
    ("truncated JPEG", fast(b64(fixture_bytes("car-1.jpg")[:3000])), "invalidImage"),
    ("PNG bomb header", fast(b64(png_claiming(10_000, 10_000))), "imageTooLarge"),
    ("TIFF is not accepted", fast(b64(b"II*\x00" + b"\x00" * 100)), "invalidImage"),
    ("unknown image UUID", fast(U), "unknownImageUUID"),
    ("ftp URL", fast("ftp://example.com/a.png"), "forbiddenURL"),
    ("file URL", fast("file:///etc/passwd"), "forbiddenURL"),
    ("quality too low", fast(outputQuality=19), "invalidOutputQuality"),
    ("quality not an int", fast(outputQuality=80.5), "invalidOutputQuality"),
    ("bad outputType", fast(outputType="file"), "invalidOutputType"),
    ("bad outputFormat", fast(outputFormat="TIFF"), "invalidOutputFormat"),
    ("ttl under 60", fast(ttl=10), "invalidTtl"),
    ("rgba of 3", fast(settings={"rgba": [1, 2, 3]}), "invalidRgba"),
    ("rgba over 255", fast(settings={"rgba": [1, 2, 3, 256]}), "invalidRgba"),
    (
        "threshold 0",
        fast(settings={"alphaMattingBackgroundThreshold": 0}),
        "invalidAlphaMattingBackgroundThreshold",
    ),
    ("erode 256", fast(alphaMattingErodeSize=256), "invalidAlphaMattingErodeSize"),
    ("alphaMatting a string", fast(alphaMatting="yes"), "invalidAlphaMatting"),
    ("settings not an object", fast(settings=[1]), "invalidSettings"),
    ("unknown model", fast(model="no-such-model"), "unsupportedModel"),
    ("bad deliveryMethod", fast(deliveryMethod="carrier-pigeon"), "invalidDeliveryMethod"),
    ("webhook not http", fast(webhookURL="ftp://example.com/hook"), "forbiddenURL"),
    ("uploadEndpoint to a file", fast(uploadEndpoint="file:///tmp/x"), "forbiddenURL"),
    ("includeCost a string", fast(includeCost="true"), "invalidIncludeCost"),
    (
        "getResponse for nothing",
        {"taskType": "getResponse", "taskUUID": new_uuid()},
        "taskNotFound",
    ),
    ("getResponse without UUID", {"taskType": "getResponse"}, "missingTaskUUID"),
    (
        "imageUpload without image",
        {"taskType": "imageUpload", "taskUUID": new_uuid()},
        "missingImage",
    ),
    (
        "imageUpload of junk",
        {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": b64(b"junk")},
        "invalidImage",
    ),
]


@pytest.mark.parametrize("name,task,code", BAD_TASKS, ids=[n for n, _, _ in BAD_TASKS])
async def test_bad_task_gets_its_code_and_its_sibling_still_runs(client: Client, name, task, code):
    sibling = fast()
    await client.send(task, sibling)
    routed = isinstance(task.get("taskUUID"), str)
    answers = {}
    deadline = time.monotonic() + 60 * UNIT
    while len(answers) < 2 and time.monotonic() < deadline:
        frame = await client.recv()
        for kind in ("data", "errors"):
            for item in frame.get(kind, []):
                answers[item.get("taskUUID") or "unrouted"] = (kind, item)
    error_kind, error = answers[task["taskUUID"] if routed else "unrouted"]
    assert error_kind == "errors" and error["code"] == code, error
    assert error["message"]
    assert answers[sibling["taskUUID"]][0] == "data"
    assert await client.ping()


@pytest.mark.parametrize(
    "frame,code",
    [
        (b"\x00\x01\x02", "invalidJSON"),
        ("[{]", "invalidJSON"),
        ("{}", "invalidFrame"),
        ("null", "invalidFrame"),
        ('"[]"', "invalidFrame"),
        ("[[]]", "invalidTask"),
        ('["task"]', "invalidTask"),
        ("[null]", "invalidTask"),
    ],
)
async def test_bad_frames_get_a_frame_error_and_the_socket_stays(client: Client, frame, code):
    await client.send_raw(frame)
    assert (await client.recv())["errors"][0]["code"] == code
    assert await client.ping()


# --------------------------------------------------------------------------- limits


@pytest.fixture(scope="module")
def limits_server(fast_server_with):
    return fast_server_with(
        "--max-tasks-per-frame",
        "4",
        "--max-in-flight-per-socket",
        "3",
        "--max-sockets-per-key",
        "3",
        "--max-queued-tasks",
        "5",
        "--frame-error-bytes",
        "3000000",
        "--max-frame-bytes",
        "4000000",
        "--send-timeout",
        "2",
        "--ping-interval",
        "2",
        "--idle-timeout",
        "3",
        "--socket-concurrency",
        "1",
        "--max-matting-pixels",
        "10000",
    )


async def connect(server, key: str = "limits-key") -> Client:
    websocket = await websockets.connect(server.ws_url, max_size=None)
    client = Client(websocket)
    await client.authenticate(key)
    return client


async def test_frame_over_the_soft_cap_is_refused_and_the_socket_stays(limits_server):
    client = await connect(limits_server)
    try:
        await client.send_raw(json.dumps([fast("A" * 3_500_000)]))
        assert (await client.recv())["errors"][0]["code"] == "frameTooLarge"
        assert await client.ping()
    finally:
        await client.ws.close()


async def test_alpha_matting_has_its_own_pixel_limit(limits_server):
    """Over --max-matting-pixels (10,000 here): refused with alphaMatting, served without."""
    client = await connect(limits_server, "matting-limit")
    try:
        image = b64(small_png(200, 100))
        matted, plain = fast(image, settings={"alphaMatting": True}), fast(image)
        await client.send(matted, plain)
        answers = await client.collect([matted["taskUUID"], plain["taskUUID"]])
        refusal = answers[matted["taskUUID"]]
        assert refusal["code"] == "imageTooLarge" and refusal["parameter"] == "inputs.image"
        assert "alphaMatting" in refusal["message"] and "10,000" in refusal["message"]
        assert "imageBase64Data" in answers[plain["taskUUID"]]
    finally:
        await client.ws.close()


async def test_frame_over_the_hard_cap_closes_with_1009(limits_server):
    client = await connect(limits_server)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        # The server may close while the frame is still going out: then send itself raises.
        await client.send_raw(json.dumps([fast("A" * 4_500_000)]))
        await client.recv()
    assert closed.value.rcvd.code == 1009


async def test_a_frame_of_exactly_the_hard_cap_is_read(limits_server):
    """--max-frame-bytes 4,000,000: a frame of that size is read (and refused by the soft cap,
    the socket kept); one byte more closes the socket."""
    client = await connect(limits_server)
    try:
        await client.send_raw(b" " * (4_000_000 - 2) + b"[]")
        assert (await client.recv())["errors"][0]["code"] == "frameTooLarge"
        assert await client.ping()
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.send_raw(b" " * (4_000_001 - 2) + b"[]")
            await client.recv()
        assert closed.value.rcvd.code == 1009
    finally:
        await client.ws.close()


async def test_a_text_frame_that_is_not_utf8_fails_the_connection(limits_server):
    """RFC 6455 8.1: invalid UTF-8 in a text frame closes with 1007; binary frames of JSON
    stay fine."""
    client = await connect(limits_server)
    await client.ws.send(json.dumps([{"taskType": "ping", "ping": True}]).encode())  # binary
    assert (await client.recv())["data"][0]["pong"] is True
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.ws.send(b'[{"taskType": "ping", "x": "\xff\xfe"}]', text=True)
        await client.recv()
    assert closed.value.rcvd.code == 1007


@pytest.mark.parametrize("first", [False, True])
def test_an_unmasked_client_frame_fails_the_connection(limits_server, first):
    """RFC 6455 5.1: the server closes the connection (1002) on a frame that is not masked,
    whether it is the first frame or follows well-formed ones."""
    sock = raw_websocket(limits_server.port)
    try:
        ping = json.dumps([{"taskType": "ping", "ping": True}]).encode()
        if not first:
            sock.sendall(client_frame(ping))
            assert json.loads(read_frame(sock))["data"][0]["pong"] is True
        sock.sendall(client_frame(ping, masked=False))
        received = frames_until_closed(sock, 10 * UNIT)
        assert received is not None, "the connection stayed open"
        frames = server_frames(received)
        assert all(b'"pong"' not in payload for _, payload in frames)  # it was not served
        opcode, payload = frames[-1]
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1002
    finally:
        sock.close()


async def test_one_error_covers_the_tasks_beyond_the_per_frame_limit(limits_server):
    client = await connect(limits_server)
    try:
        tasks = [{"taskType": "getResponse", "taskUUID": new_uuid()} for _ in range(6)]
        await client.send(*tasks)
        beyond = await client.recv()
        assert beyond["errors"][0]["code"] == "tooManyTasks" and beyond["errors"][0]["max"] == 4
        answers = await client.collect([t["taskUUID"] for t in tasks[:4]])
        assert {a["code"] for a in answers.values()} == {"taskNotFound"}
    finally:
        await client.ws.close()


async def test_a_flood_of_bad_elements_gets_a_bounded_answer(limits_server):
    """Half a million {} elements: four missingTaskType items, one tooManyTasks, nothing more."""
    client = await connect(limits_server)
    try:
        await client.send_raw("[" + ",".join(["{}"] * 500_000) + "]")
        codes = [(await client.recv())["errors"][0]["code"] for _ in range(5)]
        assert codes == ["missingTaskType"] * 4 + ["tooManyTasks"]
        assert await client.ping()  # the next frame is the pong: nothing else was queued
    finally:
        await client.ws.close()


async def test_deep_nesting_is_invalid_json_and_the_socket_stays(limits_server):
    client = await connect(limits_server)
    try:
        await client.send_raw("[" * 100_000 + "]" * 100_000)
        error = (await client.recv())["errors"][0]
        assert error["code"] == "invalidJSON" and "nested" in error["message"]
        assert await client.ping()
    finally:
        await client.ws.close()


async def test_made_up_task_types_do_not_become_metrics(limits_server):
    client = await connect(limits_server)
    try:
        made_up = [{"taskType": f"madeUp{n}", "taskUUID": new_uuid()} for n in range(4)]
        await client.send(*made_up)
        for _ in made_up:
            assert (await client.recv())["errors"][0]["code"] == "unsupportedTaskType"
    finally:
        await client.ws.close()
    _, _, text = http_get(f"{limits_server.http_url}/metrics")
    metrics = text.decode()
    assert "madeUp" not in metrics
    assert 'rbg_tasks_total{outcome="unsupportedTaskType",task_type="other"}' in metrics


async def test_a_task_uuid_in_another_case_is_the_same_task(limits_server):
    client = await connect(limits_server)
    try:
        task = fast()
        first = await client.run(dict(task))
        assert first["kind"] == "data"
        again = await client.run({**task, "taskUUID": task["taskUUID"].upper()})
        assert again["code"] == "conflictTaskUUID"
        newline = await client.run({**fast(), "taskUUID": new_uuid() + "\n"})
        assert newline["code"] == "invalidTaskUUID"
    finally:
        await client.ws.close()


async def test_a_ttl_beyond_30_days_is_refused_before_any_work(limits_server):
    client = await connect(limits_server)
    try:
        for ttl in (2**62, 10**30):
            answer = await client.run(fast(ttl=ttl))
            assert answer["code"] == "invalidTtl" and answer["max"] == 30 * 86_400
    finally:
        await client.ws.close()


async def test_in_flight_limit_per_socket(limits_server):
    client = await connect(limits_server)
    try:
        # all four are dispatched before any can finish: the fourth finds three in flight
        tasks = [fast() for _ in range(4)]
        await client.send(*tasks)
        answers = await client.collect([t["taskUUID"] for t in tasks])
        codes = sorted(answers[t["taskUUID"]].get("code", "ok") for t in tasks)
        assert codes == ["ok", "ok", "ok", "tooManyTasksInFlight"]
    finally:
        await client.ws.close()


async def test_overload_refuses_new_tasks_at_once_and_every_accepted_one_completes(limits_server):
    clients = [await connect(limits_server, f"overload-{i}") for i in range(3)]
    try:
        big = b64(small_png(800, 600, noise=True))
        sent = [[fast(big) for _ in range(3)] for _ in clients]
        for client, tasks in zip(clients, sent, strict=True):
            for task in tasks:
                await client.send(task)
        outcomes = []
        for client, tasks in zip(clients, sent, strict=True):
            answers = await client.collect([t["taskUUID"] for t in tasks])
            outcomes += [answers[t["taskUUID"]] for t in tasks]
        refused = [o for o in outcomes if o["kind"] == "errors"]
        assert refused and all(o["code"] == "overloaded" and o["retryAfterMs"] > 0 for o in refused)
        # The queue's room, all completed; one more for each task that finished while the
        # frames were still arriving (a loaded machine sends them further apart).
        assert 5 <= len(outcomes) - len(refused) < 9
    finally:
        for client in clients:
            await client.ws.close()


@pytest.fixture(scope="module")
def two_key_server(fast_server_with):
    return fast_server_with(
        "--api-key", "few-sockets", "--api-key", "another-key", "--max-sockets-per-key", "3"
    )


async def test_sockets_per_key_are_limited(two_key_server):
    clients = [await connect(two_key_server, "few-sockets") for _ in range(3)]
    try:
        async with websockets.connect(two_key_server.ws_url) as websocket:
            extra = Client(websocket)
            await extra.send({"taskType": "authentication", "apiKey": "few-sockets"})
            (error,) = (await extra.recv())["errors"]
            assert error["code"] == "tooManyConnections" and error["taskType"] == "authentication"
            await extra.authenticate("another-key")  # other keys are not affected
    finally:
        for client in clients:
            await client.ws.close()


def raw_websocket(port: int) -> socket.socket:
    """A client that completes the handshake and then neither reads nor answers pings."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert b" 101 " in response
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Drain what the server sends until it closes (or resets) the TCP connection."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.fixture(scope="module")
def keepalive_server(fast_server_with):
    """Pings every second; idle sockets would only be closed after a minute."""
    return fast_server_with("--ping-interval", "1", "--idle-timeout", "60")


def frames_until_closed(sock: socket.socket, timeout: float) -> bytes | None:
    """Everything the server sent until it dropped the connection; None if it never did."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return received


def server_frames(stream: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each (unmasked, server-sent) frame in ``stream``."""
    frames, at = [], 0
    while at + 2 <= len(stream):
        opcode, length, at = stream[at] & 0x0F, stream[at + 1] & 0x7F, at + 2
        if length == 126:
            length, at = int.from_bytes(stream[at : at + 2], "big"), at + 2
        elif length == 127:
            length, at = int.from_bytes(stream[at : at + 8], "big"), at + 8
        frames.append((opcode, stream[at : at + length]))
        at += length
    return frames


def frame_opcodes(stream: bytes) -> list[int]:
    return [opcode for opcode, _ in server_frames(stream)]


async def test_a_dead_peer_is_dropped_by_keepalive_and_others_are_served(keepalive_server):
    """A peer that answers no ping (its network is gone) is dropped long before the idle timeout,
    without a closing handshake nobody would answer."""
    sock = raw_websocket(keepalive_server.port)
    sock.sendall(
        client_frame(json.dumps([{"taskType": "authentication", "apiKey": "dead-peer"}]).encode())
    )
    try:
        dropped = asyncio.create_task(asyncio.to_thread(frames_until_closed, sock, 20 * UNIT))
        healthy = await connect(keepalive_server, "bystander")
        assert (await healthy.run(fast()))["kind"] == "data"
        await healthy.ws.close()
        received = await dropped
        assert received is not None, "the dead peer was never dropped"
        opcodes = frame_opcodes(received)
        assert 0x9 in opcodes  # it was pinged
        assert 0x8 not in opcodes  # and dropped, not closed with a close frame
    finally:
        sock.close()


async def test_a_client_that_stops_reading_is_cut_off_without_slowing_others(limits_server):
    sock = raw_websocket(limits_server.port)
    try:
        auth = json.dumps([{"taskType": "authentication", "apiKey": "slow-reader"}]).encode()
        sock.sendall(client_frame(auth))
        big = b64(small_png(800, 600, noise=True))
        for _ in range(4):  # results of MBs each, never read
            sock.sendall(client_frame(json.dumps([fast(big)]).encode()))
        healthy = await connect(limits_server, "bystander-2")
        assert (await healthy.run(fast()))["kind"] == "data"
        await healthy.ws.close()
        assert await asyncio.to_thread(closed_by_server, sock, 20)
    finally:
        sock.close()


async def test_silent_sockets_are_closed_after_the_idle_timeout(limits_server):
    async with websockets.connect(limits_server.ws_url, ping_interval=None) as websocket:
        await Client(websocket).authenticate("idle")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(websocket.recv(), 15 * UNIT)
        assert websocket.close_code == 1000


@pytest.fixture(scope="module")
def slow_batch_server(fast_server_with):
    """A lone image waits 5 s for its batch to fill; sockets idle for 2 s are closed."""
    return fast_server_with("--idle-timeout", "2", "--max-batch", "8", "--max-wait-ms", "5000")


async def test_a_socket_waiting_for_its_answers_is_not_idle(slow_batch_server):
    """Tasks in flight count as activity: the answer arrives on the socket that asked."""
    async with websockets.connect(slow_batch_server.ws_url, max_size=None) as websocket:
        client = Client(websocket)
        await client.authenticate("patient")
        answer = await client.run(fast(), timeout=30)
        assert answer["kind"] == "data"
        # idle again once answered: closed after the timeout as before
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(websocket.recv(), 15 * UNIT)


def test_connections_that_never_finish_their_headers_are_closed(fast_server_with):
    """Slowloris: 20 connections trickle a header line every second and never end it. With
    --handshake-timeout 2 the server closes each within a few seconds; the service still
    answers."""
    server = fast_server_with("--handshake-timeout", "2")
    trickling = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        trickling.append(sock)
    closed: set[int] = set()
    deadline = time.monotonic() + 8 * UNIT
    while len(closed) < len(trickling) and time.monotonic() < deadline:
        for n, sock in enumerate(trickling):
            if n in closed:
                continue
            try:
                sock.sendall(b"X-Slow: 1\r\n")
                sock.settimeout(0.05)
                if sock.recv(1) == b"":
                    closed.add(n)
            except TimeoutError:
                pass
            except OSError:
                closed.add(n)
        time.sleep(1)
    for sock in trickling:
        sock.close()
    assert len(closed) == len(trickling)
    assert http_get(f"{server.http_url}/healthz")[0] == 200


@pytest.fixture(scope="module")
def guarded_server(fast_server_with):
    """Keys required; an address may get 8 keys wrong a minute."""
    return fast_server_with("--api-key", "right-key", "--max-key-failures-per-address", "8")


async def wrong_keys(server, count: int) -> tuple[list[str], int | None]:
    """Authenticate with wrong keys on one socket; the codes answered and the close code."""
    codes: list[str] = []
    async with websockets.connect(server.ws_url) as websocket:
        client = Client(websocket)
        try:
            for n in range(count):
                await client.send({"taskType": "authentication", "apiKey": f"guess-{n}"})
                codes.append((await client.recv(10))["errors"][0]["code"])
        except websockets.ConnectionClosed:
            pass
        with contextlib.suppress(websockets.ConnectionClosed, asyncio.TimeoutError):
            await asyncio.wait_for(websocket.recv(), 5)
        return codes, websocket.close_code


async def test_a_socket_guessing_keys_is_closed(guarded_server):
    codes, close_code = await wrong_keys(guarded_server, 20)
    assert codes == ["invalidApiKey"] * 5 and close_code == 1008


async def test_an_address_guessing_keys_is_refused_for_a_while(guarded_server):
    """The address's budget (8 a minute, 5 of them spent above) runs out on the second socket;
    then even the right key is refused from it until the minute has passed."""
    codes, close_code = await wrong_keys(guarded_server, 20)
    assert codes == ["invalidApiKey"] * 3 and close_code == 1008
    async with websockets.connect(guarded_server.ws_url) as websocket:
        client = Client(websocket)
        await client.send({"taskType": "authentication", "apiKey": "right-key"})
        refused = (await client.recv(10))["errors"][0]
        assert refused["code"] == "invalidApiKey" and "retry" in refused["message"].lower()


async def test_without_keys_the_socket_cap_counts_per_address(limits_server):
    """No --api-key: any key string is accepted, so made-up keys must not multiply the cap
    (3 here) for one address."""
    opened = [await connect(limits_server, f"made-up-{n}") for n in range(3)]
    try:
        async with websockets.connect(limits_server.ws_url) as websocket:
            fourth = Client(websocket)
            await fourth.send({"taskType": "authentication", "apiKey": "made-up-3"})
            assert (await fourth.recv())["errors"][0]["code"] == "tooManyConnections"
    finally:
        for client in opened:
            await client.ws.close()


async def test_a_key_cannot_use_another_keys_stored_images(limits_server):
    alice, bob = await connect(limits_server, "alice-key"), await connect(limits_server, "bob-key")
    try:
        upload = await alice.run({"taskType": "imageUpload", "image": SMALL})
        image_uuid = upload["imageUUID"]
        refused = await bob.run(fast(image_uuid))
        assert refused["code"] == "unknownImageUUID" and refused["parameter"] == "inputs.image"
        assert (await alice.run(fast(image_uuid)))["kind"] == "data"
    finally:
        await alice.ws.close()
        await bob.ws.close()


def rss_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in KiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def large_jpeg(side: int) -> bytes:
    """A smooth side x side photo stand-in: decodes to side^2 pixels, compresses small."""
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    pixels = np.stack([np.add.outer(ramp // 2, ramp // 2)] * 3, axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


async def test_images_in_flight_are_bounded_in_bytes(fast_server_with):
    """8 sockets x 4 tasks of a 9 MP image, 300 MB of working memory: the server's peak RSS
    grows by less than the budget plus 200 MB of slack (without the budget it held every
    socket's images at once: over a gigabyte)."""
    server = fast_server_with("--working-memory-bytes", str(300 * 2**20))
    image = b64(large_jpeg(3000))
    idle = rss_kib(server.process.pid, "VmRSS")

    async def one_socket(n: int) -> list[dict]:
        async with websockets.connect(server.ws_url, max_size=None) as websocket:
            client = Client(websocket)
            await client.authenticate(f"memory-{n}")
            tasks = [fast(image, outputType="URL") for _ in range(4)]
            await client.send(*tasks)
            answers = await client.collect([t["taskUUID"] for t in tasks], timeout=240)
            return list(answers.values())

    answers = [a for many in await asyncio.gather(*(one_socket(n) for n in range(8))) for a in many]
    assert [a["kind"] for a in answers] == ["data"] * 32
    growth = rss_kib(server.process.pid, "VmHWM") - idle
    assert growth < (300 + 200) * 1024, f"peak RSS grew by {growth / 1024:.0f} MiB"


# --------------------------------------------------------------------------- reconnects


async def test_results_finished_while_away_are_delivered_after_resume(server):
    slow = {
        "taskType": "removeBackground",
        "taskUUID": new_uuid(),
        "model": "u2netp",
        "inputs": {"image": b64(fixture_bytes("anime-girl-1.jpg"))},
        "outputType": "URL",
        "outputFormat": "PNG",
        "settings": {"alphaMatting": True},
    }
    websocket = await websockets.connect(server.ws_url, max_size=None)
    first = Client(websocket)
    session = await first.authenticate("resume-key")
    await first.send(slow)
    websocket.transport.abort()  # the client is killed mid-task
    await asyncio.sleep(4 * UNIT)  # the task finishes while nobody is connected
    async with websockets.connect(server.ws_url, max_size=None) as websocket:
        again = Client(websocket)
        await again.send(
            {"taskType": "authentication", "apiKey": "resume-key", "connectionSessionUUID": session}
        )
        assert (await again.recv())["data"][0]["connectionSessionUUID"] == session
        item = (await again.recv(60))["data"][0]
        assert item["taskUUID"] == slow["taskUUID"] and http_get(item["imageURL"])[0] == 200
        # and it is pollable too; a resend of the same taskUUID is a conflict
        assert (await again.run(dict(slow)))["code"] == "conflictTaskUUID"


def read_frame(sock: socket.socket) -> bytes:
    """The payload of the next (unmasked, server-sent) frame."""

    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    length = exactly(2)[1] & 0x7F
    if length >= 126:
        length = int.from_bytes(exactly(2 if length == 126 else 8), "big")
    return exactly(length)


async def test_answers_a_dead_connection_held_unread_come_back_on_resume(keepalive_server):
    """A client stops reading, its answers pile up in the socket buffers, then its connection
    dies (it answers no ping: keepalive drops it). On resume every answer arrives, once: written
    into the dead connection is not read."""
    sock = raw_websocket(keepalive_server.port)
    try:
        auth = {"taskType": "authentication", "apiKey": "never-read"}
        sock.sendall(client_frame(json.dumps([auth]).encode()))
        session = json.loads(read_frame(sock))["data"][0]["connectionSessionUUID"]
        big = b64(small_png(400, 300, noise=True))  # answers of ~half a MB each
        tasks = [fast(big) for _ in range(12)]
        sock.sendall(client_frame(json.dumps(tasks).encode()))
        await asyncio.sleep(4 * UNIT)  # all answered into the connection, which is then dropped
        async with websockets.connect(keepalive_server.ws_url, max_size=None) as websocket:
            again = Client(websocket)
            await again.send({**auth, "connectionSessionUUID": session})
            assert (await again.recv())["data"][0]["connectionSessionUUID"] == session
            answers = await again.collect([task["taskUUID"] for task in tasks], timeout=60)
        assert all(answer["kind"] == "data" for answer in answers.values())
    finally:
        sock.close()


async def test_a_session_is_not_resumed_under_another_key(server):
    async with websockets.connect(server.ws_url) as websocket:
        session = await Client(websocket).authenticate("owner-key")
    async with websockets.connect(server.ws_url) as websocket:
        thief = Client(websocket)
        await thief.send(
            {"taskType": "authentication", "apiKey": "thief-key", "connectionSessionUUID": session}
        )
        assert (await thief.recv())["data"][0]["connectionSessionUUID"] != session


async def test_load_100_sockets_10_tasks_nothing_lost_duplicated_or_cross_delivered(server):
    finished = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "load",
        "--url",
        server.ws_url,
        "--connections",
        "100",
        "--tasks-per-connection",
        "10",
        "--window",
        "2",
        "--model",
        "fast",
        "--json",
        "--image",
        str(ROOT / "tests" / "fixtures" / "car-1.jpg"),
        "--output-format",
        "JPG",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(finished.communicate(), 300 * UNIT)
    summary = json.loads(out)
    assert summary["tasks_sent"] == 1000 and summary["tasks_ok"] == 1000
    assert (summary["lost"], summary["duplicated"], summary["cross_delivered"]) == (0, 0, 0)
    assert summary["undecodable"] == 0 and summary["connection_failures"] == []


# --------------------------------------------------------------------------- operations


async def test_metrics_and_readiness(server):
    """Every series is there once a removal has run (this test runs one itself, so that it
    does not depend on the tests before it)."""
    async with websockets.connect(server.ws_url, max_size=None) as websocket:
        client = Client(websocket)
        await client.authenticate("metrics")
        assert "imageBase64Data" in await client.run(fast(), timeout=60)
    status, headers, body = http_get(f"{server.http_url}/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in (
        "rbg_tasks_total",
        "rbg_queued_tasks",
        "rbg_batch_size_bucket",
        "rbg_inference_seconds_bucket",
        "rbg_open_sockets",
        "rbg_received_bytes_total",
        "rbg_sent_bytes_total",
        "rbg_task_seconds_bucket",
    ):
        assert name in text, name
    assert 'rbg_tasks_total{outcome="success",task_type="removeBackground"}' in text
    assert http_get(f"{server.http_url}/readyz")[0] == 200


def test_metrics_carry_the_standard_process_series(server):
    """process_* as Prometheus' clients export them, read from the server's own /proc."""
    text = http_get(f"{server.http_url}/metrics")[2].decode()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("process_")
    }
    resident = rss_kib(server.process.pid, "VmRSS")
    assert abs(values["process_resident_memory_bytes"] / 1024 - resident) < 0.2 * resident
    assert values["process_cpu_seconds_total"] > 0
    assert values["process_open_fds"] >= 3 and values["process_max_fds"] > 0


def test_sigterm_drains_accepted_tasks_then_closes_with_1001(tmp_path):
    process = start_server(tmp_path, "--drain-grace", "60")

    async def scenario() -> None:
        async with websockets.connect(process.ws_url, max_size=None) as websocket:
            client = Client(websocket)
            await client.authenticate()
            tasks = [
                {
                    "taskType": "removeBackground",
                    "taskUUID": new_uuid(),
                    "inputs": {"image": b64(fixture_bytes("car-1.jpg"))},
                    "outputType": "base64Data",
                    "settings": {"alphaMatting": True},
                }
                for _ in range(3)
            ]
            await client.send(*tasks)
            await asyncio.sleep(0.3)
            process.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert (await asyncio.to_thread(http_get, f"{process.http_url}/readyz"))[0] == 503
            with pytest.raises(websockets.InvalidStatus):
                await websockets.connect(process.ws_url)
            late = {
                "taskType": "removeBackground",
                "taskUUID": new_uuid(),
                "inputs": {"image": SMALL},
            }
            await client.send(late)
            # The accepted tasks' answers may come before or after the late task's refusal.
            answers = await client.collect([t["taskUUID"] for t in [*tasks, late]])
            assert answers.pop(late["taskUUID"])["code"] == "shuttingDown"
            assert all(a["kind"] == "data" for a in answers.values())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(websocket.recv(), 30)
            assert closed.value.rcvd.code == 1001

    try:
        asyncio.run(scenario())
        assert process.process.wait(30) == 0
    finally:
        process.stop()


@pytest.mark.parametrize(
    "code, answered",
    [(1000, 1000), (1001, 1000), (3000, 1000), (4999, 1000)]
    + [(code, 1002) for code in (1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535)],
)
def test_a_close_code_a_peer_may_not_send_is_answered_with_1002(server, code, answered):
    """RFC 6455 7.4: 1004-1006, 1015 and the unassigned ranges fail the connection."""
    sock = raw_websocket(server.port)
    sock.sendall(client_frame(struct.pack(">H", code), opcode=0x8))
    sock.settimeout(10 * UNIT)
    header = b""
    while len(header) < 4:
        header += sock.recv(4 - len(header))
    assert header[0] == 0x88  # a close frame
    assert struct.unpack(">H", header[2:4])[0] == answered
    sock.close()


def test_a_request_the_parser_refuses_is_one_log_line(server):
    """A NUL in a header is the client's fault: 400, and one WARNING line, no traceback."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Probe-Nul: a\x00b\r\n\r\n")
    assert sock.recv(64).startswith(b"HTTP/1.0 400")
    sock.close()
    deadline = time.monotonic() + 5 * UNIT
    while "X-Probe-Nul" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in server.log().splitlines() if "X-Probe-Nul" in line]
    assert len(lines) == 1 and " WARNING aiohttp.server: " in lines[0]
    text = server.log()
    assert "Traceback" not in text[text.index(lines[0]) + len(lines[0]) :][:300]


_SETTINGS = (
    {},
    {"settings": {"postProcessMask": True}},
    {"settings": {"returnOnlyMask": True}},
    {"settings": {"alphaMatting": True}},
    {"settings": {"decontaminate": True}},
    {"settings": {"rgba": [20, 40, 60, 255]}},
)


def test_every_size_from_1x1_to_the_limits_answers_with_a_result_or_a_clear_error(server):
    """1x1 with matting or decontaminate divided by zero, and 65535 x 1 to JPG or WEBP failed in
    the encoder after inference: internalServerError both. Now every size, setting and format
    answers a result, or invalidOutputFormat where the format cannot hold the size."""
    sizes = [(1, 1), (2, 1), (1, 2), (16_384, 1), (65_535, 1), (1, 65_535)]
    tasks, expected = [], {}
    for width, height in sizes:
        image = b64(small_png(width, height, noise=True))
        for settings in _SETTINGS:
            for output_format, longest in (("PNG", 10**9), ("JPG", 65_500), ("WEBP", 16_383)):
                task_uuid = new_uuid()
                tasks.append(
                    {
                        "taskType": "removeBackground",
                        "taskUUID": task_uuid,
                        "model": "fast",
                        "inputImage": image,
                        "outputType": "base64Data",
                        "outputFormat": output_format,
                        **settings,
                    }
                )
                expected[task_uuid] = max(width, height) <= longest
    answers: dict[str, dict] = {}
    for start in range(0, len(tasks), 100):  # within --max-tasks-per-frame
        request = urllib.request.Request(
            f"{server.http_url}/v1",
            data=json.dumps(tasks[start : start + 100]).encode(),
            headers={"Authorization": "Bearer sizes", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=300 * UNIT) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        for item in body["data"] + body["errors"]:
            answers[item["taskUUID"]] = item
    assert set(answers) == set(expected)
    for task_uuid, fits in expected.items():
        answer = answers[task_uuid]
        if fits:
            assert "imageBase64Data" in answer, answer
        else:
            assert answer["code"] == "invalidOutputFormat", answer
            assert answer["parameter"] == "outputFormat" and "PNG" in answer["message"]


# --------------------------------------------------------------------------- heavy and light


async def test_a_light_client_is_answered_while_a_heavy_decode_holds_the_worker(fast_server_with):
    """One CPU worker. A heavy client sends a costly decode (4000x4000, 63 scans) and a small
    task behind it; a light client sends a small task while the decode runs. The light task
    takes the pool's spare thread and is answered before either heavy answer; the heavy
    client's small task waits for its own decode (the spare serves only clients with nothing
    running). Without the spare the light task would queue behind the decode."""
    server = fast_server_with("--cpu-workers", "1")
    heavy, light = await connect(server, "heavy"), await connect(server, "light")
    loop = asyncio.get_running_loop()
    answered: dict[str, float] = {}

    async def answers(client: Client, tasks: list[dict]) -> None:
        found = await client.collect([task["taskUUID"] for task in tasks])
        for task_uuid, item in found.items():
            assert item["kind"] == "data", item
            answered[task_uuid] = loop.time()

    costly, heavy_small, light_small = fast(b64(progressive_jpeg(4000, 53))), fast(), fast()
    await heavy.send(costly, heavy_small)
    heavy_answers = asyncio.create_task(answers(heavy, [costly, heavy_small]))
    await asyncio.sleep(0.2)  # the decode (~0.6 CPU s on EPYC-4) has started
    await light.send(light_small)
    await asyncio.gather(heavy_answers, answers(light, [light_small]))
    first_heavy = min(answered[costly["taskUUID"]], answered[heavy_small["taskUUID"]])
    assert answered[light_small["taskUUID"]] < first_heavy
    await heavy.ws.close()
    await light.ws.close()
