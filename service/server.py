"""The server: WebSocket and plain HTTP on one port, the application objects they share, and
the process's life (start, housekeeping, drain on SIGTERM).

Routes (aiohttp serves both kinds of request on the one port):
- ``POST /v1``: the REST twin (``service.rest``): a JSON array of tasks in, all answers out;
- ``GET /``: the browser page (drop images, watch cutouts stream back);
- ``GET /images/<uuid>.<ext>``: a stored image (404 once its ttl has passed);
- ``GET /healthz``: the process is alive;
- ``GET /readyz``: 200 when the models are loaded and the server is not draining, else 503;
- ``GET /metrics``: Prometheus text format.
Every GET asking for an upgrade is a WebSocket handshake, on any path and with any query string
(the JS SDK appends ``?sdk=js&version=...``), refused with 503 while draining. Browsers' pages
from origins other than ours and ``--allowed-origin`` get 403 for sockets and for POSTs.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import re
import signal
import time
from pathlib import Path
from typing import Any, Callable

from aiohttp import web
from redis.asyncio import from_url as redis_from_url

from .batcher import MicroBatcher
from .config import Config
from .connection import Connection
from .delivery import WebhookSender
from .fairness import FairExecutor
from .inputs import InputResolver
from .matting import warm_up as warm_up_matting
from .metrics import Metrics
from .models import ModelRegistry, load_registry
from .outbound import OutboundHttp
from .pipeline import CONTENT_TYPES
from .processor import Processor
from .rest import answer_rest_request
from .relay import RedisSessions, Relay
from .results import RedisResultsBook, ResultsBook
from .sessions import SessionDirectory
from .storage import ImageStorage, ImageStore
from .taskqueue import JobQueue, Worker

__all__ = ["App", "Listener", "build_app", "start_server", "run"]

log = logging.getLogger(__name__)

_IMAGE_PATH = re.compile(r"^/images/(?P<uuid>[0-9a-f-]{36})\.(?P<ext>[a-z]{3,4})$")
# The browser page: plain HTML and JS, no build step, nothing from a CDN.
_SERVER = "rembg-stream"
_PAGE = (Path(__file__).resolve().parent / "static" / "index.html").read_bytes()


class App:
    """Everything a connection needs, built once at start-up."""

    def __init__(self, config: Config, registry: ModelRegistry,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.registry = registry
        self.metrics = Metrics()
        self.cpu = FairExecutor(config.worker_count(), name="cpu")  # decode/resize/matting/encode
        self.store = _image_store(config, clock)
        self.http = OutboundHttp(
            allow_private=config.allow_private_urls, max_download_bytes=config.max_download_bytes,
            connect_timeout=config.download_connect_timeout,
            total_timeout=config.download_total_timeout,
        )
        self.seconds_per_image = 0.25  # running estimate, for the overloaded retry hint
        self.batchers = self._batchers()
        self.largest_batch = max((b.max_batch for b in self.batchers.values()), default=1)
        self.processor = Processor(config, registry, self.batchers, self.store,
                                   InputResolver(self.store, self.http), self.http, self.cpu)
        self.webhooks = WebhookSender(self.http, attempts=config.webhook_attempts,
                                      backoff=config.webhook_backoff)
        self.redis: Any = None
        self.relay: Relay | None = None
        self.jobs: JobQueue | None = None  # set: removals go to workers through Redis
        self.worker: Worker | None = None
        self._backlog_watch: asyncio.Task | None = None
        if config.redis is None:
            self.sessions: SessionDirectory | RedisSessions = SessionDirectory(
                linger=config.session_linger)
            self.results: ResultsBook | RedisResultsBook = ResultsBook(
                self.store, config.result_retention, clock=clock)
        else:
            self._distributed(config)
        self._keys = tuple(key.encode() for key in config.api_keys)
        self.socket_concurrency = config.socket_concurrency or max(4, 2 * self.largest_batch)
        self.connections: set[Connection] = set()
        self.queued_tasks = 0
        self.draining = False

    def _distributed(self, config: Config) -> None:
        """Queue, results book and sessions in Redis; this process's role decides which end."""
        self.redis = redis_from_url(config.redis)
        self.results = RedisResultsBook(self.redis, self.store, config.result_retention)
        self.relay = Relay(self.redis, linger=config.session_linger)
        self.sessions = RedisSessions(self.relay)
        if config.serves_clients:
            self.jobs = JobQueue(self.redis, self.results)
        if config.runs_models:
            self.worker = Worker(self.redis, self.processor, self.results, self.webhooks,
                                 max_batch=self.largest_batch, claim_after=config.claim_after,
                                 max_attempts=config.max_attempts)

    async def start(self) -> None:
        if self.worker is not None:
            await self.worker.start()
        if self.jobs is not None:
            self._backlog_watch = asyncio.create_task(self.jobs.watch(), name="backlog")

    def load(self) -> int:
        """Accepted work not finished: here, plus (distributed) the cluster's job backlog."""
        return self.queued_tasks + (self.jobs.backlog if self.jobs is not None else 0)

    def _batchers(self) -> dict[str, MicroBatcher]:
        """One batcher per distinct (runtime, family); model ids sharing both share it."""
        shared: dict[tuple[int, str], MicroBatcher] = {}
        by_id: dict[str, MicroBatcher] = {}
        for model in self.registry:
            key = (id(model.runtime), model.family.name)
            if key not in shared:
                shared[key] = MicroBatcher(
                    model.runtime.infer_batch,
                    max_batch=self.config.max_batch or model.runtime.preferred_batch,
                    max_wait=self.config.max_wait_ms / 1000, name=model.id,
                    on_batch=self._batch_observer(model.id),
                )
            by_id[model.id] = shared[key]
        return by_id

    def _batch_observer(self, model_id: str) -> Callable[[int, float], None]:
        def observe(images: int, seconds: float) -> None:
            self.metrics.observe_batch(model_id, images, seconds)
            self.seconds_per_image = 0.9 * self.seconds_per_image + 0.1 * seconds / images
        return observe

    def retry_hint_ms(self) -> int:
        """Roughly when the queue will have room again."""
        return max(500, int(1000 * self.seconds_per_image * self.load() / 2))

    # ---- connections

    def connection_opened(self, connection: Connection) -> None:
        self.connections.add(connection)
        self.metrics.sockets.set(len(self.connections))

    def connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        self.metrics.sockets.set(len(self.connections))

    def may_open_socket(self, api_key: str, connection: Connection) -> bool:
        others = sum(1 for c in self.connections if c is not connection and c.api_key == api_key)
        return others < self.config.max_sockets_per_key

    def key_is_valid(self, api_key: str) -> bool:
        if not self._keys:
            return True
        offered = api_key.encode()
        # compare_digest against every key, so the time taken says nothing about which matched
        return any([hmac.compare_digest(offered, key) for key in self._keys])

    # ---- background work

    async def housekeeping(self) -> None:
        """Close silent sockets (zombies left by reconnecting clients included), forget
        sessions nobody resumed, expired results and images. Forever."""
        interval = min(5.0, self.config.idle_timeout / 4)
        last_storage_sweep = 0.0
        while True:
            await asyncio.sleep(interval)
            silent_since = time.monotonic() - self.config.idle_timeout
            for connection in [c for c in self.connections
                               if c.last_heard < silent_since and not c.closing]:
                log.info("closing a socket silent for %.0f s", self.config.idle_timeout)
                asyncio.create_task(connection.close(1000, "idle"))
            self.sessions.sweep()
            if time.monotonic() - last_storage_sweep >= 30:
                last_storage_sweep = time.monotonic()
                self.results.sweep()
                removed = await self.store.sweep()
                if removed:
                    log.debug("removed %d expired images", removed)

    async def drain(self) -> None:
        """Stop accepting, let accepted tasks finish (within the grace period)."""
        self.draining = True
        deadline = time.monotonic() + self.config.drain_grace
        while self.queued_tasks > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.queued_tasks:
            log.warning("drain grace over with %d tasks unfinished", self.queued_tasks)

    async def close(self) -> None:
        if self._backlog_watch is not None:
            self._backlog_watch.cancel()
        if self.worker is not None:
            await self.worker.stop()
        if self.relay is not None:
            await self.relay.close()
        await self.webhooks.close()
        for batcher in set(self.batchers.values()):
            await batcher.stop()
        await self.http.close()
        if self.redis is not None:
            await self.redis.aclose()
        self.cpu.shutdown()


