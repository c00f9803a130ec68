"""The model alone, without the service: u2netp through onnxruntime and through the service's
OpenVINO runtime, on one image's model input."""

from __future__ import annotations

import time

import numpy as np

from service.inference.families import FAMILIES  # plain data: no model runtime
from service.inference.model_input import ModelBatch, ModelInput  # plain data too

from .processes import MODEL


def model_input(image: bytes) -> ModelInput:
    """u2netp's input for the encoded ``image``."""
    from service.imaging.pipeline import decode_image, preprocess

    return preprocess(decode_image(image, 40_000_000), FAMILIES["u2net"])


def onnxruntime_rate(image: ModelInput, seconds: float) -> float:
    """Images/s of a default onnxruntime session on the model file as it is (all cores,
    batch 1, the float input made beforehand) over ``seconds``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    tensor = image.floats()[None]
    session.run(None, {name: tensor})
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {name: tensor})
        count += 1
    return count / (time.perf_counter() - start)


def openvino_rate(image: ModelInput, seconds: float) -> tuple[float, int]:
    """Images/s through the service's OpenVINO runtime at its preferred batch, and that batch."""
    from service.inference.runtime import OpenVinoModel

    model = OpenVinoModel(MODEL)
    batch = ModelBatch.of([image] * model.preferred_batch)
    model.infer_batch(batch)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += len(model.infer_batch(batch))
    return count / (time.perf_counter() - start), model.preferred_batch


def u2netp_core_ms(image: ModelInput, runs: int = 10) -> tuple[float, np.ndarray]:
    """Core-ms of one u2netp inference on one thread, and the model's raw prediction."""
    from service.inference.runtime import load_runtime

    model = load_runtime(MODEL, "onnxruntime", threads=1)
    batch = ModelBatch.of([image])
    prediction = model.infer_batch(batch)[0]
    start = time.process_time()
    for _ in range(runs):
        model.infer_batch(batch)
    return (time.process_time() - start) * 1000 / runs, prediction
