"""What the service needs of an image store, whichever backs it.

Inputs and outputs are both stored, so either UUID can be given as a later task's input, and
URL outputs are served from the store. An expired image is gone for readers at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from protocol.messages import UUID_PATTERN

__all__ = [
    "StoredImage",
    "RecentImages",
    "ImageStore",
    "is_image_uuid",
    "new_image_uuid",
    "belongs_to",
]

_IMAGE_UUID = re.compile(UUID_PATTERN)


def _tag(scope: bytes, head: bytes) -> bytes:
    """The UUID's second half: a digest of its first half and the scope, variant bits set."""
    tag = bytearray(hashlib.sha256(scope + head).digest()[:8])
    tag[0] = 0x80 | (tag[0] & 0x3F)
    return bytes(tag)


def new_image_uuid(scope: bytes) -> str:
    """A new image UUID that says which scope (API key digest) stored the image.

    A version-4 UUID whose first 64 bits are random and whose last 64 are a digest of those and
    the scope: ``belongs_to`` tells an image's scope from its UUID alone, in every process and
    every store, and making a UUID that passes for a scope takes knowing that scope's key.
    """
    head = bytearray(os.urandom(8))
    head[6] = 0x40 | (head[6] & 0x0F)
    return str(uuidlib.UUID(bytes=bytes(head) + _tag(scope, bytes(head))))


def belongs_to(image_uuid: str, scope: bytes) -> bool:
    """Whether the image named ``image_uuid`` was stored under ``scope``."""
    try:
        raw = uuidlib.UUID(image_uuid.strip()).bytes
    except ValueError:
        return False
    return hmac.compare_digest(raw[8:], _tag(scope, raw[:8]))


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


class RecentImages:
    """The records of the images a process stored or looked up last, at most ``capacity``: the
    oldest is forgotten first. Only a cache, since the directory or the bucket has every image
    and a forgotten one costs a ``stat`` (a GET by each extension) when it is next read; kept
    whole, it would grow with the traffic times the images' TTL (a day by default)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._records: dict[str, StoredImage] = {}  # in the order they were remembered

    def remember(self, stored: StoredImage) -> None:
        self._records.pop(stored.uuid, None)
        self._records[stored.uuid] = stored
        if len(self._records) > self._capacity:
            del self._records[next(iter(self._records))]

    def get(self, image_uuid: str) -> StoredImage | None:
        return self._records.get(image_uuid)

    def forget(self, image_uuid: str) -> None:
        self._records.pop(image_uuid, None)


# At most about 40 MB of records (a directory's take 660 bytes each): the images of the last few
# minutes at a few hundred per second.
RECENT_IMAGES = 65_536


class ImageStore(Protocol):
    """A directory (``DirectoryImageStore``) or a bucket (``S3ImageStore``)."""

    async def put(
        self, data: bytes, extension: str, ttl: int | None = None, scope: bytes = b""
    ) -> StoredImage:
        """Keep ``data`` under a new UUID (``new_image_uuid(scope)``) for ``ttl`` seconds
        (None: the store's default)."""
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

    def unready_because(self) -> str | None:
        """Why the store cannot take images now (a full disk), until a write succeeds; None
        when it can."""
        ...
