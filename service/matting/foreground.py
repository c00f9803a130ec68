"""The foreground colours behind a matte: pymatting's multi-level ML estimate, bit for bit.

rembg estimates the cutout's colours with pymatting's ``estimate_foreground_ml`` (Germer et al.,
multi-level foreground estimation): from a 1x1 image up to the full size, each level starts from
the previous level's foreground and background and runs Gauss-Seidel sweeps over its pixels,
each pixel solving a 2x2 system built from its alpha and its four neighbours.

This kernel does the same arithmetic in the same order, in the same float32 and float64 types, so
the result is pymatting's to the bit (tested). It is faster because each pixel's four
neighbour weights are computed once for all three channels,
the sums stay in registers instead of a scratch array, and the arrays are contiguous.
Within a sweep the pixels stay in order: each reads the neighbours already updated in this
sweep, so running rows in parallel would change the result. But the two sweeps of a big level
run at once, the second a chunk of rows behind the first, which gives the same result
(``_two_sweeps_side_by_side``).
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from .cores import side_by_side

__all__ = ["estimate_foreground", "rgba_bytes"]

# pymatting's defaults, which rembg uses.
REGULARIZATION = np.float32(1e-5)
GRADIENT_WEIGHT = np.float32(1.0)
SMALL_SIZE = 32  # levels no larger than this in both dimensions ...
SMALL_ITERATIONS = 10  # ... get this many sweeps,
BIG_ITERATIONS = 2  # the others this many
# Levels with at least this many pixels run their two sweeps side by side, the second sweep a
# chunk of rows behind the first (smaller ones cost less than the threads' hand-overs).
_SIDE_BY_SIDE_PIXELS = 100_000
_CHUNK_ROWS = 16


# error_model="numpy": a division by zero gives inf, not a Python exception. None can happen
# here (the regularization keeps every determinant positive, every level has a pixel), and
# the check's branch in every pixel's 2x2 solve made the sweep markedly slower.
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _resize_nearest(target, source):
    """Nearest-neighbour resize of [h, w, channels] float32 images, pymatting's index rule.

    The source columns are worked out once for all rows, not with a division per pixel."""
    source_height, source_width = source.shape[0], source.shape[1]
    height, width = target.shape[0], target.shape[1]
    columns = np.empty(width, np.int64)
    for x in range(width):
        columns[x] = max(0, min(source_width - 1, x * source_width // width))
    for y in range(height):
        source_y = max(0, min(source_height - 1, y * source_height // height))
        for x in range(width):
            source_x = columns[x]
            for c in range(target.shape[2]):
                target[y, x, c] = source[source_y, source_x, c]


@numba.njit(cache=True, nogil=True, inline="always")
def _plus_neighbours(f, b, where, weights):
    """``f`` and ``b`` with each neighbour's weighted foreground and background colour added,
    in pymatting's order: left, right, up, down (``where`` says whose colours and which)."""
    foreground, background, y, x, left, right, up, down, c = where
    w_left, w_right, w_up, w_down = weights
    f += w_left * foreground[y, left, c]
    b += w_left * background[y, left, c]
    f += w_right * foreground[y, right, c]
    b += w_right * background[y, right, c]
    f += w_up * foreground[up, x, c]
    b += w_up * background[up, x, c]
    f += w_down * foreground[down, x, c]
    b += w_down * background[down, x, c]
    return f, b


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sweep(
    image, alpha, foreground, background, first_row, end_row, regularization, gradient_weight
):
    """Rows first_row:end_row of one Gauss-Seidel sweep over a level, in place.

    Types follow pymatting's: alpha, the weights and a00 are float32, while 1 - alpha, a01 and
    a11 are float64 (the literal 1.0 is); the right-hand sides are float32, as pymatting keeps
    them in a float32 array, and the solution is float64 until it is stored.
    """
    height, width = alpha.shape
    # A transparent pixel among transparent neighbours (most of a cutout's background) has the
    # same 2x2 system everywhere: solved once here, by the same arithmetic as below. Its
    # a0 * image term is 0 and its b01 = -0.0, so each colour is one product, to the bit.
    clear = np.float32(0.0)
    clear_weight = regularization + gradient_weight * abs(clear - clear)
    clear_a00 = clear * clear
    clear_a11 = (1.0 - clear) * (1.0 - clear)
    for _ in range(4):
        clear_a00 += clear_weight
        clear_a11 += clear_weight
    clear_inverse = 1.0 / (clear_a00 * clear_a11 - (clear * (1.0 - clear)) ** 2)
    clear_b00 = clear_inverse * clear_a11
    clear_b11 = clear_inverse * clear_a00
    for y in range(first_row, end_row):
        up, down = max(0, y - 1), min(height - 1, y + 1)
        for x in range(width):
            left, right = max(0, x - 1), min(width - 1, x + 1)
            a0 = alpha[y, x]
            if (
                a0 == 0
                and alpha[y, left] == 0
                and alpha[y, right] == 0
                and alpha[up, x] == 0
                and alpha[down, x] == 0
            ):
                for c in range(3):
                    f, b = _plus_neighbours(
                        clear,  # 0 + the first product is that product, to the bit
                        image[y, x, c],
                        (foreground, background, y, x, left, right, up, down, c),
                        (clear_weight, clear_weight, clear_weight, clear_weight),
                    )
                    foreground[y, x, c] = max(0.0, min(1.0, clear_b00 * f))
                    background[y, x, c] = max(0.0, min(1.0, clear_b11 * b))
                continue
            a1 = 1.0 - a0
            a00 = a0 * a0
            a01 = a0 * a1
            a11 = a1 * a1
            # pymatting's neighbour order (also _plus_neighbours'): left, right, up, down.
            w_left = regularization + gradient_weight * abs(a0 - alpha[y, left])
            w_right = regularization + gradient_weight * abs(a0 - alpha[y, right])
            w_up = regularization + gradient_weight * abs(a0 - alpha[up, x])
            w_down = regularization + gradient_weight * abs(a0 - alpha[down, x])
            a00 += w_left
            a11 += w_left
            a00 += w_right
            a11 += w_right
            a00 += w_up
            a11 += w_up
            a00 += w_down
            a11 += w_down
            inverse_determinant = 1.0 / (a00 * a11 - a01 * a01)
            b00 = inverse_determinant * a11
            b01 = inverse_determinant * -a01
            b11 = inverse_determinant * a00
            for c in range(3):
                f, b = _plus_neighbours(
                    a0 * image[y, x, c],
                    np.float32(a1 * image[y, x, c]),
                    (foreground, background, y, x, left, right, up, down, c),
                    (w_left, w_right, w_up, w_down),
                )
                foreground[y, x, c] = max(0.0, min(1.0, b00 * f + b01 * b))
                background[y, x, c] = max(0.0, min(1.0, b01 * f + b11 * b))


