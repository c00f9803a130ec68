"""The image formats the service takes and gives: magic bytes, extensions, content types.

Light on purpose (no numpy, no Pillow): storage and the HTTP routes need these tables without
the pipeline.
"""

from __future__ import annotations

import pybase64

from protocol.errors import Code, TaskFailure, code_for

__all__ = [
    "MAGIC_FORMATS",
    "CONTENT_TYPES",
    "EXTENSIONS",
    "STORED_EXTENSIONS",
    "MAX_SIDES",
    "sniff_format",
    "check_encodable",
    "payload_fields",
]

IMAGE_PARAMETER = "inputImage"  # how errors name the input when the caller doesn't

# First bytes of the formats accepted as input, and the extension each is stored under.
MAGIC_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
}
# outputFormat -> the extension its file is stored under
EXTENSIONS = {"JPG": "jpg", "PNG": "png", "WEBP": "webp"}
# The longest side each output format's encoder writes (libjpeg's limit, WebP's); PNG's is far
# beyond the largest image accepted.
MAX_SIDES = {"JPG": 65_500, "WEBP": 16_383}
# What inputs (any accepted format) and outputs (png/jpg/webp) are stored as.
STORED_EXTENSIONS = tuple(CONTENT_TYPES)


def sniff_format(data: bytes, parameter: str = IMAGE_PARAMETER) -> str:
    """The stored extension of an accepted input format, from its magic bytes.

    Raises TaskFailure(invalidImage) naming ``parameter`` for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, extension in MAGIC_FORMATS:
        if data.startswith(magic):
            return extension
    raise TaskFailure(
        Code.INVALID_IMAGE,
        "The image is not a JPEG, PNG, WEBP, GIF or BMP file.",
        parameter=parameter,
        type="string",
    )


def check_encodable(size: tuple[int, int], output_format: str) -> None:
    """Raise TaskFailure(invalidOutputFormat) when an image of ``size`` (width, height) is too
    long a side for ``output_format``: said before the work, not by the encoder after it."""
    limit = MAX_SIDES.get(output_format)
    if limit is not None and max(size) > limit:
        raise TaskFailure(
            code_for("invalid", "outputFormat"),
            f"{output_format} holds at most {limit:,} pixels a side; this image is "
            f"{size[0]}x{size[1]}. Ask for outputFormat PNG.",
            parameter="outputFormat",
            type="string",
        )


def payload_fields(encoded: bytes, extension: str, output_type: str) -> dict[str, str]:
    """The result field carrying the image inline: imageBase64Data or imageDataURI."""
    text = pybase64.b64encode_as_string(encoded)
    if output_type == "base64Data":
        return {"imageBase64Data": text}
    return {"imageDataURI": f"data:{CONTENT_TYPES[extension]};base64,{text}"}
