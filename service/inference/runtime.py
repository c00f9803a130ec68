"""Model runtimes: one per model file, run a whole batch at a time.

The boundary is ``infer_batch(ModelBatch) -> float32[N,H,W]`` (the first output's first
channel, untouched): the images' bands as bytes and their lookups, which every runtime's graph
turns into the model's floats first (``with_normaliser``). Anything else that can run such a
function (another runtime, a remote inference server such as Triton) can stand in without the
batcher or pipeline noticing.

- ``OnnxModel``: onnxruntime, on the CPU or on CUDA (``service.inference.cuda``).
- ``OpenVinoModel``: OpenVINO's CPU runtime reading the same ONNX file, in f32 (outputs equal
  onnxruntime's to ~1e-6), faster than onnxruntime on the CPU (docs/decisions/0003).

``select_runtime`` decides once per process: ``auto`` is CUDA where a GPU driver answers (and
then CUDA must work: the start stops otherwise), else OpenVINO; ``cuda``, ``openvino`` and
``onnxruntime`` (its CPU provider) force one.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from . import cuda
from .driver import driver_answers
from .errors import CudaUnusable, ModelLoadError
from .model_input import LOOKUP_SHAPE, ModelBatch, ModelInput

__all__ = [
    "OnnxModel",
    "OpenVinoModel",
    "Runtime",
    "RUNTIMES",
    "PRECISIONS",
    "batch_sizes",
    "select_runtime",
    "with_symbolic_batch",
    "with_normaliser",
    "to_fp16",
    "load_runtime",
    "openvino_available",
]

RUNTIMES = ("auto", "cuda", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "fp16")

log = logging.getLogger(__name__)


def _quiet_onnxruntime() -> None:
    """onnxruntime logs a warning per unused initializer and, with the GPU wheel on a host
    without CUDA, an error per provider it cannot load. Providers are chosen here, so only its
    errors that matter are wanted (its logger is process-wide)."""
    ort.set_default_logger_severity(cuda.QUIET_SEVERITY)


def select_runtime(
    choice: str, precision: str = "fp32", options: cuda.CudaOptions | None = None
) -> str:
    """The runtime this host serves from: ``cuda``, ``openvino`` or ``onnxruntime``.

    Raises CudaUnusable when CUDA is chosen (or ``auto`` on a host whose driver answers) and
    the probe session cannot run on it, and ModelLoadError for a precision the runtime lacks.
    """
    if choice not in RUNTIMES:
        raise ModelLoadError(f"unknown runtime {choice!r}; choose one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ModelLoadError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    _quiet_onnxruntime()
    driver = choice in ("auto", "cuda") and driver_answers()
    kind = choice
    if choice == "auto":
        kind = "cuda" if driver else "openvino" if openvino_available() else "onnxruntime"
    if kind == "cuda":
        if not driver:
            raise CudaUnusable(
                "--runtime cuda: no GPU driver answers on this host (libcuda.so.1 with a device); "
                "start with --runtime openvino to serve from the CPU"
            )
        cuda.probe(options or cuda.CudaOptions())
    if precision == "fp16" and kind != "cuda":
        raise ModelLoadError(
            f"--precision fp16 runs on CUDA only; this host serves from {kind}, in fp32"
        )
    return kind


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


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model's weights and arithmetic in float16, its inputs and outputs still float32, so
    that the pipeline around it does not change (onnxconverter-common, the ``gpu`` extra)."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # a line per weight too small for float16, by design
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(model, keep_io_types=True)


# The graph inputs that ``with_normaliser`` gives a model.
BANDS_INPUT, LOOKUPS_INPUT = "bands", "lookups"
# GatherElements, which the normaliser needs, came with opset 11.
_NORMALISER_OPSET = 11


def _named(batch: ModelBatch) -> dict[str, np.ndarray]:
    """The batch's arrays by the graph inputs ``with_normaliser`` gives them."""
    return {BANDS_INPUT: batch.bands, LOOKUPS_INPUT: batch.lookups}


