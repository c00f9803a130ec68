"""service.imaging.kernels: the same bytes as Pillow, for every size and both pass orders."""

from __future__ import annotations

import subprocess
import sys

import numba
import numpy as np
import pytest
from PIL import Image

from service.imaging import kernels
from service.imaging.pillow_memory import pixel_words
from tests.support import ROOT, fixture_bytes, open_image

LANCZOS = Image.Resampling.LANCZOS


def pillow_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size, LANCZOS))


def packed(rgb: np.ndarray) -> np.ndarray:
    return pixel_words(Image.fromarray(rgb))


def rgb_of(words: np.ndarray) -> np.ndarray:
    return words.view(np.uint8).reshape(*words.shape, 4)[..., :3]


# Random noise overshoots and clips, so a wrong pass order, rounding or clip shows at once.
SIZES = [
    ((601, 850), (320, 320)),  # horizontal first, over the rows the vertical pass reads
    ((1079, 1440), (320, 320)),
    ((320, 320), (601, 850)),  # both axes grow
    ((320, 320), (1481, 987)),
    ((300, 40), (60, 50)),  # the height shrinks much more than the width: vertical first
    ((117, 101), (32, 156)),
    ((1, 1), (320, 320)),
    ((320, 320), (1, 7)),
    ((5, 9), (5, 40)),  # one axis unchanged
    ((50, 9), (20, 9)),
    ((64, 64), (64, 64)),
    # rows a multiple of 1 KiB long (a 1024 model's mask, 256- and 1024-wide photos): the
    # transposes lay them out a cache line apart first
    ((1024, 1024), (601, 850)),
    ((601, 256), (1024, 1024)),
    ((200, 1024), (150, 700)),
]


@pytest.mark.parametrize("shape,target", SIZES)
def test_a_band_resizes_to_pillows_bytes(shape, target):
    noise = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    size = (target[1], target[0])
    assert np.array_equal(kernels.lanczos_resize(noise, size), pillow_resize(noise, size))


@pytest.mark.parametrize("shape,target", SIZES)
def test_rgb_resizes_to_pillows_bytes(shape, target):
    noise = np.random.default_rng(sum(target)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    size = (target[1], target[0])
    ours = rgb_of(kernels.lanczos_resize(packed(noise), size))
    assert np.array_equal(ours, pillow_resize(noise, size))


def test_random_sizes_resize_to_pillows_bytes():
    rng = np.random.default_rng(3)
    for _ in range(60):
        height, width = rng.integers(1, 250, 2)
        size = tuple(int(v) for v in rng.integers(1, 330, 2))
        noise = rng.integers(0, 256, (height, width), dtype=np.uint8)
        assert np.array_equal(kernels.lanczos_resize(noise, size), pillow_resize(noise, size))


def test_a_photo_resizes_to_pillows_bytes():
    photo = open_image(fixture_bytes("anime-girl-1.jpg")).convert("RGB")
    ours = rgb_of(kernels.lanczos_resize(packed(np.asarray(photo)), (320, 320)))
    assert np.array_equal(ours, np.asarray(photo.resize((320, 320), LANCZOS)))


def test_the_cutout_keeps_colour_where_visible_and_none_where_transparent():
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (31, 17), dtype=np.uint8)
    alpha[::3] = 0
    rgba = kernels.cut_out(packed(rgb), alpha)
    visible = alpha > 0
    assert np.array_equal(rgba[..., 3], alpha)
    assert np.array_equal(rgba[visible][:, :3], rgb[visible])
    assert not rgba[~visible].any()


@pytest.mark.parametrize("shape,target", SIZES)
def test_resizing_into_planes_gives_the_planes_of_the_resized_image(shape, target):
    """Whichever pass comes last, the fused path's bytes equal resize-then-split's."""
    noise = np.random.default_rng(len(shape) + target[0]).integers(0, 256, (*shape, 3), np.uint8)
    size = (target[1], target[0])
    expected = kernels.planes(kernels.lanczos_resize(packed(noise), size))
    assert np.array_equal(kernels.resize_to_planes(packed(noise), size), expected)


def test_planes_are_the_r_g_and_b_bytes():
    rgb = np.random.default_rng(3).integers(0, 256, (7, 9, 3), np.uint8)
    assert np.array_equal(kernels.planes(packed(rgb)), rgb.transpose(2, 0, 1))


@pytest.mark.parametrize("seed", range(6))
def test_unit_bytes_equal_numpys_min_max_scaling(seed):
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal((97, 131)) * rng.uniform(0.01, 50)).astype(np.float32)
    low, high = float(values.min()), float(values.max())
    expected = ((values - np.float32(low)) / np.float32(high - low) * 255).astype(np.uint8)
    assert np.array_equal(kernels.unit_bytes(values), expected)
    assert not kernels.unit_bytes(np.full((3, 4), 0.5, np.float32)).any()


def signatures_added_by_a_request() -> dict[str, int]:
    """In a process of its own: after warm_up, the kernels' signatures that a decoded photo's
    pixels (lent read-only by Pillow) through both model sizes, rows of an aliasing length, the
    cutout and the colours for decontamination add."""

    def compiled() -> dict[str, int]:
        kernels_by_name = {name: getattr(kernels, name) for name in dir(kernels)}
        return {
            name: len(kernel.signatures)
            for name, kernel in kernels_by_name.items()
            if isinstance(kernel, numba.core.registry.CPUDispatcher)
        }

    kernels.warm_up()
    before = compiled()
    for height, width in ((601, 850), (601, 1024), (1024, 320)):
        photo = packed(np.zeros((height, width, 3), np.uint8))
        assert not photo.flags.writeable
        kernels.resize_to_planes(photo, (1024, 1024))
        small = kernels.lanczos_resize(photo, (320, 320))
        kernels.planes(small)
        kernels.brightest(small)
        for side in (320, 1024):
            mask = kernels.lanczos_resize(np.zeros((side, side), np.uint8), (width, height))
            kernels.cut_out(photo, mask)
        kernels.colours(photo, np.zeros(256, np.float32))
    return {
        name: count - before.get(name, 0)
        for name, count in compiled().items()
        if count != before.get(name, 0)
    }


def test_the_warm_up_compiles_every_kernel_a_request_calls():
    """A first request must not compile (0.3-0.5 s a kernel). A fresh process, since this one's
    kernels already met what other tests passed them."""
    check = "from tests.service.test_kernels import signatures_added_by_a_request as f; print(f())"
    ran = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "{}"
