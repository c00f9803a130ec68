"""service.matting.cutout: rembg's alpha matting, solved for the unknown band only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from protocol.messages import BackgroundSettings
from service.matting import cutout as matting
from tests.support import fixture_bytes, open_image


def rembg_way(rgb: np.ndarray, mask: np.ndarray, settings: BackgroundSettings) -> np.ndarray:
    """What rembg's alpha_matting_cutout computes: pymatting on the whole image."""
    from pymatting.alpha.estimate_alpha_cf import estimate_alpha_cf
    from pymatting.foreground.estimate_foreground_ml import estimate_foreground_ml

    pixels = rgb / 255.0
    alpha = estimate_alpha_cf(pixels, matting.trimap(mask, settings) / 255.0)
    foreground = estimate_foreground_ml(pixels, alpha)
    return np.clip(np.concatenate([foreground, alpha[..., None]], 2) * 255, 0, 255).astype(np.uint8)


def soft_mask(shape: tuple[int, int]) -> np.ndarray:
    """A blurred ellipse: sure foreground inside, sure background outside, a soft band between."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    distance = ((y - h / 2) / (h / 3)) ** 2 + ((x - w / 2) / (w / 3)) ** 2
    return np.clip((1.3 - distance) * 400, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "settings",
    [
        BackgroundSettings(alpha_matting=True),
        BackgroundSettings(
            alpha_matting=True, foreground_threshold=230, background_threshold=15, erode_size=8
        ),
    ],
)
def test_equal_to_pymatting_on_the_whole_image(settings):
    rgb = np.asarray(open_image(fixture_bytes("car-1.jpg")).convert("RGB"))
    mask = soft_mask(rgb.shape[:2])
    ours, reference = matting.matting_cutout(rgb, mask, settings), rembg_way(rgb, mask, settings)
    alpha_difference = np.abs(ours[..., 3].astype(int) - reference[..., 3])
    assert alpha_difference.mean() < 0.05 and alpha_difference.max() <= 1
    colour_difference = np.abs(ours[..., :3].astype(int) - reference[..., :3])
    assert colour_difference.mean() < 0.5


def test_equal_to_pymatting_when_the_subject_is_cut_by_the_image_edges():
    """Unknown pixels on the image's border rows and columns (their windows are fewer)."""
    rgb = np.asarray(open_image(fixture_bytes("car-1.jpg")).convert("RGB"))
    mask = np.roll(soft_mask(rgb.shape[:2]), (rgb.shape[0] // 2, rgb.shape[1] // 2), (0, 1))
    settings = BackgroundSettings(alpha_matting=True)
    assert (matting.trimap(mask, settings)[[0, -1], :] == 128).any()
    ours, reference = matting.matting_cutout(rgb, mask, settings), rembg_way(rgb, mask, settings)
    alpha_difference = np.abs(ours[..., 3].astype(int) - reference[..., 3])
    assert alpha_difference.mean() < 0.05 and alpha_difference.max() <= 1


def test_trimap_follows_rembgs_rules():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 5:35] = 250
    tri = matting.trimap(mask, BackgroundSettings(erode_size=3))
    assert set(np.unique(tri)) == {0, 128, 255}
    assert tri[20, 20] == 255 and tri[0, 0] == 0 and tri[5, 5] == 128  # eroded edges unknown


@pytest.mark.parametrize("size", [1, 2, 3, 8, 10, 15])
def test_the_trimap_erodes_exactly_as_one_pass_with_rembgs_square(size):
    """The two line passes against scipy's erosion with the full square, as rembg calls it."""
    rng = np.random.default_rng(size)
    for _ in range(3):
        blobs = ndimage.gaussian_filter(rng.random((61, 48)), 3)
        mask = (255 * (blobs - blobs.min()) / np.ptp(blobs)).astype(np.uint8)
        settings = BackgroundSettings(
            erode_size=size, foreground_threshold=150, background_threshold=100
        )
        square = np.ones((size, size), dtype=np.uint8)
        foreground = ndimage.binary_erosion(mask > 150, structure=square)
        background = ndimage.binary_erosion(mask < 100, structure=square, border_value=1)
        expected = np.full(mask.shape, 128, np.uint8)
        expected[foreground] = 255
        expected[background] = 0
        assert np.array_equal(matting.trimap(mask, settings), expected)


def test_a_trimap_without_sure_background_raises_like_rembg():
    rgb = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError):
        matting.matting_cutout(
            rgb, np.full((20, 20), 255, np.uint8), BackgroundSettings(alpha_matting=True)
        )


