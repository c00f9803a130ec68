"""One WebSocket connection: frames in, tasks dispatched, results and errors streamed back.

Each work task runs as its own asyncio task, so results go out in completion order and one slow
task never holds back its siblings. Every frame sent is a text frame with one ``data`` or one
``errors`` object; errors go one per frame (the JS SDK only reads ``errors[0]``).

Where a result goes depends on the task: back on this socket (sync), nowhere but the results
book (``deliveryMethod: "async"``: acknowledged at once, fetched by getResponse), or to its
``webhookURL`` (acknowledged at once, POSTed when done). Every outcome is entered in the results
book, so getResponse answers for all of them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from protocol.codec import decode_frame, encode_data, encode_errors
from protocol.errors import Code, ErrorItem, TaskFailure
from protocol.messages import (
    Authenticate, GetResponse, ImageUpload, Ping, PongResult, RemoveBackground, Task,
    TaskAcknowledgement,
)
from protocol.session import Session

from .results import TaskState, owner_of

if TYPE_CHECKING:
    from .server import App

__all__ = ["Connection"]

log = logging.getLogger(__name__)

# Frames at least this large are decoded on a worker thread (a 16 MiB frame of base64 takes
# tens of milliseconds to parse, which would stall every other socket).
_THREAD_DECODE_BYTES = 256 * 1024
_PONG = encode_data([PongResult(taskType="ping", pong=True)])

WorkTask = ImageUpload | RemoveBackground


def _acknowledged(task: WorkTask) -> bool:
    """Async and webhook tasks are acknowledged at once instead of answered on the socket."""
    return isinstance(task, RemoveBackground) and (
        task.delivery_method == "async" or task.webhook_url is not None)


class Connection:
    def __init__(self, websocket: ServerConnection, app: "App") -> None:
        self._websocket = websocket
        self._app = app
        self._session = Session(app.key_is_valid)
        self._owner = b""
        self._running: set[asyncio.Task] = set()
        # Tasks of this socket in the pipeline at once; the rest wait here, not in shared queues.
        self._active = asyncio.Semaphore(app.socket_concurrency)

    async def serve(self) -> None:
        try:
            async for message in self._websocket:
                await self._on_frame(message)
        except ConnectionClosed:
            pass
        # Tasks already accepted run to completion and are entered in the results book, so
        # a client that reconnects can still fetch them with getResponse.

    async def _send(self, payload: bytes) -> None:
        try:
            await self._websocket.send(payload, text=True)
        except ConnectionClosed:
            log.debug("socket closed before a frame could be sent")

    async def _send_error(self, item: ErrorItem) -> None:
        await self._send(encode_errors([item]))

    async def _on_frame(self, message: str | bytes) -> None:
        if len(message) >= _THREAD_DECODE_BYTES:
            frame = await asyncio.to_thread(decode_frame, message)
        else:
            frame = decode_frame(message)
        for item in frame.errors:
            await self._send_error(item)
        for task in frame.tasks:
            try:
                await self._dispatch(task)
            except Exception as error:  # a bug in one task's handling must not drop the socket
                await self._send_error(self._error_item(task, error))

    async def _dispatch(self, task: Task) -> None:
        if isinstance(task, Ping):
            await self._send(_PONG)
            return
        if isinstance(task, Authenticate):
            await self._authenticate(task)
            return
        refusal = self._session.admit(task)
        if refusal is not None:
            await self._send_error(refusal)
            return
        if isinstance(task, GetResponse):
            await self._get_response(task)
            return
        if not self._app.results.begin(self._owner, task.task_uuid, task.task_type):
            await self._send_error(ErrorItem(
                code=Code.CONFLICT_TASK_UUID,
                message="This taskUUID was already used; poll getResponse for its result.",
                parameter="taskUUID", type="string", taskType=task.task_type,
                taskUUID=task.task_uuid))
            return
        running = asyncio.create_task(self._run(task), name=f"task-{task.task_uuid}")
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    async def _authenticate(self, task: Authenticate) -> None:
        reply = self._session.authenticate(task, self._app.sessions.resume_or_create)
        if isinstance(reply, ErrorItem):
            log.info("refused an API key from %s", self._websocket.remote_address)
            await self._send_error(reply)
            return
        self._owner = owner_of(task.api_key)
        await self._send(encode_data([reply]))

    async def _get_response(self, task: GetResponse) -> None:
        record = self._app.results.get(self._owner, task.task_uuid)
        if record is not None and record.state is TaskState.FAILED:
            await self._send_error(record.error)
            return
        item = await self._app.results.reply(record, task.task_uuid) if record else None
        if item is None:
            await self._send_error(ErrorItem(
                code=Code.TASK_NOT_FOUND,
                message="No task with this taskUUID (unknown, expired, or sent with another key).",
                parameter="taskUUID", type="string", taskType=task.task_type,
                taskUUID=task.task_uuid))
        else:
            await self._send(encode_data([item]))

    async def _run(self, task: WorkTask) -> None:
        results, owner = self._app.results, self._owner
        acknowledged = False
        try:
            if _acknowledged(task):
                self._app.processor.check_destinations(task)
                await self._send(encode_data([TaskAcknowledgement(task.task_type, task.task_uuid)]))
                acknowledged = True
            result: Any = await self._execute(task)
        except Exception as error:
            item = self._error_item(task, error)
            results.fail(owner, task.task_uuid, item)
            frame = encode_errors([item])
            # Refused before the acknowledgement: the client is still waiting on this socket.
            await (self._deliver(task, frame) if acknowledged else self._send(frame))
        else:
            ttl = task.output.ttl if isinstance(task, RemoveBackground) else None
            results.succeed(owner, task.task_uuid, result, ttl)
            await self._deliver(task, encode_data([result]))

    def _error_item(self, task: Task, error: Exception) -> ErrorItem:
        if isinstance(error, TaskFailure):
            return error.item(task.task_type, task.task_uuid)
        log.error("task %s failed", task.task_uuid, exc_info=error)
        return ErrorItem(code=Code.INTERNAL, message="The task failed on the server.",
                         taskType=task.task_type, taskUUID=task.task_uuid)

    async def _deliver(self, task: WorkTask, frame: bytes) -> None:
        """Send a finished task's frame where it belongs."""
        if isinstance(task, RemoveBackground) and task.webhook_url is not None:
            self._app.webhooks.deliver(task.webhook_url, frame, task.task_uuid)
        elif not _acknowledged(task):
            await self._send(frame)
        # async without webhook: kept in the results book only

    async def _execute(self, task: WorkTask) -> Any:
        processor = self._app.processor
        async with self._active:
            if isinstance(task, ImageUpload):
                return await processor.upload(task)
            return await processor.remove_background(task, owner=id(self))
