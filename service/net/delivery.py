"""Delivery beyond the socket: webhook POSTs and uploadEndpoint PUTs.

Webhooks are fire-and-forget from the task's point of view: each delivery is a background task
with its own retries and backoff. Attempts under way are bounded in all, per destination host
and per API key, and a slot is held only during an attempt (``Slots``), so a slow or hanging
receiver never delays other hosts' webhooks, other tasks or the socket. Failures are logged. An
upload is part of its task: the task fails with ``uploadFailed`` when the endpoint will not take
the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from protocol.errors import Code, TaskFailure

from .outbound import OutboundHttp

__all__ = ["Slots", "WebhookSender", "put_to_upload_endpoint", "retrying"]

log = logging.getLogger(__name__)

# Status codes worth another try: the receiver may recover (rate limits, restarts).
_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


async def retrying(attempt: Callable[[], Awaitable[int]], attempts: int, backoff: float) -> int:
    """Call ``attempt`` (returning an HTTP status) until it gives 2xx, a non-retryable status,
    or ``attempts`` run out; waits backoff, 2*backoff, 4*backoff... in between. Returns the last
    status; re-raises the last TaskFailure when no attempt got an answer."""
    for number in range(1, attempts + 1):
        try:
            status = await attempt()
        except TaskFailure as failure:
            if failure.code == Code.FORBIDDEN_URL or number == attempts:
                raise
        else:
            if 200 <= status < 300 or status not in _RETRYABLE or number == attempts:
                return status
        await asyncio.sleep(backoff * 2 ** (number - 1))
    raise AssertionError("unreachable")


class Slots:
    """Deliveries under way at once: in all, to one destination host, and for one API key.

    A slot is taken for one attempt and given back before a backoff, so a receiver that hangs
    holds at most ``per_host`` of the pool, for an attempt's timeout each, and a key whose
    webhooks all point at such receivers at most ``per_key``: other hosts and keys keep the
    rest. Slots are taken in the order host, key, pool, so waiting for a busy host or key
    holds nothing of the pool.
    """

    def __init__(self, total: int, per_host: int, per_key: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._per_host = per_host
        self._per_key = per_key
        self._hosts: dict[str, _Counted] = {}
        self._keys: dict[bytes, _Counted] = {}

    @contextlib.asynccontextmanager
    async def attempt(self, url: str, scope: bytes) -> AsyncIterator[None]:
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        async with (
            _held(self._hosts, host, self._per_host),
            _held(self._keys, scope, self._per_key),
            self._total,
        ):
            yield


class _Counted:
    """A semaphore and how many hold it or wait for it (dropped from its map at zero)."""

    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.users = 0


@contextlib.asynccontextmanager
async def _held(table: dict[Any, _Counted], key: Any, size: int) -> AsyncIterator[None]:
    entry = table.setdefault(key, _Counted(size))
    entry.users += 1
    try:
        async with entry.semaphore:
            yield
    finally:
        entry.users -= 1
        if entry.users == 0:
            del table[key]


class WebhookSender:
    """POSTs outcomes to webhook URLs in the background, with retries.

    Args:
        http: the outbound client (and its address policy).
        attempts: tries per delivery.
        backoff: seconds before the second try; doubled for each further one.
        max_concurrent: attempts under way at once, in all (``Slots``).
        per_host: attempts under way at once to one host.
        per_key: attempts under way at once for one API key.
    """

    def __init__(
        self,
        http: OutboundHttp,
        *,
        attempts: int = 4,
        backoff: float = 1.0,
        max_concurrent: int = 64,
        per_host: int = 8,
        per_key: int = 16,
    ) -> None:
        self._http = http
        self.attempts = attempts
        self.backoff = backoff
        self._slots = Slots(max_concurrent, per_host, per_key)
        self._pending: set[asyncio.Task] = set()

    def deliver(self, url: str, body: bytes, task_uuid: str, scope: bytes = b"") -> None:
        """POST ``body`` to ``url`` in the background; ``scope`` is the API key's digest."""
        task = asyncio.create_task(
            self._deliver(url, body, task_uuid, scope), name=f"webhook-{task_uuid}"
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, url: str, body: bytes, task_uuid: str, scope: bytes) -> None:
        async def post() -> int:
            async with self._slots.attempt(url, scope):
                return await self._http.send(
                    "POST", url, body, "application/json", "webhookURL", Code.WEBHOOK_FAILED
                )

        try:
            status = await retrying(post, self.attempts, self.backoff)
        except TaskFailure as failure:
            log.warning("webhook for task %s to %s failed: %s", task_uuid, url, failure.message)
            return
        if 200 <= status < 300:
            log.debug("webhook for task %s delivered (HTTP %d)", task_uuid, status)
        else:
            log.warning(
                "webhook for task %s to %s answered HTTP %d after retries",
                task_uuid,
                url,
                status,
            )

    async def close(self, grace: float = 5.0) -> None:
        """Give deliveries in flight ``grace`` seconds, then cancel the rest."""
        if self._pending:
            _, pending = await asyncio.wait(self._pending, timeout=grace)
            for task in pending:
                task.cancel()


async def put_to_upload_endpoint(
    http: OutboundHttp,
    url: str,
    data: bytes,
    content_type: str,
    *,
    attempts: int = 3,
    backoff: float = 0.5,
) -> None:
    """PUT the raw file, as presigned-URL storage expects. Raises TaskFailure(uploadFailed)."""

    def put() -> Awaitable[int]:
        return http.send("PUT", url, data, content_type, "uploadEndpoint", Code.UPLOAD_FAILED)

    status = await retrying(put, attempts, backoff)
    if not 200 <= status < 300:
        raise TaskFailure(
            Code.UPLOAD_FAILED,
            f"The uploadEndpoint answered HTTP {status}.",
            parameter="uploadEndpoint",
            type="string",
        )
