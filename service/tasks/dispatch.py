"""One client's arrays of tasks, from bytes to answers: what the WebSocket connection and the
REST twin share, so that both validate, limit, run and answer a task in exactly the same way.

A ``Dispatcher`` decodes a frame (an array of tasks), refuses what cannot run (each refusal its
own error item, the siblings unaffected; the elements past the per-frame limit share one), and
runs every accepted work task as its own asyncio
task, so answers come in completion order and one slow task never holds back the others.

The transport that holds a dispatcher gives it two things:
- ``reply(item)``: an immediate answer to the requester (pong, getResponse, refusals);
- ``authenticate(task)``: what an authentication element does on that transport; once a key is
  accepted the transport calls ``open(scope, answers)``: the ``Answers`` that receive work
  tasks' outcomes (a socket's client session, which survives reconnects, or a REST request's).
Async tasks are acknowledged at once and their outcome kept only in the results book; webhook
tasks are acknowledged at once and their outcome POSTed. Every outcome is entered in the results
book, so getResponse answers for all of them. Where a task runs (this process, or a worker
reached through the job queue) is the ``WorkExecutor``'s business, chosen by the composition
root.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from protocol.auth import AuthState
from protocol.codec import decode_frame, encode_answer
from protocol.errors import Code, ErrorItem
from protocol.messages import (
    Authenticate,
    GetResponse,
    Ping,
    PongResult,
    RemoveBackground,
    Task,
    TaskAcknowledgement,
)

from ..metrics import Metrics
from ..net.delivery import WebhookSender
from .outcomes import Destination, acknowledged_at_once, destination, error_item_for, refusal
from .ports import Answers, Requester, ResultsStore, TaskState, WorkExecutor, WorkTask
from .workload import Workload

__all__ = ["ClientLimits", "Dispatcher", "TaskPorts"]

log = logging.getLogger(__name__)

# Frames at least this large are decoded on a worker thread (a 16 MiB frame of base64 takes
# tens of milliseconds to parse, which would stall every other client).
_THREAD_PARSE_BYTES = 256 * 1024


@dataclass(frozen=True)
class TaskPorts:
    """What every dispatcher shares, built once by the composition root."""

    results: ResultsStore
    work: WorkExecutor
    workload: Workload
    webhooks: WebhookSender
    metrics: Metrics
    key_is_valid: Callable[[str], bool]


@dataclass(frozen=True)
class ClientLimits:
    frame_error_bytes: int  # a larger frame is refused whole
    max_tasks_per_frame: int
    max_in_flight: int  # unfinished work tasks this client may have at once
    pipeline_slots: int  # images of this client in the pipeline at once


class Dispatcher:
    def __init__(
        self,
        ports: TaskPorts,
        limits: ClientLimits,
        reply: Callable[[Any], Awaitable[None]],
        authenticate: Callable[[Authenticate], Awaitable[None]],
    ) -> None:
        self._ports = ports
        self._limits = limits
        self._reply = reply
        self._authenticate = authenticate
        self.auth = AuthState(ports.key_is_valid)
        self._scope = b""  # digest of the API key: the results book's scope
        self._answers: Answers | None = None
        self._running: set[asyncio.Task] = set()
        self.accepted = 0  # work tasks accepted so far (each gets exactly one answer or record)
        self._pipeline_slots = asyncio.Semaphore(limits.pipeline_slots)

    @property
    def api_key(self) -> str | None:
        return self.auth.api_key

    @property
    def busy(self) -> bool:
        """Work tasks of this client are still running."""
        return bool(self._running)

    def open(self, scope: bytes, answers: Answers) -> None:
        """From now on, work tasks run under ``scope`` and their outcomes go to ``answers``."""
        self._scope = scope
        self._answers = answers

    # ---- frames

    async def handle_frame(self, message: bytes | str) -> None:
        """Answer or start every task of one frame; returns once all are dispatched."""
        metrics, limit_bytes = self._ports.metrics, self._limits.frame_error_bytes
        if len(message) > limit_bytes:
            metrics.frames_refused.labels(Code.FRAME_TOO_LARGE).inc()
            await self._reply(
                ErrorItem(
                    code=Code.FRAME_TOO_LARGE,
                    message=f"The frame has {len(message):,} bytes; the limit is "
                    f"{limit_bytes:,}. Send fewer or smaller images per frame.",
                    max=limit_bytes,
                )
            )
            return
        limit = self._limits.max_tasks_per_frame
        if len(message) >= _THREAD_PARSE_BYTES:
            frame = await asyncio.to_thread(decode_frame, message, limit)
        else:
            frame = decode_frame(message, limit)
        for item in frame.errors:
            metrics.count_task(item.taskType, item.code)
            await self._reply(item)
        for task in frame.tasks:
            try:
                await self._dispatch(task)
            except Exception as error:  # a bug in one task's handling must not drop the client
                await self._reply(error_item_for(task, error))

    async def finished(self) -> None:
        """Wait until every work task started so far has delivered its answer."""
        while self._running:
            await asyncio.wait(set(self._running))

    async def _dispatch(self, task: Task) -> None:
        if isinstance(task, Ping):
            await self._reply(PongResult(taskType="ping", pong=True))
            return
        if isinstance(task, Authenticate):
            await self._authenticate(task)
            return
        refused = self.auth.admit(task)
        if isinstance(task, GetResponse):
            if refused is None:
                await self._get_response(task)
                return
        else:
            refused = refused or await self._admission(task)
            if refused is None:
                self._start(task)
                return
        self._ports.metrics.count_task(task.task_type, refused.code)
        await self._reply(refused)

    def _start(self, task: WorkTask) -> None:
        assert self._answers is not None  # admitted, so the transport has opened
        self.accepted += 1
        self._ports.workload.task_accepted()
        self._ports.metrics.queued.inc()
        running = asyncio.create_task(self._run(task, self._answers), name=f"task-{task.task_uuid}")
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    async def _admission(self, task: WorkTask) -> ErrorItem | None:
        """Limits, then duplicates; None when the task is accepted (and entered in the book)."""
        workload = self._ports.workload
        refused = workload.draining_refusal(task)
        if refused is not None:
            return refused
        if len(self._running) >= self._limits.max_in_flight:
            return refusal(
                task,
                Code.TOO_MANY_TASKS_IN_FLIGHT,
                f"This client already has {len(self._running)} unfinished tasks; wait "
                "for some answers first.",
                max=self._limits.max_in_flight,
            )
        refused = workload.overload_refusal(task)
        if refused is not None:
            return refused
        if not await self._ports.results.begin(self._scope, task.task_uuid, task.task_type):
            return refusal(
                task,
                Code.CONFLICT_TASK_UUID,
                "This taskUUID was already used; poll getResponse for its result.",
                parameter="taskUUID",
                type="string",
            )
        return None

    async def _get_response(self, task: GetResponse) -> None:
        results = self._ports.results
        record = await results.get(self._scope, task.task_uuid)
        if record is not None and record.state is TaskState.FAILED:
            await self._reply(record.error)
            return
        item = await results.reply(record, task.task_uuid) if record else None
        if item is None:
            await self._reply(
                refusal(
                    task,
                    Code.TASK_NOT_FOUND,
                    "No task with this taskUUID (unknown, expired, or sent with another key).",
                    parameter="taskUUID",
                    type="string",
                )
            )
        else:
            await self._reply(item)

    # ---- work tasks

    async def _run(self, task: WorkTask, answers: Answers) -> None:
        ports, scope, started = self._ports, self._scope, time.perf_counter()
        requester = Requester(scope, id(self), answers, self._pipeline_slots)
        acknowledged = False
        try:
            if isinstance(task, RemoveBackground):
                ports.work.check_destinations(task)
            if acknowledged_at_once(task):
                await answers.deliver(TaskAcknowledgement(task.task_type, task.task_uuid))
                acknowledged = True
            result = await ports.work.execute(task, requester)
        except Exception as error:
            item = error_item_for(task, error)
            await ports.results.fail(scope, task.task_uuid, item)
            ports.metrics.count_task(task.task_type, item.code)
            # Refused before the acknowledgement: the client is still waiting for an answer.
            await (self._deliver(task, item, answers) if acknowledged else answers.deliver(item))
        else:
            if result is None:
                return  # handed over: a worker records and answers it
            ttl = task.output.ttl if isinstance(task, RemoveBackground) else None
            await ports.results.succeed(scope, task.task_uuid, result, ttl)
            ports.metrics.count_task(task.task_type, "success")
            await self._deliver(task, result, answers)
        finally:
            ports.workload.task_ended()
            ports.metrics.queued.dec()
            ports.metrics.task_seconds.labels(task.task_type).observe(time.perf_counter() - started)

    async def _deliver(self, task: WorkTask, item: Any, answers: Answers) -> None:
        """Hand a finished task's outcome to where it belongs."""
        where = destination(task)
        if where is Destination.WEBHOOK:
            assert isinstance(task, RemoveBackground) and task.webhook_url is not None
            self._ports.webhooks.deliver(
                task.webhook_url, encode_answer(item), task.task_uuid, self._scope
            )
        elif where is Destination.CLIENT:
            await answers.deliver(item)
        # Destination.BOOK: kept in the results book only
