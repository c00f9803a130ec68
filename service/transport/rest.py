"""The REST twin: ``POST /v1`` with the same JSON array of tasks a socket frame carries,
answered with ``{"data": [...], "errors": [...]}`` once every task in it is done.

Validation, limits, the results book and the micro-batcher are the socket's own (the shared
``Dispatcher``). What differs:
- the API key comes from ``Authorization: Bearer KEY`` or, without the header, from an
  ``authentication`` element first in the array; on a keyed service it is checked before the
  body is read (further), and refused at once with 401 (``transport.bodies``); it opens no
  session, so it adds no item to ``data``;
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
from typing import Any

import msgspec
from aiohttp import web

from protocol.auth import invalid_api_key
from protocol.codec import decode_leading_task, encode_rest_response
from protocol.errors import Code, ErrorItem, TaskFailure
from protocol.messages import Authenticate

from ..tasks.dispatch import Dispatcher
from ..tasks.ports import ClientSession
from ..tasks.records import scope_of
from .bodies import BodyReader, BodyRefused, bounded_body, closing, retry_after
from .context import ServerContext

__all__ = ["RestExchange", "answer_rest_request", "status_for"]

_STATUS_BY_CODE = {
    Code.INVALID_API_KEY: http.HTTPStatus.UNAUTHORIZED,
    Code.MISSING_API_KEY: http.HTTPStatus.UNAUTHORIZED,
    Code.FRAME_TOO_LARGE: http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Code.TOO_MANY_TASKS: http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Code.OVERLOADED: http.HTTPStatus.TOO_MANY_REQUESTS,
    Code.TOO_MANY_TASKS_IN_FLIGHT: http.HTTPStatus.TOO_MANY_REQUESTS,
    Code.SHUTTING_DOWN: http.HTTPStatus.SERVICE_UNAVAILABLE,
    Code.SERVICE_UNAVAILABLE: http.HTTPStatus.SERVICE_UNAVAILABLE,
    Code.STORAGE_FULL: http.HTTPStatus.SERVICE_UNAVAILABLE,
    Code.INTERNAL: http.HTTPStatus.INTERNAL_SERVER_ERROR,
}


def status_for(data: list[Any], errors: list[ErrorItem]) -> http.HTTPStatus:
    if data or not errors:
        return http.HTTPStatus.OK
    return _STATUS_BY_CODE.get(errors[0].code, http.HTTPStatus.BAD_REQUEST)


class _AnswerFrame(msgspec.Struct):
    data: list[msgspec.Raw] = []
    errors: list[ErrorItem] = []


class RestExchange:
    """One request's tasks; every answer is collected for the single response.

    Work tasks' outcomes reach it through a client session of the request's own (in the
    distributed mode, workers answer through that session's outbox); immediate replies are
    collected directly.
    """

    def __init__(self, context: ServerContext) -> None:
        self._context = context
        self._dispatcher = Dispatcher(
            context.tasks,
            context.request_limits(),
            reply=self.collect,
            authenticate=self._authenticate,
        )
        self.data: list[Any] = []
        self.errors: list[ErrorItem] = []
        self._session: ClientSession | None = None
        self._answered = 0  # work tasks' answers that arrived through the session
        self._all_answered = asyncio.Event()

    async def open(self) -> None:
        self._session = await self._context.sessions.ephemeral()
        await self._session.attach(self._take_frame)
        self._dispatcher.open(b"", self._session)

    async def _take_frame(self, frame: bytes) -> bool:
        answer = msgspec.json.decode(frame, type=_AnswerFrame)
        self.data += answer.data
        self.errors += answer.errors
        self._answered += 1
        if self._answered >= self._dispatcher.accepted:
            self._all_answered.set()
        return True

    async def run(self, body: bytes) -> None:
        """Every task of ``body``, answered."""
        await self._dispatcher.handle_frame(body)
        await self._dispatcher.finished()
        # Each accepted work task sends exactly one answer through the session.
        while self._answered < self._dispatcher.accepted:
            self._all_answered.clear()
            await self._all_answered.wait()

    def close(self) -> None:
        if self._session is not None:
            self._session.detach(self._take_frame, 0.0)

    async def collect(self, item: Any) -> None:
        (self.errors if isinstance(item, ErrorItem) else self.data).append(item)

    async def _authenticate(self, task: Authenticate) -> None:
        reply = self._dispatcher.auth.authenticate(task, "")  # no client session to name
        if isinstance(reply, ErrorItem):
            await self.collect(reply)
        elif self._session is not None:
            self._dispatcher.open(scope_of(task.api_key), self._session)

    def trust(self, api_key: str) -> None:
        """Serve the tasks under ``api_key``'s scope without checking it (an endpoint the
        operator opened)."""
        self._dispatcher.auth.trust(api_key)
        if self._session is not None:
            self._dispatcher.open(scope_of(api_key), self._session)

    async def bearer(self, authorization: str) -> None:
        """``Authorization: Bearer KEY``: the same check as an authentication element."""
        key = bearer_key(authorization)
        if key is None:
            await self.collect(
                invalid_api_key("The Authorization header must be 'Bearer <API key>'.")
            )
            return
        await self._authenticate(Authenticate(api_key=key))

    def response(self) -> bytes:
        return encode_rest_response(self.data, self.errors)


def bearer_key(authorization: str) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header; None for any other form."""
    scheme, _, key = authorization.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def _json_response(status: http.HTTPStatus, body: bytes, errors: list[ErrorItem]) -> web.Response:
    headers: dict[str, str] = {}
    retry_ms = max((e.retryAfterMs or 0 for e in errors), default=0)
    if (
        status in (http.HTTPStatus.TOO_MANY_REQUESTS, http.HTTPStatus.SERVICE_UNAVAILABLE)
        and retry_ms
    ):
        headers["Retry-After"] = retry_after(retry_ms)
    return web.Response(
        status=status.value, body=body, content_type="application/json", headers=headers
    )


