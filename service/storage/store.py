"""What the service needs of an image store, whichever backs it.

Inputs and outputs are both stored, so either UUID can be given as a later task's input, and
URL outputs are served from the store. An expired image is gone for readers at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protocol.messages import UUID_PATTERN

__all__ = ["StoredImage", "ImageStore", "is_image_uuid"]

_IMAGE_UUID = re.compile(UUID_PATTERN)


def is_image_uuid(name: str) -> bool:
    """Image UUIDs are the only client strings that become file names or object keys."""
    return _IMAGE_UUID.match(name) is not None


@dataclass(frozen=True)
class StoredImage:
    uuid: str
    extension: str
    path: Path | None  # None in an object store
    expires_at: float

    @property
    def filename(self) -> str:
        return f"{self.uuid}.{self.extension}"


class ImageStore(Protocol):
    """A directory (``DirectoryImageStore``) or a bucket (``S3ImageStore``)."""

    async def put(self, data: bytes, extension: str, ttl: int | None = None) -> StoredImage:
        """Keep ``data`` under a new UUID for ``ttl`` seconds (None: the store's default)."""
        ...

    async def load(self, image_uuid: str) -> tuple[StoredImage, bytes] | None:
        """The live image's record and bytes; None when unknown or expired."""
        ...

    def url_for(self, stored: StoredImage, base_url: str) -> str:
        """Where clients fetch the image."""
        ...

    async def sweep(self) -> int:
        """Delete what has expired; returns how many images went."""
        ...