def with_normaliser(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model behind a normaliser: its float input replaced by ``bands`` uint8[N,3,H,W] and
    ``lookups`` float32[N,3,256], each band's bytes looked up in its row (GatherElements: the
    table's floats exactly). A graph whose first input is already uint8 takes bands and lookups
    itself (the stand-in device of load/standin.py) and is returned as it is."""
    graph = model.graph
    model_input = graph.input[0]
    if model_input.type.tensor_type.elem_type == TensorProto.UINT8:
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < _NORMALISER_OPSET:
        raise ModelLoadError(
            f"the model's opset is {opset}; at least {_NORMALISER_OPSET} is needed "
            "(re-export it with a newer opset)"
        )
    dims = [d.dim_param or d.dim_value for d in model_input.type.tensor_type.shape.dim]
    bands = helper.make_tensor_value_info(BANDS_INPUT, TensorProto.UINT8, dims or None)
    lookups = helper.make_tensor_value_info(
        LOOKUPS_INPUT, TensorProto.FLOAT, [dims[0] if dims else "batch", *LOOKUP_SHAPE]
    )
    prefix = "normaliser/"
    graph.initializer.append(
        numpy_helper.from_array(np.array([0, 0, -1], np.int64), f"{prefix}flat_shape")
    )
    nodes = [
        helper.make_node("Shape", [BANDS_INPUT], [f"{prefix}shape"]),
        helper.make_node("Reshape", [BANDS_INPUT, f"{prefix}flat_shape"], [f"{prefix}flat"]),
        helper.make_node("Cast", [f"{prefix}flat"], [f"{prefix}indices"], to=TensorProto.INT64),
        helper.make_node(
            "GatherElements", [LOOKUPS_INPUT, f"{prefix}indices"], [f"{prefix}values"], axis=2
        ),
        helper.make_node("Reshape", [f"{prefix}values", f"{prefix}shape"], [model_input.name]),
    ]
    graph.input.remove(model_input)
    graph.input.insert(0, lookups)
    graph.input.insert(0, bands)
    for position, node in enumerate(nodes):
        graph.node.insert(position, node)
    return model


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a CUDA session runs: powers of two below ``max_batch``, and it. A batch
    runs padded to the next of them, so that cuDNN searches its algorithms for a few shapes,
    all at start, instead of once per size on the first requests."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    return (*sizes, max_batch) if max_batch > 1 else (1,)


class OnnxModel:
    """An inference session over one ONNX file, ready for batches of any size.

    On CUDA (``options`` given): the provider's options of ``cuda.CudaOptions``, run-time
    fallback disabled, inputs and outputs bound in page-locked host buffers of the largest
    batch, and every batch size of ``batch_sizes`` run once at load (the algorithm search).
    """

    preferred_batch = 1  # on the CPU, batching u2netp made onnxruntime slower, not faster

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        options: cuda.CudaOptions | None = None,
        precision: str = "fp32",
        max_batch: int | None = None,
        staging_buffers: int = 1,
    ) -> None:
        _quiet_onnxruntime()
        model = with_symbolic_batch(onnx.load(str(path)))
        if precision == "fp16":
            model = to_fp16(model)
        model = with_normaliser(model)
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = threads or os.cpu_count() or 1
        session_options.inter_op_num_threads = 1
        providers = (
            [(cuda.CUDA_PROVIDER, cuda.provider_options(options))]
            if options is not None
            else ["CPUExecutionProvider"]
        )
        self.inference_session = ort.InferenceSession(
            model.SerializeToString(), sess_options=session_options, providers=providers
        )
        # A failing GPU call raises instead of running the whole session again on the CPU.
        self.inference_session.disable_fallback()
        self.path = path
        self.provider = self.inference_session.get_providers()[0]
        self.on_gpu = self.provider == cuda.CUDA_PROVIDER
        self.feeds_accelerator = self.on_gpu
        if options is not None and not self.on_gpu:
            raise CudaUnusable(
                f"{path}: the session started on {self.provider}, not on CUDA; {cuda.FIX}"
            )
        model_input = self.inference_session.get_inputs()[0]
        self.output_name = self.inference_session.get_outputs()[0].name
        self.input_size = _spatial_size(model_input.shape)
        self._buffers: _BoundBuffers | None = None
        if self.on_gpu:
            self.preferred_batch = max_batch or 16
            if self.input_size is None:
                raise ModelLoadError(
                    f"{path}: a CUDA session needs a model with a fixed input size"
                )
            output_shape = self.inference_session.get_outputs()[0].shape
            self._buffers = _BoundBuffers(
                self.preferred_batch, self.input_size, output_shape, staging_buffers
            )
            self.warm_up()

    def warm_up(self) -> dict[int, float]:
        """Run each batch size once (cuDNN's algorithm search); seconds per size."""
        seconds: dict[int, float] = {}
        for size in batch_sizes(self.preferred_batch):
            started = time.perf_counter()
            self.infer_batch(ModelBatch.zeros(size, self.input_size or (1, 1)))
            seconds[size] = time.perf_counter() - started
        log.info(
            "%s: batch sizes warmed on %s in %s",
            self.path.name,
            self.provider,
            ", ".join(f"{size}: {taken * 1000:.0f} ms" for size, taken in seconds.items()),
        )
        return seconds

    def stack(self, images: Sequence[ModelInput]) -> ModelBatch:
        """One batch from single images: on CUDA straight into the bound input buffers."""
        if self._buffers is None:
            return ModelBatch.of(images)
        return self._buffers.stack(images)

    def infer_batch(self, batch: ModelBatch) -> np.ndarray:
        """N images -> float32[N,H,W]: the first output's first channel per image."""
        if self._buffers is None:
            (output,) = self.inference_session.run([self.output_name], _named(batch))
            return output[:, 0, :, :]
        return self._buffers.run(self, batch)


class _BoundBuffers:
    """Page-locked buffers of the largest batch, bound to a CUDA session: ``inputs`` pairs of
    them (bands and lookups), taken in turn, so that the next batch is stacked into one while
    the device reads another (batches in flight), and one for the output. A batch runs padded
    to the next size of ``batch_sizes`` (rows beyond it hold whatever an earlier batch left,
    and their outputs are dropped)."""

    def __init__(
        self, max_batch: int, size: tuple[int, int], output_shape: list, inputs: int = 1
    ) -> None:
        self.sizes = batch_sizes(max_batch)
        self.inputs = [ModelBatch.zeros(max_batch, size) for _ in range(inputs)]
        self._next_input = 0
        tail = output_shape[1:]
        fixed = all(isinstance(d, int) for d in tail)
        self.output = np.zeros((max_batch, *tail), np.float32) if fixed else None
        buffers = [array for batch in self.inputs for array in (batch.bands, batch.lookups)]
        self.pinned = all(cuda.pin(buffer) for buffer in buffers) and (
            self.output is None or cuda.pin(self.output)
        )
        if not self.pinned:
            log.warning("page-locked host buffers refused: copies to the GPU go through staging")

    def stack(self, images: Sequence[ModelInput]) -> ModelBatch:
        """The images stacked into the next input buffers in turn (called from one thread)."""
        buffer = self.inputs[self._next_input]
        self._next_input = (self._next_input + 1) % len(self.inputs)
        view = buffer.rows(0, len(images))
        np.stack([image.bands for image in images], out=view.bands)
        np.stack([image.lookup for image in images], out=view.lookups)
        return view

    def _padded(self, count: int) -> int:
        return next(size for size in self.sizes if size >= count)

    def _holding(self, batch: ModelBatch) -> ModelBatch:
        """The input buffers that hold ``batch`` (stacked there), or the first ones, ``batch``
        copied into them (a batch from elsewhere: the warm-up's, before any is in flight)."""
        for buffer in self.inputs:
            if np.shares_memory(batch.bands, buffer.bands):
                return buffer
        self.inputs[0].bands[: len(batch)] = batch.bands
        self.inputs[0].lookups[: len(batch)] = batch.lookups
        return self.inputs[0]

    def run(self, model: OnnxModel, batch: ModelBatch) -> np.ndarray:
        count = len(batch)
        rows = self._padded(count)
        binding = model.inference_session.io_binding()
        for name, bound in _named(self._holding(batch).rows(0, rows)).items():
            binding.bind_input(name, "cpu", 0, bound.dtype, list(bound.shape), bound.ctypes.data)
        if self.output is not None:
            target = self.output[:rows]
            binding.bind_output(
                model.output_name, "cpu", 0, np.float32, list(target.shape), target.ctypes.data
            )
            model.inference_session.run_with_iobinding(binding)
            return target[:count, 0].copy()  # the buffer is the next batch's
        binding.bind_output(model.output_name, "cpu")
        model.inference_session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0][:count, 0]


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino_provider(latency: Any, throughput: Any, streams: int) -> str:
    """What the operator reads in the start-up line, /v1/models and /metrics: the streams, and
    the threads and pinning that OpenVINO itself reports for both compiled models."""
    compiled = (latency, throughput)
    threads = "/".join(sorted({str(c.get_property("INFERENCE_NUM_THREADS")) for c in compiled}))
    pinning = "/".join(
        sorted({"pinned" if c.get_property("ENABLE_CPU_PINNING") else "unpinned" for c in compiled})
    )
    described = (_counted(str(streams), "stream"), _counted(threads, "thread"), pinning)
    return f"OpenVINO CPU ({', '.join(described)})"


def _counted(count: str, noun: str) -> str:
    return f"{count} {noun}" if count == "1" else f"{count} {noun}s"


class OpenVinoModel:
    """OpenVINO on the CPU: a latency-compiled model for single images (all cores on one image)
    and a throughput-compiled one (one stream per core) that runs a batch's images side by side.
    """

    on_gpu = False
    feeds_accelerator = False

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(with_normaliser(onnx.load(str(path))).SerializeToString())
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
        self._input_names = [port.get_any_name() for port in self._latency.inputs]
        self._request = self._latency.create_infer_request()
        self._throughput = core.compile_model(model, "CPU", throughput_config)
        streams = int(self._throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._queue = ov.AsyncInferQueue(self._throughput, streams)
        self._queue.set_callback(self._collect)
        self._outputs: dict[int, np.ndarray] = {}
        self.preferred_batch = max(1, streams)
        self.path = path
        self.provider = _openvino_provider(self._latency, self._throughput, streams)
        shape = model.inputs[0].get_partial_shape()
        self.input_size = _spatial_size([d.get_length() if d.is_static else None for d in shape])

    def stack(self, images: Sequence[ModelInput]) -> ModelBatch:
        return ModelBatch.of(images)

    def _feeds(self, batch: ModelBatch) -> dict[str, np.ndarray]:
        """By name, and only those the compiled model kept: OpenVINO drops an input that no
        output depends on (the stand-in's lookups)."""
        feeds = _named(batch)
        return {name: feeds[name] for name in self._input_names}

    def _collect(self, request, index: int) -> None:
        self._outputs[index] = request.get_output_tensor(0).data[0, 0].copy()

    def infer_batch(self, batch: ModelBatch) -> np.ndarray:
        """N images -> float32[N,H,W]; one image at a time per request (batch 1 graph)."""
        if len(batch) == 1:
            output = self._request.infer(self._feeds(batch))
            return output[self._latency.outputs[0]][:, 0, :, :]
        self._outputs.clear()
        for index in range(len(batch)):
            self._queue.start_async(self._feeds(batch.rows(index, index + 1)), userdata=index)
        self._queue.wait_all()
        return np.stack([self._outputs[index] for index in range(len(batch))])


class Runtime(Protocol):
    """What the batcher and the registry need of a runtime."""

    path: Path
    provider: str
    on_gpu: bool  # runs on a GPU (CUDA)
    # Its batches go to a device that works while the CPU stages the next (a GPU, or the
    # benchmarks' simulated one): worth two batches in flight (docs/decisions/0012).
    feeds_accelerator: bool
    preferred_batch: int
    input_size: tuple[int, int] | None

    def stack(self, images: Sequence[ModelInput]) -> ModelBatch: ...

    def infer_batch(self, batch: ModelBatch) -> np.ndarray: ...


def load_runtime(
    path: Path,
    kind: str,
    *,
    threads: int | None = None,
    options: cuda.CudaOptions | None = None,
    precision: str = "fp32",
    max_batch: int | None = None,
    staging_buffers: int = 1,
) -> Runtime:
    """The runtime of ``select_runtime``'s ``kind`` for ``path``; on CUDA with
    ``staging_buffers`` page-locked input buffers (one per batch in flight)."""
    if kind == "openvino":
        return OpenVinoModel(path, threads=threads)
    if kind == "cuda":
        return OnnxModel(
            path,
            threads=threads,
            options=options or cuda.CudaOptions(),
            precision=precision,
            max_batch=max_batch,
            staging_buffers=staging_buffers,
        )
    if kind == "onnxruntime":
        return OnnxModel(path, threads=threads, precision=precision)
    raise ModelLoadError(f"unknown runtime {kind!r}; choose one of {', '.join(RUNTIMES[1:])}")


def _spatial_size(shape: list) -> tuple[int, int] | None:
    """(H, W) when the model fixes them, else None."""
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
        return shape[2], shape[3]
    return None
