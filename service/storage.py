"""Image storage: files by UUID on the local disk, each with an expiry.

Inputs and outputs are both stored, so either UUID can be given as a later task's input, and
URL outputs are served from here (``GET /images/<uuid>.<ext>``). An expired image is gone for
readers at once; the sweeper deletes its file soon after.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["StoredImage", "ImageStore"]

@dataclass(frozen=True)
class StoredImage:
    uuid: str
    extension: str
    path: Path
    expires_at: float

    @property
    def filename(self) -> str:
        return f"{self.uuid}.{self.extension}"


class ImageStore:
    """Args:
        root: the directory holding the files (created if missing).
        default_ttl: seconds an image lives when its task names no ttl.
        clock: seconds since the epoch; injectable for tests.
    """

    def __init__(self, root: Path, default_ttl: int, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.default_ttl = default_ttl
        self._clock = clock
        self._images: dict[str, StoredImage] = {}
        root.mkdir(parents=True, exist_ok=True)
        self._adopt_existing()

    def _adopt_existing(self) -> None:
        """Files left by an earlier run stay reachable for the default ttl from their mtime."""
        for path in self.root.iterdir():
            stem, _, extension = path.name.partition(".")
            if path.is_file() and extension and not extension.endswith("partial"):
                self._images[stem] = StoredImage(stem, extension, path,
                                                 path.stat().st_mtime + self.default_ttl)

    async def put(self, data: bytes, extension: str, ttl: int | None = None) -> StoredImage:
        """Write ``data`` under a new UUID (atomically: readers never see a partial file)."""
        image_uuid = str(uuidlib.uuid4())
        path = self.root / f"{image_uuid}.{extension}"
        await asyncio.to_thread(_write_atomically, path, data)
        stored = StoredImage(image_uuid, extension, path,
                             self._clock() + (ttl if ttl is not None else self.default_ttl))
        self._images[image_uuid] = stored
        return stored

    def get(self, image_uuid: str) -> StoredImage | None:
        stored = self._images.get(image_uuid)
        if stored is None or stored.expires_at <= self._clock():
            return None
        return stored

    async def load(self, image_uuid: str) -> tuple[StoredImage, bytes] | None:
        """The live image's record and bytes; None when unknown, expired or its file is gone."""
        stored = self.get(image_uuid)
        if stored is None:
            return None
        try:
            return stored, await asyncio.to_thread(stored.path.read_bytes)
        except FileNotFoundError:
            return None

    async def read(self, image_uuid: str) -> bytes | None:
        loaded = await self.load(image_uuid)
        return loaded[1] if loaded else None

    async def sweep(self) -> int:
        """Forget every expired image, then delete its file; returns how many."""
        now = self._clock()
        expired = [stored for stored in self._images.values() if stored.expires_at <= now]
        for stored in expired:
            del self._images[stored.uuid]
        await asyncio.to_thread(_unlink_all, [stored.path for stored in expired])
        return len(expired)


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
