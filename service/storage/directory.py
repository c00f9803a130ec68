"""Images as files by UUID in a directory, each with an expiry (an ``ImageStore``).

URL outputs are served by the service itself (``GET /images/<uuid>.<ext>``). An expired image is
gone for readers at once; the sweeper deletes its file soon after.

The disk is the truth: a file's modification time is its expiry. So several processes sharing
the directory (gateways and workers of one machine, or a shared volume) see each other's images,
and files of an earlier run stay reachable until they expire. The in-memory index only saves a
``stat`` per read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

from protocol.errors import Code, TaskFailure

from ..imaging.formats import STORED_EXTENSIONS
from .store import RECENT_IMAGES, RecentImages, StoredImage, is_image_uuid, new_image_uuid

__all__ = ["DirectoryImageStore"]


class DirectoryImageStore:
    """Images as files in one directory.

    Args:
        root: the directory holding the files (created if missing).
        default_ttl: seconds an image lives when its task names no ttl.
        clock: seconds since the epoch; injectable for tests.
        recent: how many images' records are kept in memory (``RecentImages``).
    """

    def __init__(
        self,
        root: Path,
        default_ttl: int,
        clock: Callable[[], float] = time.time,
        recent: int = RECENT_IMAGES,
    ) -> None:
        self.root = root
        self.default_ttl = default_ttl
        self._clock = clock
        self._images = RecentImages(recent)
        self._full: str | None = None  # why the last write failed for want of room
        self._next_sweep = 0.0
        root.mkdir(parents=True, exist_ok=True)

    async def put(
        self, data: bytes, extension: str, ttl: int | None = None, scope: bytes = b""
    ) -> StoredImage:
        """Write ``data`` under a new UUID (atomically: readers never see a partial file)."""
        image_uuid = new_image_uuid(scope)
        path = self.root / f"{image_uuid}.{extension}"
        expires_at = self._clock() + (ttl if ttl is not None else self.default_ttl)
        try:
            await asyncio.to_thread(_write_atomically, path, data, expires_at)
        except OSError as error:
            if error.errno not in _NO_ROOM:
                raise
            self._full = f"the image store is full ({os.strerror(error.errno)} in {self.root})"
            raise TaskFailure(
                Code.STORAGE_FULL,
                "The server's image store is full: nothing could be written. Retry later.",
                retry_after_ms=30_000,
            ) from None
        self._full = None
        stored = StoredImage(image_uuid, extension, path, expires_at)
        self._images.remember(stored)
        return stored

    def unready_because(self) -> str | None:
        return self._full

    def get(self, image_uuid: str) -> StoredImage | None:
        stored = self._images.get(image_uuid) or self._on_disk(image_uuid)
        if stored is None or stored.expires_at <= self._clock():
            return None
        return stored

    def _on_disk(self, image_uuid: str) -> StoredImage | None:
        """Another process's image (or an earlier run's): found by name, expiry from mtime."""
        if not is_image_uuid(image_uuid):
            return None  # never let a client's string become a path
        for extension in STORED_EXTENSIONS:
            path = self.root / f"{image_uuid}.{extension}"
            try:
                expires_at = path.stat().st_mtime
            except FileNotFoundError:
                continue
            stored = StoredImage(image_uuid, extension, path, expires_at)
            self._images.remember(stored)
            return stored
        return None

    async def load(self, image_uuid: str) -> tuple[StoredImage, bytes] | None:
        """The live image's record and bytes; None when unknown, expired or its file is gone."""
        stored = self.get(image_uuid)
        if stored is None or stored.path is None:
            return None
        try:
            return stored, await asyncio.to_thread(stored.path.read_bytes)
        except FileNotFoundError:
            return None

    def url_for(self, stored: StoredImage, base_url: str) -> str:
        """Where clients fetch it: our own ``GET /images/...``."""
        return f"{base_url}/images/{stored.filename}"

    async def sweep(self) -> int:
        """Delete every expired file (whoever wrote it) and forget it; returns how many.

        A sweep stats every file in the directory: a day of images at ten a second (input
        and result each) is 1.7 million files and seconds of CPU. So after a sweep the next
        one waits SWEEP_DUTY times as long as it took (about 1% of a core), unless the disk
        is full; an expired image is unreadable at once all the same, only its disk space
        waits."""
        started = self._clock()
        if started < self._next_sweep and self._full is None:
            return 0
        removed = await asyncio.to_thread(_remove_expired, self.root, started)
        ended = self._clock()
        self._next_sweep = ended + (ended - started) * SWEEP_DUTY
        for image_uuid in removed:
            self._images.forget(image_uuid)
        return len(removed)


# A sweep's pause over its own duration (DirectoryImageStore.sweep).
SWEEP_DUTY = 100


# Write errors that mean "no room": the disk, or the user's quota.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})
# A partial file older than this belongs to a write that died before its rename.
_PARTIAL_GRACE = 3600.0


def _remove_expired(root: Path, now: float) -> list[str]:
    """Delete expired images (returned by UUID) and the partial files of dead writes."""
    removed = []
    with os.scandir(root) as entries:
        for entry in entries:
            stem, _, extension = entry.name.partition(".")
            if extension.endswith(".partial"):
                _remove_stale_partial(entry, now)
                continue
            if extension not in STORED_EXTENSIONS:
                continue  # not ours
            try:
                if entry.stat().st_mtime <= now:
                    os.unlink(entry.path)
                    removed.append(stem)
            except FileNotFoundError:
                pass  # another process swept it first
    return removed


def _remove_stale_partial(entry: os.DirEntry[str], now: float) -> None:
    # Its mtime may already be the image's expiry; ctime is when it was last written.
    try:
        if entry.stat().st_ctime <= now - _PARTIAL_GRACE:
            os.unlink(entry.path)
    except FileNotFoundError:
        pass


def _write_atomically(path: Path, data: bytes, expires_at: float) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_bytes(data)
        os.utime(partial, (expires_at, expires_at))  # the expiry, for every process that reads it
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(FileNotFoundError):  # a failed write leaves nothing behind
            partial.unlink()
        raise
