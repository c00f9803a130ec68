"""Request bodies read under bounds: size, time, and the service-wide memory budget.

A body is read only after its request's key has been checked from the headers (``/v1`` and
``/api/remove`` do that first), and then:
- no more than ``--frame-error-bytes`` (413 as soon as the declared length or the bytes read pass
  it);
- within ``--body-timeout`` seconds of its first byte being awaited (408, the connection closed
  after at most the server's 2 s of lingering), whatever rate the peer trickles it at;
- with its declared length (the limit when it declares none) reserved in the working-memory
  budget that images in the pipeline share, before any byte is read: when the budget is spent,
  a new body waits a few seconds for room, then gets 503 with Retry-After. Bodies being read
  at once therefore never hold more memory than the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from protocol.errors import Code, TaskFailure

from ..scheduling.budget import MemoryBudget

__all__ = [
    "BodyRefused",
    "BodyReader",
    "bounded_body",
    "closing",
    "one_line",
    "retry_after",
    "ROOM_WAIT_S",
    "LINGER_S",
]

ROOM_WAIT_S = 5.0  # how long a body waits for room in the budget before 503
# After answering a request whose body was not read whole, the server reads and drops what
# still comes for this long (so the peer can read the answer), then closes.
LINGER_S = 2.0


class BodyRefused(Exception):
    """A body that will not be read (further): the status and one line saying why. Its answer
    closes the connection (``Connection: close``)."""

    def __init__(
        self, status: http.HTTPStatus, message: str, retry_after_ms: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_ms = retry_after_ms


def closing(response: web.Response) -> web.Response:
    """``response`` with ``Connection: close``: a refused body is not read further."""
    response.force_close()
    return response


def retry_after(retry_after_ms: int) -> str:
    """A Retry-After header's value: whole seconds, at least one."""
    return str(max(1, round(retry_after_ms / 1000)))


def one_line(error: Exception) -> str:
    """What went wrong reading a request, in one line: aiohttp's own message for its parse
    errors (without the status and the echoed bytes' layout), else the error's text."""
    text = str(error.message) if isinstance(error, HttpProcessingError) else str(error)
    return " ".join(text.split())[:200]


def too_large(limit: int, size: int | None) -> BodyRefused:
    told = f"{size:,} bytes" if size is not None else "more bytes than allowed"
    return BodyRefused(
        http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        f"The request body has {told}; the limit is {limit:,}.",
    )


@contextlib.asynccontextmanager
async def bounded_body(
    request: web.Request, *, limit: int, timeout: float, budget: MemoryBudget
) -> AsyncIterator[None]:
    """Reading the body inside the ``with`` is bounded as the module says; BodyRefused when a
    bound is hit. Keep only the reading inside: the reservation ends with the ``with``."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(limit, declared)
    try:
        reserve = limit if declared is None else declared
        async with budget.reserved(reserve, "body", max_wait=ROOM_WAIT_S):
            async with asyncio.timeout(timeout):
                yield
    except TimeoutError:
        raise BodyRefused(
            http.HTTPStatus.REQUEST_TIMEOUT,
            f"The request body did not arrive within {timeout:g} s.",
        ) from None
    except TaskFailure as failure:  # from the budget: no room, or more than all of it
        if failure.code != Code.OVERLOADED:
            raise too_large(budget.total, declared) from None
        raise BodyRefused(
            http.HTTPStatus.SERVICE_UNAVAILABLE, failure.message, failure.retry_after_ms
        ) from None


class BodyReader:
    """A body read in steps: its first bytes (to check what they say), then the rest, never
    more than ``limit`` bytes in all (a chunked body declares no length up front)."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self._content = request.content
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._ended = False

    async def _read_chunk(self) -> None:
        chunk = await self._content.readany()
        if not chunk:
            self._ended = True
            return
        self._size += len(chunk)
        if self._size > self._limit:
            raise too_large(self._limit, None)
        self._chunks.append(chunk)

    def _buffered(self) -> bytes:
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    async def start(self, enough: Callable[[bytes], bool], most: int) -> bytes:
        """The first bytes: read until ``enough`` says so, ``most`` bytes are in, or the body
        ends."""
        while not self._ended and self._size < most and not enough(self._buffered()):
            await self._read_chunk()
        return self._buffered()

    async def whole(self) -> bytes:
        """The whole body, the bytes already read included."""
        while not self._ended:
            await self._read_chunk()
        return self._buffered()
