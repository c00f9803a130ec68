"""One client's arrays of tasks, from bytes to answers: what the WebSocket connection and the
REST twin share, so that both validate, limit, run and answer a task in exactly the same way.

A ``Dispatcher`` decodes a frame (an array of tasks), refuses what cannot run (each refusal its
own error item, the siblings unaffected), and runs every accepted work task as its own asyncio
task, so answers come in completion order and one slow task never holds back the others.

Where answers go is the transport's business, through two hooks:
- ``_reply(item)``: an immediate answer to the requester (pong, authentication, getResponse,
  refusals);
- ``_answers``: the ``Answers`` that receives work tasks' outcomes (a socket's client session,
  which survives reconnects, or the REST request's collector).
Async tasks are acknowledged at once and their outcome kept only in the results book; webhook
tasks are acknowledged at once and their outcome POSTed. Every outcome is entered in the results
book, so getResponse answers for all of them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from protocol.codec import decode_frame, encode_answer
from protocol.errors import Code, ErrorItem, TaskFailure
from protocol.messages import (
    Authenticate, GetResponse, ImageUpload, Ping, PongResult, RemoveBackground, Task,
    TaskAcknowledgement,
)
from protocol.session import Session

from .results import TaskState

if TYPE_CHECKING:
    from .server import App

__all__ = ["Answers", "Destination", "Dispatcher", "WorkTask", "destination", "error_item_for",
           "refusal"]

log = logging.getLogger(__name__)

# Frames at least this large are decoded on a worker thread (a 16 MiB frame of base64 takes
# tens of milliseconds to parse, which would stall every other client).
_THREAD_DECODE_BYTES = 256 * 1024

WorkTask = ImageUpload | RemoveBackground


class Answers(Protocol):
    async def deliver(self, item: Any) -> None:
        """Take one task's answer: a result struct or an ErrorItem."""


class Destination(enum.Enum):
    CLIENT = "client"  # the answer goes back to the client (socket session or REST response)
    BOOK = "book"  # deliveryMethod async: acknowledged at once, the outcome kept for getResponse
    WEBHOOK = "webhook"  # acknowledged at once, the outcome POSTed to webhookURL


def destination(task: WorkTask) -> Destination:
    if isinstance(task, RemoveBackground):
        if task.webhook_url is not None:
            return Destination.WEBHOOK
        if task.delivery_method == "async":
            return Destination.BOOK
    return Destination.CLIENT


def _acknowledged(task: WorkTask) -> bool:
    """Async and webhook tasks are acknowledged at once instead of answered in place."""
    return destination(task) is not Destination.CLIENT


def error_item_for(task: Task, error: Exception) -> ErrorItem:
    """A task's failure as its error item; anything unexpected is logged and stays vague."""
    if isinstance(error, TaskFailure):
        return error.item(task.task_type, task.task_uuid)
    log.error("task %s failed", task.task_uuid, exc_info=error)
    return ErrorItem(code=Code.INTERNAL, message="The task failed on the server.",
                     taskType=task.task_type, taskUUID=task.task_uuid)


def refusal(task: Task, code: str, message: str, **fields: Any) -> ErrorItem:
    return ErrorItem(code=code, message=message, taskType=task.task_type,
                     taskUUID=task.task_uuid, **fields)


