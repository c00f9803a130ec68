"""One WebSocket connection: frames in, tasks dispatched, results and errors streamed back.

Each work task runs as its own asyncio task, so results go out in completion order and one slow
task never holds back its siblings. Every frame sent is a text frame with one ``data`` or one
``errors`` object; errors go one per frame (the JS SDK only reads ``errors[0]``).
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
)
from protocol.session import Session

if TYPE_CHECKING:
    from .server import App

__all__ = ["Connection"]

log = logging.getLogger(__name__)

# Frames at least this large are decoded on a worker thread (a 16 MiB frame of base64 takes
# tens of milliseconds to parse, which would stall every other socket).
_THREAD_DECODE_BYTES = 256 * 1024
_PONG = encode_data([PongResult(taskType="ping", pong=True)])


class Connection:
    def __init__(self, websocket: ServerConnection, app: "App") -> None:
        self._websocket = websocket
        self._app = app
        self._session = Session(app.key_is_valid)
        self._running: set[asyncio.Task] = set()

    async def serve(self) -> None:
        try:
            async for message in self._websocket:
                await self._on_frame(message)
        except ConnectionClosed:
            pass
        # Tasks already accepted run to completion; their results have nowhere to go once the
        # socket is gone, but the work is not thrown away half-done.

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
            await self._dispatch(task)

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
            await self._send_error(ErrorItem(
                code=Code.TASK_NOT_FOUND, message="getResponse is not supported yet.",
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
        else:
            await self._send(encode_data([reply]))

    async def _run(self, task: ImageUpload | RemoveBackground) -> None:
        try:
            result: Any = await self._execute(task)
        except TaskFailure as failure:
            await self._send_error(failure.item(task.task_type, task.task_uuid))
        except Exception:
            log.exception("task %s failed", task.task_uuid)
            await self._send_error(ErrorItem(
                code=Code.INTERNAL, message="The task failed on the server.",
                taskType=task.task_type, taskUUID=task.task_uuid))
        else:
            await self._send(encode_data([result]))
        finally:
            self._session.finish(task.task_uuid)

    async def _execute(self, task: ImageUpload | RemoveBackground) -> Any:
        processor = self._app.processor
        if isinstance(task, ImageUpload):
            return await processor.upload(task)
        _refuse_unsupported_delivery(task)
        return await processor.remove_background(task)


def _refuse_unsupported_delivery(task: RemoveBackground) -> None:
    """Delivery paths other than a synchronous reply on this socket are not built yet."""
    if task.delivery_method != "sync":
        raise TaskFailure.invalid("deliveryMethod", "string",
                                  "Only deliveryMethod \"sync\" is supported by this server.")
    if task.webhook_url is not None:
        raise TaskFailure.invalid("webhookURL", "string", "Webhooks are not supported by this server yet.")
    if task.upload_endpoint is not None:
        raise TaskFailure.invalid("uploadEndpoint", "string",
                                  "uploadEndpoint is not supported by this server yet.")

