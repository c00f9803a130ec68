"""Delivery beyond the socket: webhook POSTs and uploadEndpoint PUTs.

Webhooks are fire-and-forget from the task's point of view: each delivery is a background task
with its own retries and backoff, bounded in number, so a slow or failing receiver never delays
other tasks or the socket. Failures are logged. An upload is part of its task: the task fails
with ``uploadFailed`` when the endpoint will not take the file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from protocol.errors import Code, TaskFailure

from .outbound import OutboundHttp

__all__ = ["WebhookSender", "put_to_upload_endpoint", "retrying"]

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


class WebhookSender:
    """POSTs outcomes to webhook URLs in the background, with retries.

    Args:
        http: the outbound client (and its address policy).
        attempts: tries per delivery.
        backoff: seconds before the second try; doubled for each further one.
        max_concurrent: deliveries in flight at once; more wait their turn.
    """

    def __init__(
        self,
        http: OutboundHttp,
        *,
        attempts: int = 4,
        backoff: float = 1.0,
        max_concurrent: int = 64,
    ) -> None:
        self._http = http
        self.attempts = attempts
        self.backoff = backoff
        self._slots = asyncio.Semaphore(max_concurrent)
        self._pending: set[asyncio.Task] = set()

    def deliver(self, url: str, body: bytes, task_uuid: str) -> None:
        task = asyncio.create_task(self._deliver(url, body, task_uuid), name=f"webhook-{task_uuid}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, url: str, body: bytes, task_uuid: str) -> None:
        async with self._slots:

            def post() -> Awaitable[int]:
                return self._http.send(
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
