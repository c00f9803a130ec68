"""Client sessions kept in Redis (the distributed mode): answers outlive sockets *and* gateways.

Each session has
- ``rbg:session:<uuid>``: a hash with the digest of its API key and ``cursor``, the id of the
  last outbox entry its client was sent; it expires ``linger`` seconds after its last socket left;
- ``rbg:outbox:<uuid>``: a stream of the session's answers (``kind`` data/errors, ``item`` JSON),
  written by whoever finished the task (a worker, or the gateway for what it answers itself), or
  (``frame``) a whole frame a socket wrote and its client may not have read, written again when
  that socket died;
- ``rbg:wake:<uuid>``: a pub/sub channel; a message means "the outbox has something new".
The gateway holding the session's socket subscribes to its channel and relays new entries to the
socket, moving the cursor past each one sent. A client resuming on any gateway (after its socket
or its gateway died) gets everything after the cursor. Delivered entries are trimmed.

A REST request gets a throw-away session of its own: workers answer it the same way.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import uuid as uuidlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import msgspec

from protocol.errors import ErrorItem

from ..tasks.ports import FrameSender
from ..tasks.records import scope_of
from .loops import bug_that_stopped
from .reachability import REDIS_DOWN, refused_while_redis_is_down
from .results import Handover

__all__ = ["Relay", "RelayedSession", "RedisSessions", "frame_of"]

log = logging.getLogger(__name__)
_OUTBOX_CAP = 10_000  # entries an absent client may have waiting (approximate, MAXLEN ~)
_CATCH_UP_SECONDS = 5.0  # how often every held session's outbox is read without a wake-up


def frame_of(fields: dict[bytes, bytes]) -> bytes:
    """An outbox entry as the one-item frame a socket sends."""
    if b"frame" in fields:
        return fields[b"frame"]
    return b'{"' + fields[b"kind"] + b'":[' + fields[b"item"] + b"]}"


class RelayedSession:
    """One client session whose answers pass through its Redis outbox."""

    def __init__(self, relay: Relay, session_uuid: str) -> None:
        self.uuid = session_uuid
        self._relay = relay
        self._sender: FrameSender | None = None
        self._lock = asyncio.Lock()
        keys = relay.keys(session_uuid)
        self.handover = Handover(keys.outbox, keys.channel, _OUTBOX_CAP, int(relay.linger))
        self.keys = keys

    async def deliver(self, item: Any) -> None:
        """An answer produced on this gateway: into the outbox like a worker's."""
        kind = "errors" if isinstance(item, ErrorItem) else "data"
        await self._append([{"kind": kind, "item": msgspec.json.encode(item)}])

    async def _append(self, entries: Sequence[dict[str, Any]]) -> None:
        """Entries at the end of the outbox, and a wake-up for the socket holding the session."""
        handover = self.handover  # the same entry, cap, lifetime and wake-up as results._END
        async with self._relay.redis.pipeline(transaction=True) as pipe:
            for entry in entries:
                pipe.xadd(handover.outbox_key, entry, maxlen=handover.max_length, approximate=True)
            pipe.expire(handover.outbox_key, handover.lifetime)
            pipe.publish(handover.channel, b"1")
            await pipe.execute()

    async def attach(self, sender: FrameSender) -> None:
        self._sender = sender
        await self._relay.subscribe(self)
        await self.drain()

    def detach(self, sender: FrameSender, now: float, unread: Sequence[bytes] = ()) -> None:
        if unread:
            self._relay.in_background(self._write_again(unread))
        # ==, not is: a socket's bound method is a new object at every access
        if self._sender == sender:
            self._sender = None
            self._relay.let_go(self)

    async def _write_again(self, frames: Sequence[bytes]) -> None:
        """Frames a dead socket wrote that its client may not have read: into the outbox again,
        for whichever socket holds the session now or resumes it later."""
        with refused_while_redis_is_down():
            await self._append([{"frame": frame} for frame in frames])

    async def drain(self) -> None:
        """Send what the outbox holds after the cursor, oldest first, while the socket takes it."""
        async with self._lock:
            redis = self._relay.redis
            cursor = await redis.hget(self.keys.session, "cursor") or b"0-0"
            while self._sender is not None:
                batch = await redis.xread({self.keys.outbox: cursor}, count=64)
                if not batch:
                    return
                for entry_id, fields in batch[0][1]:
                    sender = self._sender
                    if sender is None or not await sender(frame_of(fields)):
                        return  # the socket is gone: the entry waits for a resume
                    cursor = entry_id
                    if b"task" in fields:
                        self._relay.relayed(self.handover.outbox_key, fields[b"task"].decode())
                    async with redis.pipeline(transaction=False) as pipe:
                        pipe.hset(self.keys.session, "cursor", cursor)
                        pipe.xtrim(self.keys.outbox, minid=cursor)
                        await pipe.execute()


