"""rembg's HTTP API: rembg's own client (multipart POSTs to /api/remove) against ``rembg s``
and against our /api/remove, 1 and 8 at once; and our WebSocket at 8 sockets beside them."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from service.net.loopback import free_port

from ..stats import percentile
from .experiment import Options
from .processes import service_load, service_process, started
from .rembg import rembg_python, u2net_home


def run(options: Options) -> dict:
    image = options.image.read_bytes()
    tasks = options.tasks
    result = {"rembg_s": _rembg_server(image, tasks)}
    port, server = service_process()
    key = {"Authorization": "Bearer bench"}
    with server as process:
        asyncio.run(_rembg_load(port, image, 1, 2, key))
        result["rembg_api"] = {
            "c1": asyncio.run(_rembg_load(port, image, 1, tasks, key)),
            "c8": asyncio.run(_rembg_load(port, image, 8, tasks * 3, key)),
        }
        result["websocket_c8"] = service_load(port, image, 8, max(2, tasks // 2), process.pid)
    return result


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


def _rembg_server(image: bytes, tasks: int) -> dict:
    python = rembg_python()
    port = free_port()
    command = [str(python.parent / "rembg"), "s", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--no-ui", "--log_level", "warning"]
    ready = f"http://127.0.0.1:{port}/api"
    with started(command, ready, env={"U2NET_HOME": str(u2net_home())}, timeout=300):
        asyncio.run(_rembg_load(port, image, 1, 2))  # load the model (first request)
        return {
            "c1": asyncio.run(_rembg_load(port, image, 1, tasks)),
            "c8": asyncio.run(_rembg_load(port, image, 8, tasks * 3)),
        }


def lines(r: dict) -> list[str]:
    rembg, ours = r["rembg_s"], r["rembg_api"]
    result = ["rembg's HTTP API, multipart POSTs of the same image (model u2netp)"]
    for level in ("c1", "c8"):
        result.append(
            f"  {level}  rembg s {rembg[level]['images_per_s']:6.2f} img/s  "
            f"our /api/remove {ours[level]['images_per_s']:6.2f} img/s  "
            f"x{ours[level]['images_per_s'] / rembg[level]['images_per_s']:.2f}  "
            f"p95 {rembg[level]['latency_s']['p95']:.2f} / {ours[level]['latency_s']['p95']:.2f} s"
            f"  failures {rembg[level]['failures']} / {ours[level]['failures']}"
        )
    websocket = r["websocket_c8"]["images_per_s"]
    result.append(
        f"  c8  our WebSocket {websocket:6.2f} img/s"
        f"  ratio to rembg s c8 x{websocket / rembg['c8']['images_per_s']:.2f}"
    )
    return result
