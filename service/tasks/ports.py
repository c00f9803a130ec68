"""The ports between task handling and what backs it: each is implemented in memory (this
package) and in Redis (``service.cluster``) with the same signatures.

Names used throughout:
- a *scope* is the digest of an API key: results are kept and found per scope;
- a *client session* outlives sockets: answers go to it, and it passes them to its socket;
- a *lane* is whoever the CPU pool and the batcher take turns between.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from protocol.errors import ErrorItem
from protocol.messages import (
    BackgroundRemovalResult,
    ImageUpload,
    ImageUploadResult,
    ModelInfo,
    RemoveBackground,
)

__all__ = [
    "Answers",
    "ClientSession",
    "FrameSender",
    "ModelCatalog",
    "Requester",
    "ResultsStore",
    "SessionStore",
    "TaskRecord",
    "TaskState",
    "WorkExecutor",
    "WorkResult",
    "WorkTask",
]

WorkTask = ImageUpload | RemoveBackground
WorkResult = BackgroundRemovalResult | ImageUploadResult
# One frame to a socket; True when it went out.
FrameSender = Callable[[bytes], Awaitable[bool]]


class Answers(Protocol):
    """Where a work task's answer goes: a client session, or a REST request's collector."""

    async def deliver(self, item: Any) -> None:
        """Take one task's answer: a result struct, an acknowledgement or an ErrorItem."""
        ...


class ClientSession(Answers, Protocol):
    """Answers that outlive a socket: kept until a socket of the same client takes them."""

    uuid: str

    async def attach(self, sender: FrameSender) -> None:
        """Send answers through ``sender`` from now on, after those that waited."""
        ...

    def detach(self, sender: FrameSender, now: float, unread: Sequence[bytes] = ()) -> None:
        """The socket behind ``sender`` is gone (a newer one may have taken over already).
        ``unread``: frames it wrote that the client may not have read; they go out again."""
        ...


class SessionStore(Protocol):
    async def resume_or_create(self, requested: str | None, api_key: str) -> ClientSession:
        """The session ``requested`` names if it exists under this API key; else a new one."""
        ...

    async def ephemeral(self) -> ClientSession:
        """A session for one REST request: nobody resumes it."""
        ...

    def now(self) -> float:
        """The clock ``detach`` is given."""
        ...

    def sweep(self) -> int:
        """Forget sessions nobody resumed in time; returns how many."""
        ...


class TaskState(enum.Enum):
    PROCESSING = "processing"
    SUCCESS = "success"
    FAILED = "error"


@dataclass
class TaskRecord:
    task_type: str
    state: TaskState
    expires_at: float
    result: WorkResult | None = None
    payload_kind: str | None = None  # "base64Data" / "dataURI": rebuilt from storage when read
    error: ErrorItem | None = None


class ResultsStore(Protocol):
    """What became of every task, by scope and taskUUID: getResponse and duplicates."""

    async def begin(self, scope: bytes, task_uuid: str, task_type: str) -> bool:
        """Enter a task as processing; False when the taskUUID is already known."""
        ...

    async def succeed(
        self, scope: bytes, task_uuid: str, result: WorkResult, ttl: int | None = None
    ) -> bool:
        """Record the result; True when this call ended the task."""
        ...

    async def fail(self, scope: bytes, task_uuid: str, error: ErrorItem) -> bool:
        """Record the failure; True when this call ended the task."""
        ...

    async def get(self, scope: bytes, task_uuid: str) -> TaskRecord | None: ...

    async def reply(self, record: TaskRecord, task_uuid: str) -> Any | None:
        """The getResponse item for ``record``; None when its image has expired meanwhile."""
        ...

    def sweep(self) -> int:
        """Forget expired records; returns how many."""
        ...


@dataclass(frozen=True)
class Requester:
    """Who a work task runs for."""

    scope: bytes  # the results book's scope (the API key's digest)
    lane: Hashable  # whom the CPU pool and the batcher take turns between
    answers: Answers  # where the outcome goes
    # Images of this requester in the pipeline at once; the rest wait here, not in shared queues.
    pipeline_slots: asyncio.Semaphore


class WorkExecutor(Protocol):
    """Runs accepted work tasks: in this process, or through the cluster's job queue."""

    def check_destinations(self, task: RemoveBackground) -> None:
        """Refuse forbidden webhook/upload URLs before anything is acknowledged. Raises."""
        ...

    async def execute(self, task: WorkTask, requester: Requester) -> WorkResult | None:
        """The task's result, or None when it was handed over to a worker that records and
        answers it. Raises on failure."""
        ...


class ModelCatalog(Protocol):
    """The model ids the service serves, for ``GET /v1/models``: this process's own, or in
    the distributed mode those the live workers publish."""

    async def models(self) -> list[ModelInfo]:
        """Every model id served, sorted by id."""
        ...
