"""The distributed mode's job queue: a Redis Stream that gateways add removals to and workers
read in batches.

- ``rbg:jobs``: the stream; each entry is one removal (``job``: msgpack of ``Job``), its input
  already stored by the gateway (the task's image is the stored imageUUID).
- ``workers``: the consumer group. A worker reads up to a batch at once
  (``XREADGROUP COUNT=max_batch``), runs the model through its own micro-batcher, records the
  outcome in the results book and hands the answer to the session's outbox (one Lua script: only
  the first to end a task does either), then ``XACK``s and deletes the entry.
- A worker that dies leaves its entries pending. Every worker runs ``XAUTOCLAIM`` for entries
  idle longer than ``claim_after`` and runs them again; an entry delivered more than
  ``max_attempts`` times fails its task with ``workerFailed``. A worker re-claims its own
  unfinished entries (``XCLAIM ... JUSTID``) so that a slow task is not taken for a dead one.

``QueuedWork`` is the gateway's ``WorkExecutor``: removals become jobs, everything else runs
on the gateway. Inference stays behind ``Processor`` -> ``MicroBatcher`` -> ``infer_batch``: a
Triton client could replace the runtime without gateways noticing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import ResponseError

from protocol.codec import encode_answer
from protocol.errors import Code, ErrorItem
from protocol.messages import RemoveBackground

from ..net.delivery import WebhookSender
from ..tasks.outcomes import Destination, destination, error_item_for
from ..tasks.ports import Answers, Requester, TaskState, WorkResult, WorkTask
from ..tasks.records import task_key
from ..tasks.work import LocalWork
from .loops import bug_that_stopped
from .reachability import REDIS_DOWN, is_missing_group, refused_while_redis_is_down
from .relay import RelayedSession
from .results import Handover, RedisResultsBook

if TYPE_CHECKING:  # the pipeline (numba, Pillow) loads where a processor is built: workers
    from ..tasks.processor import Processor

__all__ = ["Job", "JobQueue", "QueuedWork", "Worker", "STREAM", "GROUP"]

log = logging.getLogger(__name__)

STREAM = "jobs"
GROUP = "workers"

# KEYS[1] the job stream, ARGV[1] the group: made (with the stream) unless it exists.
_CREATE_GROUP = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    if group[2] == ARGV[1] then return 0 end
  end
end
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
return 1
"""


class Job(msgspec.Struct, array_like=True):
    task: RemoveBackground
    scope: bytes  # digest of the API key: the results book's scope
    handover: Handover | None  # the session outbox that waits, if any


@dataclass
class _Waiting:
    task: RemoveBackground
    answers: Answers
    results_key: str
    ended_at: float | None = None  # when its record was first seen ended


def _lost(task: RemoveBackground) -> ErrorItem:
    return ErrorItem(
        code=Code.WORKER_FAILED,
        taskType=task.task_type,
        taskUUID=task.task_uuid,
        message="The task was lost with the job queue (Redis restarted without keeping its "
        "data) before any worker finished it. Sending it again may succeed.",
    )


