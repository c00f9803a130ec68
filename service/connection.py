"""One WebSocket connection: frames in, tasks dispatched, answers out through its session.

Each work task runs as its own asyncio task, so results go out in completion order and one slow
task never holds back its siblings. Every frame sent is a text frame with one ``data`` or one
``errors`` object; errors go one per frame (the JS SDK only reads ``errors[0]``).

A task's answer goes to the client session it was sent under, not to this socket: if the socket
is gone by then, the session keeps the answer until the client resumes on a new socket. Where
the answer goes also depends on the task: back to the session (sync), nowhere but the results
book (``deliveryMethod: "async"``: acknowledged at once, fetched by getResponse), or to its
``webhookURL`` (acknowledged at once, POSTed when done). Every outcome is entered in the results
book, so getResponse answers for all of them.

Limits, each answered with its own error and the socket kept: frames over the soft size cap,
tasks beyond the per-frame count, tasks beyond the per-socket in-flight count, tasks while the
service-wide queue is full (``overloaded``), sockets beyond the per-key count.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
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
from .sessions import ClientSession

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


def _refusal(task: Task, code: str, message: str, **fields: Any) -> ErrorItem:
    return ErrorItem(code=code, message=message, taskType=task.task_type,
                     taskUUID=task.task_uuid, **fields)


class Connection:
    def __init__(self, websocket: ServerConnection, app: "App") -> None:
        self._websocket = websocket
        self._app = app
        self._config = app.config
        self._session = Session(app.key_is_valid)
        self._client: ClientSession | None = None
        self._owner = b""
        self._running: set[asyncio.Task] = set()
        # Tasks of this socket in the pipeline at once; the rest wait here, not in shared queues.
        self._active = asyncio.Semaphore(app.socket_concurrency)
        self.last_heard = time.monotonic()
        self.closing = False

    @property
    def api_key(self) -> str | None:
        return self._session.api_key

    async def serve(self) -> None:
        self._app.connection_opened(self)
        try:
            async for message in self._websocket:
                self.last_heard = time.monotonic()
                self._app.metrics.bytes_in.inc(len(message))
                await self._on_frame(message)
        except ConnectionClosed:
            pass
        finally:
            if self._client is not None:
                self._client.detach(self._send, self._app.sessions.now())
            self._app.connection_closed(self)
        # Tasks already accepted run to completion: their answers wait in the client session
        # for a resume, and the results book keeps them for getResponse.

    async def close(self, code: int, reason: str, grace: float = 5.0) -> None:
        """Close politely; a peer that does not complete the closing handshake in ``grace``
        seconds (it stopped reading) loses its TCP connection instead."""
        if self.closing:
            return
        self.closing = True
        try:
            await asyncio.wait_for(self._websocket.close(code, reason), grace)
        except asyncio.TimeoutError:
            self._reset()

    def _reset(self) -> None:
        """Drop the TCP connection at once, with an RST: a peer that does not read would
        otherwise keep megabytes queued in the kernel while it trickles them out."""
        self.closing = True
        sock = self._websocket.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._websocket.transport.abort()

    async def _send(self, payload: bytes) -> bool:
        """True when the frame went out. A client that does not read within the send timeout is
        cut off (in the background, so that nobody waits on it)."""
        try:
            await asyncio.wait_for(self._websocket.send(payload, text=True), self._config.send_timeout)
        except ConnectionClosed:
            return False
        except asyncio.TimeoutError:
            if not self.closing:
                log.warning("cutting off %s: it has not read for %.0f s",
                            self._websocket.remote_address, self._config.send_timeout)
                self._reset()
            return False
        self._app.metrics.bytes_out.inc(len(payload))
        return True

    async def _send_error(self, item: ErrorItem) -> None:
        await self._send(encode_errors([item]))

    async def _on_frame(self, message: str | bytes) -> None:
        if len(message) > self._config.frame_error_bytes:
            self._app.metrics.frames_refused.labels(Code.FRAME_TOO_LARGE).inc()
            await self._send_error(ErrorItem(
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
            await self._send_error(item)
        limit = self._config.max_tasks_per_frame
        for index, task in enumerate(frame.tasks):
            try:
                if index >= limit:
                    await self._send_error(_refusal(
                        task, Code.TOO_MANY_TASKS,
                        f"At most {limit} tasks are accepted per frame.", max=limit))
                else:
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
        if refusal is None and isinstance(task, GetResponse):
            await self._get_response(task)
            return
        refusal = refusal or self._admission(task)
        if refusal is not None:
            self._app.metrics.tasks.labels(task.task_type, refusal.code).inc()
            await self._send_error(refusal)
            return
        self._app.queued_tasks += 1
        self._app.metrics.queued.inc()
        running = asyncio.create_task(self._run(task, self._client), name=f"task-{task.task_uuid}")
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    def _admission(self, task: WorkTask) -> ErrorItem | None:
        """Limits, then duplicates; None when the task is accepted (and entered in the book)."""
        if self._app.draining:
            return _refusal(task, Code.SHUTTING_DOWN, "The server is shutting down; reconnect and "
                            "send the task again.", retryAfterMs=1000)
        if len(self._running) >= self._config.max_in_flight_per_socket:
            return _refusal(task, Code.TOO_MANY_TASKS_IN_FLIGHT,
                            f"This socket already has {len(self._running)} unfinished tasks; wait "
                            "for some answers first.", max=self._config.max_in_flight_per_socket)
        if self._app.queued_tasks >= self._config.max_queued_tasks:
            retry_ms = self._app.retry_hint_ms()
            return _refusal(task, Code.OVERLOADED,
                            f"The server is at capacity; retry in about {retry_ms / 1000:.1f} s.",
                            retryAfterMs=retry_ms)
        if not self._app.results.begin(self._owner, task.task_uuid, task.task_type):
            return _refusal(task, Code.CONFLICT_TASK_UUID,
                            "This taskUUID was already used; poll getResponse for its result.",
                            parameter="taskUUID", type="string")
        return None

    async def _authenticate(self, task: Authenticate) -> None:
        if not self._app.may_open_socket(task.api_key, self):
            await self._send_error(ErrorItem(
                code=Code.TOO_MANY_CONNECTIONS,
                message=f"This API key already has {self._config.max_sockets_per_key} open "
                        "sockets; close some first.",
                parameter="apiKey", type="string", taskType="authentication"))
            return
        chosen: list[ClientSession] = []

        def session_for(requested: str | None, api_key: str) -> str:
            chosen.append(self._app.sessions.resume_or_create(requested, api_key))
            return chosen[0].uuid

        reply = self._session.authenticate(task, session_for)
        if isinstance(reply, ErrorItem):
            log.info("refused an API key from %s", self._websocket.remote_address)
            await self._send_error(reply)
            return
        self._owner = owner_of(task.api_key)
        previous, self._client = self._client, chosen[0]
        if previous is not None and previous is not self._client:
            previous.detach(self._send, self._app.sessions.now())
        await self._send(encode_data([reply]))
        await self._client.attach(self._send)  # then whatever waited for this session

    async def _get_response(self, task: GetResponse) -> None:
        record = self._app.results.get(self._owner, task.task_uuid)
        if record is not None and record.state is TaskState.FAILED:
            await self._send_error(record.error)
            return
        item = await self._app.results.reply(record, task.task_uuid) if record else None
        if item is None:
            await self._send_error(_refusal(
                task, Code.TASK_NOT_FOUND,
                "No task with this taskUUID (unknown, expired, or sent with another key).",
                parameter="taskUUID", type="string"))
        else:
            await self._send(encode_data([item]))

    async def _run(self, task: WorkTask, client: ClientSession) -> None:
        results, owner, started = self._app.results, self._owner, time.perf_counter()
        acknowledged = False
        try:
            if _acknowledged(task):
                self._app.processor.check_destinations(task)
                await client.deliver(encode_data([TaskAcknowledgement(task.task_type, task.task_uuid)]))
                acknowledged = True
            result: Any = await self._execute(task)
        except Exception as error:
            item = self._error_item(task, error)
            results.fail(owner, task.task_uuid, item)
            self._app.metrics.tasks.labels(task.task_type, item.code).inc()
            frame = encode_errors([item])
            # Refused before the acknowledgement: the client is still waiting for an answer.
            await (self._deliver(task, frame, client) if acknowledged else client.deliver(frame))
        else:
            ttl = task.output.ttl if isinstance(task, RemoveBackground) else None
            results.succeed(owner, task.task_uuid, result, ttl)
            self._app.metrics.tasks.labels(task.task_type, "success").inc()
            await self._deliver(task, encode_data([result]), client)
        finally:
            self._app.queued_tasks -= 1
            self._app.metrics.queued.dec()
            self._app.metrics.task_seconds.labels(task.task_type).observe(time.perf_counter() - started)

    def _error_item(self, task: Task, error: Exception) -> ErrorItem:
        if isinstance(error, TaskFailure):
            return error.item(task.task_type, task.task_uuid)
        log.error("task %s failed", task.task_uuid, exc_info=error)
        return ErrorItem(code=Code.INTERNAL, message="The task failed on the server.",
                         taskType=task.task_type, taskUUID=task.task_uuid)

    async def _deliver(self, task: WorkTask, frame: bytes, client: ClientSession) -> None:
        """Send a finished task's frame where it belongs."""
        if isinstance(task, RemoveBackground) and task.webhook_url is not None:
            self._app.webhooks.deliver(task.webhook_url, frame, task.task_uuid)
        elif not _acknowledged(task):
            await client.deliver(frame)
        # async without webhook: kept in the results book only

    async def _execute(self, task: WorkTask) -> Any:
        processor = self._app.processor
        async with self._active:
            if isinstance(task, ImageUpload):
                return await processor.upload(task, owner=id(self))
            return await processor.remove_background(task, owner=id(self))