@numba.njit(cache=True, nogil=True)
def _mean_colours(image, alpha):
    """Mean colour of the nearly opaque pixels and of the nearly transparent ones (float32 sums)."""
    foreground = np.zeros(3, np.float32)
    background = np.zeros(3, np.float32)
    opaque = transparent = 0
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            if alpha[y, x, 0] > 0.9:
                for c in range(3):
                    foreground[c] += image[y, x, c]
                opaque += 1
            if alpha[y, x, 0] < 0.1:
                for c in range(3):
                    background[c] += image[y, x, c]
                transparent += 1
    foreground /= opaque + 1e-5
    background /= transparent + 1e-5
    return foreground, background


def _level_inputs(image, alpha, foreground, background, height, width, full_size):
    """A level's image, alpha, and the previous level's colours resized to it.

    The arrays come from numpy, not from inside a kernel: numpy asks the kernel for huge
    pages for large arrays, and on a 1.5 MP image the 4 KiB pages' faults made these levels'
    inputs cost more than their sweeps.
    """
    if full_size:  # resizing the image and alpha would only copy them
        level_image, level_alpha = image, np.ascontiguousarray(alpha[:, :, 0])
    else:
        level_image = np.empty((height, width, 3), np.float32)
        resized_alpha = np.empty((height, width, 1), np.float32)
        _resize_nearest(level_image, image)
        _resize_nearest(resized_alpha, alpha)
        level_alpha = np.ascontiguousarray(resized_alpha[:, :, 0])
    level_foreground = np.empty((height, width, 3), np.float32)
    level_background = np.empty((height, width, 3), np.float32)
    _resize_nearest(level_foreground, foreground)
    _resize_nearest(level_background, background)
    return level_image, level_alpha, level_foreground, level_background


