"""The one WebSocket client of the Runware protocol here: the command line, the load harness and
the bench speak to the service through it.

Connect and authenticate (resuming a session when given its ``connectionSessionUUID``), send
tasks, read frames as ``protocol.messages.AnswerFrame``, and wait for the answers to given
taskUUIDs, each matched by its taskUUID.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import websockets

from protocol.codec import decode_answer_frame
from protocol.errors import ErrorItem
from protocol.messages import AnswerFrame, AnswerItem

__all__ = ["Refused", "Unreachable", "ProtocolClient"]

Answer = AnswerItem | ErrorItem


class Unreachable(Exception):
    """No WebSocket could be opened at the URL."""


class Refused(Exception):
    """The service answered the authentication with an error."""

    def __init__(self, error: ErrorItem) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class ProtocolClient:
    """One socket to the service: ``connect`` opens and authenticates it; ``async with``
    closes it."""

    def __init__(self, websocket: Any, session_uuid: str = "") -> None:
        """Around an open ``websocket`` (authenticated already when ``session_uuid`` is given;
        else ``authenticate`` comes next, or the protocol before authentication is tested)."""
        self.websocket = websocket
        self.session_uuid = session_uuid

    @classmethod
    async def connect(
        cls,
        url: str,
        api_key: str,
        *,
        session_uuid: str | None = None,
        timeout: float = 30.0,
        max_size: int | None = None,
    ) -> ProtocolClient:
        """Open ``url`` and authenticate with ``api_key`` (resuming ``session_uuid`` when
        given). Raises Unreachable, or Refused with the service's error."""
        try:
            websocket = await websockets.connect(
                url, max_size=max_size, compression=None, open_timeout=timeout
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as error:
            raise Unreachable(f"cannot reach the service at {url}: {error}") from None
        client = cls(websocket)
        try:
            await client.authenticate(api_key, session_uuid, timeout)
        except BaseException:
            await websocket.close()
            raise
        return client

    async def authenticate(
        self, api_key: str, session_uuid: str | None = None, timeout: float = 30.0
    ) -> str:
        """Authenticate (resuming ``session_uuid`` when given); the connectionSessionUUID.
        Raises Refused with the service's error."""
        authentication: dict[str, str] = {"taskType": "authentication", "apiKey": api_key}
        if session_uuid is not None:
            authentication["connectionSessionUUID"] = session_uuid
        await self.send([authentication])
        frame = await self.frame(timeout)
        for item in frame.data:
            if item.taskType == "authentication" and item.connectionSessionUUID:
                self.session_uuid = item.connectionSessionUUID
                return self.session_uuid
        raise Refused(frame.errors[0] if frame.errors else ErrorItem("noAnswer", str(frame)))

    async def __aenter__(self) -> ProtocolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.websocket.close()

    async def send(self, tasks: Iterable[Mapping[str, Any] | msgspec.Struct]) -> None:
        """One frame holding ``tasks`` (dicts or request structs)."""
        await self.websocket.send(msgspec.json.encode(list(tasks)).decode())

    async def frame(self, timeout: float | None = None) -> AnswerFrame:
        """The next frame from the service. Raises TimeoutError after ``timeout`` seconds."""
        return decode_answer_frame(await asyncio.wait_for(self.websocket.recv(), timeout))

    async def ping(self, timeout: float = 30.0) -> bool:
        """Send a ping; whether the next frame is its pong."""
        await self.send([{"taskType": "ping", "ping": True}])
        frame = await self.frame(timeout)
        return any(item.pong for item in frame.data)

    async def answers(
        self, task_uuids: Iterable[str], timeout: float | None = None
    ) -> tuple[dict[str, Answer], list[Answer]]:
        """Read frames until each of ``task_uuids`` has its answer (a result or an error):
        those answers by taskUUID, and every other item read meanwhile (duplicates, answers
        to other tasks, acknowledgements), in order. Raises TimeoutError after ``timeout``."""
        waiting = set(task_uuids)
        found: dict[str, Answer] = {}
        others: list[Answer] = []
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while waiting:
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            frame = await self.frame(left)
            for item in frame.items():
                task_uuid = item.taskUUID
                final = isinstance(item, ErrorItem) or item.status not in ("processing", "pending")
                if task_uuid in waiting and final and not _acknowledgement(item):
                    waiting.discard(task_uuid)
                    found[task_uuid] = item
                else:
                    others.append(item)
        return found, others


def _acknowledgement(item: Answer) -> bool:
    """An async or webhook task's receipt: its taskType and taskUUID, nothing else."""
    return isinstance(item, AnswerItem) and item.imageUUID is None and item.status is None
