"""rembg's HTTP API on our port: ``GET /api/remove?url=...`` and ``POST /api/remove`` with a
multipart ``file``, the same paths and parameters as ``rembg s`` (rembg 2.0.86), answered with
the PNG bytes as rembg answers.

Each request becomes one removeBackground task run through the REST twin's exchange, so it
shares everything with the other transports: validation, the results book, limits, the URL
policy, the micro-batcher, the CPU pool and its fairness, metrics. What is rembg's:

- parameters ``model``, ``a``, ``af``, ``ab``, ``ae``, ``om``, ``ppm``, ``dc``, ``bgc``,
  ``extras``; in a POST the form's fields, with ``bgc`` and ``extras`` also read from the query
  string as rembg reads them; booleans as FastAPI parses them (true/false, 1/0, yes/no, on/off);
- ``extras`` (rembg's JSON of session options) is accepted and ignored: our models take none;
- ``vm`` (rembg's ViTMatte refinement) is refused: no ViTMatte model is served;
- errors are ``{"detail": ...}``: 422 for a parameter out of range, as FastAPI answers, else
  the status the REST twin gives the task's error (400 for what the client must fix).

What is ours: a model id rembg does not know is served if we serve it; a model we do not serve
gets a 400 listing the ids we do (``u2netp`` is the embedded file); without ``model`` the
service's default answers. The API key comes from ``Authorization: Bearer KEY``, unless the
operator opened this path (``--open-rembg-api``, for a trusted network).
"""

from __future__ import annotations

import http
import re
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec
import pybase64
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from protocol.errors import Code, ErrorItem
from protocol.messages import (
    RembgError,
    RembgParameterError,
    RembgRemoveParameters,
    parse_rgba,
)

from .bodies import BodyRefused, bounded_body, closing, one_line, retry_after
from .context import ServerContext
from .rest import RestExchange, bearer_key, status_for

__all__ = ["answer_rembg_request", "OPEN_SCOPE_KEY"]

# The key under which requests to an open /api/remove keep their results.
OPEN_SCOPE_KEY = "rembg-api"
# The frame around the base64 file: the task's other fields and settings.
_TASK_ROOM_BYTES = 4096

# FastAPI's booleans beyond the true/false/1/0 msgspec reads.
_BOOLEANS = {"yes": "true", "on": "true", "y": "true", "no": "false", "off": "false", "n": "false"}
_FLAGS = frozenset(("a", "om", "ppm", "dc", "vm"))


class ParameterError(ValueError):
    """A parameter FastAPI would refuse (422), in its shape."""

    def __init__(self, where: str, name: str, message: str) -> None:
        super().__init__(message)
        self.detail = RembgParameterError(loc=[where, name], msg=message, type="value_error")


def _parameters(values: Mapping[str, str], where: str) -> RembgRemoveParameters:
    """The parameters as rembg's server reads them, or the ParameterError it would give."""
    given = {
        name: _BOOLEANS.get(value.strip().lower(), value) if name in _FLAGS else value
        for name, value in values.items()
        if name in RembgRemoveParameters.__struct_fields__
    }
    try:
        parameters = msgspec.convert(given, RembgRemoveParameters, strict=False)
    except msgspec.ValidationError as error:
        found = re.search(r"at `\$\.(\w+)`", str(error))
        name = found.group(1) if found else "?"
        raise ParameterError(where, name, f"{name}: {error}") from None
    if parameters.vm:
        raise ParameterError(where, "vm", "vm (ViTMatte refinement) is not served here; use a")
    return parameters


def _colour(raw: str | None, where: str) -> list[int] | None:
    """``bgc`` as rembg reads it (R,G,B,A), or R,G,B for an opaque colour."""
    if raw is None or raw == "":
        return None
    try:
        return parse_rgba(raw)
    except ValueError as error:
        raise ParameterError(where, "bgc", f"bgc: {error}") from None


def _task(parameters: RembgRemoveParameters, where: str, image: str) -> dict[str, Any]:
    """The removeBackground task that does what rembg's remove() would with these."""
    settings: dict[str, Any] = {
        "alphaMatting": parameters.a,
        "alphaMattingForegroundThreshold": parameters.af,
        "alphaMattingBackgroundThreshold": parameters.ab,
        "alphaMattingErodeSize": parameters.ae,
        "returnOnlyMask": parameters.om,
        "postProcessMask": parameters.ppm,
        "decontaminate": parameters.dc,
    }
    colour = _colour(parameters.bgc, where)
    if colour is not None:
        settings["rgba"] = colour
    task: dict[str, Any] = {
        "taskType": "removeBackground",
        "taskUUID": str(uuid.uuid4()),
        "inputImage": image,
        "outputType": "base64Data",
        "outputFormat": "PNG",
        "settings": settings,
    }
    if parameters.model:
        task["model"] = parameters.model
    return task


