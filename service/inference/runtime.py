"""Model runtimes: one per model file, run a whole batch at a time.

The boundary is ``infer_batch(float32[N,3,H,W]) -> float32[N,H,W]`` (the first output's first
channel, untouched). Anything else that can run such a function (another runtime, a remote
inference server such as Triton) can stand in without the batcher or pipeline noticing.

- ``OnnxModel``: onnxruntime, with CUDA when it is really usable (the GPU path), else the CPU.
- ``OpenVinoModel``: OpenVINO's CPU runtime reading the same ONNX file, in f32 (outputs equal
  onnxruntime's to ~1e-6), faster than onnxruntime on the CPU (docs/decisions/0003).
``load_runtime`` picks one: ``auto`` = onnxruntime+CUDA on a GPU host, else OpenVINO, else
onnxruntime on the CPU.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort

__all__ = [
    "OnnxModel",
    "OpenVinoModel",
    "Runtime",
    "RUNTIMES",
    "cuda_usable",
    "with_symbolic_batch",
    "load_runtime",
    "openvino_available",
]

RUNTIMES = ("auto", "onnxruntime", "openvino")

log = logging.getLogger(__name__)


def _quiet_onnxruntime() -> None:
    """onnxruntime logs a warning per unused initializer and, with the GPU wheel on a host
    without CUDA, an error per provider it cannot load. Providers are chosen here, so only its
    errors that matter are wanted (its logger is process-wide)."""
    ort.set_default_logger_severity(3)


def cuda_usable() -> bool:
    """True only when the CUDA provider is built in *and* a driver with a device answers.

    The GPU wheel lists CUDAExecutionProvider everywhere; asking the driver first avoids a
    session that silently falls back to CPU after logging a screenful of loader errors.
    """
    _quiet_onnxruntime()
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

    preferred_batch = 1  # on the CPU, batching u2netp made onnxruntime slower, not faster

    def __init__(self, path: Path, *, use_cuda: bool, threads: int | None = None) -> None:
        _quiet_onnxruntime()
        model = with_symbolic_batch(onnx.load(str(path)))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if use_cuda
            else ["CPUExecutionProvider"]
        )
        self.inference_session = ort.InferenceSession(
            model.SerializeToString(), sess_options=options, providers=providers
        )
        self.path = path
        self.provider = self.inference_session.get_providers()[0]
        self.on_gpu = self.provider == "CUDAExecutionProvider"
        if use_cuda and not self.on_gpu:
            log.warning("CUDA was usable but %s fell back to %s", path, self.provider)
        if self.on_gpu:
            self.preferred_batch = 16
        model_input = self.inference_session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = self.inference_session.get_outputs()[0].name
        self.input_size = _spatial_size(model_input.shape)

    def infer_batch(self, batch: np.ndarray) -> np.ndarray:
        """float32[N,3,H,W] -> float32[N,H,W]: the first output's first channel per image."""
        (output,) = self.inference_session.run([self.output_name], {self.input_name: batch})
        return output[:, 0, :, :]


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVinoModel:
    """OpenVINO on the CPU: a latency-compiled model for single images (all cores on one image)
    and a throughput-compiled one (one stream per core) that runs a batch's images side by side.
    """

    on_gpu = False

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        precise = {"INFERENCE_PRECISION_HINT": "f32"}  # no bf16/f16 shortcuts: equal outputs
        latency_config = {**precise, "PERFORMANCE_HINT": "LATENCY"}
        throughput_config = {**precise, "PERFORMANCE_HINT": "THROUGHPUT"}
        if threads:
            # With fewer threads than cores, OpenVINO's default pinning puts every process's
            # threads on the first cores: two 1-thread workers would share core 0.
            for config in (latency_config, throughput_config):
                config["INFERENCE_NUM_THREADS"] = str(threads)
                config["ENABLE_CPU_PINNING"] = "NO"
        self._latency = core.compile_model(model, "CPU", latency_config)
        self._request = self._latency.create_infer_request()
        self._throughput = core.compile_model(model, "CPU", throughput_config)
        streams = int(self._throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._queue = ov.AsyncInferQueue(self._throughput, streams)
        self._queue.set_callback(self._collect)
        self._outputs: dict[int, np.ndarray] = {}
        self.preferred_batch = max(1, streams)
        self.path = path
        self.provider = f"OpenVINO CPU ({streams} streams)"
        shape = model.inputs[0].get_partial_shape()
        self.input_size = _spatial_size([d.get_length() if d.is_static else None for d in shape])

    def _collect(self, request, index: int) -> None:
        self._outputs[index] = request.get_output_tensor(0).data[0, 0].copy()

    def infer_batch(self, batch: np.ndarray) -> np.ndarray:
        """float32[N,3,H,W] -> float32[N,H,W]; one image at a time per request (batch 1 graph)."""
        if len(batch) == 1:
            output = self._request.infer({0: batch})[self._latency.outputs[0]]
            return output[:, 0, :, :]
        self._outputs.clear()
        for index, image in enumerate(batch):
            self._queue.start_async({0: image[np.newaxis]}, userdata=index)
        self._queue.wait_all()
        return np.stack([self._outputs[index] for index in range(len(batch))])


class Runtime(Protocol):
    """What the batcher and the registry need of a runtime."""

    path: Path
    provider: str
    on_gpu: bool
    preferred_batch: int
    input_size: tuple[int, int] | None

    def infer_batch(self, batch: np.ndarray) -> np.ndarray: ...


def load_runtime(path: Path, choice: str, *, use_cuda: bool, threads: int | None) -> Runtime:
    """The runtime for ``path``: ``onnxruntime``, ``openvino``, or ``auto`` (see module doc)."""
    if choice not in RUNTIMES:
        raise ValueError(f"unknown runtime {choice!r}; choose one of {', '.join(RUNTIMES)}")
    if choice == "openvino" or (choice == "auto" and not use_cuda and openvino_available()):
        return OpenVinoModel(path, threads=threads)
    return OnnxModel(path, use_cuda=use_cuda, threads=threads)


def _spatial_size(shape: list) -> tuple[int, int] | None:
    """(H, W) when the model fixes them, else None."""
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
        return shape[2], shape[3]
    return None
