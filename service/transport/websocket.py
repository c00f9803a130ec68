"""One WebSocket connection: frames in, answers out through the client session it opened.

What a frame's tasks do is the dispatcher's business (``service.tasks.dispatch``, shared with
the REST twin); the connection holds one and adds what only a socket has. Every frame sent is a text frame with one
``data`` or one ``errors`` object; errors go one per frame (the JS SDK only reads ``errors[0]``).

A work task's answer goes to the client session it was sent under, not to this socket: if the
socket is gone by then, the session keeps the answer until the client resumes on a new socket.
An answer written to the socket is not yet read: after a burst of answers the connection sends
a ping carrying how many it has written, and the client's pong (it answers a ping only once it
has read everything before it) says they were read. When the socket ends, the answers no pong
has covered go back to the session, to go out again on resume: at least once, never lost to a
connection that died with them in its buffers.

Limits, each answered with an error and the socket kept: frames over the soft size cap, tasks
beyond the per-frame count (one error for all of them), tasks beyond the per-socket in-flight
count, tasks while the service-wide queue is full (``overloaded``), sockets beyond the per-key
count. A frame over the hard cap closes the socket with 1009 (aiohttp does that while reading
it), a text frame that is not UTF-8 with 1007, a client frame without a mask with 1002
(``frame_check.ClientFrameCheck``), five wrong API keys with 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import Any

from aiohttp import WSMsgType, web

from protocol.codec import encode_answer
from protocol.errors import Code, ErrorItem
from protocol.messages import Authenticate

from ..tasks.dispatch import Dispatcher
from ..tasks.ports import ClientSession
from ..tasks.records import scope_of
from .context import ServerContext

__all__ = ["Connection"]

log = logging.getLogger(__name__)

_FRAMES = (WSMsgType.TEXT, WSMsgType.BINARY)
# Close codes a peer may send (RFC 6455 7.4.1 and IANA's registry; 3000-4999 are for libraries
# and applications); 0 stands for a close frame without a code. Any other is a protocol error
# (1004-1006 and 1015 must never be sent; 1016-2999 are reserved; 5000 and up do not exist).
_PEER_CLOSE_CODES = frozenset({0, *range(1000, 1004), *range(1007, 1015), *range(3000, 5000)})
# Wrong API keys one socket may send before it is closed (1008, policy violation).
_KEY_FAILURES_PER_SOCKET = 5
# Answers kept until the client's pong covers them; beyond it the oldest count as read (a
# client that never answers pings must not grow the server's memory).
_UNREAD_CAP = 256
_RECEIPT = struct.Struct(">Q")  # a receipt ping's payload: answers written so far
_THREAD_CHECK_BYTES = 256 * 1024


async def _is_utf8(data: bytes) -> bool:
    """Whether a text frame's bytes are UTF-8 (checked on a thread when large and not ASCII:
    base64 images are ASCII, which the first test answers at memory speed)."""
    if data.isascii():
        return True
    try:
        if len(data) >= _THREAD_CHECK_BYTES:
            await asyncio.to_thread(data.decode, "utf-8")
        else:
            data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _quietly(ping: Awaitable[None]) -> None:
    """A ping to a socket that may be closing meanwhile."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ping


