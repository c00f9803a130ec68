"""One GPU, one process or two: does a device shared by several service processes (each with
its own inference session, as the distributed mode's workers on one GPU host have) get smaller
batches and fewer images/s than one process owning it?

The 1024 replay graph (family isnet) behind a simulated device whose calls all take one lock
file, so that the processes' batches take turns on it as contexts do on a GPU. Two latencies
of decisions/0012, a faster and a slower device. Each layout on the same two cores: one process
with 2 CPU workers, and two processes with 1 CPU worker each (the sockets split between them),
each with one batch in flight and with two (the next batch stacked while the device runs
one)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

from service.inference.families import FAMILIES  # plain data: no model runtime
from service.inference.simulated import parse_latency

from ..harness import LoadConfig, run_load
from .experiment import Options
from .processes import BENCH_DIR, batch_sums, service_process
from .replay import replay_flags, replay_load, replay_model

# (fixed ms, ms per image, GB/s): the CPU side the limit, then the device.
LATENCIES = ((5.0, 12.0, 12.0), (5.0, 25.0, 12.0))
SOCKETS, TASKS, WINDOW = 16, 25, 4
# (processes, CPU workers each, batches in flight in each)
LAYOUTS = ((1, 2, 1), (1, 2, 2), (2, 1, 1), (2, 1, 2))


def run(options: Options) -> dict:
    _, replay = replay_model(options.image, FAMILIES["isnet"].size)
    image = options.image.read_bytes()
    rows = []
    for latency in LATENCIES:
        for processes, workers, in_flight in LAYOUTS:
            rows.append(_layout(replay, image, latency, processes, workers, in_flight))
    return {"image": options.image.name, "rows": rows}


def _layout(
    replay, image: bytes, latency: tuple, processes: int, workers: int, in_flight: int
) -> dict:
    lock_file = BENCH_DIR / "simulated-gpu.lock"
    latency_text = ",".join(f"{value:g}" for value in latency)
    device = f"{latency_text}@{lock_file}"
    flags = (*replay_flags(replay, "isnet"), "--simulated-device", device)
    flags += ("--cpu-workers", str(workers), "--batches-in-flight", str(in_flight))
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(processes):
            port, server = service_process(*flags)
            stack.enter_context(server)
            ports.append(port)
        loads = [
            replay_load(port, image, "URL", SOCKETS // processes, TASKS, WINDOW) for port in ports
        ]
        asyncio.run(_together([dataclasses.replace(c, tasks_per_connection=2) for c in loads]))
        before = [batch_sums(port) for port in ports]
        started = time.perf_counter()
        summaries = asyncio.run(_together(loads))
        wall = time.perf_counter() - started
        after = [batch_sums(port) for port in ports]
    images = int(sum(a["images"] - b["images"] for a, b in zip(after, before, strict=True)))
    calls = int(sum(a["calls"] - b["calls"] for a, b in zip(after, before, strict=True)))
    # The device's own time, t(N) of every call it ran, read as the service reads the flag
    # (the lock's waits are not device work): one fixed part per call, the rest per image.
    device_latency = parse_latency(latency_text)
    moved = images * 4 * (3 + 1) * FAMILIES["isnet"].size ** 2  # f32 input planes and mask
    device_s = device_latency.of(images, moved) + (calls - 1) * device_latency.fixed
    ok = sum(s["tasks_ok"] for s in summaries)
    return {
        "latency_ms": list(latency),
        "processes": processes,
        "cpu_workers_each": workers,
        "batches_in_flight": in_flight,
        "images_per_s": round(ok / wall, 1),
        "mean_batch": round(images / calls, 2) if calls else 0.0,
        "device_busy": round(device_s / wall, 2),
        "lost": sum(s["lost"] for s in summaries),
    }


async def _together(configs: list[LoadConfig]) -> list[dict]:
    results = await asyncio.gather(*(run_load(config) for config in configs))
    return [result.summary() for result in results]


def lines(result: dict) -> list[str]:
    report = [
        f"one simulated GPU shared by the service's processes, 1024 stand-in, {result['image']}, "
        f"{SOCKETS} sockets x {TASKS} URL tasks"
    ]
    for row in result["rows"]:
        fixed, per_image, gb_per_s = row["latency_ms"]
        report.append(
            f"  t(N) = {fixed:g} + {per_image:g} ms x N + bytes at {gb_per_s:g} GB/s  "
            f"{row['processes']} process(es) x {row['cpu_workers_each']} CPU worker(s), "
            f"{row['batches_in_flight']} in flight  "
            f"{row['images_per_s']:6.1f} img/s  mean batch {row['mean_batch']:5.2f}  "
            f"device busy {row['device_busy']:.0%}  lost {row['lost']}"
        )
    return report