# Bytes of a keyed request's body read to find its leading authentication element when it
# sends no Authorization header; such an element is a hundred bytes or so.
LEADING_BYTES = 64 * 1024


def _header_refusal(context: ServerContext, authorization: str) -> ErrorItem | None:
    """Why a keyed request's Authorization header is refused before its body is read; None
    when its key is accepted."""
    key = bearer_key(authorization)
    if key is not None and context.tasks.key_is_valid(key):
        return None
    return invalid_api_key(
        "Invalid API key: the Authorization header must be 'Bearer <API key>' with an accepted key."
    )


def _leading_refusal(context: ServerContext, start: bytes) -> ErrorItem | None:
    """Why a keyed request without the header is refused before the rest of its body is read:
    its array does not begin with an accepted authentication element. None: go on."""
    leading = decode_leading_task(start)
    if isinstance(leading, Authenticate):
        return None if context.tasks.key_is_valid(leading.api_key) else invalid_api_key()
    return ErrorItem(
        code=Code.MISSING_API_KEY,
        message="Not authenticated: send 'Authorization: Bearer <API key>', or an "
        "authentication element first in the array.",
        parameter="apiKey",
        type="string",
        taskType=getattr(leading, "task_type", None),
        taskUUID=getattr(leading, "task_uuid", None),
    )


async def _read(context: ServerContext, request: web.Request, keyed: bool) -> bytes:
    """The body, once the key allows it; raises BodyRefused or _Unauthorized."""
    config = context.config
    authorization = request.headers.get("Authorization")
    if keyed and authorization is not None:
        refusal = _header_refusal(context, authorization)
        if refusal is not None:
            raise _Unauthorized(refusal)
    async with bounded_body(
        request,
        limit=config.frame_error_bytes,
        timeout=config.body_timeout,
        budget=context.budget,
    ):
        reader = BodyReader(request, config.frame_error_bytes)
        if keyed and authorization is None:
            start = await reader.start(
                lambda read: decode_leading_task(read) is not None, LEADING_BYTES
            )
            refusal = _leading_refusal(context, start)
            if refusal is not None:
                raise _Unauthorized(refusal)
        return await reader.whole()


class _Unauthorized(Exception):
    def __init__(self, item: ErrorItem) -> None:
        super().__init__(item.message)
        self.item = item


async def answer_rest_request(context: ServerContext, request: web.Request) -> web.Response:
    exchange = RestExchange(context)
    try:
        body = await _read(context, request, keyed=bool(context.config.api_keys))
    except _Unauthorized as refused:
        await exchange.collect(refused.item)
        return closing(
            _json_response(http.HTTPStatus.UNAUTHORIZED, exchange.response(), exchange.errors)
        )
    except BodyRefused as refused:
        await exchange.collect(_body_error(refused))
        return closing(_json_response(refused.status, exchange.response(), exchange.errors))
    try:
        await exchange.open()
    except TaskFailure as failure:  # the distributed mode's sessions cannot be reached
        await exchange.collect(failure.item(None, None))
    else:
        try:
            authorization = request.headers.get("Authorization")
            if authorization is not None:
                await exchange.bearer(authorization)
            await exchange.run(body)
        finally:
            exchange.close()
    status = status_for(exchange.data, exchange.errors)
    payload = await asyncio.to_thread(exchange.response) if exchange.data else exchange.response()
    return _json_response(status, payload, exchange.errors)


_BODY_CODES = {
    http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE: Code.FRAME_TOO_LARGE,
    http.HTTPStatus.REQUEST_TIMEOUT: Code.BODY_TIMEOUT,
    http.HTTPStatus.SERVICE_UNAVAILABLE: Code.OVERLOADED,
}


def _body_error(refused: BodyRefused) -> ErrorItem:
    return ErrorItem(
        code=_BODY_CODES[refused.status],
        message=refused.message,
        retryAfterMs=refused.retry_after_ms,
    )
