"""The results book in Redis, shared by every gateway and worker (a ``ResultsStore``, the twin
of ``service.tasks.results.InMemoryResultsBook``).

``rbg:task:<scope>:<uuid>`` is a hash (``type``, ``state``, ``outcome``) that expires
``retention`` seconds (at least the ttl) after the task ended. A worker ends a task and hands its
answer to the waiting client session's outbox in one step (``finish_and_hand_over``): only the
first to end a task does either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from protocol.errors import ErrorItem
from protocol.messages import BackgroundRemovalResult, ImageUploadResult

from ..storage.store import ImageStore
from ..tasks.ports import TaskRecord, TaskState, WorkResult
from ..tasks.records import reply_item, task_key, without_payload
from .reachability import REDIS_DOWN, refused_while_redis_is_down

__all__ = ["Handover", "RedisResultsBook"]


class _StoredOutcome(msgspec.Struct, array_like=True):
    """A finished task's record as Redis keeps it (msgpack)."""

    result: bytes | None = None  # the result struct's JSON, without its inline payload
    payload_kind: str | None = None
    error: bytes | None = None  # the ErrorItem's JSON


_json = msgspec.json.Encoder()

# KEYS[1] the task's hash. ARGV: task type, seconds a processing record may live.
# A processing record is entered only when the key is new: the SET NX of a hash. It starts
# with a short lease that the gateway renews while it stores the task's input (``held``) and
# that queueing the job extends (``PROCESSING_SECONDS``): a gateway that dies between accepting
# and queueing a task leaves no record that would block its retry.
_BEGIN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'type', ARGV[1], 'state', 'processing')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS[1] the task's hash, KEYS[2] the outbox stream of the session that waits for the answer.
# ARGV: state, outcome, seconds to keep it, and when KEYS[2] is given: the answer's kind
# (data/errors), its JSON, the wake-up channel, the outbox's length cap and lifetime, the task key.
# Only the first to end a processing task records it and hands out the answer: a job claimed
# from a worker that was only slow cannot be answered twice.
_END = """
if redis.call('HGET', KEYS[1], 'state') ~= 'processing' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'outcome', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if #KEYS > 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'kind', ARGV[4], 'item', ARGV[5],
             'task', ARGV[9])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
  redis.call('PUBLISH', ARGV[6], '1')
end
return 1
"""


class Handover(msgspec.Struct, frozen=True, array_like=True):
    """Where an outcome goes besides the book: a session's outbox (see ``service.cluster.relay``).
    A struct, so that a queued job carries it as it is."""

    outbox_key: str
    channel: str
    max_length: int
    lifetime: int


class RedisResultsBook:
    def __init__(
        self, redis: Any, store: ImageStore, retention: float, prefix: str = "rbg"
    ) -> None:
        self._redis = redis
        self._store = store
        self.retention = retention
        self._prefix = prefix
        self._begin = redis.register_script(_BEGIN)
        self._end = redis.register_script(_END)

    ADMISSION_LEASE = 120  # seconds an accepted task's record outlives a gateway that died
    PROCESSING_SECONDS = 7 * 86_400  # a queued task's record: a backstop, it ends long before

    def key(self, scope: bytes, task_uuid: str) -> str:
        return f"{self._prefix}:task:{scope.hex()}:{task_key(task_uuid)}"

    async def begin(self, scope: bytes, task_uuid: str, task_type: str) -> bool:
        with refused_while_redis_is_down():
            return bool(
                await self._begin(
                    keys=[self.key(scope, task_uuid)], args=[task_type, self.ADMISSION_LEASE]
                )
            )

    @contextlib.asynccontextmanager
    async def held(self, scope: bytes, task_uuid: str) -> AsyncIterator[None]:
        """While the gateway still works on an accepted task (storing its input, which a slow
        download or store may stretch past the lease), its lease is renewed: getResponse keeps
        knowing the task. A gateway that dies stops renewing, and the lease runs out."""
        key, lease = self.key(scope, task_uuid), self.ADMISSION_LEASE

        async def renew() -> None:
            while True:
                await asyncio.sleep(lease / 3)
                with contextlib.suppress(*REDIS_DOWN):
                    await self._redis.expire(key, lease)

        renewing = asyncio.get_running_loop().create_task(renew())
        try:
            yield
        finally:
            renewing.cancel()

    async def succeed(
        self, scope: bytes, task_uuid: str, result: WorkResult, ttl: int | None = None
    ) -> bool:
        return await self.finish_and_hand_over(scope, task_uuid, result, ttl, None)

    async def fail(self, scope: bytes, task_uuid: str, error: ErrorItem) -> bool:
        return await self.finish_and_hand_over(scope, task_uuid, error, None, None)

    async def finish_and_hand_over(
        self,
        scope: bytes,
        task_uuid: str,
        outcome: WorkResult | ErrorItem,
        ttl: int | None,
        handover: Handover | None,
    ) -> bool:
        """Record the outcome and, with ``handover``, put the answer in that outbox; True when
        this call ended the task (so nobody else records or answers it)."""
        if isinstance(outcome, ErrorItem):
            state, stored = TaskState.FAILED, _StoredOutcome(error=_json.encode(outcome))
            kind = "errors"
        else:
            without, payload_kind = without_payload(outcome)
            state, kind = TaskState.SUCCESS, "data"
            stored = _StoredOutcome(result=_json.encode(without), payload_kind=payload_kind)
        keys = [self.key(scope, task_uuid)]
        args: list[Any] = [
            state.value,
            msgspec.msgpack.encode(stored),
            int(max(self.retention, ttl or 0)),
        ]
        if handover is not None:
            keys.append(handover.outbox_key)
            args += [
                kind,
                _json.encode(outcome),
                handover.channel,
                handover.max_length,
                handover.lifetime,
                task_key(task_uuid),
            ]
        return bool(await self._end(keys=keys, args=args))

    async def states(self, keys: list[str]) -> list[bytes | None]:
        """The ``state`` field of each record (by ``key``); None where the record is gone."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, "state")
            return list(await pipe.execute())

    async def get(self, scope: bytes, task_uuid: str) -> TaskRecord | None:
        with refused_while_redis_is_down():
            fields = await self._redis.hgetall(self.key(scope, task_uuid))
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
        elif outcome.result is not None:
            kind: type[WorkResult] = (
                ImageUploadResult if task_type == "imageUpload" else BackgroundRemovalResult
            )
            record.result = msgspec.json.decode(outcome.result, type=kind)
            record.payload_kind = outcome.payload_kind
        return record

    async def reply(self, record: TaskRecord, task_uuid: str) -> Any | None:
        return await reply_item(self._store, record, task_uuid)

    def sweep(self) -> int:
        return 0  # Redis expires the records itself
