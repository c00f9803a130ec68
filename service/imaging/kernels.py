"""The pipeline's per-pixel kernels: Pillow's LANCZOS resize bit for bit, and the cutout.

The model's input and its mask at the image's size are made with Pillow's LANCZOS filter, as
rembg makes them, so that the alpha equals rembg's. Pillow computes each output pixel as a short
dot product along the row (horizontal pass) or the column (vertical pass) in 22-bit fixed point,
one pixel at a time. Here every pass runs along columns, where one coefficient multiplies a whole
row at once (SIMD): the horizontal pass transposes, runs along columns and transposes back.
Same coefficients, same fixed-point sums, same rounding and clipping, the passes in Pillow's
order: the same bytes, several times faster (docs/performance.md).

A pixel is one uint8 (a single band) or one uint32 holding four uint8 bands (RGBX), read in the
byte order of the little-endian hosts we serve on (x86-64, arm64).
"""

from __future__ import annotations

import functools
import math
import sys

import numba
import numpy as np

__all__ = [
    "lanczos_resize",
    "resize_to_planes",
    "brightest",
    "planes",
    "unit_bytes",
    "cut_out",
    "warm_up",
]

if sys.byteorder != "little":
    raise ImportError("the packed-pixel kernels read RGBX words in little-endian order")

_PRECISION_BITS = 22  # Pillow's for 8-bit bands: 32 bits less 8 for the value and 2 for overflow
_LANCZOS_SUPPORT = 3.0


@numba.njit(cache=True, nogil=True)
def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


