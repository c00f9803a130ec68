"""What the transports share, built once by the composition root (``service.app``)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..config import Config
from ..metrics import Metrics
from ..scheduling.budget import MemoryBudget
from ..storage.store import ImageStore
from ..tasks.dispatch import ClientLimits, TaskPorts
from ..tasks.ports import ModelCatalog, SessionStore

__all__ = ["KeyGuesses", "OpenSocket", "OpenSockets", "ServerContext"]


class OpenSocket(Protocol):
    """What the registry needs of a WebSocket connection."""

    @property
    def api_key(self) -> str | None: ...

    peer: str | None  # the client's address
    last_active: float  # time.monotonic() of the last frame received or answer sent
    closing: bool

    @property
    def busy(self) -> bool:
        """Tasks of this socket are still running: its client is waiting, not idle."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class OpenSockets:
    """Every open WebSocket of this process: the per-key cap, the idle reaper, the shutdown."""

    def __init__(self, metrics: Metrics, max_per_key: int, keys_required: bool) -> None:
        self._metrics = metrics
        self._max_per_key = max_per_key
        self._keys_required = keys_required
        self._open: set[OpenSocket] = set()

    def add(self, connection: OpenSocket) -> None:
        self._open.add(connection)
        self._metrics.sockets.set(len(self._open))

    def discard(self, connection: OpenSocket) -> None:
        self._open.discard(connection)
        self._metrics.sockets.set(len(self._open))

    def may_open(self, api_key: str, connection: OpenSocket) -> bool:
        """Whether ``connection`` may authenticate with ``api_key`` (the per-key cap). Where
        any key is accepted, keys cost nothing to make up, so the cap counts the sockets of
        the connection's address instead."""
        if self._keys_required:
            same = [c for c in self._open if c.api_key == api_key]
        else:
            same = [c for c in self._open if c.api_key is not None and c.peer == connection.peer]
        return sum(1 for c in same if c is not connection) < self._max_per_key

    def silent_for(self, seconds: float) -> list[OpenSocket]:
        """Sockets with no task running and no frame in or answer out for ``seconds``, not
        closing already."""
        since = time.monotonic() - seconds
        return [c for c in self._open if c.last_active < since and not c.busy and not c.closing]

    def all(self) -> list[OpenSocket]:
        return list(self._open)


class KeyGuesses:
    """Wrong API keys by client address over the last minute: a budget against guessing.

    Each address keeps at most ``per_minute`` timestamps, and addresses whose minute has passed
    are forgotten as they are met (and by ``sweep``), so memory stays bounded by the addresses
    that guessed in the last minute.
    """

    WINDOW = 60.0

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.setdefault(address, deque())
        while failures and failures[0] <= self._clock() - self.WINDOW:
            failures.popleft()
        return failures

    def exhausted(self, address: str) -> bool:
        return len(self._recent(address)) >= self._per_minute

    def failed(self, address: str) -> None:
        failures = self._recent(address)
        failures.append(self._clock())
        while len(failures) > self._per_minute:
            failures.popleft()

    def sweep(self) -> None:
        for address in list(self._failures):
            if not self._recent(address):
                del self._failures[address]

    def __len__(self) -> int:
        """The addresses remembered (each with at most ``per_minute`` failures): what this
        costs in memory."""
        return len(self._failures)


@dataclass(frozen=True)
class ServerContext:
    config: Config
    tasks: TaskPorts
    sessions: SessionStore
    store: ImageStore
    metrics: Metrics
    sockets: OpenSockets
    pipeline_slots: int  # images of one client in the pipeline at once
    unready_because: Callable[[], str | None]  # why /readyz says 503; None: ready
    key_guesses: KeyGuesses
    models: ModelCatalog  # what GET /v1/models lists
    budget: MemoryBudget  # working memory, shared by images and request bodies being read

    def socket_limits(self) -> ClientLimits:
        return ClientLimits(
            self.config.frame_error_bytes,
            self.config.max_tasks_per_frame,
            self.config.max_in_flight_per_socket,
            self.pipeline_slots,
        )

    def request_limits(self) -> ClientLimits:
        # A REST request may have all of its tasks in flight at once.
        return ClientLimits(
            self.config.frame_error_bytes,
            self.config.max_tasks_per_frame,
            self.config.max_tasks_per_frame,
            self.pipeline_slots,
        )
