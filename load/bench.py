"""``make bench``: one run, one machine, ratios (absolute times are noise on shared machines).

Measures, on the same model file and image:
- raw onnxruntime (default session, all cores, batch 1) and raw OpenVINO (the service's CPU
  runtime, f32), images/s;
- this service at 1 and 8 concurrent sockets (started here, default settings), images/s and
  latency, and the same at 8 sockets with ``--runtime onnxruntime``;
- rembg's own HTTP server, ``rembg s`` (rembg 2.0.86 installed by this script into a throw-away
  venv under .bench/, the same u2netp file given through U2NET_HOME), at 1 and 8 concurrent
  requests, and the same client against our /api/remove;
- fairness: how long one socket's single task waits behind another socket's 100;
- the server's memory for 1,000 idle authenticated sockets;
- the distributed mode (redis-server, one gateway, 1 and 2 workers) against the embedded mode;
- alpha matting: one task through the service against rembg's remove(alpha_matting=True), per
  fixture and for one fixture at twice its size, with the alpha difference between the outputs;
- decontaminate: the time it adds to one removal of animal-3 on rembg's remove() and through
  the service, and how far the two files are apart;
- the stand-in device: the CPU work around a model that costs nothing (load.standin), in server
  core-ms per image and images/s, with 1 and 2 CPU workers.
Then prints the ratios the targets speak of.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import numpy as np

from protocol.errors import ErrorItem
from service.inference.families import FAMILIES  # plain data: no model runtime
from service.net.loopback import free_port
from service.protocol_client import ProtocolClient

from .harness import LoadConfig, run_idle, run_load
from .stats import percentile, process_memory

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "u2netp.onnx"
BENCH_DIR = ROOT / ".bench"
REMBG_VERSION = "2.0.86"
PHOTOS = ROOT / "tests" / "fixtures"  # rembg's test photos (tests/fixtures/README.md)


def _wait_http(url: str, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


@contextmanager
def _process(
    command: list[str], ready_url: str, env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[subprocess.Popen]:
    log = open(BENCH_DIR / f"{Path(command[0]).name}-{int(time.time())}.log", "wb")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        _wait_http(ready_url, timeout, process)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


# --------------------------------------------------------------------------- raw runtimes


def _model_input(image: bytes) -> np.ndarray:
    from service.imaging.pipeline import decode_image, preprocess

    return preprocess(decode_image(image, 40_000_000), FAMILIES["u2net"])[np.newaxis]


def raw_onnxruntime(tensor: np.ndarray, seconds: float) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: tensor})
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {name: tensor})
        count += 1
    return count / (time.perf_counter() - start)


def raw_openvino(tensor: np.ndarray, seconds: float) -> tuple[float, int]:
    """Images/s through the service's OpenVINO runtime at its preferred batch, and that batch."""
    from service.inference.runtime import OpenVinoModel

    model = OpenVinoModel(MODEL)
    batch = np.repeat(tensor, model.preferred_batch, axis=0)
    model.infer_batch(batch)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += len(model.infer_batch(batch))
    return count / (time.perf_counter() - start), model.preferred_batch


# --------------------------------------------------------------------------- our service


def _service(runtime: str = "auto", *flags: str):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "service",
        "--port",
        str(port),
        "--runtime",
        runtime,
        "--storage-dir",
        str(BENCH_DIR / "storage"),
        "--log-level",
        "WARNING",
        *flags,
    ]
    return port, _process(command, f"http://127.0.0.1:{port}/healthz")


