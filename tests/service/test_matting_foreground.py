"""service.matting.foreground: pymatting's ML foreground estimate, to the bit."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from PIL import Image
from pymatting.foreground.estimate_foreground_ml import estimate_foreground_ml

from service.matting.foreground import estimate_foreground, rgba_bytes
from tests.support import FIXTURES


def random_matte(seed: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An image and a matte with opaque, transparent and soft regions (float64, as rembg)."""
    rng = np.random.default_rng(seed)
    image = rng.random((*shape, 3))
    x = np.arange(shape[1])[np.newaxis, :]
    alpha = np.clip((x - shape[1] / 2) / 4 + rng.normal(0, 0.3, shape), 0, 1)
    return image, alpha


@pytest.mark.parametrize("shape", [(1, 2), (3, 3), (17, 40), (33, 31), (48, 96), (101, 67)])
@pytest.mark.parametrize("seed", range(2))
def test_the_foreground_is_pymattings_bit_for_bit(shape, seed):
    """Sizes below, across and above pymatting's small-level threshold (32), odd and even."""
    image, alpha = random_matte(seed, shape)
    ours = estimate_foreground(image, alpha)
    assert ours.dtype == np.float32
    assert np.array_equal(ours, estimate_foreground_ml(image, alpha))


def test_on_a_photo_with_a_hard_matte_too():
    """A real photo; a matte of only 0 and 1 takes other branches (the mean colours)."""
    image = np.asarray(Image.open(FIXTURES / "car-1.jpg").convert("RGB")) / 255.0
    hard = np.zeros(image.shape[:2])
    hard[100:260, 120:380] = 1.0
    assert np.array_equal(estimate_foreground(image, hard), estimate_foreground_ml(image, hard))


def test_rgba_bytes_are_rembgs_stack_scale_clip_and_truncation():
    rng = np.random.default_rng(3)
    foreground = rng.uniform(-0.1, 1.1, (37, 41, 3)).astype(np.float32)
    foreground[0, :5, 0] = np.array([0, 1, 254, 255, 128], np.float32) / np.float32(255)
    alpha = rng.uniform(-0.1, 1.1, (37, 41))
    alpha[0, :4] = np.array([0, 1, 127, 255]) / 255
    expected = np.empty((37, 41, 4), np.uint8)
    expected[..., :3] = np.clip(foreground.astype(np.float64) * 255, 0, 255)
    expected[..., 3] = np.clip(alpha * 255, 0, 255)
    np.testing.assert_array_equal(rgba_bytes(foreground, alpha), expected)


def recorded_side_by_side(monkeypatch) -> list:
    """Records each level that ran its sweeps side by side (through matting_cores)."""
    from service.matting import cores as matting_cores
    from service.matting import foreground as matting_foreground

    calls = []

    def recording(first, second):
        calls.append(1)
        return matting_cores.side_by_side(first, second)

    monkeypatch.setattr(matting_foreground, "side_by_side", recording)
    return calls


def test_a_big_level_runs_its_two_sweeps_side_by_side_and_is_still_pymattings(monkeypatch):
    """320x400 pixels: the full-size level's two sweeps run at once, a chunk apart."""
    calls = recorded_side_by_side(monkeypatch)
    image, alpha = random_matte(5, (320, 400))
    assert np.array_equal(estimate_foreground(image, alpha), estimate_foreground_ml(image, alpha))
    assert calls == [1]


def test_with_the_helper_busy_the_sweeps_run_one_after_the_other_to_the_same_bits(monkeypatch):
    """Two cores: one helper, which another matting job holds (its second part waits on it)."""
    from service.matting import cores as matting_cores

    matting_cores.use_cores(2)
    release, holding = threading.Event(), threading.Event()

    def hold_the_helper() -> None:
        holding.set()
        release.wait(30)

    other_job = threading.Thread(
        target=matting_cores.side_by_side, args=(lambda: release.wait(30), hold_the_helper)
    )
    other_job.start()
    try:
        assert holding.wait(30)
        from service.matting import foreground as matting_foreground

        second_ran_on: list[threading.Thread] = []

        def recording(first, second):
            def recorded_second():
                second_ran_on.append(threading.current_thread())
                return second()

            return matting_cores.side_by_side(first, recorded_second)

        monkeypatch.setattr(matting_foreground, "side_by_side", recording)
        image, alpha = random_matte(6, (320, 400))
        ours = estimate_foreground(image, alpha)
        assert second_ran_on == [threading.current_thread()]  # after the first, on this thread
        assert np.array_equal(ours, estimate_foreground_ml(image, alpha))
    finally:
        release.set()
        other_job.join()
        matting_cores.use_cores(os.cpu_count() or 1)