@numba.njit(cache=True, nogil=True)
def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@numba.njit(cache=True, nogil=True)
def _coefficients(in_size: int, out_size: int):
    """First input index, tap count and fixed-point weights of every output index: Pillow's
    ``precompute_coeffs`` then ``normalize_coeffs_8bpc``, with the same double arithmetic."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    starts = np.empty(out_size, np.int64)
    counts = np.empty(out_size, np.int64)
    weights = np.zeros((out_size, ksize), np.int32)
    taps = np.empty(ksize, np.float64)
    inverse = 1.0 / filterscale
    one = float(1 << _PRECISION_BITS)
    for out in range(out_size):
        centre = (out + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)  # int() truncates toward zero, as C does
        count = min(int(centre + support + 0.5), in_size) - first
        total = 0.0
        for tap in range(count):
            taps[tap] = _lanczos((tap + first - centre + 0.5) * inverse)
            total += taps[tap]
        for tap in range(count):
            weight = taps[tap] / total if total != 0.0 else taps[tap]
            weights[out, tap] = int(weight * one - 0.5) if weight < 0 else int(weight * one + 0.5)
        starts[out] = first
        counts[out] = count
    return starts, counts, weights


@numba.njit(cache=True, nogil=True, inline="always")
def _weighted_rows(rows, first, count, weights, total):
    """``total`` = Pillow's rounding half plus the weighted sum of ``count`` rows from ``first``
    (one output row of a pass along columns, before the shift and clip)."""
    total[:] = np.int32(1 << (_PRECISION_BITS - 1))
    for tap in range(count):
        source = rows[first + tap]
        weight = weights[tap]
        for i in range(source.shape[0]):
            total[i] += np.int32(source[i]) * weight


@numba.njit(cache=True, nogil=True)
def _along_columns(rows, starts, counts, weights, out):
    """uint8[H, B] -> ``out``, uint8[len(starts), B]: each output row a weighted sum of input
    rows."""
    total = np.empty(rows.shape[1], np.int32)
    for target in range(starts.shape[0]):
        _weighted_rows(rows, starts[target], counts[target], weights[target], total)
        for i in range(total.shape[0]):
            value = total[i] >> _PRECISION_BITS
            out[target, i] = 0 if value < 0 else (255 if value > 255 else value)


@numba.njit(cache=True, nogil=True)
def _along_columns_to_planes(words, starts, counts, weights, out):
    """``_along_columns`` over uint32[H, W] RGBX words whose R, G and B results go to byte planes
    ``out[band, row, pixel]``: the vertical pass and ``planes`` in one, without the image
    between them. Each band is summed apart, its byte shifted out of the words as they are
    read, so X is never computed."""
    total = np.empty(words.shape[1], np.int32)
    half = np.int32(1 << (_PRECISION_BITS - 1))
    for target in range(starts.shape[0]):
        first, count, row_weights = starts[target], counts[target], weights[target]
        for band in range(3):
            shift = np.uint32(8 * band)
            total[:] = half
            for tap in range(count):
                source = words[first + tap]
                weight = row_weights[tap]
                for i in range(source.shape[0]):
                    total[i] += np.int32((source[i] >> shift) & np.uint32(255)) * weight
            plane = out[band, target]
            for i in range(total.shape[0]):
                value = total[i] >> _PRECISION_BITS
                plane[i] = 0 if value < 0 else (255 if value > 255 else value)


@functools.lru_cache(maxsize=256)
def _cached_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, ...]:
    return tuple(_coefficients(in_size, out_size))


# Rows a multiple of this many bytes long map to the same cache sets: a transpose, which reads
# down the columns, then misses the cache on nearly every read (a 1024-wide image or mask).
_ALIASING_STRIDE = 1024
_CACHE_LINE = 64


def _aliasing(row_bytes: int) -> bool:
    return row_bytes % _ALIASING_STRIDE == 0


def _transposed(pixels: np.ndarray) -> np.ndarray:
    """``pixels.T``, contiguous. Rows of an aliasing length are first copied a cache line
    apart: 4x faster for a 601x1024 RGBX image (1.77 -> 0.45 ms with the copy)."""
    height, width = pixels.shape
    if _aliasing(pixels.strides[0]):
        spread = np.empty((height, width + _CACHE_LINE // pixels.itemsize), pixels.dtype)
        spread = spread[:, :width]
        spread[:] = pixels
        pixels = spread
    return np.ascontiguousarray(pixels.T)


def _pass(
    pixels: np.ndarray,
    coefficients: tuple[np.ndarray, ...],
    first_row: int = 0,
    to_transpose: bool = False,
) -> np.ndarray:
    """Resample along the rows' axis; ``pixels`` start at input row ``first_row``.
    ``to_transpose``: the result is transposed next, so rows of an aliasing length are laid out
    a cache line apart (a view of a wider buffer) and ``_transposed`` need not copy them."""
    starts, counts, weights = coefficients
    rows = pixels.view(np.uint8).reshape(pixels.shape[0], -1)
    length = rows.shape[1]
    padding = _CACHE_LINE if to_transpose and _aliasing(length) else 0
    out = np.empty((len(starts), length + padding), np.uint8)[:, :length]
    _along_columns(rows, starts - first_row, counts, weights, out)
    return out.view(pixels.dtype)


def _horizontal(pixels: np.ndarray, out_width: int) -> np.ndarray:
    coefficients = _cached_coefficients(pixels.shape[1], out_width)
    return _transposed(_pass(_transposed(pixels), coefficients, to_transpose=True))


def _vertical_first(shape: tuple[int, int], size: tuple[int, int]) -> bool:
    """Pillow runs the vertical pass first when the height shrinks by more than twice what the
    width does; otherwise horizontal first, over only the rows the vertical pass reads."""
    (height, width), (out_width, out_height) = shape, size
    return 0 < height - out_height and (width - out_width) * 2 < height - out_height


def _rows_read(pixels: np.ndarray, vertical: tuple[np.ndarray, ...], out_width: int):
    """The rows the vertical pass reads, already through the horizontal pass, and the index of
    the first of them."""
    starts, counts, _ = vertical
    first, last = int(starts[0]), int(starts[-1] + counts[-1])
    return _horizontal(pixels[first:last], out_width), first


def lanczos_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``Image.resize(size, LANCZOS)`` of a uint8[H, W] band or uint32[H, W] RGBX image."""
    height, width = pixels.shape
    out_width, out_height = size
    pixels = np.ascontiguousarray(pixels)
    vertical = _cached_coefficients(height, out_height)
    if _vertical_first(pixels.shape, size):
        if out_width == width:
            return _pass(pixels, vertical)
        return _horizontal(_pass(pixels, vertical, to_transpose=True), out_width)
    if out_width != width:
        rows, first = _rows_read(pixels, vertical, out_width)
        return _pass(rows, vertical, first) if out_height != height else rows
    return _pass(pixels, vertical) if out_height != height else pixels.copy()


