"""The results book: what became of every task, by taskUUID, for getResponse and for duplicates.

A task is entered when it is accepted (``processing``), and leaves the book ``retention``
seconds (at least its ttl) after it ended. Records are scoped to the API key that sent the task
(its digest, ``records.scope_of``): another key neither sees them nor collides with them. Image payloads
are not kept here: a base64/dataURI result keeps only its imageUUID and is rebuilt from storage
when polled. ``InMemoryResultsBook`` is the single-process twin of
``service.cluster.results.RedisResultsBook``; both are ``ResultsStore``s.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from protocol.errors import ErrorItem

from ..storage.store import ImageStore
from .ports import TaskRecord, TaskState, WorkResult
from .records import reply_item, task_key, without_payload

__all__ = ["InMemoryResultsBook"]


def _key(scope: bytes, task_uuid: str) -> tuple[bytes, str]:
    return scope, task_key(task_uuid)


class InMemoryResultsBook:
    """The results book of one process.

    Args:
        store: where result images are re-read from when a payload must be rebuilt.
        retention: seconds a finished task stays answerable (at least its ttl).
        capacity: the most records kept; beyond it the oldest records are dropped.
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        store: ImageStore,
        retention: float,
        capacity: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.retention = retention
        self._capacity = capacity
        self._clock = clock
        self._records: OrderedDict[tuple[bytes, str], TaskRecord] = OrderedDict()

    async def begin(self, scope: bytes, task_uuid: str, task_type: str) -> bool:
        """Enter a task as processing; False when the taskUUID is already known (a duplicate)."""
        key = _key(scope, task_uuid)
        known = self._records.get(key)
        if known is not None and known.expires_at > self._clock():
            return False
        # A processing record lives until it ends; the deadline is only a backstop.
        self._records[key] = TaskRecord(task_type, TaskState.PROCESSING, self._clock() + 7 * 86_400)
        self._records.move_to_end(key)
        self._evict()
        return True

    async def succeed(
        self, scope: bytes, task_uuid: str, result: WorkResult, ttl: int | None = None
    ) -> bool:
        stored, kind = without_payload(result)
        return self._end(scope, task_uuid, TaskState.SUCCESS, ttl, result=stored, payload_kind=kind)

    async def fail(self, scope: bytes, task_uuid: str, error: ErrorItem) -> bool:
        return self._end(scope, task_uuid, TaskState.FAILED, None, error=error)

    def _end(
        self, scope: bytes, task_uuid: str, state: TaskState, ttl: int | None, **fields: Any
    ) -> bool:
        """True when this call ended the task (it was processing and still in the book)."""
        record = self._records.get(_key(scope, task_uuid))
        if record is None or record.state is not TaskState.PROCESSING:
            return False  # evicted meanwhile (nothing to answer later), or ended already
        record.state = state
        record.expires_at = self._clock() + max(self.retention, ttl or 0)
        for name, value in fields.items():
            setattr(record, name, value)
        return True

    async def get(self, scope: bytes, task_uuid: str) -> TaskRecord | None:
        record = self._records.get(_key(scope, task_uuid))
        if record is None or record.expires_at <= self._clock():
            return None
        return record

    async def reply(self, record: TaskRecord, task_uuid: str) -> Any | None:
        return await reply_item(self._store, record, task_uuid)

    def sweep(self) -> int:
        now = self._clock()
        expired = [key for key, record in self._records.items() if record.expires_at <= now]
        for key in expired:
            del self._records[key]
        return len(expired)

    def _evict(self) -> None:
        while len(self._records) > self._capacity:
            self._records.popitem(last=False)

    def __len__(self) -> int:
        return len(self._records)
