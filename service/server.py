"""The server: WebSocket and plain HTTP on one port, and the application objects they share.

HTTP routes (answered before any WebSocket upgrade):
- ``GET /images/<uuid>.<ext>``: a stored image (404 once its ttl has passed);
- ``GET /healthz``: the process is alive.
Every other request is a WebSocket handshake, on any path and with any query string (the JS SDK
appends ``?sdk=js&version=...``).
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import re
import signal
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from collections import OrderedDict
from typing import Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .batcher import MicroBatcher
from .delivery import WebhookSender
from .config import Config
from .connection import Connection
from .inputs import InputResolver
from .outbound import OutboundHttp
from .models import ModelRegistry, load_registry
from .pipeline import CONTENT_TYPES
from .processor import Processor
from .results import ResultsBook
from .storage import ImageStore

__all__ = ["App", "SessionDirectory", "build_app", "run"]

log = logging.getLogger(__name__)

_IMAGE_PATH = re.compile(r"^/images/(?P<uuid>[0-9a-f-]{36})\.(?P<ext>[a-z]{3,4})$")


class SessionDirectory:
    """connectionSessionUUID -> the API key that opened it, so a session is only resumed by its
    own key (a guessed UUID under another key gets a fresh session). Keeps the newest
    ``capacity`` sessions."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._owners: OrderedDict[str, bytes] = OrderedDict()
        self._capacity = capacity

    def resume_or_create(self, requested: str | None, api_key: str) -> str:
        owner = self._owners.get(requested) if requested is not None else None
        if owner is not None and hmac.compare_digest(owner, api_key.encode()):
            self._owners.move_to_end(requested)
            return requested
        session_uuid = str(uuidlib.uuid4())
        self._owners[session_uuid] = api_key.encode()
        if len(self._owners) > self._capacity:
            self._owners.popitem(last=False)
        return session_uuid


class App:
    """Everything a connection needs, built once at start-up."""

    def __init__(self, config: Config, registry: ModelRegistry,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.registry = registry
        self.sessions = SessionDirectory()
        self.cpu = ThreadPoolExecutor(config.worker_count(), thread_name_prefix="cpu")
        self.store = ImageStore(config.storage_dir, config.default_ttl, clock)
        self.http = OutboundHttp(
            allow_private=config.allow_private_urls, max_download_bytes=config.max_download_bytes,
            connect_timeout=config.download_connect_timeout,
            total_timeout=config.download_total_timeout,
        )
        self.batchers = self._batchers()
        self.processor = Processor(config, registry, self.batchers, self.store,
                                   InputResolver(self.store, self.http), self.http, self.cpu)
        self.results = ResultsBook(self.store, config.result_retention, clock=clock)
        self.webhooks = WebhookSender(self.http, attempts=config.webhook_attempts,
                                      backoff=config.webhook_backoff)
        self._keys = tuple(key.encode() for key in config.api_keys)
        largest_batch = max((b.max_batch for b in self.batchers.values()), default=1)
        self.socket_concurrency = config.socket_concurrency or max(4, 2 * largest_batch)

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
                )
            by_id[model.id] = shared[key]
        return by_id

    async def housekeeping(self, interval: float = 30.0) -> None:
        """Forget expired results and delete expired images, forever."""
        while True:
            await asyncio.sleep(interval)
            self.results.sweep()
            removed = await self.store.sweep()
            if removed:
                log.debug("removed %d expired images", removed)

    def key_is_valid(self, api_key: str) -> bool:
        if not self._keys:
            return True
        offered = api_key.encode()
        # compare_digest against every key, so the time taken says nothing about which matched
        return any([hmac.compare_digest(offered, key) for key in self._keys])

    async def close(self) -> None:
        await self.webhooks.close()
        for batcher in set(self.batchers.values()):
            await batcher.stop()
        await self.http.close()
        self.cpu.shutdown(wait=False, cancel_futures=True)


def build_app(config: Config) -> App:
    return App(config, load_registry(config))


def _response(status: http.HTTPStatus, body: bytes, content_type: str,
              extra: dict[str, str] | None = None) -> Response:
    headers = Headers({"Content-Type": content_type, "Content-Length": str(len(body)),
                       **(extra or {})})
    return Response(status.value, status.phrase, headers, body)


def _text(status: http.HTTPStatus, text: str) -> Response:
    return _response(status, (text + "\n").encode(), "text/plain; charset=utf-8")


async def _http_route(app: App, request: Request) -> Response | None:
    """Answer plain HTTP requests; None lets a WebSocket handshake proceed."""
    if "upgrade" in request.headers.get("Connection", "").lower():
        return None
    path = request.path.split("?", 1)[0]
    if path == "/healthz":
        return _text(http.HTTPStatus.OK, "ok")
    match = _IMAGE_PATH.match(path)
    if match is None:
        return _text(http.HTTPStatus.NOT_FOUND, "not found")
    stored = app.store.get(match["uuid"])
    if stored is None or stored.extension != match["ext"]:
        return _text(http.HTTPStatus.NOT_FOUND, "no such image (unknown or expired)")
    data = await app.store.read(stored.uuid)
    if data is None:
        return _text(http.HTTPStatus.NOT_FOUND, "no such image (unknown or expired)")
    return _response(http.HTTPStatus.OK, data,
                     CONTENT_TYPES.get(stored.extension, "application/octet-stream"),
                     {"Cache-Control": "private, max-age=60"})


async def start_server(app: App) -> Server:
    async def handler(websocket: ServerConnection) -> None:
        await Connection(websocket, app).serve()

    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        return await _http_route(app, request)

    return await serve(
        handler, app.config.host, app.config.port,
        process_request=process_request,
        # permessage-deflate costs far more CPU than it saves on base64 image payloads.
        compression=None,
        max_size=app.config.max_frame_bytes,
        ping_interval=20, ping_timeout=20,
        server_header="rembg-stream",
    )


async def run(config: Config) -> None:
    """Load the models, serve until SIGINT/SIGTERM, then close sockets (1001) and exit."""
    if not config.api_keys:
        log.warning("no --api-key given: any API key is accepted")
    app = await asyncio.to_thread(build_app, config)
    server = await start_server(app)
    sweeper = asyncio.create_task(app.housekeeping(), name="housekeeping")
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        log.info("listening on ws://%s:%s (images at %s/images/)",
                 f"[{host}]" if ":" in host else host, port, config.base_url())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down")
    server.close()  # closes open sockets with 1001 (going away)
    await server.wait_closed()
    sweeper.cancel()
    await app.close()
