"""The CUDA path of onnxruntime: its libraries loaded from the environment, a probe session that
proves the provider runs, the provider's options, and page-locked host buffers.

The ``onnxruntime-gpu`` wheel needs CUDA 13 and cuDNN 9. The project's ``gpu`` extra installs
them from PyPI as NVIDIA's wheels (``make install`` does so where a driver answers), and
``load_cuda_libraries`` loads them from there before the first inference session: no system
CUDA and no ``LD_LIBRARY_PATH`` are needed. Only the driver's own ``libcuda.so.1`` comes from the host.

Trusting the provider list is not enough: the GPU wheel lists ``CUDAExecutionProvider`` on
every host, and a session whose provider cannot load runs on the CPU after a log line. So the
CUDA path is taken only after a probe session has run a convolution on the device, and every
session disables onnxruntime's run-time fallback, so that a failing GPU call is an error, not
a slow CPU batch.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from .errors import CudaUnusable

__all__ = [
    "CUDA_PROVIDER",
    "CudaOptions",
    "provider_options",
    "load_cuda_libraries",
    "missing_library",
    "probe",
    "pin",
]

CUDA_PROVIDER = "CUDAExecutionProvider"
# onnxruntime's process-wide log level: errors only (it warns per unused initializer).
QUIET_SEVERITY = 3
FIX = (
    "install the CUDA libraries with `make install GPU=1`, or start with --runtime openvino "
    "to serve from the CPU on purpose"
)


@dataclass(frozen=True)
class CudaOptions:
    """How the CUDA provider runs.

    TF32 convolutions are off by default: they moved u2netp's masks by up to 46/255 on the
    fixture photos (docs/models.md), and the promise is rembg's mask. cuDNN's exhaustive
    algorithm search is onnxruntime's default; it runs once per input shape, so the runtime
    warms every batch size it will use at start (``OnnxModel``).
    """

    allow_tf32: bool = False
    conv_algo_search: str = "EXHAUSTIVE"


def provider_options(options: CudaOptions) -> dict[str, str]:
    """The CUDA provider's options, as onnxruntime takes them (strings)."""
    return {
        "use_tf32": "1" if options.allow_tf32 else "0",
        "cudnn_conv_algo_search": options.conv_algo_search,
        # Copies on the compute stream: an input bound from host memory is in place before
        # the first kernel reads it, without a device-wide synchronisation.
        "do_copy_in_default_stream": "1",
    }


def load_cuda_libraries() -> None:
    """Load CUDA's and cuDNN's libraries from NVIDIA's wheels in this environment, so that the
    CUDA provider finds them without ``LD_LIBRARY_PATH``. onnxruntime prints what it cannot
    load; ``missing_library`` says it in one line instead."""
    with contextlib.redirect_stdout(io.StringIO()):
        ort.preload_dlls(cuda=True, cudnn=True)


def _provider_library() -> Path:
    return Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"


def missing_library() -> str | None:
    """The loader's own words for the first library the CUDA provider cannot load, or None
    when it loads."""
    try:
        ctypes.CDLL(str(_provider_library()))
    except OSError as error:
        return str(error)
    return None


def _probe_graph() -> bytes:
    """A 1x1 convolution of 3 channels into 1 (cuDNN, as every model here uses)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 1, 1], [0.25, 0.5, 0.25])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "cuda-probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _unusable(error: BaseException | None = None) -> CudaUnusable:
    """One line: what the loader could not open (or onnxruntime's own words) and the fix."""
    reason = missing_library() or (
        re.sub(r"\s+", " ", str(error)).strip()[:300]
        if error
        else "the CUDA provider did not start"
    )
    return CudaUnusable(f"a GPU driver answers but CUDA cannot be used: {reason}; {FIX}")


def probe(options: CudaOptions) -> None:
    """Run a convolution through the CUDA provider with ``options``; raise CudaUnusable with one
    line naming what is missing and the fix when it does not run there."""
    if CUDA_PROVIDER not in ort.get_available_providers():
        raise CudaUnusable(f"this onnxruntime has no CUDA provider (onnxruntime-gpu); {FIX}")
    load_cuda_libraries()
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 4  # its loader errors are said below, in one line
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(
            _probe_graph(),
            sess_options=session_options,
            providers=[(CUDA_PROVIDER, provider_options(options))],
        )
        session.disable_fallback()
        on_cuda = session.get_providers()[0] == CUDA_PROVIDER
        if on_cuda:
            session.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})
    except Exception as error:  # onnxruntime raises its own Fail/RuntimeException kinds
        raise _unusable(error) from None
    finally:
        ort.set_default_logger_severity(QUIET_SEVERITY)
    if not on_cuda:
        raise _unusable()


_CUDA_HOST_REGISTER_DEFAULT = 0


def pin(array: np.ndarray) -> bool:
    """Page-lock ``array``'s memory for the GPU (cudaHostRegister), so that copies from and to it
    go by DMA without a staging copy. False when CUDA's runtime is not loaded or refuses."""
    try:
        runtime = ctypes.CDLL("libcudart.so.13")
    except OSError:
        return False
    status = runtime.cudaHostRegister(
        ctypes.c_void_p(array.ctypes.data),
        ctypes.c_size_t(array.nbytes),
        ctypes.c_uint(_CUDA_HOST_REGISTER_DEFAULT),
    )
    return status == 0
