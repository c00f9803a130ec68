"""The model alone, without the service: u2netp through onnxruntime and through the service's
OpenVINO runtime, on one image's model input."""

from __future__ import annotations

import time

import numpy as np

from service.inference.families import FAMILIES  # plain data: no model runtime

from .processes import MODEL


def model_input(image: bytes) -> np.ndarray:
    """u2netp's input tensor (a batch of one) for the encoded ``image``."""
    from service.imaging.pipeline import decode_image, preprocess

    return preprocess(decode_image(image, 40_000_000), FAMILIES["u2net"])[np.newaxis]


def onnxruntime_rate(tensor: np.ndarray, seconds: float) -> float:
    """Images/s of a default onnxruntime session (all cores, batch 1) over ``seconds``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: tensor})
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {name: tensor})
        count += 1
    return count / (time.perf_counter() - start)


def openvino_rate(tensor: np.ndarray, seconds: float) -> tuple[float, int]:
    """Images/s through the service's OpenVINO runtime at its preferred batch, and that batch."""
    from service.inference.runtime import OpenVinoModel

    model = OpenVinoModel(MODEL)
    batch = np.repeat(tensor, model.preferred_batch, axis=0)
    model.infer_batch(batch)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += len(model.infer_batch(batch))
    return count / (time.perf_counter() - start), model.preferred_batch


def u2netp_core_ms(tensor: np.ndarray, runs: int = 10) -> tuple[float, np.ndarray]:
    """Core-ms of one u2netp inference on one thread, and the model's raw prediction."""
    from service.inference.runtime import load_runtime

    model = load_runtime(MODEL, "onnxruntime", threads=1)
    prediction = model.infer_batch(tensor)[0]
    start = time.process_time()
    for _ in range(runs):
        model.infer_batch(tensor)
    return (time.process_time() - start) * 1000 / runs, prediction