def _detail(
    status: http.HTTPStatus,
    detail: str | list[RembgParameterError],
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status.value,
        body=msgspec.json.encode(RembgError(detail=detail)),
        content_type="application/json",
        headers=headers,
    )


class FileTooLarge(ValueError):
    """The upload is larger than a task can carry once it is base64 in a frame."""


def _check_url(url: str) -> None:
    """``url`` as rembg's GET fetches it: an absolute http(s) URL with a host. Anything else
    (``null``, ``example.com/a.jpg``) would otherwise be read as base64 image data."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket, a bad port
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise RequestRefused(
            http.HTTPStatus.BAD_REQUEST,
            f"url must be an absolute http or https URL with a host, such as "
            f"https://example.com/photo.jpg; got {url[:100]!r}",
        )


class RequestRefused(Exception):
    """A request that cannot be served as sent (a multipart body that cannot be read, a url that
    is not one): its status and one line saying why."""

    def __init__(self, status: http.HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _reason(error: Exception) -> str:
    return "The multipart body could not be read: " + one_line(error)


async def _task_from(request: web.Request, max_file_bytes: int) -> dict[str, Any]:
    """The task a GET or POST asks for. Raises ParameterError, FileTooLarge, or
    web.HTTPRequestEntityTooLarge for a body over the app's limit."""
    if request.method == "GET":
        parameters = _parameters(request.query, "query")
        if not parameters.url:
            raise ParameterError("query", "url", "url is required")
        _check_url(parameters.url)
        return _task(parameters, "query", parameters.url)
    try:
        form = await request.post()  # within the app's body limit, as every POST
    except LineTooLong as error:
        raise RequestRefused(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _reason(error)) from None
    except (ValueError, HttpProcessingError) as error:  # aiohttp's words for a broken form
        raise RequestRefused(http.HTTPStatus.BAD_REQUEST, _reason(error)) from None
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise ParameterError("body", "file", "file is required (a multipart form field)")
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    for name in ("bgc", "extras"):  # rembg reads these from the query string, for a POST too
        if name in request.query:
            fields[name] = request.query[name]
    data = upload.file.read()
    if len(data) > max_file_bytes:
        raise FileTooLarge(f"The file has {len(data):,} bytes; the limit is {max_file_bytes:,}.")
    return _task(_parameters(fields, "body"), "body", pybase64.b64encode_as_string(data))


async def answer_rembg_request(context: ServerContext, request: web.Request) -> web.Response:
    authorization = request.headers.get("Authorization")
    config = context.config
    if not config.open_rembg_api:  # the key, from the headers, before any body byte is read
        key = bearer_key(authorization) if authorization is not None else None
        if key is None or not context.tasks.key_is_valid(key):
            return closing(
                _detail(
                    http.HTTPStatus.UNAUTHORIZED,
                    "Send an accepted API key as 'Authorization: Bearer <API key>' (or start the "
                    "service with --open-rembg-api on a trusted network).",
                )
            )
    limit = config.frame_error_bytes
    try:
        async with bounded_body(
            request, limit=limit, timeout=config.body_timeout, budget=context.budget
        ):
            # The file travels as base64 in a frame under the frame limit, with room for the
            # task.
            task = await _task_from(request, (limit - _TASK_ROOM_BYTES) * 3 // 4)
    except BodyRefused as refused:
        headers = (
            {"Retry-After": retry_after(refused.retry_after_ms)} if refused.retry_after_ms else {}
        )
        return closing(_detail(refused.status, refused.message, headers))
    except ParameterError as error:
        return _detail(http.HTTPStatus.UNPROCESSABLE_ENTITY, [error.detail])
    except FileTooLarge as error:
        return _detail(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(error))
    except RequestRefused as error:
        return closing(_detail(error.status, error.reason))
    except web.HTTPRequestEntityTooLarge:
        return _detail(
            http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"The request body is larger than the limit of {limit:,} bytes.",
        )
    exchange = RestExchange(context)
    try:
        await exchange.open()
    except Exception as error:  # the distributed mode's sessions cannot be reached
        return _detail(http.HTTPStatus.SERVICE_UNAVAILABLE, str(error))
    try:
        if authorization is None or config.open_rembg_api:  # None: open, as checked
            exchange.trust(OPEN_SCOPE_KEY)
        else:
            await exchange.bearer(authorization)
        await exchange.run(msgspec.json.encode([task]))
    finally:
        exchange.close()
    if exchange.errors or not exchange.data:
        errors = exchange.errors or [
            ErrorItem(code=Code.INTERNAL, message="The task ended without an answer.")
        ]
        return _detail(status_for([], errors), errors[0].message)
    result = msgspec.json.decode(bytes(exchange.data[0]))
    return web.Response(
        body=pybase64.b64decode(result["imageBase64Data"]), content_type="image/png"
    )
