"""service.inference.cuda and the CUDA path of the runtime, on the CPU provider: the options a
CUDA session takes, the probe that refuses a provider whose libraries do not load, the bound
buffers and batch sizes, and fp16's fidelity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.imaging import pipeline
from service.inference import cuda
from service.inference.driver import driver_answers
from service.inference.errors import CudaUnusable, ModelLoadError
from service.inference.families import FAMILIES
from service.inference.model_input import ModelBatch, ModelInput
from service.inference.runtime import (
    OnnxModel,
    _BoundBuffers,
    batch_sizes,
    select_runtime,
)
from tests.support import FIXTURES, MODEL

PHOTOS = sorted(FIXTURES.glob("*.jpg"))  # rembg's photos (tests/fixtures/README.md)


def test_cuda_sessions_keep_tf32_off_unless_allowed():
    assert cuda.provider_options(cuda.CudaOptions())["use_tf32"] == "0"
    assert cuda.provider_options(cuda.CudaOptions(allow_tf32=True))["use_tf32"] == "1"
    assert cuda.provider_options(cuda.CudaOptions())["cudnn_conv_algo_search"] == "EXHAUSTIVE"


def test_sessions_never_fall_back_to_the_cpu_at_run_time():
    model = OnnxModel(MODEL, threads=1)
    # onnxruntime keeps the switch in the session: with it on, a failing provider call would be
    # run again on the CPU, and the GPU host would serve slow batches without an error.
    assert model.inference_session._enable_fallback is False


@pytest.mark.skipif(driver_answers(), reason="a GPU driver answers here: the probe may pass")
def test_the_probe_refuses_a_cuda_provider_whose_libraries_do_not_load():
    with pytest.raises(CudaUnusable) as refused:
        cuda.probe(cuda.CudaOptions())
    message = str(refused.value)
    assert "\n" not in message
    assert ".so" in message  # the loader's words for the library it could not open
    assert "--runtime openvino" in message and "make install GPU=1" in message


@pytest.mark.skipif(driver_answers(), reason="a GPU driver answers here")
def test_forcing_cuda_without_a_driver_stops_with_the_fix():
    with pytest.raises(CudaUnusable, match="no GPU driver answers.*--runtime openvino"):
        select_runtime("cuda")


def test_fp16_is_refused_on_the_cpu_runtimes():
    for runtime in ("openvino", "onnxruntime"):
        with pytest.raises(ModelLoadError, match="fp16 runs on CUDA only"):
            select_runtime(runtime, "fp16")
    with pytest.raises(ModelLoadError, match="unknown precision"):
        select_runtime("openvino", "int8")


def test_batch_sizes_are_few_and_cover_every_batch():
    assert batch_sizes(16) == (1, 2, 4, 8, 16)
    assert batch_sizes(12) == (1, 2, 4, 8, 12)
    assert batch_sizes(1) == (1,)


def random_input(rng: np.random.Generator) -> ModelInput:
    bands = rng.integers(0, 256, (3, 320, 320), dtype=np.uint8)
    return ModelInput(bands, rng.standard_normal((3, 256)).astype(np.float32))


def test_bound_buffers_pad_a_batch_and_return_only_its_rows():
    """The CUDA path's IO binding, run on the CPU provider: a batch of 3 runs as 4 in the bound
    buffer; its rows equal an unbound run, and the next batch does not change them."""
    model = OnnxModel(MODEL, threads=1)
    shape = model.inference_session.get_outputs()[0].shape
    buffers = _BoundBuffers(8, (320, 320), shape)
    assert not buffers.pinned  # no CUDA runtime here: plain host memory, still bound
    rng = np.random.default_rng(0)
    images = [random_input(rng) for _ in range(3)]
    batch = buffers.stack(images)
    assert np.shares_memory(batch.bands, buffers.inputs[0].bands) and len(batch) == 3
    assert np.shares_memory(batch.lookups, buffers.inputs[0].lookups)
    outputs = buffers.run(model, batch)
    assert outputs.shape == (3, 320, 320)
    expected = model.infer_batch(ModelBatch.of(images))
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    buffers.run(model, buffers.stack(images[:1]))
    np.testing.assert_allclose(outputs, expected, atol=1e-5)


def test_two_input_buffers_let_the_next_batch_be_staged_while_one_runs():
    """With two batches in flight the second is stacked while the first runs: stacks take the
    buffers in turn, and each batch runs from its own, so neither overwrites the other."""
    model = OnnxModel(MODEL, threads=1)
    shape = model.inference_session.get_outputs()[0].shape
    buffers = _BoundBuffers(4, (320, 320), shape, inputs=2)
    rng = np.random.default_rng(1)
    first_images = [random_input(rng) for _ in range(2)]
    second_images = [random_input(rng) for _ in range(2)]
    first, second = buffers.stack(first_images), buffers.stack(second_images)
    assert np.shares_memory(first.bands, buffers.inputs[0].bands)
    assert np.shares_memory(second.bands, buffers.inputs[1].bands)
    np.testing.assert_allclose(
        buffers.run(model, first), model.infer_batch(ModelBatch.of(first_images)), atol=1e-5
    )
    np.testing.assert_allclose(
        buffers.run(model, second), model.infer_batch(ModelBatch.of(second_images)), atol=1e-5
    )
    assert np.shares_memory(buffers.stack(first_images[:1]).bands, buffers.inputs[0].bands)


def _masks(model: OnnxModel, photo: Path) -> np.ndarray:
    decoded = pipeline.decode_image(photo.read_bytes(), 100_000_000)
    batch = ModelBatch.of([pipeline.preprocess(decoded, FAMILIES["u2net"])])
    return pipeline.mask_from_prediction(model.infer_batch(batch)[0], decoded.size)


def test_fp16_masks_stay_within_a_level_of_fp32s_on_the_photos():
    """docs/models.md quotes these figures: fp16 is close, not equal, hence opt-in."""
    exact, half = OnnxModel(MODEL, threads=2), OnnxModel(MODEL, threads=2, precision="fp16")
    means, worst = [], 0
    for photo in PHOTOS:
        difference = np.abs(_masks(exact, photo).astype(int) - _masks(half, photo).astype(int))
        means.append(difference.mean())
        worst = max(worst, int(difference.max()))
    assert len(means) >= 10
    assert np.mean(means) <= 0.5  # measured 0.34/255 over the 14 photos
    assert max(means) <= 1.0  # measured 0.88/255 (animal-1)
    assert 0 < worst <= 100  # measured 85/255 on one pixel: not equal, so never the default
