"""Preprocessing families: each loads from a synthetic graph and reads images as the rembg 2.0.86
session that runs such files (golden files made by rembg's own predict(), make_golden.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.config import Config, ModelOverride
from service.imaging import pipeline
from service.inference.families import FAMILIES
from service.inference.model_input import ModelBatch
from service.inference.registry import load_registry
from service.inference.runtime import OnnxModel
from tests.support import GOLDEN, build_family_test_model, darkened, fixture_bytes

# The families rembg has a session for; ``isnet`` is BRIA's RMBG-1.4 recipe, which rembg does
# not run (test_pipeline checks its arithmetic).
CHECKED_AGAINST_REMBG = ("u2net", "isnet-general", "birefnet", "bria-rmbg2")


def darkened_car() -> pipeline.DecodedImage:
    buffer = io.BytesIO()
    darkened(Image.open(io.BytesIO(fixture_bytes("car-1.jpg")))).save(buffer, "PNG")
    return pipeline.decode_image(buffer.getvalue(), 10**8)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    return {size: build_family_test_model(folder / f"{size}.onnx", size) for size in (320, 1024)}


@pytest.mark.parametrize("name", CHECKED_AGAINST_REMBG)
def test_the_model_input_is_what_rembgs_session_feeds(name):
    family = FAMILIES[name]
    ours = pipeline.preprocess(darkened_car(), family).floats()
    golden = np.load(GOLDEN / f"family-{name}.input.npz")
    assert ours.shape == (3, family.size, family.size)
    assert np.abs(ours[:, ::16, ::16] - golden["strided"]).max() <= 1e-6
    sums = ours.astype(np.float64).sum(axis=(1, 2))
    assert np.allclose(sums, golden["channel_sums"], rtol=0, atol=1e-6 * ours[0].size)


@pytest.mark.parametrize("name", CHECKED_AGAINST_REMBG)
def test_the_mask_is_rembgs(name, graphs):
    family = FAMILIES[name]
    decoded = darkened_car()
    runtime = OnnxModel(graphs[family.size], threads=1)
    prediction = runtime.infer_batch(ModelBatch.of([pipeline.preprocess(decoded, family)]))[0]
    ours = pipeline.mask_from_prediction(prediction, decoded.size, family.sigmoid)
    golden = np.asarray(Image.open(GOLDEN / f"family-{name}.mask.png"))
    difference = np.abs(ours.astype(np.int16) - golden)
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_birefnets_sigmoid_changes_the_mask(graphs):
    """Without the sigmoid, birefnet's file would give bria-rmbg2's mask: the flag matters."""
    decoded = darkened_car()
    batch = ModelBatch.of([pipeline.preprocess(decoded, FAMILIES["birefnet"])])
    prediction = OnnxModel(graphs[1024], threads=1).infer_batch(batch)[0]
    squashed = pipeline.mask_from_prediction(prediction, decoded.size, sigmoid=True)
    raw = pipeline.mask_from_prediction(prediction, decoded.size, sigmoid=False)
    assert np.abs(squashed.astype(np.int16) - raw).mean() > 1


def test_scaling_by_the_maximum_is_not_scaling_by_255():
    """isnet (/255) and isnet-general (/max) differ only there; the darkened photo tells them
    apart."""
    decoded = darkened_car()
    by_255 = pipeline.preprocess(decoded, FAMILIES["isnet"]).floats()
    by_max = pipeline.preprocess(decoded, FAMILIES["isnet-general"]).floats()
    assert np.abs(by_max - by_255).max() > 0.1


def test_every_family_loads_from_its_synthetic_graph(graphs):
    overrides = tuple(
        ModelOverride(f"m-{name}", graphs[family.size], name) for name, family in FAMILIES.items()
    )
    registry = load_registry(Config(models=overrides, runtime="onnxruntime"))
    for name, family in FAMILIES.items():
        model = registry.get(f"m-{name}")
        assert model is not None and model.family is family
        assert model.runtime.input_size == (family.size, family.size)
