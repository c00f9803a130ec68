"""The results book: what became of every task, by taskUUID, for getResponse and for duplicates.

A task is entered when it is accepted (``processing``), and leaves the book ``retention``
seconds (at least its ttl) after it ended. Records are scoped to the API key that sent the task:
another key neither sees them nor collides with them. Image payloads are not kept here: a
base64/dataURI result keeps only its imageUUID and is rebuilt from storage when polled.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import msgspec

from protocol.errors import ErrorItem
from protocol.messages import BackgroundRemovalResult, ImageUploadResult, TaskStatusItem

from .pipeline import payload_fields
from .storage import ImageStorage

__all__ = ["TaskState", "TaskRecord", "ResultsBook", "owner_of"]


class TaskState(enum.Enum):
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "error"


@dataclass
class TaskRecord:
    task_type: str
    state: TaskState
    expires_at: float
    result: BackgroundRemovalResult | ImageUploadResult | None = None
    payload_kind: str | None = None  # "base64Data" / "dataURI": rebuilt from storage when read
    error: ErrorItem | None = None


def owner_of(api_key: str) -> bytes:
    """Records are keyed by a digest of the API key, never the key itself."""
    return hashlib.sha256(api_key.encode()).digest()


def _without_payload(result: Any) -> tuple[Any, str | None]:
    if isinstance(result, BackgroundRemovalResult):
        if result.imageBase64Data is not None:
            return msgspec.structs.replace(result, imageBase64Data=None), "base64Data"
        if result.imageDataURI is not None:
            return msgspec.structs.replace(result, imageDataURI=None), "dataURI"
    return result, None


async def reply_item(store: ImageStorage, record: TaskRecord, task_uuid: str) -> Any | None:
    """The getResponse item for ``record``: the result with ``status``, or a processing item.

    None when the result's image has meanwhile expired from storage."""
    if record.state is TaskState.PROCESSING:
        return TaskStatusItem(taskType=record.task_type, taskUUID=task_uuid, status="processing")
    result = msgspec.structs.replace(record.result, taskType=record.task_type, status="success")
    if record.payload_kind is None:
        return result
    loaded = await store.load(result.imageUUID)
    if loaded is None:
        return None
    stored, data = loaded
    fields = await asyncio.to_thread(payload_fields, data, stored.extension, record.payload_kind)
    return msgspec.structs.replace(result, **fields)


class ResultsBook:
    """Args:
        store: where result images are re-read from when a payload must be rebuilt.
        retention: seconds a finished task stays answerable (at least its ttl).
        capacity: the most records kept; beyond it the oldest records are dropped.
        clock: seconds since the epoch.
    """

    def __init__(self, store: ImageStorage, retention: float, capacity: int = 200_000,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.retention = retention
        self._capacity = capacity
        self._clock = clock
        self._records: OrderedDict[tuple[bytes, str], TaskRecord] = OrderedDict()

    async def begin(self, owner: bytes, task_uuid: str, task_type: str) -> bool:
        """Enter a task as processing; False when the taskUUID is already known (a duplicate)."""
        key = (owner, task_uuid)
        known = self._records.get(key)
        if known is not None and known.expires_at > self._clock():
            return False
        # A processing record lives until it ends; the deadline is only a backstop.
        self._records[key] = TaskRecord(task_type, TaskState.PROCESSING,
                                        self._clock() + 7 * 86_400)
        self._records.move_to_end(key)
        self._evict()
        return True

    async def succeed(self, owner: bytes, task_uuid: str, result: Any, ttl: int | None = None) -> None:
        stored, kind = _without_payload(result)
        self._end(owner, task_uuid, TaskState.SUCCESS, ttl, result=stored, payload_kind=kind)

    async def fail(self, owner: bytes, task_uuid: str, error: ErrorItem) -> None:
        self._end(owner, task_uuid, TaskState.FAILED, None, error=error)

    def _end(self, owner: bytes, task_uuid: str, state: TaskState, ttl: int | None, **fields) -> None:
        record = self._records.get((owner, task_uuid))
        if record is None:
            return  # evicted meanwhile: nothing to answer later
        record.state = state
        record.expires_at = self._clock() + max(self.retention, ttl or 0)
        for name, value in fields.items():
            setattr(record, name, value)

    async def get(self, owner: bytes, task_uuid: str) -> TaskRecord | None:
        record = self._records.get((owner, task_uuid))
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


# --------------------------------------------------------------------------- on Redis


class _StoredOutcome(msgspec.Struct, array_like=True):
    """A finished task's record as Redis keeps it (msgpack)."""

    result: bytes | None = None  # the result struct's JSON, without its inline payload
    payload_kind: str | None = None
    error: bytes | None = None  # the ErrorItem's JSON


_json = msgspec.json.Encoder()

# KEYS[1] the task's hash. ARGV: task type, seconds a processing record may live.
# A processing record is entered only when the key is new: the SET NX of a hash. It starts
# with a short lease that queueing the job extends (``PROCESSING_SECONDS``): a gateway that
# dies between accepting and queueing a task leaves no record that would block its retry.
_BEGIN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'type', ARGV[1], 'state', 'processing')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1] the task's hash, KEYS[2] the outbox stream of the session that waits for the answer.
# ARGV: state, outcome, seconds to keep it, and when KEYS[2] is given: the answer's kind
# (data/errors), its JSON, the wake-up channel, the outbox's length cap and lifetime.
# Only the first to end a processing task records it and hands out the answer: a job claimed
# from a worker that was only slow cannot be answered twice.
_END = """
if redis.call('HGET', KEYS[1], 'state') ~= 'processing' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'outcome', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if #KEYS > 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'kind', ARGV[4], 'item', ARGV[5])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
  redis.call('PUBLISH', ARGV[6], '1')
end
return 1
"""


