"""The image pipeline: pure functions from bytes and arrays to arrays and bytes.

Each step reproduces what rembg 2.0.86 does for the same settings (so the alpha equals the
reference), with one deliberate difference: rembg's naive cutout multiplies RGB by the mask,
which darkens every soft edge (and darkens it twice once a background colour is composited).
We keep the source RGB wherever the pixel is at least partly visible and zero it where it is
fully transparent; the alpha channel is rembg's exactly.

Everything here is CPU-heavy and runs on worker threads, never on the event loop.
"""

from __future__ import annotations

import base64
import io
import logging
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from isal import isal_zlib
from PIL import Image, ImageOps
from scipy import ndimage

from protocol.errors import Code, TaskFailure
from protocol.messages import BackgroundSettings, OutputSpec

from ..inference.families import Family
from ..matting.cutout import UnsolvableTrimap, matting_cutout
from .formats import CONTENT_TYPES, IMAGE_PARAMETER, sniff_format

log = logging.getLogger(__name__)

__all__ = [
    "DecodedImage",
    "use_own_pixel_limit",
    "decode_image",
    "preprocess",
    "mask_from_prediction",
    "post_process_mask",
    "cutout",
    "apply_background",
    "encode_image",
    "encode_png",
    "render",
    "payload_fields",
]


def use_own_pixel_limit() -> None:
    """Turn off Pillow's process-wide decompression-bomb guard (a warning past 89 MP, a
    refusal past twice that): ``decode_image`` checks the configured limit itself, from the
    header, and answers ``imageTooLarge``. Called once by the composition root."""
    Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodedImage:
    """An upright image as RGB or RGBA (RGBA only when the source has transparency)."""

    image: Image.Image

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, without decoding; None when unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def decode_image(
    data: bytes, max_pixels: int, parameter: str = IMAGE_PARAMETER, limit_name: str = "the limit"
) -> DecodedImage:
    """Decode, check the pixel count from the header *before* decoding, apply EXIF orientation.

    Raises TaskFailure (invalidImage / imageTooLarge) naming ``parameter``; ``limit_name`` says
    which limit in the message.
    """
    sniff_format(data, parameter)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise TaskFailure(
                Code.IMAGE_TOO_LARGE,
                f"The image has {width}x{height} pixels; {limit_name} is {max_pixels:,} pixels.",
                parameter=parameter,
                type="string",
                max=max_pixels,
            )
        upright = ImageOps.exif_transpose(image)
        has_alpha = upright.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            upright.mode == "P" and "transparency" in upright.info
        )
        converted = upright.convert("RGBA" if has_alpha else "RGB")
    except TaskFailure:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise TaskFailure(
            Code.INVALID_IMAGE,
            f"The image could not be decoded: {error}.",
            parameter=parameter,
            type="string",
        ) from None
    return DecodedImage(converted)