class JobQueue:
    """The gateways' end: add a job (and turn its task's admission lease into a record)."""

    def __init__(self, redis: Any, results: RedisResultsBook, prefix: str = "rbg") -> None:
        self._redis = redis
        self._results = results
        self._stream = f"{prefix}:{STREAM}"
        # Jobs in the stream (queued or running; workers delete what they finish), for the
        # overload limit. Counted up at once when we add one, re-read from Redis by ``watch``.
        self.backlog = 0
        self.reachable = True

    async def add(self, task: RemoveBackground, scope: bytes, handover: Handover | None) -> None:
        job = Job(task, scope, handover)
        with refused_while_redis_is_down():
            async with self._redis.pipeline(transaction=True) as pipe:
                # The record again where its lease ran out: a worker ends only a processing
                # task, and getResponse must know every task that was accepted.
                record = self._results.key(scope, task.task_uuid)
                pipe.hsetnx(record, "type", task.task_type)
                pipe.hsetnx(record, "state", TaskState.PROCESSING.value)
                pipe.expire(record, self._results.PROCESSING_SECONDS)
                # No MAXLEN: trimming would drop jobs nobody ran. Workers delete what they finished.
                pipe.xadd(self._stream, {"job": msgspec.msgpack.encode(job)})
                await pipe.execute()
        self.backlog += 1

    async def watch(self, interval: float = 0.25) -> None:
        """Keep ``backlog`` close to the stream's length (other gateways add, workers finish),
        and ``reachable`` telling whether Redis answers."""
        while True:
            try:
                self.backlog = await self._redis.xlen(self._stream)
            except REDIS_DOWN as error:
                if self.reachable:
                    log.error("gateway: the job queue cannot be reached: %s", error)
                self.reachable = False
            else:
                if not self.reachable:
                    log.warning("gateway: the job queue is reachable again")
                self.reachable = True
            await asyncio.sleep(interval)