class Connection:
    """One WebSocket connection, holding its dispatcher.

    Args:
        websocket: the prepared (handshake done) aiohttp WebSocket.
        transport: its TCP transport, kept for cutting off a peer that stopped reading.
        peer: the client's address, for the log.
    """

    def __init__(
        self,
        websocket: web.WebSocketResponse,
        transport: asyncio.Transport,
        peer: str | None,
        context: ServerContext,
    ) -> None:
        self._context = context
        self._config = context.config
        self._dispatcher = Dispatcher(
            context.tasks,
            context.socket_limits(),
            reply=self._reply,
            authenticate=self._authenticate,
        )
        self._websocket = websocket
        self._transport = transport
        self.peer = peer
        self._client: ClientSession | None = None
        self.last_active = time.monotonic()
        self.closing = False
        self._key_failures = 0
        self._written = 0  # answers of the client session written to this socket
        self._unread: deque[tuple[int, bytes]] = deque(maxlen=_UNREAD_CAP)
        self._receipt_asked = False
        self._background: set[asyncio.Task] = set()  # receipt pings and closes under way

    @property
    def api_key(self) -> str | None:
        return self._dispatcher.api_key

    async def _refuse_guessing(self, message: str) -> None:
        await self._reply(
            ErrorItem(
                code=Code.INVALID_API_KEY,
                message=message,
                parameter="apiKey",
                type="string",
                taskType="authentication",
            )
        )
        await self.close(1008, "too many wrong API keys")

    @property
    def busy(self) -> bool:
        return self._dispatcher.busy

    async def serve(self) -> None:
        sockets, metrics = self._context.sockets, self._context.metrics
        sockets.add(self)
        try:
            while True:
                message = await self._websocket.receive()
                if message.type == WSMsgType.PING:
                    await self._websocket.pong(message.data)
                    continue
                if message.type == WSMsgType.PONG:
                    self._receipt(message.data)
                    continue
                if message.type == WSMsgType.CLOSE:
                    await self._answer_close(message.data)
                    break
                # CLOSING/CLOSED: we are closing; ERROR: a frame over the hard cap (closed with
                # 1009) or a lost keepalive pong.
                if message.type not in _FRAMES:
                    break
                self.last_active = time.monotonic()
                metrics.bytes_in.inc(len(message.data))
                if message.type == WSMsgType.TEXT and not await _is_utf8(message.data):
                    # RFC 6455 8.1: a text frame that is not UTF-8 fails the connection.
                    await self.close(1007, "a text frame that is not UTF-8")
                    break
                await self._dispatcher.handle_frame(message.data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            # What the socket still holds for a peer that is gone (or going) is dropped now:
            # sends waiting for room fail at once, and their answers wait in the session.
            if self._transport.get_write_buffer_size():
                self._transport.abort()
            if self._client is not None:
                self._client.detach(self._send_answer, self._context.sessions.now(), self._unsure())
            sockets.discard(self)
        # Tasks already accepted run to completion: their answers wait in the client session
        # for a resume, and the results book keeps them for getResponse.

    async def _answer_close(self, code: int) -> None:
        """The peer's close frame, answered with 1000, or with 1002 when its code is one a
        peer may not send (RFC 6455 7.4)."""
        if code in _PEER_CLOSE_CODES:
            await self.close(1000, "")
        else:
            await self.close(1002, f"close code {code} is not allowed")

    async def close(self, code: int, reason: str, grace: float = 5.0) -> None:
        """Close politely; a peer that does not complete the closing handshake in ``grace``
        seconds (it stopped reading) loses its TCP connection instead."""
        if self.closing:
            return
        self.closing = True
        try:
            await asyncio.wait_for(self._websocket.close(code=code, message=reason.encode()), grace)
        except (TimeoutError, ConnectionError):
            self._reset()

    def _reset(self) -> None:
        """Drop the TCP connection at once, with an RST: a peer that does not read would
        otherwise keep megabytes queued in the kernel while it trickles them out."""
        self.closing = True
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._transport.abort()

    async def _send(self, payload: bytes) -> bool:
        """True when the frame went out. A client that does not read within the send timeout is
        cut off (in the background, so that nobody waits on it)."""
        try:
            await asyncio.wait_for(
                self._websocket.send_frame(payload, WSMsgType.TEXT), self._config.send_timeout
            )
        except (ConnectionError, RuntimeError):  # closed, or closing
            return False
        except TimeoutError:
            if not self.closing:
                log.warning(
                    "cutting off %s: it has not read for %.0f s",
                    self.peer,
                    self._config.send_timeout,
                )
                self._reset()
            return False
        if self._transport.is_closing():
            # A send that waited for room in a connection that died meanwhile "completes"
            # without its bytes going anywhere: it did not go out.
            return False
        self._context.metrics.bytes_out.inc(len(payload))
        self.last_active = time.monotonic()
        return True

    async def _send_answer(self, frame: bytes) -> bool:
        """Send one of the client session's answers and ask for a receipt."""
        if not await self._send(frame):
            return False
        self._written += 1
        self._unread.append((self._written, frame))
        if not self._receipt_asked:
            self._receipt_asked = True
            asyncio.get_running_loop().call_soon(self._ask_receipt)  # after this burst
        return True

    def _ask_receipt(self) -> None:
        self._receipt_asked = False
        if not self.closing and not self._websocket.closed:
            ping = self._websocket.ping(_RECEIPT.pack(self._written))
            self._in_background(_quietly(ping))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def fail_unmasked(self) -> None:
        """RFC 6455 5.1: a client frame without a mask fails the connection with 1002."""
        log.info("closing the socket of %s: a client frame without a mask", self.peer)
        self._in_background(self.close(1002, "a client frame without a mask"))

    def _receipt(self, payload: bytes) -> None:
        """The client's pong: every answer up to the count in it was read."""
        if len(payload) != _RECEIPT.size:
            return  # a keepalive pong
        (read,) = _RECEIPT.unpack(payload)
        while self._unread and self._unread[0][0] <= read:
            self._unread.popleft()

    def _unsure(self) -> list[bytes]:
        """Answers the client may not have read, oldest first."""
        return [frame for _, frame in self._unread]

    async def _reply(self, item: Any) -> None:
        await self._send(encode_answer(item))

    async def _authenticate(self, task: Authenticate) -> None:
        guesses, address = self._context.key_guesses, self.peer or ""
        if guesses.exhausted(address):
            await self._refuse_guessing(
                "Too many wrong API keys from this address; retry in a minute."
            )
            return
        if not self._context.sockets.may_open(task.api_key, self):
            await self._reply(
                ErrorItem(
                    code=Code.TOO_MANY_CONNECTIONS,
                    message=f"This API key already has {self._config.max_sockets_per_key} open "
                    "sockets; close some first.",
                    parameter="apiKey",
                    type="string",
                    taskType="authentication",
                )
            )
            return
        sessions = self._context.sessions
        client: ClientSession | None = None
        if self._context.tasks.key_is_valid(task.api_key):
            client = await sessions.resume_or_create(task.session_uuid, task.api_key)
        reply = self._dispatcher.auth.authenticate(task, client.uuid if client else "")
        if isinstance(reply, ErrorItem) or client is None:
            log.info("refused an API key from %s", self.peer)
            await self._reply(reply)
            guesses.failed(address)
            self._key_failures += 1
            if self._key_failures >= _KEY_FAILURES_PER_SOCKET or guesses.exhausted(address):
                await self.close(1008, "too many wrong API keys")
            return
        previous, self._client = self._client, client
        if previous is not None and previous is not client:
            previous.detach(self._send_answer, sessions.now(), self._unsure())
            self._unread.clear()
        self._dispatcher.open(scope_of(task.api_key), client)
        await self._reply(reply)
        await client.attach(self._send_answer)  # then whatever waited for this client session
