"""The service-wide workload: accepted work tasks not yet finished, whether the service is
draining, and when a refused client should come back."""

from __future__ import annotations

from collections.abc import Callable

from protocol.errors import Code, ErrorItem
from protocol.messages import Task

from .outcomes import refusal

__all__ = ["Workload"]


class Workload:
    """Accepted work, draining, and the overload limit.

    Args:
        max_queued: unfinished work tasks accepted service-wide; beyond it ``overloaded``.
        backlog: work accepted elsewhere that counts too (the cluster's job backlog).
    """

    def __init__(self, max_queued: int, backlog: Callable[[], int] = lambda: 0) -> None:
        self.max_queued = max_queued
        self._backlog = backlog
        self._unfinished = 0  # accepted here, not yet answered or handed over
        self.draining = False
        self._seconds_per_image = 0.25  # running estimate, for the retry hint

    @property
    def unfinished(self) -> int:
        """Work tasks accepted here and not yet answered or handed over."""
        return self._unfinished

    def task_accepted(self) -> None:
        self._unfinished += 1

    def task_ended(self) -> None:
        self._unfinished -= 1

    def load(self) -> int:
        """Accepted work not finished: here, plus (distributed) the cluster's job backlog."""
        return self._unfinished + self._backlog()

    def observe_batch(self, images: int, seconds: float) -> None:
        self._seconds_per_image = 0.9 * self._seconds_per_image + 0.1 * seconds / images

    def retry_hint_ms(self) -> int:
        """Roughly when the queue will have room again."""
        return max(500, int(1000 * self._seconds_per_image * self.load() / 2))

    def draining_refusal(self, task: Task) -> ErrorItem | None:
        if self.draining:
            return refusal(
                task,
                Code.SHUTTING_DOWN,
                "The server is shutting down; reconnect and send the task again.",
                retryAfterMs=1000,
            )
        return None

    def overload_refusal(self, task: Task) -> ErrorItem | None:
        if self.load() >= self.max_queued:
            retry_ms = self.retry_hint_ms()
            return refusal(
                task,
                Code.OVERLOADED,
                f"The server is at capacity; retry in about {retry_ms / 1000:.1f} s.",
                retryAfterMs=retry_ms,
            )
        return None