class Dispatcher:
    """Args:
        app: the shared service objects.
        max_in_flight: unfinished work tasks this client may have at once.
    """

    def __init__(self, app: "App", max_in_flight: int) -> None:
        self._app = app
        self._config = app.config
        self._session = Session(app.key_is_valid)
        self._owner = b""  # digest of the API key: the results book's scope
        self._answers: Answers | None = None
        self._max_in_flight = max_in_flight
        self._running: set[asyncio.Task] = set()
        self.accepted = 0  # work tasks accepted so far (each gets exactly one answer or record)
        # Tasks of this client in the pipeline at once; the rest wait here, not in shared queues.
        self._active = asyncio.Semaphore(app.socket_concurrency)

    @property
    def api_key(self) -> str | None:
        return self._session.api_key

    # ---- transport hooks

    async def _reply(self, item: Any) -> None:
        raise NotImplementedError

    async def _authenticate(self, task: Authenticate) -> None:
        raise NotImplementedError

    # ---- frames

    async def handle_frame(self, message: bytes | str) -> None:
        """Answer or start every task of one frame; returns once all are dispatched."""
        if len(message) > self._config.frame_error_bytes:
            self._app.metrics.frames_refused.labels(Code.FRAME_TOO_LARGE).inc()
            await self._reply(ErrorItem(
                code=Code.FRAME_TOO_LARGE,
                message=f"The frame has {len(message):,} bytes; the limit is "
                        f"{self._config.frame_error_bytes:,}. Send fewer or smaller images per frame.",
                max=self._config.frame_error_bytes))
            return
        if len(message) >= _THREAD_DECODE_BYTES:
            frame = await asyncio.to_thread(decode_frame, message)
        else:
            frame = decode_frame(message)
        for item in frame.errors:
            self._app.metrics.tasks.labels(item.taskType or "unknown", item.code).inc()
            await self._reply(item)
        limit = self._config.max_tasks_per_frame
        for index, task in enumerate(frame.tasks):
            try:
                if index >= limit:
                    await self._reply(refusal(
                        task, Code.TOO_MANY_TASKS,
                        f"At most {limit} tasks are accepted per frame.", max=limit))
                else:
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
        refused = self._session.admit(task)
        if refused is None and isinstance(task, GetResponse):
            await self._get_response(task)
            return
        refused = refused or await self._admission(task)
        if refused is not None:
            self._app.metrics.tasks.labels(task.task_type, refused.code).inc()
            await self._reply(refused)
            return
        self.accepted += 1
        self._app.queued_tasks += 1
        self._app.metrics.queued.inc()
        running = asyncio.create_task(self._run(task, self._answers), name=f"task-{task.task_uuid}")
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    async def _admission(self, task: WorkTask) -> ErrorItem | None:
        """Limits, then duplicates; None when the task is accepted (and entered in the book)."""
        if self._app.draining:
            return refusal(task, Code.SHUTTING_DOWN, "The server is shutting down; reconnect and "
                           "send the task again.", retryAfterMs=1000)
        if len(self._running) >= self._max_in_flight:
            return refusal(task, Code.TOO_MANY_TASKS_IN_FLIGHT,
                           f"This client already has {len(self._running)} unfinished tasks; wait "
                           "for some answers first.", max=self._max_in_flight)
        if self._app.load() >= self._config.max_queued_tasks:
            retry_ms = self._app.retry_hint_ms()
            return refusal(task, Code.OVERLOADED,
                           f"The server is at capacity; retry in about {retry_ms / 1000:.1f} s.",
                           retryAfterMs=retry_ms)
        if not await self._app.results.begin(self._owner, task.task_uuid, task.task_type):
            return refusal(task, Code.CONFLICT_TASK_UUID,
                           "This taskUUID was already used; poll getResponse for its result.",
                           parameter="taskUUID", type="string")
        return None

    async def _get_response(self, task: GetResponse) -> None:
        record = await self._app.results.get(self._owner, task.task_uuid)
        if record is not None and record.state is TaskState.FAILED:
            await self._reply(record.error)
            return
        item = await self._app.results.reply(record, task.task_uuid) if record else None
        if item is None:
            await self._reply(refusal(
                task, Code.TASK_NOT_FOUND,
                "No task with this taskUUID (unknown, expired, or sent with another key).",
                parameter="taskUUID", type="string"))
        else:
            await self._reply(item)

    # ---- work tasks

    async def _run(self, task: WorkTask, answers: Answers) -> None:
        results, owner, started = self._app.results, self._owner, time.perf_counter()
        acknowledged = False
        try:
            if _acknowledged(task):
                self._app.processor.check_destinations(task)
                await answers.deliver(TaskAcknowledgement(task.task_type, task.task_uuid))
                acknowledged = True
            if self._app.jobs is not None and isinstance(task, RemoveBackground):
                # Distributed: store the input here, and a worker records and answers the rest.
                stored = await self._app.processor.store_input(task)
                await self._app.jobs.add(stored, owner, getattr(answers, "handover", None))
                return
            result: Any = await self._execute(task)
        except Exception as error:
            item = error_item_for(task, error)
            await results.fail(owner, task.task_uuid, item)
            self._app.metrics.tasks.labels(task.task_type, item.code).inc()
            # Refused before the acknowledgement: the client is still waiting for an answer.
            await (self._deliver(task, item, answers) if acknowledged else answers.deliver(item))
        else:
            ttl = task.output.ttl if isinstance(task, RemoveBackground) else None
            await results.succeed(owner, task.task_uuid, result, ttl)
            self._app.metrics.tasks.labels(task.task_type, "success").inc()
            await self._deliver(task, result, answers)
        finally:
            self._app.queued_tasks -= 1
            self._app.metrics.queued.dec()
            self._app.metrics.task_seconds.labels(task.task_type).observe(time.perf_counter() - started)

    async def _deliver(self, task: WorkTask, item: Any, answers: Answers) -> None:
        """Hand a finished task's outcome to where it belongs."""
        where = destination(task)
        if where is Destination.WEBHOOK:
            self._app.webhooks.deliver(task.webhook_url, encode_answer(item), task.task_uuid)
        elif where is Destination.CLIENT:
            await answers.deliver(item)
        # Destination.BOOK: kept in the results book only

    async def _execute(self, task: WorkTask) -> Any:
        processor = self._app.processor
        async with self._active:
            if isinstance(task, ImageUpload):
                return await processor.upload(task, owner=id(self))
            return await processor.remove_background(task, owner=id(self))
