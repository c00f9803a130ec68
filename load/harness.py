"""The load harness: N real sockets pushing removal tasks, every answer checked.

Each connection authenticates, then keeps up to ``window`` tasks outstanding (closed loop), or
sends at a fixed total ``rate`` (open loop), in frames of ``frame_size`` tasks. Every answer must
carry a taskUUID this socket sent and has not had answered yet (anything else is counted as
cross-delivered or duplicated), and every result must hold a decodable image. The run always
ends by itself: by task count or duration, then at most ``task_timeout`` for stragglers, which
count as lost.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from PIL import Image

from protocol.errors import ErrorItem
from protocol.messages import AnswerItem
from service.protocol_client import ProtocolClient

from .stats import percentile, process_memory

__all__ = ["LoadConfig", "Report", "run_load", "run_idle"]


@dataclass(frozen=True)
class LoadConfig:
    url: str  # or several, comma-separated: sockets are spread over them in turn (gateways)
    images: tuple[bytes, ...]
    connections: int = 1
    tasks_per_connection: int | None = 10
    duration: float | None = None
    rate: float | None = None  # total tasks per second, open loop; None = closed loop
    window: int = 4  # outstanding tasks per connection in closed loop
    frame_size: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    output_type: str = "base64Data"
    output_format: str = "PNG"
    model: str | None = None  # None: the server's default (runware:109@1)
    api_key: str = "load-test"
    task_timeout: float = 120.0
    server_pid: int | None = None
    progress: bool = True
    verify_images: bool = True
    fetch_urls: bool = True

    def urls(self) -> list[str]:
        return [url.strip() for url in self.url.split(",") if url.strip()]


@dataclass
class ConnectionStats:
    sent: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    duplicated: int = 0
    cross_delivered: int = 0
    undecodable: int = 0
    latencies: list[float] = field(default_factory=list)
    first_send: float = 0.0
    last_answer: float = 0.0

    def throughput(self) -> float:
        span = self.last_answer - self.first_send
        return self.ok / span if span > 0 else 0.0


@dataclass
class Report:
    connections: list[ConnectionStats]
    elapsed: float
    memory: dict[str, int] | None
    failures: list[str]

    def summary(self) -> dict[str, Any]:
        latencies = sorted(seconds for c in self.connections for seconds in c.latencies)
        ok = sum(c.ok for c in self.connections)
        sent = sum(c.sent for c in self.connections)
        errors: Counter = Counter()
        for c in self.connections:
            errors.update(c.errors)
        answered = ok + sum(errors.values())
        per_connection = [c.throughput() for c in self.connections if c.ok]
        return {
            "tasks_sent": sent,
            "tasks_ok": ok,
            "errors_by_code": dict(errors),
            "lost": sent - answered,
            "duplicated": sum(c.duplicated for c in self.connections),
            "cross_delivered": sum(c.cross_delivered for c in self.connections),
            "undecodable": sum(c.undecodable for c in self.connections),
            "elapsed_s": round(self.elapsed, 3),
            "images_per_s": round(ok / self.elapsed, 3) if self.elapsed > 0 else 0.0,
            "latency_s": {
                name: round(percentile(latencies, q), 4)
                for name, q in (
                    ("p50", 0.5),
                    ("p90", 0.9),
                    ("p95", 0.95),
                    ("p99", 0.99),
                    ("max", 1.0),
                )
            },
            "per_connection_images_per_s": {
                "min": round(min(per_connection), 3) if per_connection else 0.0,
                "max": round(max(per_connection), 3) if per_connection else 0.0,
            },
            "server_memory_bytes": self.memory,
            "connection_failures": self.failures,
        }


def _image_from_result(item: AnswerItem) -> bytes | None:
    if item.imageBase64Data is not None:
        return base64.b64decode(item.imageBase64Data)
    if item.imageDataURI is not None:
        return base64.b64decode(item.imageDataURI.split(",", 1)[1])
    return None


def _decodable(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        return True
    except Exception:
        return False


class _Progress:
    def __init__(self, stats: list[ConnectionStats], enabled: bool) -> None:
        self._stats = stats
        self._enabled = enabled and sys.stderr.isatty()
        self._start = time.monotonic()

    def line(self) -> str:
        ok = sum(c.ok for c in self._stats)
        errors = sum(sum(c.errors.values()) for c in self._stats)
        elapsed = time.monotonic() - self._start
        recent = sorted(seconds for c in self._stats for seconds in c.latencies[-50:])
        return (
            f"done {ok} | errors {errors} | {ok / elapsed if elapsed else 0:.2f} img/s | "
            f"p50 {percentile(recent, 0.5):.2f} s"
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self._enabled:
                print("\r" + self.line(), end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self._enabled:
            print("\r" + self.line(), file=sys.stderr, flush=True)


class _Pacer:
    """Open-loop pacing shared by all connections: one slot every 1/rate seconds."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = time.monotonic()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(self._next, now) + self._interval
        if delay > 0:
            await asyncio.sleep(delay)


