"""Client sessions: what outlives a socket.

A session is opened by ``authentication`` and named by its connectionSessionUUID. Results are
delivered to the session, which passes them to its current socket; while it has none (the client
is reconnecting) they wait in its outbox, and a socket that authenticates with the same
connectionSessionUUID and API key gets them. A detached session is forgotten ``linger`` seconds
after its last socket went away. Sessions never share results: each belongs to one API key.
``InMemorySessions`` is the single-process twin of ``service.cluster.relay.RedisSessions``;
both are ``SessionStore``s.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from protocol.codec import encode_answer

from .ports import FrameSender

__all__ = ["InMemoryClientSession", "InMemorySessions"]

log = logging.getLogger(__name__)


class InMemoryClientSession:
    def __init__(self, session_uuid: str, api_key: bytes, now: float, max_buffered: int) -> None:
        self.uuid = session_uuid
        self.api_key = api_key
        self._sender: FrameSender | None = None
        self._outbox: deque[bytes] = deque()
        self._max_buffered = max_buffered
        self._flushing: set[asyncio.Task] = set()
        self.detached_since: float | None = now

    async def attach(self, sender: FrameSender) -> None:
        """Route this client session's answers to ``sender`` from now on, after those that
        waited."""
        self._sender = sender
        self.detached_since = None
        while self._outbox and self._sender == sender:
            frame = self._outbox.popleft()
            if not await sender(frame):
                self._outbox.appendleft(frame)
                break

    def detach(self, sender: FrameSender, now: float, unread: Sequence[bytes] = ()) -> None:
        """The socket behind ``sender`` is gone (a newer socket may have taken over already);
        ``unread`` frames go out again, before those that waited."""
        self._outbox.extendleft(reversed(unread))
        self._drop_beyond_cap()
        # ==, not is: a socket's bound method is a new object at every access
        if self._sender == sender:
            self._sender = None
            self.detached_since = now
        elif self._sender is not None and unread:  # the client is back already, elsewhere
            flush = asyncio.get_running_loop().create_task(self.attach(self._sender))
            self._flushing.add(flush)
            flush.add_done_callback(self._flushing.discard)

    async def deliver(self, item: Any) -> None:
        """Send one task's answer (a result or an ErrorItem), or keep it for a resume."""
        frame = encode_answer(item)
        sender = self._sender
        if sender is not None and await sender(frame):
            return
        # That socket failed; the client may have resumed on a new one meanwhile.
        if self._sender not in (None, sender) and await self._sender(frame):
            return
        self._outbox.append(frame)
        self._drop_beyond_cap()

    def _drop_beyond_cap(self) -> None:
        while len(self._outbox) > self._max_buffered:
            self._outbox.popleft()
            log.warning("session %s: outbox full, dropped its oldest result", self.uuid)


class InMemorySessions:
    """The client sessions of one process.

    Args:
        linger: seconds a session without a socket keeps its results (at least 120, the
            platform's documented buffering time).
        max_buffered: frames a detached session holds; beyond it the oldest go.
        clock: seconds (monotonic or epoch; only differences matter).
    """

    def __init__(
        self,
        linger: float = 120.0,
        max_buffered: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.linger = linger
        self._max_buffered = max_buffered
        self._clock = clock
        self._sessions: dict[str, InMemoryClientSession] = {}

    async def resume_or_create(self, requested: str | None, api_key: str) -> InMemoryClientSession:
        """The session ``requested`` names if it exists under this API key; else a new one."""
        key = api_key.encode()
        known = self._sessions.get(requested) if requested is not None else None
        if known is not None and hmac.compare_digest(known.api_key, key):
            return known
        session = self._new(key)
        self._sessions[session.uuid] = session
        return session

    async def ephemeral(self) -> InMemoryClientSession:
        """A session for one REST request: not kept here, since nobody resumes it."""
        return self._new(b"")

    def _new(self, api_key: bytes) -> InMemoryClientSession:
        return InMemoryClientSession(
            str(uuidlib.uuid4()), api_key, self._clock(), self._max_buffered
        )

    def now(self) -> float:
        return self._clock()

    def sweep(self) -> int:
        """Forget sessions detached for longer than ``linger``; returns how many."""
        limit = self._clock() - self.linger
        gone = [
            s.uuid
            for s in self._sessions.values()
            if s.detached_since is not None and s.detached_since <= limit
        ]
        for session_uuid in gone:
            del self._sessions[session_uuid]
        return len(gone)
