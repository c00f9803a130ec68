"""Real servers (``python -m service`` processes), a real image host, real websocket clients."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
import websockets

from tests.support import Client, ServerProcess, build_isnet_test_model, fixture_bytes, start_server

API_KEYS = ("secret-one", "secret-two")


@pytest.fixture(scope="session")
def isnet_model(tmp_path_factory) -> Path:
    return build_isnet_test_model(tmp_path_factory.mktemp("models") / "isnet-test.onnx")


@pytest.fixture(scope="session")
def fast_model(tmp_path_factory) -> Path:
    """A u2net-family (320 px) stand-in whose inference costs nothing."""
    return build_isnet_test_model(tmp_path_factory.mktemp("models") / "fast.onnx", size=320)


@pytest.fixture(scope="module")
def fast_server_with(tmp_path_factory, fast_model):
    """Starts servers with the zero-cost model and the given flags, for a module's limits;
    they are stopped with the module."""
    started: list[ServerProcess] = []

    def start(*flags: str) -> ServerProcess:
        started.append(
            start_server(tmp_path_factory.mktemp("fast"), "--model", f"fast={fast_model}", *flags)
        )
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory, isnet_model, fast_model) -> ServerProcess:
    """Open server: any key, private URLs allowed (for the local image host), batches of 4."""
    process = start_server(
        tmp_path_factory.mktemp("open"),
        "--allow-private-urls",
        "--max-batch",
        "4",
        "--max-wait-ms",
        "20",
        "--webhook-backoff",
        "0.05",
        "--model",
        f"isnet-test={isnet_model}",
        "--model",
        f"fast={fast_model}",
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory) -> ServerProcess:
    """Keys required (given by the environment variable), private URLs refused, and the
    onnxruntime runtime (the open server runs the default, OpenVINO on this CPU)."""
    process = start_server(
        tmp_path_factory.mktemp("keyed"),
        "--runtime",
        "onnxruntime",
        env={"RBG_API_KEY": ",".join(API_KEYS)},
    )
    yield process
    process.stop()


class _ImageHost(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status, headers, body = self.routes.get(self.path, (404, {}, b"no"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def image_host() -> str:
    """A real HTTP server on loopback serving fixture photos (and a redirect, and junk)."""
    car = fixture_bytes("car-1.jpg")
    _ImageHost.routes = {
        "/car.jpg": (200, {"Content-Type": "image/jpeg"}, car),
        "/redirect": (302, {"Location": "/car.jpg"}, b""),
        "/text": (200, {"Content-Type": "text/plain"}, b"hello, not an image"),
    }
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
async def client(server):
    async with websockets.connect(server.ws_url, max_size=None) as websocket:
        connected = Client(websocket)
        await connected.authenticate()
        yield connected


@pytest.fixture
async def anonymous_keyed_client(keyed_server):
    async with websockets.connect(keyed_server.ws_url, max_size=None) as websocket:
        yield Client(websocket)