def _stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU time in a /proc stat file (a process's or one thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc)."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def _u2netp_core_ms(tensor: np.ndarray, runs: int = 10) -> tuple[float, np.ndarray]:
    """Core-ms of one u2netp inference on one thread, and the model's raw prediction."""
    from service.inference.runtime import load_runtime

    model = load_runtime(MODEL, "onnxruntime", threads=1)
    prediction = model.infer_batch(tensor)[0]
    start = time.process_time()
    for _ in range(runs):
        model.infer_batch(tensor)
    return (time.process_time() - start) * 1000 / runs, prediction


def _replay_flags(replay: Path, family: str = "u2net") -> tuple[str, ...]:
    """Serve the replay graph on onnxruntime with one thread: like a GPU runtime's, its CPU side
    is a thin call (OpenVINO's CPU threads would spin between calls and bill the CPU work)."""
    return ("onnxruntime", "--inference-threads", "1", "--model", f"replay={replay}:{family}")


def _replay_load(
    port: int,
    image: bytes,
    output_type: str,
    connections: int,
    tasks: int,
    window: int,
    model: str | None = "replay",
) -> LoadConfig:
    """A load of PNG removals on ``model`` (the replay model unless told; None: the server's
    default), answers neither checked nor fetched."""
    return LoadConfig(
        url=f"ws://127.0.0.1:{port}",
        images=(image,),
        connections=connections,
        tasks_per_connection=tasks,
        window=window,
        output_type=output_type,
        output_format="PNG",
        model=model,
        progress=False,
        verify_images=False,
        fetch_urls=False,
    )


def _replay_model(image: Path, size: int = 320) -> tuple[float, Path]:
    """One-thread u2netp core-ms, and the replay graph answering ``image``'s real u2netp
    prediction at ``size`` x ``size`` (1024: resized as RMBG-1.4's output would lie)."""
    from scipy import ndimage

    from .standin import write_replay_model

    core_ms, prediction = _u2netp_core_ms(_model_input(image.read_bytes()))
    if size != prediction.shape[-1]:
        prediction = ndimage.zoom(prediction, size / prediction.shape[-1], order=1)
    return core_ms, write_replay_model(BENCH_DIR / f"replay-{size}.onnx", prediction)


def standin(images: list[Path], tasks_per_socket: int = 30, family: str = "u2net") -> dict:
    """The CPU work around the model, measured with the model out of the way: the service
    serves a replay graph (load.standin) of ``family``'s input size (u2net: 320, the embedded
    model's; isnet: 1024, RMBG-1.4's, what runware:109@1 really names) that answers with
    anime-girl-1's real u2netp prediction at next to no cost. Server core-ms per image (from
    /proc) and images/s, 8 sockets, for each image, output type and CPU worker count; and the
    load generator's own core-ms per image, since it shares the machine's cores with the
    server."""
    core_ms, replay = _replay_model(images[0], FAMILIES[family].size)
    rows = []
    for path in images:
        image = path.read_bytes()
        for output_type in ("base64Data", "URL"):
            for workers in (1, 2):
                flags = _replay_flags(replay, family)
                port, server = _service(*flags, "--cpu-workers", str(workers))
                with server as process:
                    config = _replay_load(port, image, output_type, 8, tasks_per_socket, 2)
                    asyncio.run(run_load(LoadConfig(**{**vars(config), "connections": 2})))
                    before, client_before = _cpu_seconds(process.pid), time.process_time()
                    summary = asyncio.run(run_load(config)).summary()
                    used = _cpu_seconds(process.pid) - before
                    client = time.process_time() - client_before
                ok = summary["tasks_ok"]
                rows.append(
                    {
                        "image": path.name,
                        "family": family,
                        "output": output_type,
                        "cpu_workers": workers,
                        "images_per_s": summary["images_per_s"],
                        "core_ms_per_image": round(used * 1000 / max(ok, 1), 1),
                        "ratio_to_u2netp": round(used * 1000 / max(ok, 1) / core_ms, 3),
                        "client_core_ms_per_image": round(client * 1000 / max(ok, 1), 1),
                        "lost": summary["lost"],
                    }
                )
    return {"u2netp_core_ms": round(core_ms, 1), "family": family, "rows": rows}


def _standin_lines(result: dict) -> list[str]:
    size = FAMILIES[result["family"]].size
    lines = [
        f"stand-in device: the service around a {size}x{size} model ({result['family']}) that "
        "costs nothing, 8 sockets",
        f"  u2netp on one thread: {result['u2netp_core_ms']:.0f} core-ms per image",
    ]
    for row in result["rows"]:
        lines.append(
            f"  {row['image']:<18} {row['output']:<10} {row['cpu_workers']} CPU worker(s)"
            f"  {row['images_per_s']:7.1f} img/s  {row['core_ms_per_image']:6.1f} core-ms/image"
            f"  ratio {row['ratio_to_u2netp']:.3f}  load generator"
            f" {row['client_core_ms_per_image']:4.1f} core-ms/image  lost {row['lost']}"
        )
    by_key = {
        (r["image"], r["output"], r["cpu_workers"]): r["images_per_s"] for r in result["rows"]
    }
    for (image, output, workers), rate in by_key.items():
        if workers == 2 and by_key.get((image, output, 1)):
            lines.append(
                f"  scaling 1 -> 2 workers, {image} {output}: x{rate / by_key[(image, output, 1)]:.2f}"
            )
    return lines


# The simulated accelerator's batch latency, t(N) = FIXED + PER_IMAGE * N in ms: u2netp on a
# datacenter GPU (docs/models.md, "Sizing a GPU host", gives the reasoning).
DEVICE_LATENCY_MS = (3.0, 1.0)


def _cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds of a service process by thread role (the OS thread names of
    service.scheduling.threads): the event loop (the main thread), CPU workers, the device's
    inference threads, and the rest (I/O threads, runtimes' own)."""
    roles: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            seconds = _stat_cpu_seconds(task / "stat")
        except FileNotFoundError:
            continue  # the thread ended
        if task.name == str(pid):
            role = "event loop"
        elif name.startswith("cpu_"):
            role = "CPU workers"
        elif name.startswith("infer-"):
            role = "device thread"
        else:
            role = "other threads"
        roles[role] = roles.get(role, 0.0) + seconds
    return roles


def _batch_sums(port: int) -> dict[str, float]:
    """Sums of the batch histograms on /metrics: images, inference calls, seconds inferring."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    sums = {"images": 0.0, "calls": 0.0, "seconds": 0.0}
    names = {
        "rbg_batch_size_sum": "images",
        "rbg_batch_size_count": "calls",
        "rbg_inference_seconds_sum": "seconds",
    }
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            sums[names[name]] += float(line.rsplit(" ", 1)[1])
    return sums


def _gil_held(pid: int, seconds: float) -> subprocess.Popen | None:
    """Start sampling which threads hold the GIL (py-spy --gil), or None without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    command = [spy, "record", "--gil", "--nonblocking", "-r", "100", "-d", str(int(seconds))]
    command += ["-f", "raw", "-o", str(BENCH_DIR / "gil.txt"), "-p", str(pid)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _gil_fraction(spy: subprocess.Popen | None, seconds: float) -> float | None:
    """The share of samples in which some thread held the GIL."""
    if spy is None or spy.wait(seconds + 30) != 0:
        return None
    samples = sum(
        int(line.rsplit(" ", 1)[1])
        for line in (BENCH_DIR / "gil.txt").read_text().splitlines()
        if line.strip()
    )
    return min(1.0, samples / (100 * int(seconds)))


def simulated_gpu(image: Path, workers: int | None = None) -> dict:
    """The service feeding a simulated accelerator (service/inference/simulated.py, over the
    replay graph): images/s, mean batch, the device's busy fraction, and how busy the event
    loop, the CPU workers and the GIL were, to name the resource that saturates first."""
    _, replay = _replay_model(image)
    latency = ",".join(f"{value:g}" for value in DEVICE_LATENCY_MS)
    workers = workers or os.cpu_count() or 1
    port, server = _service(
        *_replay_flags(replay),
        "--simulated-device",
        latency,
        "--cpu-workers",
        str(workers),
    )
    config = _replay_load(port, image.read_bytes(), "URL", 16, 60, 4)
    spy_seconds = 5.0
    with server as process:
        asyncio.run(run_load(LoadConfig(**{**vars(config), "tasks_per_connection": 4})))
        cpu_before, batches_before = _cpu_by_role(process.pid), _batch_sums(port)
        started = time.perf_counter()
        spy = _gil_held(process.pid, spy_seconds)
        summary = asyncio.run(run_load(config)).summary()
        wall = time.perf_counter() - started
        cpu_after, batches_after = _cpu_by_role(process.pid), _batch_sums(port)
        gil = _gil_fraction(spy, spy_seconds)
    used = {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after}
    calls = batches_after["calls"] - batches_before["calls"]
    images = summary["tasks_ok"] or 1
    busy = {
        "device": (batches_after["seconds"] - batches_before["seconds"]) / wall,
        "event loop": used.get("event loop", 0.0) / wall,
        "CPU workers": used.get("CPU workers", 0.0) / (wall * workers),
        "the machine's cores": sum(used.values()) / (wall * (os.cpu_count() or 1)),
    }
    if gil is not None:
        busy["GIL"] = gil
    rate = images / wall
    # What one process could reach if only this resource limited it: the event loop and the
    # GIL are one each per process, the device runs full batches of 16.
    ceilings = {
        "event loop": rate / max(busy["event loop"], 1e-9),
        "device": 16 / (DEVICE_LATENCY_MS[0] + 16 * DEVICE_LATENCY_MS[1]) * 1000,
    }
    if gil is not None:
        ceilings["GIL"] = rate / max(gil, 1e-9)
    return {
        "image": image.name,
        "latency_ms": DEVICE_LATENCY_MS,
        "cpu_workers": workers,
        "images_per_s": summary["images_per_s"],
        "mean_batch": round((batches_after["images"] - batches_before["images"]) / calls, 2)
        if calls
        else 0.0,
        "busy": {name: round(value, 2) for name, value in busy.items()},
        "saturated_here": max(busy, key=lambda name: busy[name]),
        "worker_core_ms_per_image": round(used.get("CPU workers", 0.0) * 1000 / images, 1),
        "core_ms_per_image": round(sum(used.values()) * 1000 / images, 1),
        "one_process_ceilings": {name: round(value) for name, value in ceilings.items()},
        "one_process_saturates_first": min(ceilings, key=lambda name: ceilings[name]),
        "lost": summary["lost"],
    }


def _simulated_gpu_lines(result: dict) -> list[str]:
    fixed, per_image = result["latency_ms"]
    busy = ", ".join(f"{name} {value:.0%}" for name, value in result["busy"].items())
    ceilings = ", ".join(
        f"{name} ~{value} img/s" for name, value in result["one_process_ceilings"].items()
    )
    per_core = 1000 / max(result["worker_core_ms_per_image"], 1e-9)
    return [
        f"simulated GPU, {result['image']}: t(N) = {fixed:g} ms + {per_image:g} ms x N over "
        f"the stand-in model, {result['cpu_workers']} CPU workers, 16 sockets, URL output",
        f"  {result['images_per_s']:.1f} img/s, mean batch {result['mean_batch']:.1f}, "
        f"{result['core_ms_per_image']:.1f} server core-ms/image, lost {result['lost']}",
        f"  busy: {busy}; saturated here: {result['saturated_here']}",
        f"  one process alone would reach: {ceilings}; CPU workers ~{per_core:.0f} img/s per core",
        f"  one process saturates first: {result['one_process_saturates_first']}",
    ]


def distributed(image: bytes, tasks_per_socket: int) -> dict:
    """The distributed path's overhead: one redis-server, one gateway, 1 or 2 workers, against
    the embedded mode, all at 8 sockets on the same cores. Two workers split the cores (one
    inference and one CPU thread each), so the comparison is at the same core count."""
    results = {}
    port, server = _service()
    with server as process:
        _service_load(port, image, 1, 2, process.pid)
        results["embedded"] = _service_load(port, image, 8, tasks_per_socket, process.pid)
    redis_port = free_port()
    redis_command = [
        "redis-server",
        "--port",
        str(redis_port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(BENCH_DIR),
    ]
    with _redis(redis_command, redis_port):
        url = f"redis://127.0.0.1:{redis_port}/0"
        for workers, split in ((1, ()), (2, ("--inference-threads", "1", "--cpu-workers", "1"))):
            gateway_port, gateway = _service("auto", "--redis", url, "--role", "gateway")
            with gateway as gateway_process, contextlib.ExitStack() as stack:
                for _ in range(workers):
                    stack.enter_context(
                        _service("auto", "--redis", url, "--role", "worker", *split)[1]
                    )
                _service_load(gateway_port, image, 1, 2, gateway_process.pid)
                results[f"workers_{workers}"] = _service_load(
                    gateway_port, image, 8, tasks_per_socket, gateway_process.pid
                )
    return results


@contextmanager
def _redis(command: list[str], port: int) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(10)


def _service_load(port: int, image: bytes, connections: int, tasks: int, pid: int) -> dict:
    config = LoadConfig(
        url=f"ws://127.0.0.1:{port}",
        images=(image,),
        connections=connections,
        tasks_per_connection=tasks,
        window=1,
        output_type="base64Data",
        output_format="PNG",
        server_pid=pid,
        progress=False,
    )
    return asyncio.run(run_load(config)).summary()


async def _fairness(port: int, image: bytes) -> dict:
    """Socket A queues 100 tasks; then socket B sends one. B's latency, against a lone task's."""
    import base64
    import uuid

    payload = base64.b64encode(image).decode()

    def task() -> dict:
        return {
            "taskType": "removeBackground",
            "taskUUID": str(uuid.uuid4()),
            "inputs": {"image": payload},
            "outputType": "base64Data",
            "outputFormat": "PNG",
        }

    url = f"ws://127.0.0.1:{port}"
    heavy, light = (
        await ProtocolClient.connect(url, "bench"),
        await ProtocolClient.connect(url, "bench"),
    )
    try:
        lone_start = time.perf_counter()
        lone_task = task()
        await light.send([lone_task])
        await light.answers([lone_task["taskUUID"]])
        lone = time.perf_counter() - lone_start
        queued = [task() for _ in range(100)]
        await heavy.send(queued)
        await asyncio.sleep(1.0)  # let the heavy socket's work reach the pipeline
        start = time.perf_counter()
        behind = task()
        await light.send([behind])
        await light.answers([behind["taskUUID"]])
        waited = time.perf_counter() - start
        await heavy.answers([queued_task["taskUUID"] for queued_task in queued])
    finally:
        await heavy.close()
        await light.close()
    # The wait the heavy socket causes: its latency minus what the same task takes alone.
    return {
        "lone_task_s": round(lone, 3),
        "behind_100_s": round(waited, 3),
        "extra_wait_s": round(waited - lone, 3),
    }


# --------------------------------------------------------------------------- rembg s


def _rembg_python() -> Path:
    """A throw-away venv with rembg from PyPI; rembg is never a dependency of the project."""
    venv = BENCH_DIR / f"rembg-{REMBG_VERSION}-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        print(f"installing rembg[cpu,cli]=={REMBG_VERSION} into {venv} (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"rembg[cpu,cli]=={REMBG_VERSION}"],
            check=True,
        )
        stamp.touch()
    return python


async def _rembg_load(
    port: int, image: bytes, concurrency: int, total: int, headers: dict[str, str] | None = None
) -> dict:
    """rembg s's client: multipart POSTs of ``image`` to /api/remove, ``concurrency`` at once."""
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(total):
        queue.put_nowait(index)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while not queue.empty():
            queue.get_nowait()
            form = aiohttp.FormData()
            form.add_field("file", image, filename="image.jpg", content_type="image/jpeg")
            form.add_field("model", "u2netp")
            start = time.perf_counter()
            async with session.post(
                f"http://127.0.0.1:{port}/api/remove", data=form, headers=headers
            ) as response:
                body = await response.read()
            latencies.append(time.perf_counter() - start)
            if response.status != 200 or not body.startswith(b"\x89PNG"):
                failures += 1

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "images_per_s": round(total / elapsed, 3),
        "failures": failures,
        "latency_s": {
            "p50": round(percentile(latencies, 0.5), 4),
            "p95": round(percentile(latencies, 0.95), 4),
        },
    }


def rembg_server(image: bytes, tasks: int) -> dict:
    python = _rembg_python()
    home = BENCH_DIR / "u2net-home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL, home / "u2netp.onnx")
    port = free_port()
    command = [
        str(python.parent / "rembg"),
        "s",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-ui",
        "--log_level",
        "warning",
    ]
    with _process(
        command, f"http://127.0.0.1:{port}/api", env={"U2NET_HOME": str(home)}, timeout=300
    ):
        asyncio.run(_rembg_load(port, image, 1, 2))  # load the model (first request)
        return {
            "c1": asyncio.run(_rembg_load(port, image, 1, tasks)),
            "c8": asyncio.run(_rembg_load(port, image, 8, tasks * 3)),
        }


def service_rembg_api(image: bytes, tasks: int) -> dict:
    """The same client and loads as rembg_server, against our /api/remove."""
    port, server = _service()
    key = {"Authorization": "Bearer bench"}
    with server:
        asyncio.run(_rembg_load(port, image, 1, 2, key))
        return {
            "c1": asyncio.run(_rembg_load(port, image, 1, tasks, key)),
            "c8": asyncio.run(_rembg_load(port, image, 8, tasks * 3, key)),
        }


def _rembg_api_lines(ours: dict, rembg: dict) -> list[str]:
    lines = ["rembg's HTTP API, multipart POSTs of the same image (model u2netp)"]
    for level in ("c1", "c8"):
        lines.append(
            f"  {level}  rembg s {rembg[level]['images_per_s']:6.2f} img/s  "
            f"our /api/remove {ours[level]['images_per_s']:6.2f} img/s  "
            f"x{ours[level]['images_per_s'] / rembg[level]['images_per_s']:.2f}  "
            f"p95 {rembg[level]['latency_s']['p95']:.2f} / {ours[level]['latency_s']['p95']:.2f} s"
            f"  failures {rembg[level]['failures']} / {ours[level]['failures']}"
        )
    return lines


# --------------------------------------------------------------------------- alpha matting

MATTING_IMAGES = ("animal-3.jpg", "cloth-1.jpg", "anime-girl-1.jpg", "car-1.jpg")
# One photo again at twice its size (LANCZOS, JPEG quality 92), for how both sides scale.
MATTING_ENLARGED = ("animal-3.jpg", 2, "animal-3-x2.jpg")

# Runs inside rembg's throw-away venv: rembg's own remove(**options) for each set of options,
# the sets taking turns (so that they meet the same noise), timed, the last output of each kept.
# argv: output folder, warm-up image, runs, a JSON list of remove()'s options, image names.
# Prints {name: [fastest seconds per set of options]}; set k's output is NAME.k.png.
_REMBG_TIMED = """
import json, sys, time
from pathlib import Path
from rembg import new_session, remove
session = new_session("u2netp")
remove(Path(sys.argv[2]).read_bytes(), session=session)  # load the model
option_sets = json.loads(sys.argv[4])
times = {}
for name in sys.argv[5:]:
    data = Path(sys.argv[2]).parent.joinpath(name).read_bytes()
    fastest = [float("inf")] * len(option_sets)
    for _ in range(int(sys.argv[3])):
        for k, options in enumerate(option_sets):
            start = time.perf_counter()
            out = remove(data, session=session, **options)
            fastest[k] = min(fastest[k], time.perf_counter() - start)
            Path(sys.argv[1]).joinpath(f"{name}.{k}.png").write_bytes(out)
    times[name] = fastest
print(json.dumps(times))
"""
MATTING_RUNS = 3  # per image and side; the fastest counts (the machine's noise only adds time)


async def _service_removal(port: int, image: bytes, settings: dict) -> tuple[float, bytes]:
    """One PNG removal with ``settings`` through a fresh socket: seconds, and the file."""
    import base64
    import uuid

    task_uuid = str(uuid.uuid4())
    task = {
        "taskType": "removeBackground",
        "taskUUID": task_uuid,
        "model": "u2netp",
        "inputs": {"image": base64.b64encode(image).decode()},
        "outputType": "base64Data",
        "outputFormat": "PNG",
        "settings": settings,
    }
    async with await ProtocolClient.connect(f"ws://127.0.0.1:{port}", "bench") as client:
        start = time.perf_counter()
        await client.send([task])
        found, _ = await client.answers([task_uuid])
        answer = found[task_uuid]
        if isinstance(answer, ErrorItem):
            raise RuntimeError(f"the removal failed: {answer.code}: {answer.message}")
        return time.perf_counter() - start, base64.b64decode(answer.imageBase64Data or "")


def _fastest_removals(
    port: int, image: bytes, setting_sets: list[dict], runs: int = MATTING_RUNS
) -> list[tuple[float, bytes]]:
    """The fastest of ``runs`` for each set of settings, the sets taking turns."""
    fastest: list[tuple[float, bytes]] = [(float("inf"), b"")] * len(setting_sets)
    for _ in range(runs):
        for k, settings in enumerate(setting_sets):
            timed = asyncio.run(_service_removal(port, image, settings))
            fastest[k] = min(fastest[k], timed, key=lambda run: run[0])
    return fastest


def _rembg_timed(
    out_dir: Path,
    images_dir: Path,
    option_sets: list[dict],
    names: list[str],
    runs: int = MATTING_RUNS,
) -> dict[str, list[float]]:
    """rembg's remove(**options) per image and set of options in its venv, the fastest of
    ``runs``, set k's output kept as out_dir/NAME.k.png; the first image is removed once
    before, untimed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    home = BENCH_DIR / "u2net-home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL, home / "u2netp.onnx")
    finished = subprocess.run(
        [
            str(_rembg_python()),
            "-c",
            _REMBG_TIMED,
            str(out_dir),
            str(images_dir / names[0]),
            str(runs),
            json.dumps(option_sets),
            *names,
        ],
        env={**os.environ, "U2NET_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(finished.stdout.strip().splitlines()[-1])


def _matting_inputs(images_dir: Path) -> tuple[Path, list[str]]:
    """The matting fixtures and the enlarged one, in one directory under .bench/, and their names."""
    from PIL import Image

    inputs = BENCH_DIR / "matting-inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    names = [n for n in MATTING_IMAGES if (images_dir / n).exists()]
    for name in names:
        shutil.copyfile(images_dir / name, inputs / name)
    source, factor, enlarged = MATTING_ENLARGED
    if source in names:
        with Image.open(images_dir / source) as opened:
            image = opened.convert("RGB")
            image.resize(
                (image.width * factor, image.height * factor), Image.Resampling.LANCZOS
            ).save(inputs / enlarged, quality=92)
        names.append(enlarged)
    return inputs, names


def matting(images_dir: Path) -> list[dict]:
    """Per image: rembg's remove(alpha_matting=True) against a task through the service."""
    from PIL import Image

    images_dir, names = _matting_inputs(images_dir)
    out_dir = BENCH_DIR / "matting"
    rembg_times = _rembg_timed(out_dir, images_dir, [{"alpha_matting": True}], names)
    rows = []
    port, server = _service()
    with server:
        # As on rembg's side: one plain removal first, so that neither side times a first call.
        asyncio.run(_service_removal(port, (images_dir / names[0]).read_bytes(), {}))
        for name in names:
            image = (images_dir / name).read_bytes()
            [(seconds, png)] = _fastest_removals(port, image, [{"alphaMatting": True}])
            ours = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[..., 3].astype(int)
            theirs = np.asarray(Image.open(out_dir / f"{name}.0.png").convert("RGBA"))[..., 3]
            difference = np.abs(ours - theirs)
            rows.append(
                {
                    "image": name,
                    "size": "x".join(map(str, theirs.shape[::-1])),
                    "rembg_s": round(rembg_times[name][0], 3),
                    "service_s": round(seconds, 3),
                    "ratio": round(seconds / rembg_times[name][0], 3),
                    "alpha_mean_diff_255": round(float(difference.mean()), 4),
                    "alpha_max_diff_255": int(difference.max()),
                }
            )
    return rows


# --------------------------------------------------------------------------- decontamination

DECONTAMINATE_IMAGE = "animal-3.jpg"
# A difference of two times is noisier than a time: more runs per side, the fastest counts.
DECONTAMINATE_RUNS = 7


def decontaminate(images_dir: Path) -> dict:
    """What decontaminate adds to one removal of animal-3, on rembg's remove() and on a task
    through the service (each the fastest of DECONTAMINATE_RUNS, plain and decontaminated),
    and how far the two decontaminated files are apart."""
    from PIL import Image

    name = DECONTAMINATE_IMAGE
    out_dir, runs = BENCH_DIR / "decontaminate", DECONTAMINATE_RUNS
    option_sets = [{}, {"decontaminate": True}]
    rembg_plain, rembg_cleaned = _rembg_timed(out_dir, images_dir, option_sets, [name], runs)[name]
    image = (images_dir / name).read_bytes()
    port, server = _service()
    with server:
        asyncio.run(_service_removal(port, image, {}))  # not a first call on either side
        setting_sets = [{}, {"decontaminate": True}]
        (service_plain, _), (service_cleaned, png) = _fastest_removals(
            port, image, setting_sets, runs
        )
    ours = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")).astype(int)
    theirs = np.asarray(Image.open(out_dir / f"{name}.1.png").convert("RGBA")).astype(int)
    visible = theirs[..., 3] > 0
    rembg_added, service_added = rembg_cleaned - rembg_plain, service_cleaned - service_plain
    return {
        "image": name,
        "size": "x".join(map(str, theirs.shape[1::-1])),
        "rembg_plain_s": round(rembg_plain, 3),
        "rembg_decontaminated_s": round(rembg_cleaned, 3),
        "service_plain_s": round(service_plain, 3),
        "service_decontaminated_s": round(service_cleaned, 3),
        "ratio": round(service_added / rembg_added, 3),
        "rgb_mean_diff_255": round(float(np.abs(ours - theirs)[visible][:, :3].mean()), 4),
        "alpha_mean_diff_255": round(float(np.abs(ours - theirs)[..., 3].mean()), 4),
    }


def _decontaminate_lines(d: dict) -> list[str]:
    rembg_added = d["rembg_decontaminated_s"] - d["rembg_plain_s"]
    service_added = d["service_decontaminated_s"] - d["service_plain_s"]
    return [
        f"decontaminate: the time it adds to one removal of {d['image']} ({d['size']}), "
        f"fastest of {DECONTAMINATE_RUNS}",
        f"  rembg remove()   plain {d['rembg_plain_s']:6.3f} s  decontaminate "
        f"{d['rembg_decontaminated_s']:6.3f} s  added {rembg_added:+.3f} s",
        f"  service task     plain {d['service_plain_s']:6.3f} s  decontaminate "
        f"{d['service_decontaminated_s']:6.3f} s  added {service_added:+.3f} s",
        f"  ratio {d['ratio']:.3f} (target <= 0.2)  RGB diff on visible pixels "
        f"{d['rgb_mean_diff_255']:.3f}/255 (target <= 1)  alpha diff "
        f"{d['alpha_mean_diff_255']:.3f}/255",
    ]


# --------------------------------------------------------------------------- the report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per raw-runtime measurement")
    parser.add_argument("--tasks", type=int, default=16, help="tasks per socket at concurrency 1")
    parser.add_argument("--skip-rembg", action="store_true", help="leave out rembg (s and matting)")
    parser.add_argument("--json", action="store_true", help="print everything as JSON too")
    parser.add_argument(
        "--only-distributed",
        action="store_true",
        help="measure only the distributed mode against the embedded one",
    )
    parser.add_argument(
        "--only-matting", action="store_true", help="measure only alpha matting against rembg's"
    )
    parser.add_argument(
        "--only-rembg-api",
        action="store_true",
        help="measure only our /api/remove against rembg s, at concurrency 1 and 8",
    )
    parser.add_argument(
        "--only-decontaminate",
        action="store_true",
        help="measure only what decontaminate adds to a removal, against rembg's",
    )
    parser.add_argument(
        "--only-standin",
        action="store_true",
        help="measure only the CPU work around a model that costs nothing (the stand-in device)",
    )
    args = parser.parse_args(argv)
    BENCH_DIR.mkdir(exist_ok=True)
    image_path = PHOTOS / "anime-girl-1.jpg"
    image = image_path.read_bytes()
    tensor = _model_input(image)
    results: dict = {"image": image_path.name, "cpus": os.cpu_count()}
    per_socket_c8 = max(2, args.tasks // 2)
    if args.only_distributed:
        results["distributed"] = distributed(image, per_socket_c8)
        print("\n".join(_distributed_lines(results["distributed"])))
        return 0
    if args.only_matting:
        results["matting"] = matting(image_path.parent)
        print("\n".join(_matting_lines(results["matting"])))
        return 0
    if args.only_rembg_api:
        results["rembg_s"] = rembg_server(image, args.tasks)
        results["rembg_api"] = service_rembg_api(image, args.tasks)
        print("\n".join(_rembg_api_lines(results["rembg_api"], results["rembg_s"])))
        return 0
    if args.only_decontaminate:
        results["decontaminate"] = decontaminate(image_path.parent)
        print("\n".join(_decontaminate_lines(results["decontaminate"])))
        return 0
    standin_images = [image_path, PHOTOS / "animal-3.jpg"]
    # The simulated GPU also with the smallest photo: where one process saturates soonest.
    gpu_images = [image_path, PHOTOS / "car-1.jpg"]
    if args.only_standin:
        results["standin"] = standin(standin_images)
        print("\n".join(_standin_lines(results["standin"])))
        results["standin_1024"] = standin(standin_images, family="isnet")
        print("\n".join(_standin_lines(results["standin_1024"])))
        results["simulated_gpu"] = [simulated_gpu(path) for path in gpu_images]
        for result in results["simulated_gpu"]:
            print("\n".join(_simulated_gpu_lines(result)))
        return 0

    results["raw_onnxruntime_img_s"] = round(raw_onnxruntime(tensor, args.seconds), 3)
    openvino_rate, batch = raw_openvino(tensor, args.seconds)
    results["raw_openvino_img_s"] = round(openvino_rate, 3)
    results["batch_time_s"] = round(batch / openvino_rate, 3)  # one full batch on this CPU
    # Without --api-key the socket cap counts per address, and every socket here comes from
    # one: room for the 1,000 idle sockets beside whatever is still closing.
    port, server = _service("auto", "--max-sockets-per-key", "2000")
    with server as process:
        _service_load(port, image, 1, 2, process.pid)  # warm up
        results["idle_rss_bytes"] = (process_memory(process.pid) or {}).get("rss", 0)
        results["service_c1"] = _service_load(port, image, 1, args.tasks, process.pid)
        results["service_c8"] = _service_load(port, image, 8, per_socket_c8, process.pid)
        # The same load again: resident memory after it must not have grown.
        results["service_c8_again"] = _service_load(port, image, 8, per_socket_c8, process.pid)
        results["fairness"] = asyncio.run(_fairness(port, image))
        results["idle_1000_sockets"] = asyncio.run(
            run_idle(f"ws://127.0.0.1:{port}", 1000, 2.0, process.pid)
        )
    port, server = _service("onnxruntime")
    with server as process:
        _service_load(port, image, 1, 2, process.pid)
        results["service_onnxruntime_c8"] = _service_load(
            port, image, 8, per_socket_c8, process.pid
        )
    results["distributed"] = distributed(image, per_socket_c8)
    if not args.skip_rembg:
        results["rembg_s"] = rembg_server(image, args.tasks)
        results["rembg_api"] = service_rembg_api(image, args.tasks)
        results["matting"] = matting(image_path.parent)
        results["decontaminate"] = decontaminate(image_path.parent)

    results["standin"] = standin(standin_images)
    results["standin_1024"] = standin(standin_images, family="isnet")
    results["simulated_gpu"] = [simulated_gpu(path) for path in gpu_images]

    _print_report(results)
    print()
    print("\n".join(_standin_lines(results["standin"])))
    print("\n".join(_standin_lines(results["standin_1024"])))
    for result in results["simulated_gpu"]:
        print("\n".join(_simulated_gpu_lines(result)))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def _print_report(r: dict) -> None:
    raw = r["raw_onnxruntime_img_s"]
    c1, c8, c8_ort = r["service_c1"], r["service_c8"], r["service_onnxruntime_c8"]
    lines = [
        f"image {r['image']}, {r['cpus']} CPUs",
        f"raw onnxruntime (batch 1)        {raw:7.2f} img/s",
        f"raw OpenVINO (service runtime)   {r['raw_openvino_img_s']:7.2f} img/s   "
        f"x{r['raw_openvino_img_s'] / raw:.2f} raw onnxruntime",
        f"service c1                       {c1['images_per_s']:7.2f} img/s   p50 {c1['latency_s']['p50']:.3f} s"
        f"  (= raw inference {1 / raw:.3f} s + {c1['latency_s']['p50'] - 1 / raw:+.3f} s)",
        f"service c8                       {c8['images_per_s']:7.2f} img/s   p95 {c8['latency_s']['p95']:.2f} s",
        f"service c8, --runtime onnxruntime{c8_ort['images_per_s']:7.2f} img/s",
    ]
    if "rembg_s" in r:
        rembg = r["rembg_s"]
        lines += [
            f"rembg s c1                       {rembg['c1']['images_per_s']:7.2f} img/s   p95 {rembg['c1']['latency_s']['p95']:.2f} s",
            f"rembg s c8                       {rembg['c8']['images_per_s']:7.2f} img/s   p95 {rembg['c8']['latency_s']['p95']:.2f} s",
        ]
    lines += [
        "",
        f"ratio service c8 / raw onnxruntime     x{c8['images_per_s'] / raw:.2f}   (target >= 1.2)",
        f"ratio service c8 / raw OpenVINO        x{c8['images_per_s'] / r['raw_openvino_img_s']:.2f}"
        "   (target >= 0.93)",
    ]
    if "rembg_s" in r:
        lines.append(
            f"ratio service c8 / rembg s c8          x{c8['images_per_s'] / r['rembg_s']['c8']['images_per_s']:.2f}   (target >= 2)"
        )
    fairness = r["fairness"]
    idle = r["idle_1000_sockets"]
    lines += [
        f"c1 latency over raw inference          {1000 * (c1['latency_s']['p50'] - 1 / raw):+.0f} ms   (target <= +80 ms)",
        f"fairness: 1 task behind 100 waits      {fairness['extra_wait_s']:.2f} s more than alone = "
        f"{fairness['extra_wait_s'] / r['batch_time_s']:.1f} batch times of {r['batch_time_s']:.2f} s   (target <= 2)",
        f"1,000 idle sockets                     {idle.get('rss_growth_bytes', 0) / 2**20:.1f} MiB server RSS   (target < 200 MB)",
        f"lost/duplicated/cross-delivered (c8)   {c8['lost']}/{c8['duplicated']}/{c8['cross_delivered']}",
        _rss_line(r),
    ]
    if "rembg_api" in r:
        lines += ["", *_rembg_api_lines(r["rembg_api"], r["rembg_s"])]
    lines += ["", *_distributed_lines(r["distributed"])]
    if r.get("matting"):
        lines += ["", *_matting_lines(r["matting"])]
    if r.get("decontaminate"):
        lines += ["", *_decontaminate_lines(r["decontaminate"])]
    print("\n".join(lines))


def _rss_line(r: dict) -> str:
    mib = 2**20
    first = (r["service_c8"].get("server_memory_bytes") or {}).get("rss", 0)
    second = (r["service_c8_again"].get("server_memory_bytes") or {}).get("rss", 0)
    return (
        f"server RSS: idle {r['idle_rss_bytes'] / mib:.0f} MiB, after c8 {first / mib:.0f} MiB, "
        f"after a second c8 {second / mib:.0f} MiB ({(second - first) / mib:+.0f} MiB)"
    )


def _matting_lines(rows: list[dict]) -> list[str]:
    lines = [
        f"alpha matting: one task through the service vs rembg remove(alpha_matting=True), "
        f"fastest of {MATTING_RUNS}"
    ]
    for row in rows:
        lines.append(
            f"  {row['image']:16s} {row['size']:>9s}  rembg {row['rembg_s']:6.2f} s  "
            f"service {row['service_s']:6.2f} s"
            f"  ratio {row['ratio']:.2f} (target <= 0.2)  alpha diff mean "
            f"{row['alpha_mean_diff_255']:.3f}/255 max {row['alpha_max_diff_255']}/255"
        )
    return lines


def _distributed_lines(d: dict) -> list[str]:
    embedded = d["embedded"]["images_per_s"]
    lines = ["distributed mode (redis, 1 gateway) vs embedded, 8 sockets, same cores"]
    lines.append(f"  embedded                       {embedded:7.2f} img/s")
    for workers in (1, 2):
        row = d[f"workers_{workers}"]
        lines.append(
            f"  {workers} worker{'s' if workers > 1 else ' '}                      "
            f"{row['images_per_s']:7.2f} img/s   x{row['images_per_s'] / embedded:.2f} embedded"
            f"   (target >= 0.90)   lost/dup {row['lost']}/{row['duplicated']}"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
