"""The image pipeline: pure functions from bytes and arrays to arrays and bytes.

Each step reproduces what rembg 2.0.86 does for the same settings (so the alpha equals the
reference), with one deliberate difference: rembg's naive cutout multiplies RGB by the mask,
which darkens every soft edge (and darkens it twice once a background colour is composited).
We keep the source RGB wherever the pixel is at least partly visible and zero it where it is
fully transparent; the alpha channel is rembg's exactly.

Everything here is CPU-heavy and runs on worker threads, never on the event loop.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from protocol.errors import Code, TaskFailure
from protocol.messages import BackgroundSettings, OutputSpec

from ..inference.families import Family
from ..inference.model_input import ModelInput
from ..matting.cutout import UnsolvableTrimap, matting_cutout
from ..matting.cutout import warm_up as warm_up_matting
from ..matting.foreground import estimate_foreground, rgba_bytes
from . import kernels, png
from .formats import IMAGE_PARAMETER, sniff_format
from .pillow_memory import pixel_words

__all__ = [
    "DecodedImage",
    "use_own_pixel_limit",
    "decode_image",
    "preprocess",
    "mask_from_prediction",
    "post_process_mask",
    "Cutout",
    "cutout",
    "apply_background",
    "encode_image",
    "Rendered",
    "render",
    "warm_up",
]


def warm_up(done: Callable[[str], None] = lambda step: None) -> None:
    """Compile (or load from numba's cache) every kernel of the pipeline and of matting now,
    not on the first request; ``done`` is told each step as it ends."""
    kernels.warm_up()
    done("the imaging kernels")
    warm_up_matting(done)


def warm_up_showing_progress() -> None:
    """``warm_up`` for an install: one line per step with its time, none silent for long."""
    started = time.perf_counter()

    def done(step: str) -> None:
        nonlocal started
        print(f"make: compiled {step} ({time.perf_counter() - started:.0f} s)", flush=True)
        started = time.perf_counter()

    warm_up(done)


def use_own_pixel_limit() -> None:
    """Turn off Pillow's process-wide decompression-bomb guard (a warning past 89 MP, a
    refusal past twice that): ``decode_image`` checks the configured limit itself, from the
    header, and answers ``imageTooLarge``. Called once by the composition root."""
    Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodedImage:
    """An upright image, one uint32 per pixel: RGBX bytes, or RGBA when the source has
    transparency. Every later step reads these words; none goes back to the Pillow image."""

    pixels: np.ndarray  # uint32[H, W]
    has_alpha: bool

    @classmethod
    def from_image(cls, image: Image.Image) -> DecodedImage:
        """From an upright RGB or RGBA image: its own memory where Pillow can lend it, else a
        copy (pillow_memory)."""
        return cls(pixel_words(image), image.mode == "RGBA")

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[0]

    def bands(self) -> np.ndarray:
        """uint8[H, W, 4] view of the same bytes."""
        return self.pixels.view(np.uint8).reshape(*self.pixels.shape, 4)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, without decoding; None when unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


# A progressive JPEG has about ten scans (libjpeg's default progression: 10 for colour); each
# scan makes the decoder pass over the whole image again, so a file that repeats a scan
# thousands of times costs tens of seconds under the pixel limit.
MAX_JPEG_SCANS = 64
_START_OF_SCAN = b"\xff\xda"  # never inside entropy-coded data, where 0xFF is stuffed


def _check_scans(data: bytes, parameter: str) -> None:
    """Refuse a JPEG with more scans than MAX_JPEG_SCANS, counted from its markers before
    decoding (an embedded thumbnail's few scans count too)."""
    scans = data.count(_START_OF_SCAN)
    if scans > MAX_JPEG_SCANS:
        raise TaskFailure(
            Code.INVALID_IMAGE,
            f"The JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are accepted (a progressive "
            "JPEG has about ten).",
            parameter=parameter,
            type="string",
        )


_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit greyscale PNGs open as these


def _scaled_to_bytes(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image as 8-bit "L", each value scaled by 255/65535 and rounded (Pillow's
    own conversion clips at 255: almost every pixel white), with its tRNS grey level, which
    names a 16-bit value, made alpha ("LA")."""
    values = np.asarray(image, dtype=np.uint32)
    grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return Image.fromarray(np.dstack([grey, alpha]), "LA")
    return Image.fromarray(grey, "L")


def _rgb_or_rgba(image: Image.Image) -> Image.Image:
    """RGBA where the source has transparency (an alpha channel, or a tRNS colour key on a
    palette, grey or RGB PNG: the same cutout as the RGBA file would get), else RGB."""
    if image.mode in _WIDE_GREY_MODES:
        image = _scaled_to_bytes(image)
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    mode = "RGBA" if has_alpha else "RGB"
    return image if image.mode == mode else image.convert(mode)


class _TimedSource(io.BytesIO):
    """The encoded image, read by Pillow's decoder a block at a time (``decodermaxblock``);
    each read first looks at this thread's CPU time and gives up past ``max_seconds``. The
    decoder works as the bytes arrive, so a decode stops within one block of its data; what
    one block can cost is bounded by the pixel limit and, for a JPEG, the scan cap (a repeated
    scan takes a few bytes and a pass over the whole image)."""

    BLOCK = 16 * 1024

    def __init__(self, data: bytes, max_seconds: float | None, parameter: str) -> None:
        super().__init__(data)
        self._deadline = None if max_seconds is None else time.thread_time() + max_seconds
        self._max_seconds = max_seconds
        self._parameter = parameter

    def read(self, size: int | None = -1) -> bytes:
        if self._deadline is not None and time.thread_time() > self._deadline:
            raise TaskFailure(
                Code.INVALID_IMAGE,
                f"The image took more than {self._max_seconds:g} s to decode and was given up "
                "(--decode-timeout).",
                parameter=self._parameter,
                type="string",
            )
        return super().read(size)


def decode_image(
    data: bytes,
    max_pixels: int,
    parameter: str = IMAGE_PARAMETER,
    limit_name: str = "the limit",
    max_seconds: float | None = None,
) -> DecodedImage:
    """Decode, check the pixel count from the header *before* decoding, apply EXIF orientation.

    Raises TaskFailure (invalidImage / imageTooLarge) naming ``parameter``; ``limit_name`` says
    which limit in the message; ``max_seconds`` of CPU time bound the decoding (None: no bound).
    """
    if sniff_format(data, parameter) == "jpg":
        _check_scans(data, parameter)
    try:
        image = Image.open(_TimedSource(data, max_seconds, parameter))
        width, height = image.size
        if width * height > max_pixels:
            raise TaskFailure(
                Code.IMAGE_TOO_LARGE,
                f"The image has {width}x{height} pixels; {limit_name} is {max_pixels:,} pixels.",
                parameter=parameter,
                type="string",
                max=max_pixels,
            )
        image.decodermaxblock = _TimedSource.BLOCK  # WEBP's own loader reads it all at once
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        decoded = DecodedImage.from_image(_rgb_or_rgba(image))
    except TaskFailure:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise TaskFailure(
            Code.INVALID_IMAGE,
            f"The image could not be decoded: {error}.",
            parameter=parameter,
            type="string",
        ) from None
    return decoded


@functools.lru_cache(maxsize=64)
def _input_lookup(family: Family, scale: float) -> np.ndarray:
    """float32[3, 256]: each band's bytes normalised as rembg does the whole array (float64,
    then rounded to float32), looked up where the model runs instead of computed per pixel."""
    values = np.arange(256, dtype=np.float64)
    mean, std = np.asarray(family.mean)[:, np.newaxis], np.asarray(family.std)[:, np.newaxis]
    lookup = ((values / scale - mean) / std).astype(np.float32)
    lookup.flags.writeable = False  # shared by every image of the family (and scale)
    return lookup


def preprocess(decoded: DecodedImage, family: Family) -> ModelInput:
    """The model input for one image, as rembg's ``normalize`` makes it: the resized image's
    bands, and the lookup that makes them the model's floats."""
    size = (family.size, family.size)
    if not family.divide_by_max:  # the lookup is known first: the resize writes the planes
        return ModelInput(
            kernels.resize_to_planes(decoded.pixels, size), _input_lookup(family, 255.0)
        )
    # Bands resize independently: an RGBA image's RGB comes out as its RGB conversion's would.
    small = kernels.lanczos_resize(decoded.pixels, size)
    scale = max(float(kernels.brightest(small)), 1e-6)
    return ModelInput(kernels.planes(small), _input_lookup(family, scale))


def mask_from_prediction(
    prediction: np.ndarray, size: tuple[int, int], sigmoid: bool = False
) -> np.ndarray:
    """uint8[H, W] mask at the image's size from one image's raw model output.

    ``sigmoid``: the output is logits (the family says so), squashed first as rembg does, in
    float32. Min-max normalisation is per image (in a batch, one image's range must not
    distort its neighbours); a uniform prediction yields an all-zero mask instead of dividing
    by zero.
    """
    if sigmoid:
        prediction = np.float32(1) / (np.float32(1) + np.exp(-prediction))
    return kernels.lanczos_resize(kernels.unit_bytes(prediction), size)


def _cross_filter(image: np.ndarray, pick: np.ufunc) -> np.ndarray:
    """Minimum or maximum over each pixel and its 4 neighbours: grey erosion or dilation with
    the radius-1 disk (the 3x3 cross rembg's skimage ``disk(1)`` is).

    Beyond the edge scipy's default mode reflects, which one pixel out is the edge pixel itself:
    edge padding. Equal to ``ndimage.grey_erosion``/``grey_dilation`` with that footprint and
    much faster.
    """
    padded = np.pad(image, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    vertical = pick(padded[:-2, 1:-1], padded[2:, 1:-1])
    horizontal = pick(padded[1:-1, :-2], padded[1:-1, 2:])
    return pick(pick(centre, vertical), horizontal)


def post_process_mask(mask: np.ndarray) -> np.ndarray:
    """rembg's post_process: opening with a radius-1 disk, Gaussian sigma 2, threshold at 127."""
    opened = _cross_filter(_cross_filter(mask, np.minimum), np.maximum)
    blurred = ndimage.gaussian_filter(opened.astype(np.float64), sigma=2)
    return np.where(blurred < 127, 0, 255).astype(np.uint8)


def _mul255(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a*b/255 rounded the way Pillow blends (so alpha matches rembg's composite bit for bit)."""
    product = a.astype(np.uint32) * b.astype(np.uint32) + 128
    return ((product + (product >> 8)) >> 8).astype(np.uint8)


# A byte in [0, 1] as pymatting reads rembg's ``img / 255.0``: float64, then float32.
_UNIT_COLOURS = (np.arange(256) / 255.0).astype(np.float32)


def _decontaminated_cutout(decoded: DecodedImage, mask: np.ndarray) -> np.ndarray:
    """rembg's decontaminate_cutout: the foreground colour estimated from the mask (pymatting's
    ML estimate, our kernel) under the mask as alpha; the source's own alpha is dropped, as
    rembg converts the image to RGB first. Fully transparent pixels carry no colour, as in
    the plain cutout."""
    alpha = mask / 255.0
    rgb = kernels.colours(decoded.pixels, _UNIT_COLOURS)
    return rgba_bytes(estimate_foreground(rgb, alpha), alpha, clear_transparent=True)


def _naive_cutout(decoded: DecodedImage, mask: np.ndarray) -> np.ndarray:
    if decoded.has_alpha:
        mask = _mul255((decoded.pixels >> 24).astype(np.uint8), mask)
    return kernels.cut_out(decoded.pixels, mask)


@dataclass(frozen=True)
class Cutout:
    """uint8[H, W, 4] RGBA (or the uint8[H, W] mask alone with returnOnlyMask), and why alpha
    matting fell back to the decontaminated cutout when it did."""

    pixels: np.ndarray
    matting_fallback: str | None = None


def cutout(decoded: DecodedImage, mask: np.ndarray, settings: BackgroundSettings) -> Cutout:
    """The cutout before any background colour."""
    if settings.post_process_mask:
        mask = post_process_mask(mask)
    if settings.return_only_mask:
        return Cutout(mask)
    if settings.alpha_matting:
        try:
            rgb = np.ascontiguousarray(decoded.bands()[..., :3])
            return Cutout(matting_cutout(rgb, mask, settings))
        except UnsolvableTrimap as reason:
            # As rembg: matting estimates the foreground colour, so its fallback does too.
            return Cutout(_decontaminated_cutout(decoded, mask), matting_fallback=str(reason))
    if settings.decontaminate:
        return Cutout(_decontaminated_cutout(decoded, mask))
    return Cutout(_naive_cutout(decoded, mask))


def apply_background(
    pixels: np.ndarray, rgba: tuple[int, int, int, int], output_format: str
) -> np.ndarray:
    """Composite the cutout onto the background colour.

    PNG/WEBP keep transparency: the colour is alpha-composited under the cutout as rembg does
    (a fully transparent colour, the default, changes nothing). JPG has no alpha channel, so
    the cutout is flattened onto the colour's RGB, opaque.
    """
    if pixels.ndim == 2:
        return pixels  # a mask is returned as it is
    if output_format != "JPG" and rgba[3] == 0:
        return pixels
    image = Image.fromarray(pixels)
    if output_format == "JPG":
        background = Image.new("RGBA", image.size, (*rgba[:3], 255))
        return np.asarray(Image.alpha_composite(background, image).convert("RGB"))
    return np.asarray(Image.alpha_composite(Image.new("RGBA", image.size, tuple(rgba)), image))


def encode_image(pixels: np.ndarray, output: OutputSpec, png_compress_level: int) -> bytes:
    if output.format == "PNG":
        return png.encode(pixels, png_compress_level)
    image = Image.fromarray(pixels)  # L, RGB or RGBA from the array's shape
    buffer = io.BytesIO()
    if output.format == "JPG":
        image.save(buffer, format="JPEG", quality=output.quality)
    else:
        image.save(buffer, format="WEBP", quality=output.quality)
    return buffer.getvalue()


@dataclass(frozen=True)
class Rendered:
    """The encoded result file, and why alpha matting fell back when it did."""

    encoded: bytes
    matting_fallback: str | None = None


def render(
    decoded: DecodedImage,
    prediction: np.ndarray,
    family: Family,
    settings: BackgroundSettings,
    output: OutputSpec,
    png_compress_level: int,
) -> Rendered:
    """From the model's raw output for one image to the encoded result file."""
    mask = mask_from_prediction(prediction, decoded.size, family.sigmoid)
    cut = cutout(decoded, mask, settings)
    image = apply_background(cut.pixels, settings.rgba, output.format)
    return Rendered(encode_image(image, output, png_compress_level), cut.matting_fallback)
