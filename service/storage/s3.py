"""Image storage in any S3-compatible object store (AWS S3, SeaweedFS, MinIO, ...).

An ``ImageStore``: objects are ``<uuid>.<ext>`` in one bucket, each
with its expiry in its metadata (``expires-at``, seconds since the epoch), so every gateway and
worker sees every image and nobody reads an expired one. URL outputs are presigned GETs that
expire with the image (S3 caps a presigned URL at 7 days): clients fetch from the store, not
through us. Deleting expired objects is the bucket's lifecycle rule's job (``sweep`` deletes
nothing): S3 listings do not carry our metadata, so sweeping would cost a HEAD per object.

boto3 does the request signing (SigV4); its client is thread-safe and is called on worker
threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..imaging.formats import CONTENT_TYPES, STORED_EXTENSIONS
from .store import RECENT_IMAGES, RecentImages, StoredImage, is_image_uuid, new_image_uuid

__all__ = ["S3ImageStore"]

_MAX_PRESIGN_SECONDS = 7 * 86_400


class S3ImageStore:
    """Images as objects in one S3 bucket.

    Args:
        endpoint: the S3 API's URL (None: AWS).
        bucket: where the images go (it must exist).
        access_key, secret_key, region: credentials (None: boto3's usual sources, e.g. the
            AWS_* environment variables).
        default_ttl: seconds an image lives when its task names no ttl.
        recent: how many images' records are kept in memory (``RecentImages``).
    """

    def __init__(
        self,
        endpoint: str | None,
        bucket: str,
        access_key: str | None,
        secret_key: str | None,
        region: str,
        default_ttl: int,
        clock: Callable[[], float] = time.time,
        recent: int = RECENT_IMAGES,
    ) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=BotoConfig(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )
        self._bucket = bucket
        self.default_ttl = default_ttl
        self._clock = clock
        self._known = RecentImages(recent)  # one GET for these, not one per extension

    async def put(
        self, data: bytes, extension: str, ttl: int | None = None, scope: bytes = b""
    ) -> StoredImage:
        image_uuid = new_image_uuid(scope)
        expires_at = self._clock() + (ttl if ttl is not None else self.default_ttl)
        key = f"{image_uuid}.{extension}"
        await asyncio.to_thread(
            self._client.put_object,
            Bucket=self._bucket,
            Key=key,
            Body=data,
            ContentType=CONTENT_TYPES.get(extension, "application/octet-stream"),
            Metadata={"expires-at": f"{expires_at:.3f}"},
        )
        stored = StoredImage(image_uuid, extension, None, expires_at)
        self._known.remember(stored)
        return stored

    def unready_because(self) -> str | None:
        return None  # a bucket's refusals are its own; each put fails on its own

    async def load(self, image_uuid: str) -> tuple[StoredImage, bytes] | None:
        """The live image's record and bytes; None when unknown or expired."""
        if not is_image_uuid(image_uuid):
            return None
        loaded = await asyncio.to_thread(self._fetch, image_uuid, self._known.get(image_uuid))
        if loaded is None or loaded[0].expires_at <= self._clock():
            return None
        return loaded

    def _fetch(
        self, image_uuid: str, known: StoredImage | None
    ) -> tuple[StoredImage, bytes] | None:
        from botocore.exceptions import ClientError

        extensions = (known.extension,) if known else STORED_EXTENSIONS
        for extension in extensions:
            try:
                reply = self._client.get_object(
                    Bucket=self._bucket, Key=f"{image_uuid}.{extension}"
                )
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    continue
                raise
            expires_at = float(reply["Metadata"].get("expires-at", 0))
            return StoredImage(image_uuid, extension, None, expires_at), reply["Body"].read()
        return None

    def url_for(self, stored: StoredImage, base_url: str) -> str:
        """A presigned GET that lives as long as the image (at most S3's 7 days)."""
        seconds = int(min(_MAX_PRESIGN_SECONDS, max(1, stored.expires_at - self._clock())))
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": stored.filename}, ExpiresIn=seconds
        )

    async def sweep(self) -> int:
        return 0  # the bucket's lifecycle rule deletes; expired objects are already unreadable
