"""service.tasks.processor with a stand-in model behind a real batcher, a real CPU pool and a
real directory store: one task to its result."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from protocol.codec import decode_frame
from protocol.errors import TaskFailure
from protocol.messages import BackgroundSettings, RemoveBackground
from service.config import Config
from service.imaging import pipeline
from service.inference.families import FAMILIES
from service.inference.model_input import ModelBatch
from service.metrics import Metrics
from service.scheduling.batcher import MicroBatcher
from service.scheduling.budget import MemoryBudget
from service.scheduling.fairness import FairExecutor
from service.storage.directory import DirectoryImageStore
from service.tasks.inputs import InputResolver
from service.tasks.outcomes import error_item_for
from service.tasks.processor import ModelRoute, Processor, with_server_defaults
from tests.support import fixture_bytes

CAR = fixture_bytes("car-1.jpg")  # 480x360
TASK_UUID = "9ad4918a-e9d0-440a-ac59-057a966cd421"
SCOPE = b"s" * 32


def square_prediction(batch: ModelBatch) -> np.ndarray:
    """The stand-in model: the middle of every image is foreground."""
    out = np.zeros((len(batch), *batch.bands.shape[2:]), np.float32)
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


def nearly_all_foreground(batch: ModelBatch) -> np.ndarray:
    """A stand-in model that sees foreground everywhere but a corner too small to survive
    the trimap's erosion: alpha matting finds no sure background."""
    out = np.ones((len(batch), *batch.bands.shape[2:]), np.float32)
    out[:, :2, :2] = 0.0
    return out


@contextlib.asynccontextmanager
async def processor_rig(tmp_path, predict, **config_fields):
    config = Config(storage_dir=tmp_path, port=7777, **config_fields)
    store = DirectoryImageStore(tmp_path, default_ttl=60)
    http = FakeHttp()
    cpu = FairExecutor(1)
    batcher = MicroBatcher(predict, stack=ModelBatch.of, max_batch=2, max_wait=0.001)
    routes = {"stand-in": ModelRoute(FAMILIES["u2net"], batcher)}
    budget = MemoryBudget(1 << 30)
    metrics = Metrics()
    processor = Processor(
        config,
        routes,
        store,
        InputResolver(store, http),
        http,
        cpu,
        budget,
        metrics,
    )
    try:
        yield processor, store, http, metrics
    finally:
        await batcher.stop()
        cpu.shutdown()


@pytest.fixture
async def rig(tmp_path):
    async with processor_rig(tmp_path, square_prediction, max_matting_pixels=100_000) as parts:
        yield parts[:3]


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

    def decontaminates(task: RemoveBackground) -> bool | None:
        return with_server_defaults(task.settings, config).decontaminate

    assert decontaminates(removal()) is server_default
    assert decontaminates(removal(decontaminate=False)) is False
    assert decontaminates(removal(settings={"decontaminate": True})) is True


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


async def test_matting_without_a_solvable_trimap_falls_back_to_the_decontaminated_cutout(
    tmp_path, caplog
):
    async with processor_rig(tmp_path, nearly_all_foreground) as (processor, store, _, metrics):
        with caplog.at_level(logging.WARNING, logger="service.tasks.processor"):
            result = await processor.remove_background(removal(alphaMatting=True), SCOPE)
        _, data = await store.load(result.imageUUID)
    ours = np.asarray(Image.open(io.BytesIO(data)))
    # What the decontaminated cutout of the same mask is, straight from the pipeline.
    decoded = pipeline.decode_image(CAR, 10**8)
    batch = ModelBatch.of([pipeline.preprocess(decoded, FAMILIES["u2net"])])
    mask = pipeline.mask_from_prediction(nearly_all_foreground(batch)[0], decoded.size)
    settings = BackgroundSettings(decontaminate=True)
    expected = pipeline.cutout(decoded, mask, settings).pixels
    assert np.array_equal(ours, expected)
    naive = pipeline.cutout(decoded, mask, BackgroundSettings()).pixels
    assert not np.array_equal(ours[..., :3], naive[..., :3])
    [record] = [r for r in caplog.records if "fell back" in r.getMessage()]
    assert TASK_UUID in record.getMessage() and "sure background" in record.getMessage()
    assert b"rbg_matting_fallbacks_total 1.0" in metrics.exposition()


async def test_any_other_matting_error_fails_the_task_as_internal(tmp_path, monkeypatch):
    def broken(*args):
        raise ValueError("the band system is singular")

    monkeypatch.setattr(pipeline, "matting_cutout", broken)
    async with processor_rig(tmp_path, square_prediction) as (processor, _, _, metrics):
        task = removal(alphaMatting=True)
        with pytest.raises(ValueError) as raised:
            await processor.remove_background(task, SCOPE)
    assert error_item_for(task, raised.value).code == "internalServerError"
    assert b"rbg_matting_fallbacks_total 0.0" in metrics.exposition()
