"""The image formats the service takes and gives: magic bytes, extensions, content types.

Light on purpose (no numpy, no Pillow): storage and the HTTP routes need these tables without
the pipeline.
"""

from __future__ import annotations

from protocol.errors import Code, TaskFailure

__all__ = ["MAGIC_FORMATS", "CONTENT_TYPES", "EXTENSIONS", "STORED_EXTENSIONS", "sniff_format"]

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
