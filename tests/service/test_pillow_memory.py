"""service.imaging.pillow_memory: a decoded image's pixels in place, equal to Pillow's copy."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from PIL import Image

from service.imaging.pillow_memory import packed_view, pixel_words
from tests.support import FIXTURES


def _copied(image: Image.Image) -> np.ndarray:
    raw = image.tobytes("raw", "RGBA" if image.mode == "RGBA" else "RGBX")
    return np.frombuffer(raw, np.uint32).reshape(image.height, image.width)


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


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_pixel_words_are_lent_or_copied_and_the_same_either_way(mode):
    """An image in one block is lent, one in several (above 16 MiB) copied: the words are
    Pillow's copy's in both cases."""
    rng = np.random.default_rng(7)
    for side in (300, 2100):
        image = Image.fromarray(rng.integers(0, 256, (side, side, 4), np.uint8)).convert(mode)
        words = pixel_words(image)
        assert (packed_view(image) is None) == (side == 2100)
        assert words.shape == (side, side) and np.array_equal(words, _copied(image))