def _image_store(config: Config, clock: Callable[[], float]) -> ImageStorage:
    if config.s3_bucket is None:
        return ImageStore(config.storage_dir, config.default_ttl, clock)
    from .s3storage import S3ImageStore  # boto3 is imported only when S3 is used

    return S3ImageStore(config.s3_endpoint, config.s3_bucket, config.s3_access_key,
                        config.s3_secret_key, config.s3_region, config.default_ttl, clock)


def build_app(config: Config) -> App:
    # A gateway runs no model: it needs none loaded.
    return App(config, load_registry(config) if config.runs_models else ModelRegistry({}))


def _response(status: http.HTTPStatus, body: bytes, content_type: str,
              extra: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status.value, body=body,
                        headers={"Content-Type": content_type, **(extra or {})})


def _text(status: http.HTTPStatus, text: str, extra: dict[str, str] | None = None) -> web.Response:
    return _response(status, (text + "\n").encode(), "text/plain; charset=utf-8", extra)


async def _image(app: App, path: str) -> web.Response | None:
    match = _IMAGE_PATH.match(path)
    if match is None:
        return None
    loaded = await app.store.load(match["uuid"])
    if loaded is None or loaded[0].extension != match["ext"]:
        return _text(http.HTTPStatus.NOT_FOUND, "no such image (unknown or expired)")
    stored, data = loaded
    return _response(http.HTTPStatus.OK, data,
                     CONTENT_TYPES.get(stored.extension, "application/octet-stream"),
                     {"Cache-Control": "private, max-age=60"})