class Handover(msgspec.Struct, frozen=True, array_like=True):
    """Where an outcome goes besides the book: a session's outbox (see ``service.relay``).
    A struct, so that a queued job carries it as it is."""

    outbox_key: str
    channel: str
    max_length: int
    lifetime: int


class RedisResultsBook:
    """The results book in Redis, shared by every gateway and worker: ``rbg:task:<owner>:<uuid>``
    is a hash (``type``, ``state``, ``outcome``) that expires ``retention`` seconds (at least
    the ttl) after the task ended. Same interface as ``ResultsBook``."""

    def __init__(self, redis: Any, store: ImageStorage, retention: float, prefix: str = "rbg") -> None:
        self._redis = redis
        self._store = store
        self.retention = retention
        self._prefix = prefix
        self._begin = redis.register_script(_BEGIN)
        self._end = redis.register_script(_END)

    ADMISSION_LEASE = 120  # seconds from accepting a task to queueing it (downloads included)
    PROCESSING_SECONDS = 7 * 86_400  # a queued task's record: a backstop, it ends long before

    def key(self, owner: bytes, task_uuid: str) -> str:
        return f"{self._prefix}:task:{owner.hex()}:{task_uuid}"

    async def begin(self, owner: bytes, task_uuid: str, task_type: str) -> bool:
        return bool(await self._begin(keys=[self.key(owner, task_uuid)],
                                      args=[task_type, self.ADMISSION_LEASE]))

    async def succeed(self, owner: bytes, task_uuid: str, result: Any, ttl: int | None = None,
                      handover: Handover | None = None, answer: bytes = b"") -> bool:
        stored, kind = _without_payload(result)
        outcome = _StoredOutcome(result=_json.encode(stored), payload_kind=kind)
        return await self._finish(owner, task_uuid, TaskState.SUCCESS, outcome, ttl, handover,
                                  "data", answer)

    async def fail(self, owner: bytes, task_uuid: str, error: ErrorItem,
                   handover: Handover | None = None) -> bool:
        outcome = _StoredOutcome(error=_json.encode(error))
        return await self._finish(owner, task_uuid, TaskState.FAILED, outcome, None, handover,
                                  "errors", _json.encode(error))

    async def _finish(self, owner: bytes, task_uuid: str, state: TaskState, outcome: _StoredOutcome,
                      ttl: int | None, handover: Handover | None, kind: str, answer: bytes) -> bool:
        """True when this call ended the task (and handed the answer over)."""
        keys = [self.key(owner, task_uuid)]
        args: list[Any] = [state.value, msgspec.msgpack.encode(outcome),
                           int(max(self.retention, ttl or 0))]
        if handover is not None:
            keys.append(handover.outbox_key)
            args += [kind, answer, handover.channel, handover.max_length, handover.lifetime]
        return bool(await self._end(keys=keys, args=args))

    async def get(self, owner: bytes, task_uuid: str) -> TaskRecord | None:
        fields = await self._redis.hgetall(self.key(owner, task_uuid))
        if not fields:
            return None
        task_type = fields[b"type"].decode()
        state = TaskState(fields[b"state"].decode())
        record = TaskRecord(task_type, state, expires_at=float("inf"))
        if state is TaskState.PROCESSING:
            return record
        outcome = msgspec.msgpack.decode(fields[b"outcome"], type=_StoredOutcome)
        if outcome.error is not None:
            record.error = msgspec.json.decode(outcome.error, type=ErrorItem)
        else:
            kind = ImageUploadResult if task_type == "imageUpload" else BackgroundRemovalResult
            record.result = msgspec.json.decode(outcome.result, type=kind)
            record.payload_kind = outcome.payload_kind
        return record

    async def reply(self, record: TaskRecord, task_uuid: str) -> Any | None:
        return await reply_item(self._store, record, task_uuid)

    def sweep(self) -> int:
        return 0  # Redis expires the records itself