def resize_to_planes(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``planes(lanczos_resize(pixels, size))`` of uint32[H, W] RGBX pixels, the same bytes;
    when Pillow's last pass is the vertical one (``_vertical_first`` says it is), that pass
    writes the planes itself."""
    height, width = pixels.shape
    out_width, out_height = size
    if _vertical_first(pixels.shape, size) or out_height == height:
        return planes(lanczos_resize(pixels, size))
    vertical = _cached_coefficients(height, out_height)
    starts, counts, weights = vertical
    pixels = np.ascontiguousarray(pixels)
    if out_width != width:
        rows, first = _rows_read(pixels, vertical, out_width)
    else:
        rows, first = pixels, 0
    out = np.empty((3, out_height, out_width), np.uint8)
    _along_columns_to_planes(rows, starts - first, counts, weights, out)
    return out


@numba.njit(cache=True, nogil=True)
def _brightest(pixels):
    high = np.uint32(0)
    for y in range(pixels.shape[0]):
        for x in range(pixels.shape[1]):
            word = pixels[y, x]
            high = max(high, word & 255, (word >> 8) & 255, (word >> 16) & 255)
    return high


def brightest(pixels: np.ndarray) -> int:
    """The largest R, G or B byte of uint32[H, W] RGBX pixels."""
    return int(_brightest(pixels))


@numba.njit(cache=True, nogil=True)
def _planes(pixels, out):
    for y in range(pixels.shape[0]):
        for x in range(pixels.shape[1]):
            word = pixels[y, x]
            out[0, y, x] = word & 255
            out[1, y, x] = (word >> 8) & 255
            out[2, y, x] = (word >> 16) & 255


def planes(pixels: np.ndarray) -> np.ndarray:
    """uint8[3, H, W]: the R, G and B bytes of uint32[H, W] RGBX pixels, one plane each."""
    out = np.empty((3, *pixels.shape), np.uint8)
    _planes(pixels, out)
    return out


@numba.njit(cache=True, nogil=True)
def _scaled_bytes(values, low, span, out):
    scale = np.float32(255)
    for y in range(values.shape[0]):
        for x in range(values.shape[1]):
            out[y, x] = np.uint8(((values[y, x] - low) / span) * scale)


def unit_bytes(values: np.ndarray) -> np.ndarray:
    """uint8[H, W] of float32[H, W] ``values`` min-max scaled to [0, 1], times 255, truncated:
    numpy's ``((values - low) / (high - low) * 255).astype(uint8)`` in float32, the same bytes
    in one pass after the extremes. Uniform values give zeros."""
    low, high = values.min(), values.max()
    out = np.zeros(values.shape, np.uint8)
    if high > low:
        # The span as numpy's caller computes it: float64 difference, then float32.
        span = np.float32(float(high) - float(low))
        _scaled_bytes(values, np.float32(low), span, out)
    return out


@numba.njit(cache=True, nogil=True)
def _colours(pixels, table, out):
    for y in range(pixels.shape[0]):
        for x in range(pixels.shape[1]):
            word = pixels[y, x]
            out[y, x, 0] = table[word & 255]
            out[y, x, 1] = table[(word >> 8) & 255]
            out[y, x, 2] = table[(word >> 16) & 255]


def colours(pixels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """float32[H, W, 3]: the R, G and B bytes of uint32[H, W] RGBX pixels looked up in
    float32[256] ``table``."""
    out = np.empty((*pixels.shape, 3), np.float32)
    _colours(pixels, table, out)
    return out


@numba.njit(cache=True, nogil=True)
def _cut_out(pixels, alpha, out):
    colour = np.uint32(0x00FFFFFF)
    for y in range(pixels.shape[0]):
        for x in range(pixels.shape[1]):
            value = np.uint32(alpha[y, x])
            # a fully transparent pixel carries no colour (and compresses to nothing)
            out[y, x] = (pixels[y, x] & colour) | (value << 24) if value else np.uint32(0)


def cut_out(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8[H, W, 4] RGBA: the colour of uint32[H, W] RGBX ``pixels`` under ``alpha``."""
    out = np.empty(pixels.shape, np.uint32)
    _cut_out(pixels, alpha, out)
    return out.view(np.uint8).reshape(*pixels.shape, 4)


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel now, for each kind of array a request
    passes it: both pixel types; a decoded image's pixels, which are Pillow's memory lent
    read-only (numba compiles read-only arrays apart); rows written a cache line apart before a
    transpose. A kernel met with a new kind of array on a request compiles then (0.3-0.5 s)."""
    for lent in (False, True):
        words, bands = _warm_up_array(np.uint32, lent), _warm_up_array(np.uint8, lent)
        for pixels in (words, bands):
            lanczos_resize(pixels, (3, 16))  # horizontal first
            lanczos_resize(pixels, (6, 16))  # the vertical pass alone, on the pixels
            lanczos_resize(pixels, (5, 2))  # vertical first
        resize_to_planes(words, (12, 16))
        resize_to_planes(words, (6, 16))  # the planes pass reads the pixels
        cut_out(words, np.zeros(words.shape, np.uint8))
        colours(words, np.zeros(256, np.float32))
        planes(words)
        brightest(words)
    lanczos_resize(np.zeros((100, _ALIASING_STRIDE), np.uint8), (1020, 4))
    lanczos_resize(np.zeros((100, _ALIASING_STRIDE // 4), np.uint32), (250, 4))
    unit_bytes(np.arange(4, dtype=np.float32).reshape(2, 2))


def _warm_up_array(dtype: type, read_only: bool) -> np.ndarray:
    array: np.ndarray = np.zeros((8, 6), dtype)
    array.flags.writeable = not read_only
    return array
