"""service.tasks.processor with a stand-in model behind a real batcher, a real CPU pool and a
real directory store: one task to its result."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from protocol.codec import decode_frame
from protocol.errors import TaskFailure
from service.config import Config
from service.inference.families import FAMILIES
from service.scheduling.batcher import MicroBatcher
from service.scheduling.budget import MemoryBudget
from service.scheduling.fairness import FairExecutor
from service.storage.directory import DirectoryImageStore
from service.tasks.inputs import InputResolver
from service.tasks.processor import ModelRoute, Processor
from tests.support import fixture_bytes

CAR = fixture_bytes("car-1.jpg")  # 480x360
TASK_UUID = "9ad4918a-e9d0-440a-ac59-057a966cd421"
SCOPE = b"s" * 32


def square_prediction(batch: np.ndarray) -> np.ndarray:
    """The stand-in model: the middle of every image is foreground."""
    out = np.zeros((batch.shape[0], batch.shape[2], batch.shape[3]), np.float32)
    out[:, 80:240, 80:240] = 1.0
    return out


class FakeHttp:
    """``OutboundHttp`` at the processor's port: records PUTs, refuses no URL."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str, int]] = []

    def check_url(self, url: str, parameter: str) -> None:
        pass

    async def get(self, url: str, parameter: str) -> bytes:
        raise AssertionError("no URL input in these tests")

    async def send(self, method, url, body, content_type, parameter, code) -> int:
        self.sent.append((method, url, content_type, len(body)))
        return 200


@pytest.fixture
async def rig(tmp_path):
    config = Config(storage_dir=tmp_path, max_matting_pixels=100_000, port=7777)
    store = DirectoryImageStore(tmp_path, default_ttl=60)
    http = FakeHttp()
    cpu = FairExecutor(1)
    batcher = MicroBatcher(square_prediction, max_batch=2, max_wait=0.001)
    routes = {"stand-in": ModelRoute(FAMILIES["u2net"], batcher)}
    budget = MemoryBudget(1 << 30)
    processor = Processor(config, routes, store, InputResolver(store, http), http, cpu, budget)  # type: ignore[arg-type]
    yield processor, store, http
    await batcher.stop()
    cpu.shutdown()


def removal(**fields):
    task = {
        "taskType": "removeBackground",
        "taskUUID": TASK_UUID,
        "model": "stand-in",
        "inputImage": base64.b64encode(CAR).decode(),
        "outputFormat": "PNG",
        **fields,
    }
    return decode_frame(json.dumps([task]).encode()).tasks[0]


async def test_a_url_result_names_a_stored_cutout(rig):
    processor, store, _ = rig
    result = await processor.remove_background(removal(outputType="URL"), SCOPE)
    assert result.imageURL == f"http://127.0.0.1:7777/images/{result.imageUUID}.png"
    stored, data = await store.load(result.imageUUID)
    alpha = np.asarray(Image.open(io.BytesIO(data)))[..., 3]
    assert alpha.shape == (360, 480) and alpha[180, 240] == 255 and alpha[5, 5] == 0
    assert (await store.load(result.inputImageUUID))[1] == CAR


async def test_an_inline_result_carries_the_stored_file(rig):
    processor, store, _ = rig
    result = await processor.remove_background(removal(outputType="base64Data"), SCOPE)
    _, data = await store.load(result.imageUUID)
    assert base64.b64decode(result.imageBase64Data) == data and result.imageURL is None


@pytest.mark.parametrize("server_default", [False, True])
async def test_the_servers_decontaminate_applies_where_the_task_does_not_say(
    tmp_path, server_default
):
    config = Config(storage_dir=tmp_path, decontaminate=server_default)
    processor = Processor(config, {}, None, None, FakeHttp(), None, None)  # type: ignore[arg-type]
    assert processor._settings(removal()).decontaminate is server_default
    assert processor._settings(removal(decontaminate=False)).decontaminate is False
    assert processor._settings(removal(settings={"decontaminate": True})).decontaminate is True


async def test_an_unknown_model_lists_the_served_ones(rig):
    processor, _, _ = rig
    with pytest.raises(TaskFailure) as refused:
        await processor.remove_background(removal(model="rmbg-9"), SCOPE)
    assert refused.value.code == "unsupportedModel" and "stand-in" in refused.value.message


async def test_alpha_matting_has_its_own_pixel_limit(rig):
    processor, _, _ = rig
    with pytest.raises(TaskFailure) as refused:
        await processor.remove_background(removal(alphaMatting=True), SCOPE)
    assert refused.value.code == "imageTooLarge" and "alphaMatting" in refused.value.message
    assert (await processor.remove_background(removal(), SCOPE)).imageUUID


async def test_the_output_is_put_to_the_upload_endpoint(rig):
    processor, _, http = rig
    await processor.remove_background(
        removal(uploadEndpoint="https://bucket.example.com/put"), SCOPE
    )
    [(method, url, content_type, size)] = http.sent
    assert (method, url, content_type) == ("PUT", "https://bucket.example.com/put", "image/png")
    assert size > 0


async def test_an_upload_refuses_what_could_never_be_processed(rig):
    processor, _, _ = rig
    upload = decode_frame(
        json.dumps(
            [
                {
                    "taskType": "imageUpload",
                    "taskUUID": TASK_UUID,
                    "image": base64.b64encode(b"GIF89a-broken").decode(),
                }
            ]
        ).encode()
    ).tasks[0]
    with pytest.raises(TaskFailure) as refused:
        await processor.upload(upload, SCOPE)
    assert refused.value.code == "invalidImage"
