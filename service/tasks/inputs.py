"""Task inputs: turn the string a client gave (UUID, URL, data URI, bare base64) into image bytes.

Every input that is not already stored is stored, so the ``inputImageUUID`` of a result works as
a later input. URL inputs are fetched through ``OutboundHttp`` and its address policy.
"""

from __future__ import annotations

import asyncio
import binascii
import re
from dataclasses import dataclass

import pybase64

from protocol.errors import Code, TaskFailure

from ..imaging.formats import sniff_format
from ..net.outbound import OutboundHttp
from ..storage.store import ImageStore, StoredImage, belongs_to, is_image_uuid

__all__ = ["ResolvedInput", "InputResolver"]

_DATA_URI = re.compile(r"^data:(?P<type>[^,;]*)(?P<params>(;[^,;]*)*?);base64,", re.IGNORECASE)
# Decoding base64 of this size or more happens on a worker thread, not on the event loop: below
# it, decoding (SIMD, well under a millisecond) costs less than the trip to a thread and back.
_THREAD_BASE64_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ResolvedInput:
    stored: StoredImage
    data: bytes


def _b64decode(text: str) -> bytes:
    try:
        return pybase64.b64decode(text, validate=True)
    except binascii.Error:  # line breaks and spaces are allowed: drop them and try again
        return pybase64.b64decode("".join(text.split()), validate=True)


class InputResolver:
    def __init__(self, store: ImageStore, http: OutboundHttp) -> None:
        self._store = store
        self._http = http

    async def resolve(self, value: str, parameter: str, scope: bytes) -> ResolvedInput:
        """Bytes and stored record of the image ``value`` names, for a task of ``scope`` (whose
        own stored images only it may name). Raises TaskFailure."""
        value = value.strip()
        if is_image_uuid(value):
            return await self._stored(value.lower(), parameter, scope)
        if value[:8].lower().startswith(("http://", "https://")):
            data = await self._http.get(value, parameter)
        elif value[:5].lower() == "data:":
            data = await self._decode(_data_uri_payload(value, parameter), parameter)
        elif "://" in value[:16]:
            raise TaskFailure(
                Code.FORBIDDEN_URL,
                "Only http and https URLs are accepted.",
                parameter=parameter,
                type="string",
            )
        else:
            data = await self._decode(value, parameter)
        return await self.store(data, parameter, scope)

    async def store(self, data: bytes, parameter: str, scope: bytes) -> ResolvedInput:
        extension = sniff_format(data, parameter)
        stored = await self._store.put(data, extension, scope=scope)
        return ResolvedInput(stored, data)

    async def _stored(self, image_uuid: str, parameter: str, scope: bytes) -> ResolvedInput:
        # Another key's image is answered as if it did not exist: its UUID tells nothing.
        loaded = await self._store.load(image_uuid) if belongs_to(image_uuid, scope) else None
        if loaded is None:
            raise TaskFailure(
                Code.UNKNOWN_IMAGE_UUID,
                f"No image with UUID {image_uuid} (unknown or expired).",
                parameter=parameter,
                type="string",
            )
        return ResolvedInput(*loaded)

    async def _decode(self, text: str, parameter: str) -> bytes:
        try:
            if len(text) >= _THREAD_BASE64_BYTES:
                return await asyncio.to_thread(_b64decode, text)
            return _b64decode(text)
        except (binascii.Error, ValueError):
            raise TaskFailure.invalid(
                parameter,
                "string",
                "Expected an image UUID, an http(s) URL, a data URI or base64-encoded image data.",
            ) from None


def _data_uri_payload(value: str, parameter: str) -> str:
    match = _DATA_URI.match(value)
    if match is None:
        raise TaskFailure.invalid(
            parameter, "string", "A data URI must look like data:image/png;base64,<data>."
        )
    return value[match.end() :]
