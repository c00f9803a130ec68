"""service.imaging.pillow_memory: a decoded image's pixels in place, equal to Pillow's copy."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from PIL import Image

from service.imaging.kernels import packed_pixels
from service.imaging.pillow_memory import packed_view
from tests.support import FIXTURES


def _copied(image: Image.Image) -> np.ndarray:
    return packed_pixels(
        image.tobytes("raw", "RGBA" if image.mode == "RGBA" else "RGBX"), image.size
    )


@pytest.mark.parametrize("name", ["anime-girl-1.jpg", "plants-1.jpg", "car-1.jpg"])
def test_the_view_holds_the_same_words_as_the_copy(name):
    """Every byte, the RGB padding byte included (255, as tobytes writes it)."""
    with Image.open(FIXTURES / name) as opened:
        image = opened.convert("RGBA" if opened.mode in ("RGBA", "P") else "RGB")
    view = packed_view(image)
    assert view is not None and view.dtype == np.uint32 and not view.flags.writeable
    assert np.array_equal(view, _copied(image))


def test_the_pixels_outlive_the_image_they_came_from():
    """The array keeps Pillow's memory: with the image gone and other images made in its
    place, its words are unchanged."""
    image = Image.frombytes("RGB", (300, 200), bytes(range(256)) * (300 * 200 * 3 // 256 + 1))
    expected = _copied(image)
    view = packed_view(image)
    del image
    gc.collect()
    others = [Image.new("RGB", (300, 200), (9, 9, 9)) for _ in range(20)]
    assert np.array_equal(view, expected) and len(others) == 20


def test_an_image_pillow_keeps_in_several_blocks_is_not_lent():
    """Above Pillow's block size (16 MiB) an image lies in several blocks: the caller copies."""
    assert packed_view(Image.new("RGB", (2100, 2100))) is None
    assert packed_view(Image.new("L", (100, 100))) is None  # one byte a pixel: not this view


def test_a_decoded_photo_is_the_same_through_either_path(monkeypatch):
    from service.imaging import pipeline

    data = (FIXTURES / "anime-girl-1.jpg").read_bytes()
    lent = pipeline.decode_image(data, 40_000_000).pixels
    monkeypatch.setattr(pipeline, "packed_view", lambda image: None)
    copied = pipeline.decode_image(data, 40_000_000).pixels
    assert np.array_equal(lent, copied)
