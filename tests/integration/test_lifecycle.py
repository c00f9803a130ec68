"""Process-level behaviour: configuration by flags and environment, ttl expiry, shutdown."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import websockets

from service.__main__ import config_from_args
from service.app import App
from service.app import serve as start_in_process
from service.config import ModelOverride
from service.inference.registry import load_registry
from tests.support import (
    MODEL,
    ROOT,
    Client,
    FakeClock,
    b64,
    fixture_bytes,
    free_port,
    http_get,
    new_uuid,
    start_server,
)


def test_flags_win_over_environment_and_every_flag_has_a_variable(monkeypatch):
    monkeypatch.setenv("RBG_PORT", "9000")
    monkeypatch.setenv("RBG_API_KEY", "env-a, env-b")
    monkeypatch.setenv("RBG_ALLOW_PRIVATE_URLS", "true")
    monkeypatch.setenv("RBG_MODEL", "runware:109@1=/m/rmbg.onnx:isnet")
    monkeypatch.setenv("RBG_MAX_BATCH", "8")
    config = config_from_args([])
    assert config.port == 9000 and config.api_keys == ("env-a", "env-b")
    assert config.allow_private_urls and config.max_batch == 8
    assert config.models == (ModelOverride("runware:109@1", Path("/m/rmbg.onnx"), "isnet"),)
    config = config_from_args(["--port", "9100", "--api-key", "flag", "--model", "x=/a:b.onnx"])
    assert config.port == 9100 and config.api_keys == ("flag",)
    assert config.models == (ModelOverride("x", Path("/a:b.onnx")),)


async def test_url_outputs_answer_404_after_their_ttl(tmp_path):
    config = config_from_args(
        [
            "--port",
            str(free_port()),
            "--storage-dir",
            str(tmp_path),
            "--models-dir",
            str(MODEL.parent),
        ]
    )
    clock = FakeClock()
    app = App(config, load_registry(config), clock=clock)
    server = await start_in_process(app)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{config.port}", max_size=None) as ws:
            client = Client(ws)
            await client.authenticate()
            short = await client.run(
                {
                    "taskType": "removeBackground",
                    "taskUUID": new_uuid(),
                    "inputs": {"image": b64(fixture_bytes("car-1.jpg"))},
                    "outputFormat": "PNG",
                    "ttl": 60,
                }
            )
            default = await client.run(
                {
                    "taskType": "removeBackground",
                    "taskUUID": new_uuid(),
                    "inputs": {"image": short["inputImageUUID"]},
                }
            )
            # The server runs on this event loop: fetch from a thread.
            status = lambda url: asyncio.to_thread(http_get, url)  # noqa: E731
            assert (await status(short["imageURL"]))[0] == 200
            clock.now += 61
            assert (await status(short["imageURL"]))[0] == 404
            assert (await status(default["imageURL"]))[0] == 200
            gone = await client.run(
                {
                    "taskType": "removeBackground",
                    "taskUUID": new_uuid(),
                    "inputs": {"image": short["imageUUID"]},
                }
            )
            assert gone["code"] == "unknownImageUUID"
            assert await app.store.sweep() == 1
    finally:
        await server.close()
        await app.close()


def test_public_url_is_the_base_of_image_urls(tmp_path):
    server = start_server(tmp_path, "--public-url", "https://cdn.example.com/bg/")
    try:

        async def upload() -> dict:
            async with websockets.connect(server.ws_url, max_size=None) as ws:
                client = Client(ws)
                await client.authenticate()
                return await client.run(
                    {"taskType": "imageUpload", "image": b64(fixture_bytes("car-1.jpg"))}
                )

        item = asyncio.run(upload())
        assert item["imageURL"] == f"https://cdn.example.com/bg/images/{item['imageUUID']}.jpg"
    finally:
        server.stop()


def test_sigterm_closes_sockets_and_exits_zero(tmp_path):
    server = start_server(tmp_path)

    async def hold_socket() -> int:
        async with websockets.connect(server.ws_url) as ws:
            await Client(ws).authenticate()
            server.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(ws.recv(), 20)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code
        return -1

    assert asyncio.run(hold_socket()) == 1001
    assert server.process.wait(20) == 0
    assert "shutting down" in server.log()


def test_browser_origins_are_restricted_to_our_own_and_the_allowed_ones(tmp_path):
    server = start_server(tmp_path, "--allowed-origin", "https://app.example.com")

    async def handshake(origin: str | None) -> int:
        headers = {"Origin": origin} if origin else {}
        try:
            async with websockets.connect(server.ws_url, additional_headers=headers) as ws:
                return 101 if await Client(ws).ping() else -1
        except websockets.InvalidStatus as refused:
            return refused.response.status_code

    try:
        assert asyncio.run(handshake(None)) == 101  # SDKs and curl send no Origin
        assert asyncio.run(handshake(server.http_url)) == 101  # a page the service serves
        assert asyncio.run(handshake("https://app.example.com")) == 101
        assert asyncio.run(handshake("https://evil.example.net")) == 403
    finally:
        server.stop()


def test_a_port_in_use_is_one_line_before_the_models_load(tmp_path):
    """It loaded the models for ~15 s, then printed a 30-line traceback."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        finished = subprocess.run(
            [
                sys.executable,
                "-m",
                "service",
                "--port",
                str(port),
                "--storage-dir",
                str(tmp_path / "images"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert finished.returncode == 2
    assert "Traceback" not in finished.stderr
    [line] = [line for line in finished.stderr.splitlines() if "CRITICAL" in line]
    assert f"127.0.0.1:{port}" in line and "--port" in line
    assert "model u2netp" not in finished.stderr  # refused before loading anything