async def _page_or_probe(app: App, path: str) -> web.Response:
    if path in ("/", "/index.html"):
        return _response(http.HTTPStatus.OK, _PAGE, "text/html; charset=utf-8",
                         {"Cache-Control": "no-cache"})
    if path == "/healthz":
        return _text(http.HTTPStatus.OK, "ok")
    if path == "/readyz":
        if app.draining:
            return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining")
        return _text(http.HTTPStatus.OK, "ready")
    if path == "/metrics":
        return _response(http.HTTPStatus.OK, app.metrics.exposition(),
                         "text/plain; version=0.0.4; charset=utf-8")
    return await _image(app, path) or _text(http.HTTPStatus.NOT_FOUND, "not found")


async def _websocket(app: App, request: web.Request) -> web.StreamResponse:
    if app.draining:
        return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down")
    websocket = web.WebSocketResponse(
        # A ping every interval; a peer whose pong is not back within half of it is dropped.
        # Any data arriving counts as a pong, so a long upload does not get its socket dropped.
        heartbeat=app.config.ping_interval,
        max_msg_size=app.config.max_frame_bytes,  # beyond it the socket is closed with 1009
        # permessage-deflate costs far more CPU than it saves on base64 image payloads.
        compress=False,
        timeout=3,  # a peer that ignores our close frame is dropped after this
        decode_text=False,  # the JSON decoder takes bytes; decoding to str first is a copy
    )
    transport = request.transport
    await websocket.prepare(request)
    assert transport is not None  # present until the handler returns
    await Connection(websocket, transport, request.remote, app).serve()
    return websocket


