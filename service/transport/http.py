"""WebSocket and plain HTTP on one port: the routes and the listening socket.

Each HTTP route is declared once, in the OpenAPI document of ``protocol.schema``
(``operations``: method, path, operationId); the router is built from it, each operationId
bound to its handler here, so the document and the server cannot drift apart; the router
finds 404 and 405 (with Allow) itself, and ``gate`` words them in one line. The routes (one
port for both kinds of request):
- ``POST /v1``: the REST twin (``rest``): a JSON array of tasks in, all answers out;
- ``GET|POST /api/remove``: rembg's HTTP API (``rembg_api``): an image in, the PNG out;
- ``GET /``: the browser page (drop images, watch cutouts stream back);
- ``GET /openapi.json``, ``GET /asyncapi.json``: the documents of these routes and of the socket;
- ``GET /v1/models``: every model id served, with its family, file, input size, provider and
  whether it is the embedded stand-in for ``runware:109@1``;
- ``GET /images/<uuid>.<ext>``: a stored image (404 once its ttl has passed);
- ``GET /healthz``: the process is alive;
- ``GET /readyz``: 200 when the models are loaded, the server is not draining and (distributed)
  Redis answers; else 503 with the reason;
- ``GET /metrics``: Prometheus text format.
Every GET asking for an upgrade is a WebSocket handshake, on any path and with any query string
(the JS SDK appends ``?sdk=js&version=...``), refused with 503 while draining. Browsers' pages
from origins other than ours and ``--allowed-origin`` get 403 for sockets and for POSTs; pages of
allowed origins get CORS headers (and answers to preflights), so their scripts can call the
HTTP routes too; ``--allowed-origin '*'`` admits every page, as rembg's server does.
"""

from __future__ import annotations

import asyncio
import http
import importlib.util
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from protocol.messages import UUID_CORE, ModelList
from protocol.schema import asyncapi, openapi, operations

from ..config import Config
from ..imaging.formats import CONTENT_TYPES
from .bodies import LINGER_S, one_line
from .context import OpenSockets, ServerContext
from .frame_check import ClientFrameCheck
from .rembg_api import answer_rembg_request
from .rest import answer_rest_request
from .websocket import Connection

__all__ = ["Listener", "start_server"]

_IMAGE_NAME = re.compile(rf"^(?P<uuid>{UUID_CORE})\.(?P<ext>[a-z]{{3,4}})$")
_SERVER = "rembg-stream"
# The browser page: plain HTML and JS, no build step, nothing from a CDN.
_STATIC = Path(__file__).resolve().parent / "static"
_PAGE = (_STATIC / "index.html").read_bytes()
_HTML = "text/html; charset=utf-8"


