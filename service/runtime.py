"""Model runtime: one onnxruntime session per model file, run a whole batch at a time.

The boundary is ``infer_batch(float32[N,3,H,W]) -> float32[N,H,W]`` (the first output's first
channel, untouched). Anything else that can run such a function (another runtime, a remote
inference server) can stand in for ``OnnxModel`` without the batcher or pipeline noticing.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

__all__ = ["OnnxModel", "cuda_usable", "with_symbolic_batch"]

log = logging.getLogger(__name__)

# onnxruntime logs a warning per unused initializer and, with the GPU wheel on a host without
# CUDA, an error per provider it cannot load. We choose providers ourselves, so keep it quiet.
ort.set_default_logger_severity(3)


def cuda_usable() -> bool:
    """True only when the CUDA provider is built in *and* a driver with a device answers.

    The GPU wheel lists CUDAExecutionProvider everywhere; asking the driver first avoids a
    session that silently falls back to CPU after logging a screenful of loader errors.
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0


def with_symbolic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every graph input and output a symbolic first (batch) dimension.

    Exported u2net files fix it to 1, which would forbid micro-batching. Intermediate shape
    annotations are dropped too; onnxruntime re-infers them.
    """
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]
    return model


class OnnxModel:
    """An inference session over one ONNX file, ready for batches of any size."""

    def __init__(self, path: Path, *, use_cuda: bool, threads: int | None = None) -> None:
        model = with_symbolic_batch(onnx.load(str(path)))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                            providers=providers)
        self.path = path
        self.provider = self.session.get_providers()[0]
        if use_cuda and self.provider != "CUDAExecutionProvider":
            log.warning("CUDA was usable but %s fell back to %s", path, self.provider)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = self.session.get_outputs()[0].name
        self.input_size = _spatial_size(model_input.shape)

    def infer_batch(self, batch: np.ndarray) -> np.ndarray:
        """float32[N,3,H,W] -> float32[N,H,W]: the first output's first channel per image."""
        (output,) = self.session.run([self.output_name], {self.input_name: batch})
        return output[:, 0, :, :]


def _spatial_size(shape: list) -> tuple[int, int] | None:
    """(H, W) when the model fixes them, else None."""
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
        return shape[2], shape[3]
    return None