def preprocess(decoded: DecodedImage, family: Family) -> np.ndarray:
    """The model input for one image: float32[3, S, S], as rembg's ``normalize`` makes it."""
    small = decoded.image.convert("RGB").resize(
        (family.size, family.size), Image.Resampling.LANCZOS
    )
    pixels = np.asarray(small, dtype=np.float32)
    scale = max(float(pixels.max()), 1e-6) if family.divide_by_max else 255.0
    normalised = (pixels / scale - np.asarray(family.mean, np.float32)) / np.asarray(
        family.std, np.float32
    )
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def mask_from_prediction(prediction: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8[H, W] mask at the image's size from one image's raw model output.

    Min-max normalisation is per image (in a batch, one image's range must not distort its
    neighbours); a uniform prediction yields an all-zero mask instead of dividing by zero.
    """
    high, low = float(prediction.max()), float(prediction.min())
    if high > low:
        scaled = (prediction - np.float32(low)) / np.float32(high - low)
    else:
        scaled = np.zeros_like(prediction)
    mask = Image.fromarray((scaled * 255).astype(np.uint8), mode="L")
    return np.asarray(mask.resize(size, Image.Resampling.LANCZOS))


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


def _naive_cutout(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    rgba = np.asarray(image.convert("RGBA")).copy()
    alpha = mask if image.mode == "RGB" else _mul255(rgba[..., 3], mask)
    rgba[..., 3] = alpha
    rgba[..., :3] *= (alpha != 0)[..., np.newaxis]  # fully transparent pixels carry no colour
    return rgba


def cutout(decoded: DecodedImage, mask: np.ndarray, settings: BackgroundSettings) -> Image.Image:
    """The RGBA cutout (or the L mask alone with returnOnlyMask), before any background colour."""
    if settings.post_process_mask:
        mask = post_process_mask(mask)
    if settings.return_only_mask:
        return Image.fromarray(mask, mode="L")
    if settings.alpha_matting:
        try:
            rgb = np.asarray(decoded.image.convert("RGB"))
            return Image.fromarray(matting_cutout(rgb, mask, settings), mode="RGBA")
        except UnsolvableTrimap as reason:
            # rembg falls back to the naive cutout when matting cannot solve the trimap
            log.warning("alpha matting fell back to the plain cutout: %s", reason)
    return Image.fromarray(_naive_cutout(decoded.image, mask), mode="RGBA")


def apply_background(
    image: Image.Image, rgba: tuple[int, int, int, int], output_format: str
) -> Image.Image:
    """Composite the cutout onto the background colour.

    PNG/WEBP keep transparency: the colour is alpha-composited under the cutout as rembg does
    (a fully transparent colour, the default, changes nothing). JPG has no alpha channel, so
    the cutout is flattened onto the colour's RGB, opaque.
    """
    if image.mode != "RGBA":
        return image  # a mask is returned as it is
    if output_format == "JPG":
        background = Image.new("RGBA", image.size, (*rgba[:3], 255))
        return Image.alpha_composite(background, image).convert("RGB")
    if rgba[3] == 0:
        return image
    return Image.alpha_composite(Image.new("RGBA", image.size, tuple(rgba)), image)


_PNG_COLOUR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def encode_png(image: Image.Image, level: int) -> bytes:
    """A PNG of an L/RGB/RGBA image: every row "Up"-filtered with numpy, deflated by ISA-L.

    Several times faster than Pillow's encoder for a file of about the same size
    (docs/decisions/0005). ``level`` is ISA-L's, 0-3.
    """
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the byte above it
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[image.mode], 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", isal_zlib.compress(filtered, level)),
            _png_chunk(b"IEND", b""),
        )
    )


def encode_image(image: Image.Image, output: OutputSpec, png_compress_level: int) -> bytes:
    if output.format == "PNG":
        return encode_png(image, png_compress_level)
    buffer = io.BytesIO()
    if output.format == "JPG":
        image.save(buffer, format="JPEG", quality=output.quality)
    else:
        image.save(buffer, format="WEBP", quality=output.quality)
    return buffer.getvalue()


def payload_fields(encoded: bytes, extension: str, output_type: str) -> dict[str, str]:
    """The result field carrying the image inline: imageBase64Data or imageDataURI."""
    text = base64.b64encode(encoded).decode("ascii")
    if output_type == "base64Data":
        return {"imageBase64Data": text}
    return {"imageDataURI": f"data:{CONTENT_TYPES[extension]};base64,{text}"}


def render(
    decoded: DecodedImage,
    prediction: np.ndarray,
    settings: BackgroundSettings,
    output: OutputSpec,
    png_compress_level: int,
) -> bytes:
    """From the model's raw output for one image to the encoded result file."""
    mask = mask_from_prediction(prediction, decoded.size)
    image = apply_background(cutout(decoded, mask, settings), settings.rgba, output.format)
    return encode_image(image, output, png_compress_level)
