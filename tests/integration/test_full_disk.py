"""A full disk under --storage-dir: a real 3 MiB tmpfs. Writes fail with storageFull and leave
no partial file, /readyz says so until a write succeeds again. Skipped where mounting is not
allowed (it needs root, or CAP_SYS_ADMIN)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
import websockets
from PIL import Image

from protocol.errors import TaskFailure
from service.storage.directory import DirectoryImageStore
from tests.support import Client, MovingClock, b64, new_uuid, start_server

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or 'not permitted'}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 bytes a pixel, in and out."""
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def readyz(server) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{server.http_url}/readyz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def task(image: str) -> dict:
    return {
        "taskType": "removeBackground",
        "taskUUID": new_uuid(),
        "model": "fast",
        "inputImage": image,
        "outputType": "URL",
        "outputFormat": "PNG",
    }


async def test_a_full_disk_says_so_and_leaves_nothing_behind(small_disk, tmp_path, fast_model):
    server = start_server(
        tmp_path, "--storage-dir", str(small_disk), "--model", f"fast={fast_model}"
    )
    try:
        big = b64(noise_png(700))  # ~1.5 MB in, as much out: the third write cannot fit
        async with websockets.connect(server.ws_url, max_size=None) as websocket:
            client = Client(websocket)
            await client.authenticate("disk")
            tasks = [task(big) for _ in range(4)]
            await client.send(*tasks)
            answers = await client.collect([t["taskUUID"] for t in tasks], timeout=120)
            codes = [a.get("code") for a in answers.values() if a["kind"] == "errors"]
            assert codes and set(codes) == {"storageFull"}, answers
            assert not [name for name in os.listdir(small_disk) if name.endswith(".partial")]
            status, reason = readyz(server)
            assert status == 503 and "full" in reason
            for name in os.listdir(small_disk):  # the operator makes room
                path = small_disk / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            small = task(b64(noise_png(32)))
            answer = await client.run(small, timeout=60)
            assert "imageURL" in answer, answer
            assert readyz(server)[0] == 200
    finally:
        server.stop()


async def test_a_full_disk_is_swept_without_waiting_for_the_sweeps_pause(small_disk):
    """Sweeps of a big directory are spaced out by their cost; a full disk is not left to
    wait for the next one."""
    clock = MovingClock(step=5.0)  # a sweep seems to take 5 s: the next waits 500 s
    store = DirectoryImageStore(small_disk, default_ttl=3600, clock=clock)
    await store.sweep()
    expiring = await store.put(noise_png(600), "png", ttl=1)  # 1 MiB of the 3
    with pytest.raises(TaskFailure) as refused:
        for side in range(601, 640):
            await store.put(noise_png(side), "png")
    assert refused.value.code == "storageFull" and store.unready_because() is not None
    assert await store.sweep() == 1 and not expiring.path.exists()
    await store.put(b"fits again", "png")
    assert store.unready_because() is None
