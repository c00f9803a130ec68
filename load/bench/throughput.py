"""This service against the model alone: raw onnxruntime and OpenVINO, the service at 1 and 8
sockets (and at 8 with ``--runtime onnxruntime``), how long one socket's task waits behind
another's 100, and the server's memory for 1,000 idle sockets and after repeated loads."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

from service.protocol_client import ProtocolClient

from ..harness import run_idle
from ..stats import process_memory
from .experiment import Options
from .processes import service_load, service_process
from .raw import model_input, onnxruntime_rate, openvino_rate


def run(options: Options) -> dict:
    image = options.image.read_bytes()
    one_image = model_input(image)
    result: dict = {"image": options.image.name}
    result["raw_onnxruntime_img_s"] = round(onnxruntime_rate(one_image, options.seconds), 3)
    openvino, batch = openvino_rate(one_image, options.seconds)
    result["raw_openvino_img_s"] = round(openvino, 3)
    result["batch_time_s"] = round(batch / openvino, 3)  # one full batch on this CPU
    per_socket_c8 = max(2, options.tasks // 2)
    # Without --api-key the socket cap counts per address, and every socket here comes from
    # one: room for the 1,000 idle sockets beside whatever is still closing.
    port, server = service_process("auto", "--max-sockets-per-key", "2000")
    with server as process:
        service_load(port, image, 1, 2, process.pid)  # warm up
        result["idle_rss_bytes"] = (process_memory(process.pid) or {}).get("rss", 0)
        result["service_c1"] = service_load(port, image, 1, options.tasks, process.pid)
        result["service_c8"] = service_load(port, image, 8, per_socket_c8, process.pid)
        # The same load again: resident memory after it must not have grown.
        result["service_c8_again"] = service_load(port, image, 8, per_socket_c8, process.pid)
        result["fairness"] = asyncio.run(_fairness(port, image))
        result["idle_1000_sockets"] = asyncio.run(
            run_idle(f"ws://127.0.0.1:{port}", 1000, 2.0, process.pid)
        )
    port, server = service_process("onnxruntime")
    with server as process:
        service_load(port, image, 1, 2, process.pid)
        result["service_onnxruntime_c8"] = service_load(port, image, 8, per_socket_c8, process.pid)
    return result


async def _fairness(port: int, image: bytes) -> dict:
    """Socket A queues 100 tasks; then socket B sends one. B's latency, against a lone task's."""
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


def lines(r: dict) -> list[str]:
    raw = r["raw_onnxruntime_img_s"]
    c1, c8, c8_ort = r["service_c1"], r["service_c8"], r["service_onnxruntime_c8"]
    c1_p50 = c1["latency_s"]["p50"]
    fairness, idle = r["fairness"], r["idle_1000_sockets"]
    lost = f"{c8['lost']}/{c8['duplicated']}/{c8['cross_delivered']}"
    return [
        f"this service against the model alone, image {r['image']}",
        f"  raw onnxruntime (batch 1)        {raw:7.2f} img/s",
        f"  raw OpenVINO (service runtime)   {r['raw_openvino_img_s']:7.2f} img/s   "
        f"x{r['raw_openvino_img_s'] / raw:.2f} raw onnxruntime",
        f"  service c1                       {c1['images_per_s']:7.2f} img/s   p50 {c1_p50:.3f} s"
        f"  (= raw inference {1 / raw:.3f} s + {c1_p50 - 1 / raw:+.3f} s)",
        f"  service c8                       {c8['images_per_s']:7.2f} img/s   "
        f"p95 {c8['latency_s']['p95']:.2f} s",
        f"  service c8, --runtime onnxruntime{c8_ort['images_per_s']:7.2f} img/s",
        f"  ratio service c8 / raw onnxruntime     x{c8['images_per_s'] / raw:.2f}",
        f"  ratio service c8 / raw OpenVINO        x{c8['images_per_s'] / r['raw_openvino_img_s']:.2f}",
        f"  c1 latency over raw inference          {1000 * (c1_p50 - 1 / raw):+.0f} ms",
        f"  fairness: 1 task behind 100 waits      {fairness['extra_wait_s']:.2f} s more than "
        f"alone = {fairness['extra_wait_s'] / r['batch_time_s']:.1f} batch times of "
        f"{r['batch_time_s']:.2f} s",
        f"  1,000 idle sockets                     "
        f"{idle.get('rss_growth_bytes', 0) / 2**20:.1f} MiB server RSS",
        f"  lost/duplicated/cross-delivered (c8)   {lost}",
        f"  {_rss_line(r)}",
    ]


def _rss_line(r: dict) -> str:
    mib = 2**20
    first = (r["service_c8"].get("server_memory_bytes") or {}).get("rss", 0)
    second = (r["service_c8_again"].get("server_memory_bytes") or {}).get("rss", 0)
    return (
        f"server RSS: idle {r['idle_rss_bytes'] / mib:.0f} MiB, after c8 {first / mib:.0f} MiB, "
        f"after a second c8 {second / mib:.0f} MiB ({(second - first) / mib:+.0f} MiB)"
    )