async def _one_connection(
    config: LoadConfig,
    stats: ConnectionStats,
    stop_at: float | None,
    pacer: _Pacer | None,
    http: aiohttp.ClientSession,
    url: str,
) -> None:
    images = [base64.b64encode(image).decode() for image in config.images]
    pending: dict[str, float] = {}
    answered: set[str] = set()
    window = asyncio.Semaphore(config.window if pacer is None else 1_000_000)
    done_sending = asyncio.Event()

    async with await ProtocolClient.connect(url, config.api_key) as client:

        def want_more() -> bool:
            if stop_at is not None:
                return time.monotonic() < stop_at
            return stats.sent < (config.tasks_per_connection or 0)

        async def sender() -> None:
            index = 0
            while want_more():
                frame: list[dict[str, Any]] = []
                for _ in range(config.frame_size):
                    if not want_more() and frame:
                        break
                    await (pacer.wait() if pacer else window.acquire())
                    task_uuid = str(uuid.uuid4())
                    frame.append(
                        {
                            "taskType": "removeBackground",
                            "taskUUID": task_uuid,
                            "inputs": {"image": images[index % len(images)]},
                            "outputType": config.output_type,
                            "outputFormat": config.output_format,
                            **({"settings": config.settings} if config.settings else {}),
                            **({"model": config.model} if config.model else {}),
                        }
                    )
                    index += 1
                    pending[task_uuid] = time.monotonic()
                    stats.sent += 1
                    if not stats.first_send:
                        stats.first_send = time.monotonic()
                await client.send(frame)
            done_sending.set()

        async def check(item: AnswerItem) -> None:
            if config.output_type == "URL" and config.fetch_urls:
                async with http.get(item.imageURL or "") as response:
                    data = await response.read() if response.status == 200 else b""
            else:
                data = _image_from_result(item) or b""
            if config.verify_images and not _decodable(data):
                stats.undecodable += 1

        async def receiver() -> None:
            while not (done_sending.is_set() and not pending):
                frame = await client.frame()
                now = time.monotonic()
                for item in frame.items():
                    task_uuid = item.taskUUID or ""
                    if task_uuid in answered:
                        stats.duplicated += 1
                        continue
                    if task_uuid not in pending:
                        stats.cross_delivered += 1
                        continue
                    stats.latencies.append(now - pending.pop(task_uuid))
                    answered.add(task_uuid)
                    stats.last_answer = now
                    if pacer is None:
                        window.release()
                    if isinstance(item, ErrorItem):
                        stats.errors[item.code] += 1
                    else:
                        stats.ok += 1
                        await check(item)

        receiving = asyncio.create_task(receiver())
        try:
            await sender()
            await asyncio.wait_for(receiving, config.task_timeout)
        except TimeoutError:
            pass  # what is still pending is lost
        finally:
            receiving.cancel()


async def run_load(config: LoadConfig) -> Report:
    stats = [ConnectionStats() for _ in range(config.connections)]
    progress = _Progress(stats, config.progress)
    ticker = asyncio.create_task(progress.run())
    stop_at = time.monotonic() + config.duration if config.duration else None
    pacer = _Pacer(config.rate) if config.rate else None
    start = time.monotonic()
    async with aiohttp.ClientSession() as http:
        outcomes = await asyncio.gather(
            *(
                _one_connection(config, s, stop_at, pacer, http, url)
                for s, url in zip(stats, itertools.cycle(config.urls()))
            ),
            return_exceptions=True,
        )
    elapsed = time.monotonic() - start
    ticker.cancel()
    progress.finish()
    failures = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    memory = process_memory(config.server_pid) if config.server_pid else None
    return Report(stats, elapsed, memory, failures)


async def run_idle(
    url: str, connections: int, hold: float, server_pid: int | None, api_key: str = "load-test"
) -> dict[str, Any]:
    """Open ``connections`` sockets that only authenticate and ping; report the server's memory.
    ``url`` may name several servers, comma-separated: sockets go to each in turn."""
    before = process_memory(server_pid) if server_pid else None
    sockets: list[ProtocolClient] = []
    failures = 0
    try:
        targets = itertools.cycle(LoadConfig(url, ()).urls())
        for _ in range(connections):
            try:
                sockets.append(await ProtocolClient.connect(next(targets), api_key))
            except Exception:
                failures += 1
        await asyncio.sleep(hold)
        pongs = sum(await asyncio.gather(*(client.ping() for client in sockets)))
        after = process_memory(server_pid) if server_pid else None
    finally:
        await asyncio.gather(*(client.close() for client in sockets), return_exceptions=True)
    result: dict[str, Any] = {
        "connections_open": len(sockets),
        "connection_failures": failures,
        "pongs": pongs,
        "server_memory_before": before,
        "server_memory_after": after,
    }
    if before and after and sockets:
        grown = after["rss"] - before["rss"]
        result["rss_growth_bytes"] = grown
        result["bytes_per_connection"] = grown // len(sockets)
    return result