@pytest.mark.parametrize("shape", [(2, 40), (1, 30), (40, 2)])
def test_an_image_too_thin_for_any_window_raises_like_rembg(shape):
    """rembg's pymatting raises too (after 10,000 CG iterations of NaN on an all-zero system,
    warning as it divides by zero), and both fall back to the decontaminated cutout. Ours raises first."""
    import warnings

    rgb = np.zeros((*shape, 3), np.uint8)
    mask = np.zeros(shape, np.uint8)
    mask[: shape[0] // 2 + 1, : shape[1] // 2] = 255
    with warnings.catch_warnings(), pytest.raises(ValueError, match="3x3"):
        warnings.simplefilter("error")
        matting.matting_cutout(rgb, mask, BackgroundSettings(alpha_matting=True, erode_size=1))


_CONCURRENT_MATTING = """
import threading
import numpy as np
from protocol.messages import BackgroundSettings
from service.matting import cutout as matting
from tests.service.test_matting import soft_mask

rgb = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
mask = soft_mask((300, 400))
def work():
    for _ in range(6):
        matting.matting_cutout(rgb, mask, BackgroundSettings(alpha_matting=True))
threads = [threading.Thread(target=work) for _ in range(3)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
import numba
print(numba.threading_layer())
"""


def run_in_fresh_python(script: str, **env: str) -> str:
    """``script``'s last line of output, run by a new interpreter from the project's root."""
    import os
    import subprocess
    import sys

    from tests.support import ROOT

    finished = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    return finished.stdout.strip().splitlines()[-1]


def test_concurrent_matting_survives_numbas_workqueue_layer():
    """Hosts without OpenMP or TBB get numba's workqueue layer, which aborts the process when
    two threads run parallel kernels at once: the CPU pool does exactly that."""
    layer = run_in_fresh_python(_CONCURRENT_MATTING, NUMBA_THREADING_LAYER="workqueue")
    assert layer == "workqueue"


# Runs in a fresh process, where nothing but the warm-up has compiled anything yet.
_FIRST_REQUEST = """
import json
import numba
import numpy as np
from protocol.messages import BackgroundSettings
from service.matting import cutout as matting
from tests.service.test_matting import soft_mask
from tests.support import fixture_bytes, open_image

def signatures():
    from service.matting import direct as matting_direct, foreground as matting_foreground, solver as matting_solver, system as matting_system
    return {f"{module.__name__}.{name}": len(kernel.signatures)
            for module in (matting_system, matting_solver, matting_direct, matting_foreground)
            for name, kernel in vars(module).items()
            if isinstance(kernel, numba.core.registry.CPUDispatcher)}

matting.warm_up()
warm = signatures()
rgb = np.asarray(open_image(fixture_bytes("car-1.jpg")).convert("RGB"))
settings = BackgroundSettings(alpha_matting=True)
mask = soft_mask(rgb.shape[:2])
matting.matting_cutout(rgb, mask, settings)  # the exact solve
from service.matting.solver import solve_band
from service.matting.system import band_system
matrix, rhs, _ = band_system(rgb / 255.0, matting.trimap(mask, settings) / 255.0)
solve_band(matrix, rhs, np.full(rhs.size, 0.5), direct_max_bytes=0)  # the iterative one
print(json.dumps([warm, signatures()]))
"""


def test_after_the_warm_up_a_photo_compiles_no_kernel():
    """The server warms up before it listens so that no request pays numba's compilation:
    the warm-up must give every kernel of ours the signature a real photo needs, on both
    solves (the exact one, and the iterative one that bands too wide for it take)."""
    import json

    warm, after_photo = json.loads(run_in_fresh_python(_FIRST_REQUEST))
    # Kernels called only from other kernels are compiled into their callers: 0 of their own.
    assert sum(warm.values()) >= 12
    assert after_photo == warm