class _SessionKeys:
    def __init__(self, prefix: str, session_uuid: str) -> None:
        self.session = f"{prefix}:session:{session_uuid}"
        self.outbox = f"{prefix}:outbox:{session_uuid}"
        self.channel = f"{prefix}:wake:{session_uuid}"


class Relay:
    """One gateway's pub/sub link: wakes the sessions whose sockets it holds."""

    def __init__(self, redis: Any, linger: float, prefix: str = "rbg") -> None:
        self.redis = redis
        self.linger = max(linger, 1.0)
        self._prefix = prefix
        self._pubsub = redis.pubsub()
        self._attached: dict[bytes, RelayedSession] = {}
        self._listener: asyncio.Task | None = None
        self.broken: str | None = None  # the listener stopped on a bug: why the gateway is unready
        # What sockets that ended started and nobody waits for: left(), frames written again.
        self._background: set[asyncio.Task] = set()
        # Told (outbox key, task key) of each worker's answer this gateway passed to a socket.
        self.on_relayed: Callable[[str, str], None] | None = None

    def keys(self, session_uuid: str) -> _SessionKeys:
        return _SessionKeys(self._prefix, session_uuid)

    async def subscribe(self, session: RelayedSession) -> None:
        channel = session.handover.channel.encode()
        self._attached[channel] = session
        await self._pubsub.subscribe(channel)
        await self.redis.expire(session.keys.session, int(self.linger))
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen(), name="relay")
            self._listener.add_done_callback(self._stopped)

    def _stopped(self, listener: asyncio.Task) -> None:
        self.broken = self.broken or bug_that_stopped(listener, "gateway relay")

    async def left(self, session: RelayedSession) -> None:
        channel = session.handover.channel.encode()
        holder = self._attached.get(channel)
        if holder is not None and holder is not session:
            return  # the client already resumed it here on another socket
        if holder is session:
            del self._attached[channel]
            await self._pubsub.unsubscribe(channel)
        await self.redis.expire(session.keys.session, int(self.linger))

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        refreshed = caught_up = loop.time()
        while True:
            now = loop.time()
            if now - refreshed >= self.linger / 3:
                refreshed = now
                await self._keep_alive()
            if now - caught_up >= _CATCH_UP_SECONDS:
                # Pub/sub is at most once: a wake-up published while our connection was being
                # re-established is lost. The outboxes are not, so look at all of them now and then.
                caught_up = now
                for session in list(self._attached.values()):
                    loop.create_task(session.drain())
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except REDIS_DOWN as error:  # redis-py reconnects on the next call
                log.error("relay: pub/sub read failed: %s", error)
                await asyncio.sleep(0.5)
                caught_up = 0.0  # wake-ups may have been lost meanwhile
                continue
            if message is None:
                continue
            woken = self._attached.get(message["channel"])
            if woken is not None:
                loop.create_task(woken.drain())

    async def _keep_alive(self) -> None:
        """Held sessions never reach their expiry; those of a gateway that died do."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for session in self._attached.values():
                    pipe.expire(session.keys.session, int(self.linger))
                await pipe.execute()
        except REDIS_DOWN as error:
            log.error("relay: refreshing the held sessions failed: %s", error)

    def relayed(self, outbox_key: str, task: str) -> None:
        if self.on_relayed is not None:
            self.on_relayed(outbox_key, task)

    def let_go(self, session: RelayedSession) -> None:
        """``left`` in the background: a socket's end must not wait for Redis."""
        self.in_background(self.left(session))

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` without waiting for it; ``close`` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Finish letting go of sessions whose sockets ended, then stop listening."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
        await self._pubsub.aclose()


class RedisSessions:
    """Client sessions in Redis (a ``SessionStore``, the twin of
    ``service.tasks.sessions.InMemorySessions``): a session opened on one gateway resumes on
    any other."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self.linger = relay.linger

    async def resume_or_create(self, requested: str | None, api_key: str) -> RelayedSession:
        digest = scope_of(api_key)
        with refused_while_redis_is_down():
            if requested is not None:
                known = await self._relay.redis.hget(self._relay.keys(requested).session, "key")
                if known is not None and hmac.compare_digest(known, digest):
                    return RelayedSession(self._relay, requested)
            return await self._create(key=digest)

    async def ephemeral(self) -> RelayedSession:
        """A session for one REST request: nobody resumes it; it expires on its own."""
        with refused_while_redis_is_down():
            return await self._create()

    async def _create(self, **fields: bytes) -> RelayedSession:
        """A new session, its cursor before the first outbox entry, expiring after ``linger``."""
        session = RelayedSession(self._relay, str(uuidlib.uuid4()))
        await self._relay.redis.hset(session.keys.session, mapping={**fields, "cursor": "0-0"})
        await self._relay.redis.expire(session.keys.session, int(self.linger))
        return session

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def sweep(self) -> int:
        return 0  # Redis expires what nobody resumed