def _two_sweeps_side_by_side(arrays: tuple) -> None:
    """The two sweeps of a big level at once: the second follows the first a chunk behind.

    Row y of the second sweep reads row y + 1 as the first sweep left it, and row y - 1 as the
    second left it; row y + 1 of the first sweep reads row y as the first left it. So the second
    sweep may do a chunk of rows once the first has finished the chunk after it, and the result
    is the sweeps' one after the other, to the bit. When no helper thread is idle, the first
    sweep runs whole, then the second (see threads).
    """
    height = arrays[1].shape[0]
    starts = list(range(0, height, _CHUNK_ROWS)) + [height]
    done = [threading.Event() for _ in starts[:-1]]

    def first() -> None:
        for chunk, event in enumerate(done):
            _sweep(*arrays, starts[chunk], starts[chunk + 1], REGULARIZATION, GRADIENT_WEIGHT)
            event.set()

    def second() -> None:
        for chunk in range(len(done)):
            done[min(chunk + 1, len(done) - 1)].wait()
            _sweep(*arrays, starts[chunk], starts[chunk + 1], REGULARIZATION, GRADIENT_WEIGHT)

    side_by_side(first, second)


def _estimate(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """image float32[h, w, 3], alpha float32[h, w, 1] -> foreground float32[h, w, 3]."""
    full_height, full_width = alpha.shape[0], alpha.shape[1]
    foreground_mean, background_mean = _mean_colours(image, alpha)
    foreground = foreground_mean.reshape(1, 1, 3).copy()
    background = background_mean.reshape(1, 1, 3).copy()
    levels = int(np.ceil(np.log2(max(full_width, full_height))))
    for level in range(levels + 1):
        # A 1x1 image has no coarser level: its one level is the image (pymatting divides by
        # zero there).
        exponent = level / levels if levels else 1.0
        width = round(full_width**exponent)
        height = round(full_height**exponent)
        arrays = _level_inputs(image, alpha, foreground, background, height, width, level == levels)
        small = width <= SMALL_SIZE and height <= SMALL_SIZE
        sweeps = SMALL_ITERATIONS if small else BIG_ITERATIONS
        if sweeps == 2 and height * width >= _SIDE_BY_SIDE_PIXELS:
            _two_sweeps_side_by_side(arrays)
        else:
            for _ in range(sweeps):
                _sweep(*arrays, 0, height, REGULARIZATION, GRADIENT_WEIGHT)
        foreground, background = arrays[2], arrays[3]
    return foreground


def estimate_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """pymatting's ``estimate_foreground_ml(image, alpha)`` with its defaults: float32[h, w, 3].

    ``image`` is [h, w, 3] and ``alpha`` [h, w], both in [0, 1], of any float type (pymatting
    works in float32 and so does this); a 1x1 image too, where pymatting divides by zero.
    """
    pixels = np.ascontiguousarray(image, dtype=np.float32)
    matte = np.ascontiguousarray(alpha, dtype=np.float32).reshape(*alpha.shape, 1)
    return _estimate(pixels, matte)


@numba.njit(cache=True, nogil=True)
def _rgba_bytes(foreground, alpha, out, clear_transparent):
    for y in range(alpha.shape[0]):
        for x in range(alpha.shape[1]):
            opacity = np.uint8(max(0.0, min(255.0, alpha[y, x] * 255.0)))
            for c in range(3):
                if clear_transparent and opacity == 0:
                    out[y, x, c] = 0
                else:
                    out[y, x, c] = np.uint8(
                        max(0.0, min(255.0, np.float64(foreground[y, x, c]) * 255.0))
                    )
            out[y, x, 3] = opacity


def rgba_bytes(
    foreground: np.ndarray, alpha: np.ndarray, clear_transparent: bool = False
) -> np.ndarray:
    """uint8[h, w, 4] as rembg makes its cutout: the float32 colours stacked with the float64
    alpha (so in float64), times 255, clipped to 0-255, truncated. One pass, no temporaries.
    ``clear_transparent``: a pixel of alpha 0 gets RGB 0, as in the plain cutout (it is
    invisible, and zeros compress to almost nothing)."""
    out = np.empty((*alpha.shape, 4), np.uint8)
    _rgba_bytes(foreground, np.ascontiguousarray(alpha, dtype=np.float64), out, clear_transparent)
    return out
