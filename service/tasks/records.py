"""What both results books (``InMemoryResultsBook``, ``service.cluster.results.RedisResultsBook``)
share, and what the transports and the cluster use of them: how a task is filed (its key, the
scope of its API key), what a record keeps of a result (no inline image), and the getResponse
item a record answers with."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import msgspec

from protocol.messages import BackgroundRemovalResult, TaskStatusItem

from ..imaging.formats import payload_fields
from ..storage.store import ImageStore
from .ports import TaskRecord, TaskState, WorkResult

__all__ = ["reply_item", "scope_of", "task_key", "without_payload"]


def task_key(task_uuid: str) -> str:
    """A taskUUID as the results book files it: one task whatever the case of its hex digits."""
    return task_uuid.lower()


def scope_of(api_key: str) -> bytes:
    """Records are kept under a digest of the API key, never the key itself."""
    return hashlib.sha256(api_key.encode()).digest()


def without_payload(result: WorkResult) -> tuple[Any, str | None]:
    if isinstance(result, BackgroundRemovalResult):
        if result.imageBase64Data is not None:
            return msgspec.structs.replace(result, imageBase64Data=None), "base64Data"
        if result.imageDataURI is not None:
            return msgspec.structs.replace(result, imageDataURI=None), "dataURI"
    return result, None


async def reply_item(store: ImageStore, record: TaskRecord, task_uuid: str) -> Any | None:
    """The getResponse item for ``record``: the result with ``status``, or a processing item.

    None when the result's image has meanwhile expired from storage."""
    if record.state is TaskState.PROCESSING:
        return TaskStatusItem(taskType=record.task_type, taskUUID=task_uuid, status="processing")
    assert record.result is not None  # a finished record holds its result or its error
    result = msgspec.structs.replace(record.result, taskType=record.task_type, status="success")
    if record.payload_kind is None:
        return result
    loaded = await store.load(result.imageUUID)
    if loaded is None:
        return None
    stored, data = loaded
    fields = await asyncio.to_thread(payload_fields, data, stored.extension, record.payload_kind)
    return msgspec.structs.replace(result, **fields)
