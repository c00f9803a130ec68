"""Task inputs: turn the string a client gave (UUID, URL, data URI, bare base64) into image bytes.

Every input that is not already stored is stored, so the ``inputImageUUID`` of a result works as
a later input. URL inputs are fetched with an HTTP client whose resolver refuses non-public
addresses (unless ``allow_private_urls``), and it connects to exactly the address it validated.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from protocol.errors import Code, TaskFailure
from protocol.messages import TASK_UUID_PATTERN

from .pipeline import sniff_format
from .storage import ImageStore, StoredImage

__all__ = ["ResolvedInput", "InputResolver", "UrlFetcher", "is_public_address"]

_UUID = re.compile(TASK_UUID_PATTERN)
_DATA_URI = re.compile(r"^data:(?P<type>[^,;]*)(?P<params>(;[^,;]*)*?);base64,", re.IGNORECASE)
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
# Decoding base64 of this size or more happens on a worker thread, not on the event loop.
_THREAD_DECODE_BYTES = 64 * 1024


@dataclass(frozen=True)
class ResolvedInput:
    stored: StoredImage
    data: bytes


def is_public_address(text: str) -> bool:
    """True for globally routable unicast addresses (IPv4-mapped IPv6 judged by its IPv4)."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class _ForbiddenAddress(OSError):
    pass


class _PublicOnlyResolver(AbstractResolver):
    """Resolves once and hands aiohttp only public addresses: the connection goes to an address
    that was checked, so a second, different DNS answer (rebinding) cannot sneak in."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        answers = await self._inner.resolve(host, port, family)
        public = [answer for answer in answers if is_public_address(answer["host"])]
        if not public:
            raise _ForbiddenAddress(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


class UrlFetcher:
    """GETs a URL with a size cap, timeouts, and re-checked redirects."""

    def __init__(self, *, allow_private: bool, max_bytes: int, connect_timeout: float,
                 total_timeout: float) -> None:
        self.allow_private = allow_private
        self.max_bytes = max_bytes
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = None if self.allow_private else _PublicOnlyResolver()
            connector = aiohttp.TCPConnector(resolver=resolver, limit=64)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  auto_decompress=True)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_url(self, url: str, parameter: str) -> None:
        """Refuse other schemes, and IP literals that are not public (names are checked when
        resolved)."""
        try:
            parsed = URL(url)
        except ValueError:
            raise TaskFailure.invalid(parameter, "string", "The URL is malformed.") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise TaskFailure(Code.FORBIDDEN_URL, "Only http and https URLs are accepted.",
                              parameter=parameter, type="string")
        host = parsed.host.strip("[]")
        if not self.allow_private and _is_ip_literal(host) and not is_public_address(host):
            raise TaskFailure(Code.FORBIDDEN_URL,
                              f"The URL points to a non-public address ({host}).",
                              parameter=parameter, type="string")

    async def fetch(self, url: str, parameter: str) -> bytes:
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                self.check_url(url, parameter)
                async with self._client().get(url, allow_redirects=False) as response:
                    if response.status in _REDIRECTS and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    if response.status != 200:
                        raise TaskFailure(Code.DOWNLOAD_FAILED,
                                          f"Fetching the image answered HTTP {response.status}.",
                                          parameter=parameter, type="string")
                    return await self._read_capped(response, parameter)
            raise TaskFailure(Code.DOWNLOAD_FAILED,
                              f"More than {_MAX_REDIRECTS} redirects.", parameter=parameter,
                              type="string")
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.os_error, _ForbiddenAddress) or isinstance(error.__cause__, _ForbiddenAddress):
                raise TaskFailure(Code.FORBIDDEN_URL, "The URL points to a non-public address.",
                                  parameter=parameter, type="string") from None
            raise TaskFailure(Code.DOWNLOAD_FAILED, f"Could not connect: {error}.",
                              parameter=parameter, type="string") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            reason = "timed out" if isinstance(error, asyncio.TimeoutError) else str(error)
            raise TaskFailure(Code.DOWNLOAD_FAILED, f"Fetching the image failed: {reason}.",
                              parameter=parameter, type="string") from None

    async def _read_capped(self, response: aiohttp.ClientResponse, parameter: str) -> bytes:
        too_large = TaskFailure(Code.IMAGE_TOO_LARGE,
                                f"The image at the URL is larger than {self.max_bytes:,} bytes.",
                                parameter=parameter, type="string", max=self.max_bytes)
        if response.content_length is not None and response.content_length > self.max_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > self.max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _b64decode(text: str) -> bytes:
    return base64.b64decode("".join(text.split()), validate=True)


class InputResolver:
    def __init__(self, store: ImageStore, fetcher: UrlFetcher, input_ttl: int | None = None) -> None:
        self._store = store
        self._fetcher = fetcher
        self._input_ttl = input_ttl

    async def resolve(self, value: str, parameter: str) -> ResolvedInput:
        """Bytes and stored record of the image ``value`` names. Raises TaskFailure."""
        value = value.strip()
        if _UUID.match(value):
            return await self._stored(value, parameter)
        if value[:8].lower().startswith(("http://", "https://")):
            data = await self._fetcher.fetch(value, parameter)
        elif value[:5].lower() == "data:":
            data = await self._decode(_data_uri_payload(value, parameter), parameter)
        elif "://" in value[:16]:
            raise TaskFailure(Code.FORBIDDEN_URL, "Only http and https URLs are accepted.",
                              parameter=parameter, type="string")
        else:
            data = await self._decode(value, parameter)
        return await self.store(data, parameter)

    async def store(self, data: bytes, parameter: str) -> ResolvedInput:
        extension = sniff_format(data)
        if extension is None:
            raise TaskFailure(Code.INVALID_IMAGE,
                              "The image is not a JPEG, PNG, WEBP, GIF or BMP file.",
                              parameter=parameter, type="string")
        stored = await self._store.put(data, extension, self._input_ttl)
        return ResolvedInput(stored, data)

    async def _stored(self, image_uuid: str, parameter: str) -> ResolvedInput:
        stored = self._store.get(image_uuid)
        data = await self._store.read(image_uuid) if stored else None
        if stored is None or data is None:
            raise TaskFailure(Code.UNKNOWN_IMAGE_UUID,
                              f"No image with UUID {image_uuid} (unknown or expired).",
                              parameter=parameter, type="string")
        return ResolvedInput(stored, data)

    async def _decode(self, text: str, parameter: str) -> bytes:
        try:
            if len(text) >= _THREAD_DECODE_BYTES:
                return await asyncio.to_thread(_b64decode, text)
            return _b64decode(text)
        except (binascii.Error, ValueError):
            raise TaskFailure.invalid(parameter, "string",
                                      "Expected an image UUID, an http(s) URL, a data URI or "
                                      "base64-encoded image data.") from None


def _data_uri_payload(value: str, parameter: str) -> str:
    match = _DATA_URI.match(value)
    if match is None:
        raise TaskFailure.invalid(parameter, "string",
                                  "A data URI must look like data:image/png;base64,<data>.")
    return value[match.end():]
