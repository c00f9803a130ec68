"""Alpha matting as rembg does it (closed-form alpha, ML foreground), solved only where needed.

rembg runs pymatting's ``estimate_alpha_cf`` and ``estimate_foreground_ml`` on the whole image,
although only the trimap's unknown band is uncertain. Here:
- the trimap is rembg's (thresholds on the mask, binary erosion with a square of the erode size,
  background eroded with border value 1);
- only the unknown pixels' rows of the matting Laplacian are built, from the windows that
  touch them (``system``): the same values as pymatting's, without the whole image's Laplacian;
- the system L_uu a_u = -L_uk a_k is solved exactly, by block Cholesky along the band's
  breadth-first levels, from both ends of the band at once (``direct``); bands too wide
  for that factor's memory are solved as pymatting does (conjugate gradients, incomplete-Cholesky
  preconditioner, relative tolerance 1e-7), the band cut in two halves factorised side by side,
  from the mask as the first guess (``solver``). Alpha stays within 1/255 of rembg's.
- the foreground colour is still estimated on the whole image (see matting_cutout), with
  pymatting's arithmetic in a faster kernel (``foreground``).
Pure functions on arrays; CPU-heavy; run on worker threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from protocol.messages import BackgroundSettings

from .cores import side_by_side
from .errors import UnsolvableTrimap

# numba, pymatting and our kernels (system, solver, foreground) load on first use:
# they take about a second to import, which plain removals, the CLI and the tests that never
# matte need not pay. The server imports them at start-up through warm_up.

__all__ = ["UnsolvableTrimap", "matting_cutout", "trimap", "warm_up"]


# Where neither OpenMP nor TBB is installed, numba runs parallel kernels on its "workqueue"
# layer, which aborts the whole process when two threads launch kernels at once, and the CPU
# pool runs several matting jobs side by side. OpenMP and TBB are threadsafe: no lock there.
_WORKQUEUE_LOCK = threading.Lock()


def _parallel_kernels() -> contextlib.AbstractContextManager:
    """Hold this around calls into numba's parallel kernels (band_system's)."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet, so no layer is chosen: be careful
        return _WORKQUEUE_LOCK
    return _WORKQUEUE_LOCK if layer == "workqueue" else contextlib.nullcontext()


def _square_erosion(region: np.ndarray, size: int, border_value: int) -> np.ndarray:
    """rembg's binary erosion with a size x size square, as a column pass then a row pass.

    A square is the Minkowski sum of a column and a row, so the two passes give exactly the
    square's result, border included: the row pass only looks beyond the left or right edge,
    where the column pass's result would be the border value anyway. Each pass is a running
    minimum over bytes, whose window scipy centres where it centres the square (index
    size // 2), so even sizes match too, and it is much faster than one pass with the square.
    """
    eroded = region.view(np.uint8)
    for axis in (0, 1):
        eroded = ndimage.minimum_filter1d(
            eroded, size, axis=axis, mode="constant", cval=border_value
        )
    return eroded.view(bool)


def trimap(mask: np.ndarray, settings: BackgroundSettings) -> np.ndarray:
    """uint8 trimap: 255 sure foreground, 0 sure background, 128 unknown (rembg's rules)."""
    size = settings.erode_size
    # scipy's filters release the GIL: the two erosions run side by side where a helper is idle
    is_foreground, is_background = side_by_side(
        lambda: _square_erosion(mask > settings.foreground_threshold, size, 0),
        lambda: _square_erosion(mask < settings.background_threshold, size, 1),
    )
    result = np.full(mask.shape, 128, dtype=np.uint8)
    result[is_foreground] = 255
    result[is_background] = 0
    return result


def _solve_alpha(pixels: np.ndarray, tri: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Closed-form alpha: pixels float64[h,w,3], tri float64[h,w] in {0, .5, 1}; the mask
    (uint8) is the iterative solve's first guess."""
    from .solver import solve_band
    from .system import band_system

    with _parallel_kernels():
        matrix, rhs, unknown = band_system(pixels, tri)
    alpha = tri.ravel().copy()
    alpha[unknown] = solve_band(matrix, rhs, mask.ravel()[unknown] / 255.0)
    return np.clip(alpha, 0.0, 1.0).reshape(tri.shape)


def matting_cutout(rgb: np.ndarray, mask: np.ndarray, settings: BackgroundSettings) -> np.ndarray:
    """uint8[H,W,4]: estimated foreground colour and matted alpha, as rembg's cutout.

    Raises UnsolvableTrimap where rembg's would (the trimap has no sure foreground or no sure
    background, or its system cannot be factorised), so that the caller falls back to the
    decontaminated cutout as rembg does.
    """
    from .foreground import estimate_foreground, rgba_bytes

    if min(mask.shape) < 3:
        # No 3x3 window fits, so the system is all zeros: pymatting's CG then runs 10,000
        # iterations of NaN before it raises. Raise at once instead; the result is the same.
        raise UnsolvableTrimap("alpha matting needs at least 3x3 pixels")
    tri = trimap(mask, settings)
    if not (tri == 255).any() or not (tri == 0).any():
        raise UnsolvableTrimap("the trimap needs both sure foreground and sure background")
    pixels = rgb / 255.0
    alpha = tri / 255.0
    unknown = tri == 128
    if unknown.any():
        alpha = _solve_alpha(pixels, alpha, mask)
    # Over the whole image, as rembg: the ML estimate is multi-level, and a crop changes its
    # coarse levels (2/255 of colour difference measured on car-1).
    return rgba_bytes(estimate_foreground(pixels, alpha), alpha)


def warm_up(done: Callable[[str], None] = lambda step: None) -> None:
    """Compile (or load from numba's cache) the matting kernels now, not on the first request:
    those of the exact solve and of the foreground, which a cutout takes, and those of the
    iterative solve, which bands too wide for the exact solve take. ``done`` is told each step
    as it ends (an install shows progress)."""
    from .foreground import estimate_foreground, rgba_bytes
    from .solver import solve_band
    from .system import band_system

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    mask = np.zeros((24, 24), np.uint8)
    mask[4:20, 4:20] = 255
    mask[8:16, 8:16] = 128
    tri = trimap(mask, BackgroundSettings(alpha_matting=True, erode_size=1))
    pixels = rgb / 255.0
    alpha = _solve_alpha(pixels, tri / 255.0, mask)
    done("matting: the exact solve")
    rgba_bytes(estimate_foreground(pixels, alpha), alpha)
    done("matting: the foreground")
    with _parallel_kernels():
        matrix, rhs, _ = band_system(pixels, tri / 255.0)
    solve_band(matrix, rhs, np.full(rhs.size, 0.5), direct_max_bytes=0)
    done("matting: the iterative solve")