def _allowed_origins(app: App) -> frozenset[str]:
    return frozenset((app.config.own_origin(), *app.config.allowed_origins))


class Listener:
    """The listening socket and the aiohttp machinery behind it."""

    def __init__(self, app: App, runner: web.AppRunner) -> None:
        self._app = app
        self._runner = runner

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [address[:2] for address in self._runner.addresses]

    async def close(self) -> None:
        """Stop accepting, close every socket with 1001 (going away), then let go."""
        for site in list(self._runner.sites):
            await site.stop()
        await asyncio.gather(*(c.close(1001, "going away") for c in list(self._app.connections)))
        await self._runner.cleanup()


async def start_server(app: App) -> Listener:
    origins = _allowed_origins(app)

    async def route(request: web.Request) -> web.StreamResponse:
        # Browsers send Origin; a page from anywhere else may neither open a socket nor POST
        # tasks. Clients that send no Origin (SDKs, curl) are not browsers and pass.
        # Plain GETs (the page, images, probes) stay open to any page, as images are meant to be.
        origin = request.headers.get("Origin")
        upgrade = _is_upgrade(request)
        reads_only = request.method in ("GET", "HEAD") and not upgrade
        if origin is not None and origin not in origins and not reads_only:
            return _text(http.HTTPStatus.FORBIDDEN, "this Origin may not use the service")
        if not app.config.serves_clients and (upgrade or request.path == "/v1"):
            return _text(http.HTTPStatus.NOT_FOUND, "this process is a worker: connect to a gateway")
        if upgrade:
            return await _websocket(app, request)
        if request.path == "/v1":
            if request.method != "POST":
                return _text(http.HTTPStatus.METHOD_NOT_ALLOWED, "POST a JSON array of tasks",
                             {"Allow": "POST"})
            return await answer_rest_request(app, request)
        if request.method not in ("GET", "HEAD"):
            return _text(http.HTTPStatus.METHOD_NOT_ALLOWED, "only GET here",
                         {"Allow": "GET, HEAD"})
        return await _page_or_probe(app, request.path)

    application = web.Application(client_max_size=app.config.frame_error_bytes + 1)

    async def name_the_server(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = _SERVER  # every answer, handshakes included

    application.on_response_prepare.append(name_the_server)
    application.router.add_route("*", "/{path:.*}", route)
    # No access log: a line per request would cost more than a cached probe answer. A graceful
    # stop has drained the tasks before the runner shuts down; what is still open 5 s later is cut.
    runner = web.AppRunner(application, access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, app.config.host, app.config.port)
    await site.start()
    return Listener(app, runner)


def _is_upgrade(request: web.Request) -> bool:
    """Every GET asking for a WebSocket is a handshake, on any path and with any query string
    (the JS SDK appends ``?sdk=js&version=...``)."""
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


async def run(config: Config) -> None:
    """Load the models, serve until SIGINT/SIGTERM, drain, close sockets (1001), exit."""
    if not config.api_keys:
        log.warning("no --api-key given: any API key is accepted")
    started = time.perf_counter()
    app = await asyncio.to_thread(build_app, config)
    if config.runs_models:
        await asyncio.to_thread(warm_up_matting)
    await app.start()
    log.info("models loaded and matting kernels warm in %.1f s", time.perf_counter() - started)
    server = await start_server(app)
    housekeeping = asyncio.create_task(app.housekeeping(), name="housekeeping")
    for host, port in server.addresses:
        log.info("listening on ws://%s:%s (images at %s/images/)",
                 f"[{host}]" if ":" in host else host, port, config.base_url())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: draining %d tasks (up to %.0f s)", app.queued_tasks, config.drain_grace)
    await app.drain()
    await server.close()  # closes open sockets with 1001 (going away)
    housekeeping.cancel()
    await app.close()
    log.info("stopped")
