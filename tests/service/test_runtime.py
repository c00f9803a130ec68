"""service.inference.runtime and service.fetch_model: the model file and its batch dimension."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.config import Config, ModelOverride
from service.fetch_model import MD5
from service.inference.errors import ModelLoadError
from service.inference.families import FAMILIES
from service.inference.model_input import ModelBatch
from service.inference.registry import load_registry
from service.inference.runtime import (
    OnnxModel,
    load_runtime,
    select_runtime,
    with_normaliser,
    with_symbolic_batch,
)
from tests.support import MODEL, build_isnet_test_model


def test_the_embedded_model_is_the_pinned_file():
    assert hashlib.md5(MODEL.read_bytes()).hexdigest() == MD5


def test_symbolic_batch_replaces_the_fixed_one(tmp_path):
    path = build_isnet_test_model(tmp_path / "m.onnx")
    model = with_symbolic_batch(onnx.load(path))
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


def random_batch(images: int, size: int) -> ModelBatch:
    rng = np.random.default_rng(images)
    batch = ModelBatch.zeros(images, (size, size))
    batch.bands[:] = rng.integers(0, 256, batch.bands.shape)
    batch.lookups[:] = rng.standard_normal(batch.lookups.shape)
    return batch


def test_a_fixed_batch_model_runs_batches_of_any_size(tmp_path):
    runtime = OnnxModel(build_isnet_test_model(tmp_path / "m.onnx"))
    batch = random_batch(3, 1024)
    out = runtime.infer_batch(batch)
    assert out.shape == (3, 1024, 1024)
    assert np.allclose(out, 1 / (1 + np.exp(-batch.floats().mean(axis=1))), atol=1e-5)
    assert runtime.input_size == (1024, 1024)


def write_showing_graph(path, size: int):
    """A "model" whose output is its float input, the three bands one above the other: what
    the normaliser put in, to be read back."""
    shape = numpy_helper.from_array(np.array([-1, 1, 3 * size, size], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["input", "shape"], ["output"])],
        "showing",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 3 * size, size])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_normaliser_gives_the_lookups_floats_to_the_bit(tmp_path, runtime):
    """What a runtime's graph feeds the model is ModelInput.floats(): every byte of every band
    looked up in its own image's row, on each runtime."""
    path = write_showing_graph(tmp_path / "showing.onnx", 8)
    model = load_runtime(path, runtime, threads=1)
    for images in (1, 3):
        batch = random_batch(images, 8)
        shown = model.infer_batch(batch).reshape(images, 3, 8, 8)
        assert np.array_equal(shown.view(np.uint32), batch.floats().view(np.uint32))


def test_a_model_older_than_opset_11_is_refused_with_the_reason(tmp_path):
    path = write_showing_graph(tmp_path / "old.onnx", 8)
    model = onnx.load(str(path))
    model.opset_import[0].version = 10
    with pytest.raises(ModelLoadError, match="opset is 10"):
        with_normaliser(model)


def test_a_host_without_a_gpu_driver_serves_from_openvino_by_default():
    assert select_runtime("auto") == "openvino"
    assert select_runtime("onnxruntime") == "onnxruntime"
    assert OnnxModel(MODEL).provider == "CPUExecutionProvider"


def test_registry_serves_rembg_1_4_by_the_embedded_model_and_detects_families(tmp_path):
    extra = build_isnet_test_model(tmp_path / "rmbg.onnx")
    registry = load_registry(
        Config(models_dir=MODEL.parent, models=(ModelOverride("rmbg-test", extra),))
    )
    assert registry.get("runware:109@1").runtime is registry.get("u2netp").runtime
    assert registry.get("u2netp").family is FAMILIES["u2net"]
    assert registry.get("rmbg-test").family is FAMILIES["isnet"]
    assert registry.get("nope") is None


def test_openvino_with_fewer_threads_than_cores_does_not_pin_them(tmp_path):
    """Two 1-thread workers on one host would otherwise share the first core."""
    from service.inference.runtime import OpenVinoModel

    path = build_isnet_test_model(tmp_path / "m.onnx", size=320)
    limited = OpenVinoModel(path, threads=1)
    # as OpenVINO reports them for both compiled models
    assert limited.provider.endswith(", 1 thread, unpinned)"), limited.provider
