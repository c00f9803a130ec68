"""load.standin: the replay graph answers every image of a batch with the recorded prediction,
through the service's own runtimes."""

from __future__ import annotations

import numpy as np
import pytest

from load.standin import write_replay_model
from service.inference.model_input import ModelBatch
from service.inference.runtime import load_runtime


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_replay_graph_returns_its_prediction_for_any_batch(tmp_path, runtime):
    rng = np.random.default_rng(7)
    prediction = rng.random((320, 320), dtype=np.float32)
    path = write_replay_model(tmp_path / "replay.onnx", prediction)
    model = load_runtime(path, runtime, threads=1)
    assert model.input_size == (320, 320)
    for batch in (1, 3):
        inputs = ModelBatch.zeros(batch, (320, 320))
        inputs.bands[:] = rng.integers(0, 256, inputs.bands.shape)
        outputs = model.infer_batch(inputs)
        assert outputs.shape == (batch, 320, 320)
        assert np.array_equal(outputs, np.broadcast_to(prediction, outputs.shape))
