"""The stand-in device: an ONNX graph that answers every image with one real u2netp prediction
at next to no cost, so that the service's CPU work around the model can be measured as a GPU
host would see it (the model nearly free) on a machine without a GPU.

A benchmarking tool behind the ``infer_batch`` boundary: the service serves it like any model
file (``--model replay=PATH:u2net``); nothing in the service knows it is not a real model. It
takes the bands and lookups a runtime is given (service.inference.model_input) itself, so the
normaliser that a GPU runs before the model costs nothing here either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["write_replay_model"]


def write_replay_model(path: Path, prediction: np.ndarray) -> Path:
    """Write a graph (uint8[N,3,S,S] bands, float32[N,3,256] lookups) -> float32[N,1,S,S]
    whose every output row is ``prediction`` (float32[S,S], a model's raw output for one
    image), whatever the input."""
    size = prediction.shape[-1]
    constant = numpy_helper.from_array(
        prediction.astype(np.float32).reshape(1, 1, size, size), name="prediction"
    )
    tail = numpy_helper.from_array(np.array([1, size, size], dtype=np.int64), name="tail")
    start = numpy_helper.from_array(np.array([0], dtype=np.int64), name="start")
    stop = numpy_helper.from_array(np.array([1], dtype=np.int64), name="stop")
    nodes = [
        helper.make_node("Shape", ["bands"], ["input_shape"]),
        helper.make_node("Slice", ["input_shape", "start", "stop"], ["batch"]),
        helper.make_node("Concat", ["batch", "tail"], ["output_shape"], axis=0),
        helper.make_node("Expand", ["prediction", "output_shape"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "replay",
        [
            helper.make_tensor_value_info("bands", TensorProto.UINT8, ["batch", 3, size, size]),
            helper.make_tensor_value_info("lookups", TensorProto.FLOAT, ["batch", 3, 256]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, size, size])],
        initializer=[constant, tail, start, stop],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
