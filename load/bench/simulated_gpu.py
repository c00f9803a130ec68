"""The service feeding a simulated accelerator (service/inference/simulated.py, over the replay
graph): images/s, mean batch, the device's busy fraction, and how busy the event loop, the CPU
workers and the GIL were, to name the resource that saturates first."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from pathlib import Path

from ..harness import run_load
from .experiment import Options
from .processes import PHOTOS, batch_sums, cpu_by_role, gil_fraction, gil_held, service_process
from .replay import replay_flags, replay_load, replay_model

# The simulated accelerator's batch latency, t(N) = FIXED + PER_IMAGE * N in ms: u2netp on a
# datacenter GPU (docs/models.md, "Sizing a GPU host", gives the reasoning).
DEVICE_LATENCY_MS = (3.0, 1.0)


def run(options: Options) -> dict:
    # Also the smallest photo: where one process saturates soonest.
    return {"photos": [_photo(path) for path in (options.image, PHOTOS / "car-1.jpg")]}


def _photo(image: Path, workers: int | None = None) -> dict:
    _, replay = replay_model(image)
    latency = ",".join(f"{value:g}" for value in DEVICE_LATENCY_MS)
    workers = workers or os.cpu_count() or 1
    port, server = service_process(
        *replay_flags(replay), "--simulated-device", latency, "--cpu-workers", str(workers)
    )
    config = replay_load(port, image.read_bytes(), "URL", 16, 60, 4)
    spy_seconds = 5.0
    with server as process:
        asyncio.run(run_load(dataclasses.replace(config, tasks_per_connection=4)))
        cpu_before, batches_before = cpu_by_role(process.pid), batch_sums(port)
        started = time.perf_counter()
        spy = gil_held(process.pid, spy_seconds)
        summary = asyncio.run(run_load(config)).summary()
        wall = time.perf_counter() - started
        cpu_after, batches_after = cpu_by_role(process.pid), batch_sums(port)
        gil = gil_fraction(spy, spy_seconds)
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


def lines(result: dict) -> list[str]:
    report = []
    for photo in result["photos"]:
        report += _photo_lines(photo)
    return report


def _photo_lines(result: dict) -> list[str]:
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
