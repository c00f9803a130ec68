"""Test doubles at the tasks package's ports: each records what it was given and does only what
a test tells it to. The parts under test are real."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from protocol.codec import decode_frame
from protocol.errors import ErrorItem, TaskFailure
from protocol.messages import BackgroundRemovalResult, ImageUploadResult, RemoveBackground
from service.metrics import Metrics
from service.tasks.dispatch import ClientLimits, Dispatcher, TaskPorts
from service.tasks.ports import Requester, WorkTask
from service.tasks.records import scope_of
from service.tasks.results import InMemoryResultsBook
from service.tasks.workload import Workload


class Collected:
    """An ``Answers`` port and a reply callable that keep everything they are given."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.arrived = asyncio.Event()

    async def deliver(self, item: Any) -> None:
        self.items.append(item)
        self.arrived.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Any]:
        async def enough() -> None:
            while len(self.items) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.items

    def codes(self) -> list[str]:
        return [item.code for item in self.items if isinstance(item, ErrorItem)]


class Socket:
    """A frame sender, as a socket gives one to a client session, that works until cut."""

    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.raw: list[bytes] = []  # the same frames as sent
        self.open = True

    async def send(self, frame: bytes) -> bool:
        if self.open:
            self.frames.append(json.loads(frame))
            self.raw.append(frame)
        return self.open


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``condition`` to hold (events from another task or from Redis)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


class ScriptedWork:
    """A ``WorkExecutor`` whose outcome per task is chosen by ``outcome(task)``: a result (or
    None, handed over) to return, or an exception to raise. It can be held until released."""

    def __init__(self, outcome: Callable[[WorkTask], Any] | None = None) -> None:
        self.executed: list[tuple[WorkTask, Requester]] = []
        self.checked: list[RemoveBackground] = []
        self.release = asyncio.Event()
        self.release.set()
        self._outcome = outcome or default_result

    def check_destinations(self, task: RemoveBackground) -> None:
        self.checked.append(task)
        if task.webhook_url is not None and "forbidden" in task.webhook_url:
            raise TaskFailure("forbiddenURL", "no", parameter="webhookURL", type="string")

    async def execute(self, task: WorkTask, requester: Requester) -> Any:
        self.executed.append((task, requester))
        await self.release.wait()
        outcome = self._outcome(task)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def default_result(task: WorkTask) -> Any:
    if isinstance(task, RemoveBackground):
        return BackgroundRemovalResult(
            taskType="imageBackgroundRemoval",
            taskUUID=task.task_uuid,
            imageUUID="5bedeed1-b86d-4b18-8ced-05682ec000d6",
            inputImageUUID="5bedeed1-b86d-4b18-8ced-05682ec000d6",
            imageURL="http://x/i.png",
        )
    return ImageUploadResult(
        taskType="imageUpload", taskUUID=task.task_uuid, imageUUID="u", imageURL="http://x/u"
    )


class RecordedWebhooks:
    """A ``WebhookSender`` that keeps what it would POST."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, bytes, str]] = []

    def deliver(self, url: str, body: bytes, task_uuid: str, scope: bytes = b"") -> None:
        self.posted.append((url, body, task_uuid))


class NoImages:
    """An ``ImageStore`` for results that never need their image re-read."""

    async def load(self, image_uuid: str) -> None:
        return None


class DispatchRig:
    """A dispatcher wired to fakes at its ports, authenticated as ``api_key``."""

    def __init__(
        self,
        work: ScriptedWork | None = None,
        limits: ClientLimits | None = None,
        max_queued: int = 100,
        valid_keys: tuple[str, ...] = ("key",),
    ) -> None:
        self.work = work or ScriptedWork()
        self.workload = Workload(max_queued)
        self.webhooks = RecordedWebhooks()
        self.metrics = Metrics()
        self.results = InMemoryResultsBook(NoImages(), retention=60)  # type: ignore[arg-type]
        self.replies = Collected()
        self.answers = Collected()
        self.ports = TaskPorts(
            self.results,
            self.work,
            self.workload,
            self.webhooks,  # type: ignore[arg-type]
            self.metrics,
            lambda key: key in valid_keys,
        )
        self.dispatcher = Dispatcher(
            self.ports,
            limits or ClientLimits(1 << 20, 8, 4, 2),
            reply=self.replies.deliver,
            authenticate=self._authenticate,
        )

    async def _authenticate(self, task: Any) -> None:
        reply = self.dispatcher.auth.authenticate(task, lambda requested, key: "session-1")
        if not isinstance(reply, ErrorItem):
            self.dispatcher.open(scope_of(task.api_key), self.answers)
        await self.replies.deliver(reply)

    async def send(self, frame: bytes) -> None:
        await self.dispatcher.handle_frame(frame)

    async def settle(self) -> None:
        await self.dispatcher.finished()


def first_task(frame: bytes) -> Any:
    return decode_frame(frame).tasks[0]
