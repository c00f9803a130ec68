"""The CPU work around the model, with the model out of the way: the service serves a replay
graph (load.standin) of u2netp's input size (320) and of RMBG-1.4's (1024, family isnet, what
runware:109@1 really names), answering anime-girl-1's real u2netp prediction at next to no
cost. Server core-ms per image (from /proc), its ratio to one u2netp inference on one thread in
the same run, and images/s, 8 sockets, for each photo, output type and CPU worker count; and the
load generator's own core-ms per image, since it shares the machine's cores with the server."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

from service.inference.families import FAMILIES  # plain data: no model runtime

from ..harness import run_load
from .experiment import Options
from .processes import PHOTOS, cpu_seconds, service_process
from .replay import replay_flags, replay_load, replay_model

FAMILIES_SERVED = ("u2net", "isnet")


def run(options: Options) -> dict:
    images = [options.image, PHOTOS / "animal-3.jpg"]
    return {family: _family(images, family) for family in FAMILIES_SERVED}


def _family(images: list[Path], family: str, tasks_per_socket: int = 30) -> dict:
    core_ms, replay = replay_model(images[0], FAMILIES[family].size)
    rows = []
    for path in images:
        image = path.read_bytes()
        for output_type in ("base64Data", "URL"):
            for workers in (1, 2):
                flags = replay_flags(replay, family)
                port, server = service_process(*flags, "--cpu-workers", str(workers))
                with server as process:
                    config = replay_load(port, image, output_type, 8, tasks_per_socket, 2)
                    asyncio.run(run_load(dataclasses.replace(config, connections=2)))
                    before, client_before = cpu_seconds(process.pid), time.process_time()
                    summary = asyncio.run(run_load(config)).summary()
                    used = cpu_seconds(process.pid) - before
                    client = time.process_time() - client_before
                ok = max(summary["tasks_ok"], 1)
                rows.append(
                    {
                        "image": path.name,
                        "output": output_type,
                        "cpu_workers": workers,
                        "images_per_s": summary["images_per_s"],
                        "core_ms_per_image": round(used * 1000 / ok, 1),
                        "ratio_to_u2netp": round(used * 1000 / ok / core_ms, 3),
                        "client_core_ms_per_image": round(client * 1000 / ok, 1),
                        "lost": summary["lost"],
                    }
                )
    return {"u2netp_core_ms": round(core_ms, 1), "rows": rows}


def lines(result: dict) -> list[str]:
    report = []
    for family in FAMILIES_SERVED:
        report += _family_lines(family, result[family])
    return report


def _family_lines(family: str, result: dict) -> list[str]:
    size = FAMILIES[family].size
    report = [
        f"stand-in device: the service around a {size}x{size} model ({family}) that "
        "costs nothing, 8 sockets",
        f"  u2netp on one thread: {result['u2netp_core_ms']:.0f} core-ms per image",
    ]
    for row in result["rows"]:
        report.append(
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
            report.append(
                f"  scaling 1 -> 2 workers, {image} {output}: x{rate / by_key[(image, output, 1)]:.2f}"
            )
    return report