class QueuedWork:
    """The gateway's ``WorkExecutor``: a removal's input is stored here and the removal queued
    as a job, whose worker records and answers it; image uploads run here."""

    def __init__(
        self, processor: Processor, queue: JobQueue, results: RedisResultsBook, linger: float
    ) -> None:
        self._processor = processor
        self._queue = queue
        self._results = results
        self._linger = linger
        self._local = LocalWork(processor)
        # Queued tasks whose answer no socket of this gateway has been sent yet, by
        # (outbox key, task key).
        self._waiting: dict[tuple[str, str], _Waiting] = {}

    def check_destinations(self, task: RemoveBackground) -> None:
        self._processor.check_destinations(task)

    async def execute(self, task: WorkTask, requester: Requester) -> WorkResult | None:
        if not isinstance(task, RemoveBackground):
            return await self._local.execute(task, requester)
        # Client sessions are relayed through Redis in this mode; the job names their outbox.
        answers = requester.answers
        handover = answers.handover if isinstance(answers, RelayedSession) else None
        async with self._results.held(requester.scope, task.task_uuid):
            stored = await self._processor.store_input(task, requester.scope)
            await self._queue.add(stored, requester.scope, handover)
        if handover is not None and destination(task) is Destination.CLIENT:
            results_key = self._results.key(requester.scope, task.task_uuid)
            waiting = _Waiting(task, answers, results_key)
            self._waiting[(handover.outbox_key, task_key(task.task_uuid))] = waiting
        return None

    def relayed(self, outbox_key: str, task: str) -> None:
        """A worker's answer went out to its client's socket from this gateway."""
        self._waiting.pop((outbox_key, task), None)

    async def watch_for_lost_jobs(self, interval: float = 2.0) -> None:
        """A Redis that restarts without persistence forgets queued jobs and their records:
        nobody would ever answer them. A waiting task whose record is gone is answered with
        ``workerFailed`` here; one whose record has ended is the worker's to answer."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            waiting = list(self._waiting.items())
            if not waiting:
                continue
            try:
                states = await self._results.states([w.results_key for _, w in waiting])
            except REDIS_DOWN:
                continue  # away: look again once it is back
            for (key, entry), state in zip(waiting, states, strict=True):
                if state is None:
                    del self._waiting[key]
                    log.error("task %s was lost with the job queue", entry.task.task_uuid)
                    await entry.answers.deliver(_lost(entry.task))
                elif state != b"processing":
                    # Ended, and its answer waits in the outbox, or went out from another
                    # gateway: after the outbox's lifetime there is nothing left to lose.
                    entry.ended_at = entry.ended_at or loop.time()
                    if loop.time() - entry.ended_at > self._linger:
                        del self._waiting[key]


async def claim_stale(
    redis: Any, stream: str, consumer: str, idle_ms: int, count: int
) -> list[tuple[bytes, dict]]:
    """Every entry of the group's pending list idle for ``idle_ms``, claimed for ``consumer``.

    XAUTOCLAIM looks at a bounded stretch of the pending list per call (``count`` entries to
    claim, ten times that to scan) and returns where to go on; the whole list is walked, so
    that a dead worker's entries behind many live ones are found too (starting from the head
    every time, they were never reached while the head stayed busy).
    """
    claimed: list[tuple[bytes, dict]] = []
    start: bytes | str = "0-0"
    while True:
        start, entries, _ = await redis.xautoclaim(
            stream, GROUP, consumer, idle_ms, start_id=start, count=count
        )
        claimed.extend(entries)
        if start in (b"0-0", "0-0"):
            return claimed


class Worker:
    """Reads jobs in batches, runs them, records and answers each once.

    Args:
        redis: an async redis client.
        processor: runs a removal (the worker's own model, batcher and CPU pool).
        results: the shared results book.
        webhooks: posts outcomes of webhook tasks.
        max_batch: entries read at once (and kept in flight: two batches' worth).
        claim_after: seconds an entry may sit unacknowledged before others take it.
        max_attempts: deliveries of one entry before its task fails.
    """

    def __init__(
        self,
        redis: Any,
        processor: Processor,
        results: RedisResultsBook,
        webhooks: WebhookSender,
        max_batch: int,
        claim_after: float = 30.0,
        max_attempts: int = 3,
        prefix: str = "rbg",
        name: str | None = None,
    ) -> None:
        self._redis = redis
        self._processor = processor
        self._results = results
        self._webhooks = webhooks
        self._max_batch = max(1, max_batch)
        self._claim_after = claim_after
        self._max_attempts = max_attempts
        self._stream = f"{prefix}:{STREAM}"
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self._in_flight: dict[bytes, asyncio.Task] = {}
        self._room = asyncio.Event()  # set whenever a job ends: the reader may read again
        self._tasks: list[asyncio.Task] = []
        self.reachable = True  # the job stream answered the last read
        self.broken: str | None = None  # a loop that stopped on a bug: why the worker is unready
        self._create_group = redis.register_script(_CREATE_GROUP)

    async def _ensure_group(self) -> None:
        """The stream and its consumer group, made if missing (at start, and after a Redis
        restart that lost them); atomic, so that workers starting together make it once."""
        await self._create_group(keys=[self._stream], args=[GROUP])

    def _unreachable(self, what: str, error: Exception) -> None:
        if self.reachable:
            log.error("worker: %s failed: %s", what, error)
        self.reachable = False

    async def start(self) -> None:
        await self._ensure_group()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read(), name="worker-read"),
            loop.create_task(self._claim(), name="worker-claim"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._stopped)
        log.info("worker %s reading %s (batches of %d)", self.name, self._stream, self._max_batch)

    def _stopped(self, task: asyncio.Task) -> None:
        self.broken = self.broken or bug_that_stopped(task, f"worker {self.name}")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._in_flight:
            await asyncio.wait(list(self._in_flight.values()))

    async def _read(self) -> None:
        while True:
            free = 2 * self._max_batch - len(self._in_flight)
            if free <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                replies = await self._redis.xreadgroup(
                    GROUP,
                    self.name,
                    {self._stream: ">"},
                    count=min(free, self._max_batch),
                    block=1000,
                )
            except (*REDIS_DOWN, ResponseError) as error:
                await self._recover("reading the job stream", error)
                continue
            if not self.reachable:
                log.warning("worker %s: the job stream is readable again", self.name)
            self.reachable = True
            for _, entries in replies or []:
                for entry_id, fields in entries:
                    self._start(entry_id, fields)

    def _start(self, entry_id: bytes, fields: dict) -> None:
        if entry_id in self._in_flight:
            return
        running = asyncio.get_running_loop().create_task(self._run(entry_id, fields))
        self._in_flight[entry_id] = running

        def finished(_: asyncio.Task) -> None:
            self._in_flight.pop(entry_id, None)
            self._room.set()

        running.add_done_callback(finished)

    async def _run(self, entry_id: bytes, fields: dict) -> None:
        try:
            job = msgspec.msgpack.decode(fields[b"job"], type=Job)
        except (KeyError, msgspec.DecodeError):
            log.error("dropping an unreadable job entry %s", entry_id)
            await self._done(entry_id)
            return
        task = job.task
        # the lane the CPU pool and the batcher take turns by: the client session the job
        # names, else its key
        lane = job.handover.outbox_key if job.handover else job.scope
        try:
            result = await self._processor.remove_background(task, job.scope, lane)
        except Exception as error:
            await self._end(job, error_item_for(task, error))
        else:
            await self._end(job, result)
        await self._done(entry_id)

    async def _end(self, job: Job, outcome: Any) -> None:
        """Record the outcome; hand it to the session, or POST it, exactly once."""
        task = job.task
        where = destination(task)
        handover = job.handover if where is Destination.CLIENT else None
        ttl = None if isinstance(outcome, ErrorItem) else task.output.ttl
        first = await self._results.finish_and_hand_over(
            job.scope, task.task_uuid, outcome, ttl, handover
        )
        if first and where is Destination.WEBHOOK and task.webhook_url is not None:
            self._webhooks.deliver(
                task.webhook_url, encode_answer(outcome), task.task_uuid, job.scope
            )

    async def _done(self, entry_id: bytes) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._stream, GROUP, entry_id)
            pipe.xdel(self._stream, entry_id)
            await pipe.execute()

    async def _claim(self) -> None:
        """Keep our own entries fresh; take over those of workers that stopped."""
        interval = max(0.2, self._claim_after / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                if self._in_flight:
                    await self._redis.xclaim(
                        self._stream, GROUP, self.name, 0, list(self._in_flight), justid=True
                    )
                claimed = await claim_stale(
                    self._redis,
                    self._stream,
                    self.name,
                    int(self._claim_after * 1000),
                    self._max_batch,
                )
                for entry_id, fields in claimed:
                    await self._retry_or_fail(entry_id, fields)
            except (*REDIS_DOWN, ResponseError) as error:
                await self._recover("claiming stale jobs", error)

    async def _recover(self, what: str, error: Exception) -> None:
        """After a failed stream command: remake a lost group, or wait for Redis to return.
        Any other error reply is a bug: raised."""
        if is_missing_group(error):
            log.warning(
                "worker %s: the job stream's group is gone (Redis restarted?): remaking it",
                self.name,
            )
            with contextlib.suppress(*REDIS_DOWN):
                await self._ensure_group()
            return
        if isinstance(error, ResponseError):
            raise error
        self._unreachable(what, error)
        await asyncio.sleep(1)

    async def _retry_or_fail(self, entry_id: bytes, fields: dict | None) -> None:
        if not fields:  # deleted meanwhile
            await self._done(entry_id)
            return
        pending = await self._redis.xpending_range(
            self._stream, GROUP, min=entry_id, max=entry_id, count=1
        )
        attempts = pending[0]["times_delivered"] if pending else 1
        if attempts <= self._max_attempts:
            log.warning("worker %s: took over job %s (attempt %d)", self.name, entry_id, attempts)
            self._start(entry_id, fields)
            return
        job = msgspec.msgpack.decode(fields[b"job"], type=Job)
        log.error("job %s failed: %d workers stopped while running it", entry_id, attempts - 1)
        await self._end(
            job,
            ErrorItem(
                code=Code.WORKER_FAILED,
                taskType=job.task.task_type,
                taskUUID=job.task.task_uuid,
                message=f"The task was started {attempts - 1} times and each time the worker running "
                "it stopped; it was not completed. Sending it again may succeed.",
            ),
        )
        await self._done(entry_id)
