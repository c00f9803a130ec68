"""What becomes of a Redis that cannot be reached: a clear refusal, never a vague failure."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from protocol.errors import Code, TaskFailure

__all__ = ["REDIS_DOWN", "connect", "is_missing_group", "refused_while_redis_is_down"]

# A connection refused, reset or timed out: the server is away (restarting, or gone).
REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, ConnectionError)
RETRY_AFTER_MS = 2000


def connect(url: str) -> Redis:
    """A client that survives a Redis restart: pooled connections the old server closed fail
    once and are replaced, and a command that met one is sent again on a new connection
    (within about a second) instead of failing its task."""
    return Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=4),
        retry_on_error=[redis_errors.ConnectionError, redis_errors.TimeoutError],
        health_check_interval=10,
    )


@contextlib.contextmanager
def refused_while_redis_is_down() -> Iterator[None]:
    """Turn a lost Redis into ``serviceUnavailable`` for the task at hand."""
    try:
        yield
    except REDIS_DOWN as error:
        raise TaskFailure(
            Code.SERVICE_UNAVAILABLE,
            "The task queue cannot be reached right now; nothing was accepted. Send the task "
            "again shortly.",
            retry_after_ms=RETRY_AFTER_MS,
        ) from error


def is_missing_group(error: Exception) -> bool:
    """Redis lost the job stream's consumer group (it restarted without the stream)."""
    return isinstance(error, redis_errors.ResponseError) and "NOGROUP" in str(error)
