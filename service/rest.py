"""The REST twin: ``POST /v1`` with the same JSON array of tasks a socket frame carries,
answered with ``{"data": [...], "errors": [...]}`` once every task in it is done.

Validation, limits, the results book and the micro-batcher are the socket's own (the shared
``Dispatcher``). What differs:
- the API key comes from ``Authorization: Bearer KEY`` or from an ``authentication`` element
  anywhere before the tasks it covers; it opens no session, so it adds no item to ``data``;
- sync tasks' results, async/webhook tasks' acknowledgements, pongs and getResponse answers all
  go into ``data``, in completion order; every refusal and failure goes into ``errors``;
- the HTTP status is 200 when anything succeeded, else the status the first error stands for
  (401 bad or missing key, 413 too large, 429 over a limit, 503 shutting down, 500 a server
  fault, 400 anything else the client must fix).
A client that hangs up early loses only the response: its tasks run to the end and stay in the
results book for getResponse.
"""

from __future__ import annotations

import asyncio
import http
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from protocol.codec import encode_rest_response
from protocol.errors import Code, ErrorItem
from protocol.messages import Authenticate

from .dispatch import Dispatcher
from .relay import RelayedSession
from .results import owner_of

if TYPE_CHECKING:
    from .server import App

__all__ = ["RestExchange", "answer_rest_request", "status_for"]

_STATUS_BY_CODE = {
    Code.INVALID_API_KEY: http.HTTPStatus.UNAUTHORIZED,
    Code.MISSING_API_KEY: http.HTTPStatus.UNAUTHORIZED,
    Code.FRAME_TOO_LARGE: http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Code.TOO_MANY_TASKS: http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Code.OVERLOADED: http.HTTPStatus.TOO_MANY_REQUESTS,
    Code.TOO_MANY_TASKS_IN_FLIGHT: http.HTTPStatus.TOO_MANY_REQUESTS,
    Code.SHUTTING_DOWN: http.HTTPStatus.SERVICE_UNAVAILABLE,
    Code.INTERNAL: http.HTTPStatus.INTERNAL_SERVER_ERROR,
}


def status_for(data: list[Any], errors: list[ErrorItem]) -> http.HTTPStatus:
    if data or not errors:
        return http.HTTPStatus.OK
    return _STATUS_BY_CODE.get(errors[0].code, http.HTTPStatus.BAD_REQUEST)


class _RelayedFrame(msgspec.Struct):
    data: list[msgspec.Raw] = []
    errors: list[ErrorItem] = []


class RestExchange(Dispatcher):
    """One request's tasks; every answer is collected for the single response."""

    def __init__(self, app: "App") -> None:
        super().__init__(app, max_in_flight=app.config.max_tasks_per_frame)
        self.data: list[Any] = []
        self.errors: list[ErrorItem] = []
        self._answers = self  # work tasks' outcomes are collected like immediate replies
        self._relay_session: RelayedSession | None = None
        self._relayed = 0
        self._all_relayed = asyncio.Event()

    async def open(self) -> None:
        """Distributed mode: workers answer through a session of this request's own."""
        if self._app.relay is not None:
            self._relay_session = await self._app.sessions.ephemeral()
            self._answers = self._relay_session
            await self._relay_session.attach(self._take_relayed)

    async def _take_relayed(self, frame: bytes) -> bool:
        relayed = msgspec.json.decode(frame, type=_RelayedFrame)
        self.data += relayed.data
        self.errors += relayed.errors
        self._relayed += 1
        if self._relayed >= self.accepted:
            self._all_relayed.set()
        return True

    async def finished(self) -> None:
        await super().finished()
        if self._relay_session is not None:
            if self._relayed < self.accepted:
                self._all_relayed.clear()
                await self._all_relayed.wait()
            self._relay_session.detach(self._take_relayed, 0.0)

    async def deliver(self, item: Any) -> None:
        (self.errors if isinstance(item, ErrorItem) else self.data).append(item)

    async def _reply(self, item: Any) -> None:
        await self.deliver(item)

    async def _authenticate(self, task: Authenticate) -> None:
        reply = self._session.authenticate(task, lambda requested, api_key: "")
        if isinstance(reply, ErrorItem):
            await self._reply(reply)
        else:
            self._owner = owner_of(task.api_key)

    async def bearer(self, authorization: str) -> None:
        """``Authorization: Bearer KEY``: the same check as an authentication element."""
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            await self._reply(ErrorItem(
                code=Code.INVALID_API_KEY, message="The Authorization header must be "
                "'Bearer <API key>'.", parameter="apiKey", type="string",
                taskType="authentication"))
            return
        await self._authenticate(Authenticate(api_key=key.strip()))

    def response(self) -> bytes:
        return encode_rest_response(self.data, self.errors)


def _too_large(app: "App", size: int | None) -> ErrorItem:
    limit = app.config.frame_error_bytes
    told = f"{size:,} bytes" if size is not None else "more bytes than allowed"
    return ErrorItem(code=Code.FRAME_TOO_LARGE,
                     message=f"The request body has {told}; the limit is {limit:,}. Send fewer "
                             "or smaller images per request.", max=limit)


def _json_response(status: http.HTTPStatus, body: bytes, errors: list[ErrorItem]) -> web.Response:
    headers: dict[str, str] = {}
    retry_ms = max((e.retryAfterMs or 0 for e in errors), default=0)
    if status in (http.HTTPStatus.TOO_MANY_REQUESTS, http.HTTPStatus.SERVICE_UNAVAILABLE) and retry_ms:
        headers["Retry-After"] = str(max(1, round(retry_ms / 1000)))
    return web.Response(status=status.value, body=body, content_type="application/json",
                        headers=headers)


async def answer_rest_request(app: "App", request: web.Request) -> web.Response:
    exchange = RestExchange(app)
    await exchange.open()
    limit = app.config.frame_error_bytes
    if request.content_length is not None and request.content_length > limit:
        body = None
        await exchange.deliver(_too_large(app, request.content_length))
    else:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:  # chunked, no length given up front
            body = None
            await exchange.deliver(_too_large(app, None))
    if body is not None:
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            await exchange.bearer(authorization)
        await exchange.handle_frame(body)
        await exchange.finished()
    status = status_for(exchange.data, exchange.errors)
    payload = await asyncio.to_thread(exchange.response) if exchange.data else exchange.response()
    return _json_response(status, payload, exchange.errors)