def _swagger_ui_files() -> Path:
    """Where swagger-ui-py keeps Swagger UI's files (found, not imported: its Python API, with
    its template engine, is not used)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("swagger-ui-py is not installed (make install installs it)")
    return Path(spec.submodule_search_locations[0]) / "static"


_SWAGGER_UI = _swagger_ui_files()
# /docs: interactive documentation of /openapi.json; the files its page loads, every one from an
# installed package.
_DOCS_PAGE = (_STATIC / "docs.html").read_bytes()
_DOCS_FILES = {
    "/docs/init.js": ((_STATIC / "docs-init.js").read_bytes(), "text/javascript"),
    "/docs/swagger-ui-bundle.js": (
        (_SWAGGER_UI / "swagger-ui-bundle.js").read_bytes(),
        "text/javascript",
    ),
    "/docs/swagger-ui.css": ((_SWAGGER_UI / "swagger-ui.css").read_bytes(), "text/css"),
}


# The page's sample photos (static/samples/README.md says where they come from).
_SAMPLES = {
    f"/samples/{photo.name}": (photo.read_bytes(), "image/jpeg")
    for photo in sorted((_STATIC / "samples").glob("*.jpg"))
}


def _documents(config: Config) -> dict[str, bytes]:
    """The documents of the HTTP routes and of the socket, naming this server's own URL
    (``--public-url``, else the address it listens on) so that generated clients call it."""
    base_url = config.base_url()
    return {
        "/openapi.json": msgspec.json.encode(openapi(base_url, config.open_rembg_api)),
        "/asyncapi.json": msgspec.json.encode(asyncapi(base_url)),
    }


def _response(
    status: http.HTTPStatus, body: bytes, content_type: str, extra: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status.value, body=body, headers={"Content-Type": content_type, **(extra or {})}
    )


def _text(status: http.HTTPStatus, text: str, extra: dict[str, str] | None = None) -> web.Response:
    return _response(status, (text + "\n").encode(), "text/plain; charset=utf-8", extra)


async def _image(context: ServerContext, name: str) -> web.Response:
    match = _IMAGE_NAME.match(name)
    if match is None:
        return _text(http.HTTPStatus.NOT_FOUND, "not found")
    loaded = await context.store.load(match["uuid"])
    if loaded is None or loaded[0].extension != match["ext"]:
        return _text(http.HTTPStatus.NOT_FOUND, "no such image (unknown or expired)")
    stored, data = loaded
    return _response(
        http.HTTPStatus.OK,
        data,
        CONTENT_TYPES.get(stored.extension, "application/octet-stream"),
        {"Cache-Control": "private, max-age=60"},
    )


async def _models(context: ServerContext) -> web.Response:
    try:
        models = await context.models.models()
    except Exception as error:  # the distributed catalog lives in Redis
        return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, f"the model list is unavailable: {error}")
    return _response(
        http.HTTPStatus.OK,
        msgspec.json.encode(ModelList(models)),
        "application/json",
        {"Cache-Control": "no-cache"},
    )


def _readiness(context: ServerContext) -> web.Response:
    reason = context.unready_because()
    if reason is not None:
        return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, reason)
    return _text(http.HTTPStatus.OK, "ready")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _handlers(context: ServerContext) -> dict[str, Handler]:
    """The handler of each operationId of the OpenAPI document (``protocol.schema``), which
    declares every HTTP route's method and path once; the router is built from it."""
    documents = _documents(context.config)

    def document(path: str) -> Handler:
        return _fixed(lambda: _response(http.HTTPStatus.OK, documents[path], "application/json"))

    async def rest(request: web.Request) -> web.StreamResponse:
        return await answer_rest_request(context, request)

    async def rembg(request: web.Request) -> web.StreamResponse:
        return await answer_rembg_request(context, request)

    async def models(request: web.Request) -> web.StreamResponse:
        return await _models(context)

    async def image(request: web.Request) -> web.StreamResponse:
        return await _image(context, request.match_info["name"])

    return {
        "runTasks": rest,
        "removeFromUrl": rembg,
        "removeFromUpload": rembg,
        "listModels": models,
        "getImage": image,
        "health": _fixed(lambda: _text(http.HTTPStatus.OK, "ok")),
        "ready": _fixed(lambda: _readiness(context)),
        "metrics": _fixed(
            lambda: _response(
                http.HTTPStatus.OK,
                context.metrics.exposition(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        ),
        "openapi": document("/openapi.json"),
        "asyncapi": document("/asyncapi.json"),
        "docs": _asset(_DOCS_PAGE, _HTML),
        "page": _asset(_PAGE, _HTML),
    }


def _fixed(response: Callable[[], web.Response]) -> Handler:
    """A handler whose answer does not depend on the request."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return response()

    return handle


def _asset(body: bytes, content_type: str) -> Handler:
    no_cache = {"Cache-Control": "no-cache"}
    return _fixed(lambda: _response(http.HTTPStatus.OK, body, content_type, no_cache))


# HEAD would run a removal: only the GETs that merely read answer it.
_NO_HEAD = frozenset({"removeFromUrl"})


def _add_routes(router: web.UrlDispatcher, context: ServerContext) -> None:
    """Every route of the OpenAPI document with its handler, then the page's and the docs'
    files (assets, not API operations). The router finds 404 and 405 (with Allow) itself;
    ``gate`` words them."""
    handlers = _handlers(context)
    for method, path, operation_id in operations(context.config.open_rembg_api):
        handler = handlers.pop(operation_id, None)
        if handler is None:
            raise RuntimeError(f"no handler for {method} {path} ({operation_id})")
        if method == "GET":
            router.add_get(path, handler, allow_head=operation_id not in _NO_HEAD)
        else:
            router.add_route(method, path, handler)
    if handlers:
        raise RuntimeError(f"handlers without a route in the document: {sorted(handlers)}")
    router.add_get("/index.html", _asset(_PAGE, _HTML))
    for path, (body, content_type) in {**_DOCS_FILES, **_SAMPLES}.items():
        router.add_get(path, _asset(body, content_type))

    async def docs_folder(request: web.Request) -> web.StreamResponse:
        # relative links in the page resolve from /docs
        return web.Response(
            status=http.HTTPStatus.PERMANENT_REDIRECT.value, headers={"Location": "../docs"}
        )

    router.add_get("/docs/", docs_folder)


async def _websocket(context: ServerContext, request: web.Request) -> web.StreamResponse:
    if context.tasks.workload.draining:
        return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down")
    websocket = web.WebSocketResponse(
        # A ping every interval; a peer whose pong is not back within half of it is dropped.
        # Any data arriving counts as a pong, so a long upload does not get its socket dropped.
        heartbeat=context.config.ping_interval,
        # Beyond it the socket is closed with 1009. aiohttp refuses a message of exactly its
        # limit, and the flag's promise is "beyond", hence one more.
        max_msg_size=context.config.max_frame_bytes + 1,
        # permessage-deflate costs far more CPU than it saves on base64 image payloads.
        compress=False,
        timeout=3,  # a peer that ignores our close frame is dropped after this
        decode_text=False,  # the JSON decoder takes bytes; decoding to str first is a copy
        # Pings and pongs reach the connection: its pongs are the client's read receipts.
        autoping=False,
        # The peer's close frame reaches the connection too, which checks its code (1002 for
        # one a peer may not send) before answering.
        autoclose=False,
    )
    transport = request.transport
    assert transport is not None  # present until the handler returns
    frame_check = ClientFrameCheck(transport)
    transport.set_protocol(frame_check)
    await websocket.prepare(request)
    connection = Connection(websocket, transport, request.remote, context)
    frame_check.unmasked = connection.fail_unmasked
    await connection.serve()
    return websocket


def _allowed_origins(config: Config) -> frozenset[str]:
    return frozenset((config.own_origin(), *config.allowed_origins))


def _origin_allowed(origin: str, origins: frozenset[str]) -> bool:
    """``*`` among the allowed origins admits every page, as rembg's server does."""
    return origin in origins or "*" in origins


# CORS: pages of allowed origins may call the HTTP routes from their scripts (fetch with an
# Authorization header asks first with a preflight OPTIONS).
_PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET, POST, HEAD",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


class Listener:
    """The listening socket and the aiohttp machinery behind it."""

    def __init__(self, sockets: OpenSockets, runner: web.AppRunner) -> None:
        self._sockets = sockets
        self._runner = runner

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [address[:2] for address in self._runner.addresses]

    async def close(self) -> None:
        """Stop accepting, close every socket with 1001 (going away), then let go."""
        for site in list(self._runner.sites):
            await site.stop()
        await asyncio.gather(*(c.close(1001, "going away") for c in self._sockets.all()))
        await self._runner.cleanup()


# The routes that serve clients; a worker process has none (its gateways do).
_CLIENT_PATHS = frozenset({"/v1", "/api/remove"})


async def start_server(context: ServerContext) -> Listener:
    config = context.config
    origins = _allowed_origins(config)

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        """What holds on every path before its route: the Origin check, CORS preflights, and
        WebSocket handshakes (on any path)."""
        # Browsers send Origin; a page from anywhere else may neither open a socket nor POST
        # tasks. Clients that send no Origin (SDKs, curl) are not browsers and pass.
        # Plain GETs (the page, images, probes) stay open to any page, as images are meant to be.
        origin = request.headers.get("Origin")
        upgrade = _is_upgrade(request)
        reads_only = request.method in ("GET", "HEAD") and not upgrade
        if origin is not None and not _origin_allowed(origin, origins) and not reads_only:
            return _text(http.HTTPStatus.FORBIDDEN, "this Origin may not use the service")
        if request.method == "OPTIONS" and origin is not None:  # a CORS preflight
            return web.Response(status=http.HTTPStatus.NO_CONTENT.value, headers=_PREFLIGHT)
        if not config.serves_clients and (upgrade or request.path in _CLIENT_PATHS):
            return _text(
                http.HTTPStatus.NOT_FOUND, "this process is a worker: connect to a gateway"
            )
        if upgrade:
            return await _websocket(context, request)
        unmatched = request.match_info.http_exception
        if isinstance(unmatched, web.HTTPMethodNotAllowed):  # one line, as every refusal here
            allowed = ", ".join(sorted(unmatched.allowed_methods))
            text = f"{request.method} is not served on {request.path}; it answers {allowed}"
            return _text(http.HTTPStatus.METHOD_NOT_ALLOWED, text, {"Allow": allowed})
        if unmatched is not None:
            return _text(http.HTTPStatus.NOT_FOUND, f"nothing is served on {request.path}")
        return await handler(request)

    application = web.Application(client_max_size=config.frame_error_bytes + 1, middlewares=[gate])
    server_log = logging.getLogger("aiohttp.server")
    if _PARSE_ERRORS not in server_log.filters:
        server_log.addFilter(_PARSE_ERRORS)

    async def name_the_server(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = _SERVER  # every answer, handshakes included
        origin = request.headers.get("Origin")
        if origin is not None and _origin_allowed(origin, origins):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    application.on_response_prepare.append(name_the_server)
    _add_routes(application.router, context)
    # No access log: a line per request would cost more than a cached probe answer. A graceful
    # stop has drained the tasks before the runner shuts down; what is still open 5 s later is cut.
    # aiohttp's keep-alive timer also runs from the moment a connection opens: a peer that has
    # not sent a whole request when it fires is closed (slowloris), as is an idle keep-alive.
    runner = web.AppRunner(
        application,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5,
        keepalive_timeout=config.handshake_timeout,
        lingering_time=LINGER_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, reuse_port=config.reuse_port or None)
    await site.start()
    return Listener(context.sockets, runner)


class _OneLineParseErrors(logging.Filter):
    """aiohttp logs a request it cannot parse (a NUL in a header, a line too long) at ERROR with
    a traceback. It is the client's fault and answered 400: one WARNING line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = "%s: %s", (record.getMessage(), one_line(error))
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_PARSE_ERRORS = _OneLineParseErrors()


def _is_upgrade(request: web.Request) -> bool:
    """Every GET asking for a WebSocket is a handshake, on any path and with any query string
    (the JS SDK appends ``?sdk=js&version=...``)."""
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"
