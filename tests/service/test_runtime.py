"""service.inference.runtime and service.fetch_model: the model file and its batch dimension."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx

from service.config import Config, ModelOverride
from service.fetch_model import MD5
from service.inference.families import FAMILIES
from service.inference.registry import load_registry
from service.inference.runtime import OnnxModel, select_runtime, with_symbolic_batch
from tests.support import MODEL, build_isnet_test_model


def test_the_embedded_model_is_the_pinned_file():
    assert hashlib.md5(MODEL.read_bytes()).hexdigest() == MD5


def test_symbolic_batch_replaces_the_fixed_one(tmp_path):
    path = build_isnet_test_model(tmp_path / "m.onnx")
    model = with_symbolic_batch(onnx.load(path))
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_a_fixed_batch_model_runs_batches_of_any_size(tmp_path):
    runtime = OnnxModel(build_isnet_test_model(tmp_path / "m.onnx"))
    batch = np.random.default_rng(0).standard_normal((3, 3, 1024, 1024)).astype(np.float32)
    out = runtime.infer_batch(batch)
    assert out.shape == (3, 1024, 1024)
    assert np.allclose(out, 1 / (1 + np.exp(-batch.mean(axis=1))), atol=1e-5)
    assert runtime.input_size == (1024, 1024)


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
