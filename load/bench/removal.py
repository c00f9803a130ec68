"""One removal through the service, timed: a fresh socket, one PNG task, its file."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

from protocol.errors import ErrorItem
from service.protocol_client import ProtocolClient

from .rembg import FASTEST_OF


async def timed_removal(port: int, image: bytes, settings: dict) -> tuple[float, bytes]:
    """One PNG removal with ``settings`` through a fresh socket: seconds, and the file."""
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


def fastest_removals(
    port: int, image: bytes, setting_sets: list[dict], runs: int = FASTEST_OF
) -> list[tuple[float, bytes]]:
    """The fastest of ``runs`` for each set of settings, the sets taking turns."""
    fastest: list[tuple[float, bytes]] = [(float("inf"), b"")] * len(setting_sets)
    for _ in range(runs):
        for k, settings in enumerate(setting_sets):
            timed = asyncio.run(timed_removal(port, image, settings))
            fastest[k] = min(fastest[k], timed, key=lambda run: run[0])
    return fastest
