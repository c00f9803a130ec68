"""The composition root: builds every part of the service from the Config, chooses the mode
once (one process, or a gateway/worker of the distributed mode), and runs the process (start,
housekeeping, drain on SIGTERM). Nothing else in ``service`` constructs a twin or a transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from .cluster.jobs import JobQueue, QueuedWork, Worker
from .cluster.models import RedisModelCatalog
from .cluster.reachability import REDIS_DOWN
from .cluster.reachability import connect as connect_to_redis
from .cluster.relay import RedisSessions, Relay
from .cluster.results import RedisResultsBook
from .config import Config
from .imaging import pipeline
from .inference.registry import ModelRegistry, load_registry
from .matting import cores as matting_cores
from .metrics import Metrics
from .net.delivery import WebhookSender
from .net.outbound import OutboundHttp
from .scheduling.batcher import MicroBatcher
from .scheduling.budget import MemoryBudget
from .scheduling.fairness import FairExecutor
from .storage.directory import DirectoryImageStore
from .storage.store import ImageStore
from .tasks.dispatch import TaskPorts
from .tasks.inputs import InputResolver
from .tasks.models import LocalModelCatalog
from .tasks.ports import ModelCatalog, ResultsStore, SessionStore, WorkExecutor
from .tasks.processor import ModelRoute, Processor
from .tasks.results import InMemoryResultsBook
from .tasks.sessions import InMemorySessions
from .tasks.work import LocalWork
from .tasks.workload import Workload
from .transport.context import KeyGuesses, OpenSockets, ServerContext
from .transport.http import Listener, start_server

__all__ = ["App", "PortUnavailable", "build_app", "check_port", "run", "serve"]

log = logging.getLogger(__name__)


class App:
    """Every long-lived object of one process, wired together."""

    def __init__(
        self, config: Config, registry: ModelRegistry, clock: Callable[[], float] = time.time
    ) -> None:
        pipeline.use_own_pixel_limit()
        matting_cores.use_cores(config.cpu_worker_count())  # not every core the machine has
        self.config = config
        self.registry = registry
        self.metrics = Metrics()
        for model in registry:
            self.metrics.serve_model(model.id, model.runtime.provider)
        # decode, resize, matting and encode
        self.cpu = FairExecutor(config.cpu_worker_count(), name="cpu")
        self.store = _image_store(config, clock)
        self.http = OutboundHttp(
            allow_private=config.allow_private_urls,
            max_download_bytes=config.max_download_bytes,
            connect_timeout=config.download_connect_timeout,
            total_timeout=config.download_total_timeout,
        )
        self._batchers = self._build_batchers()
        largest_batch = max((b.max_batch for b in self._batchers.values()), default=1)
        routes = {
            model.id: ModelRoute(model.family, self._batchers[model.id]) for model in registry
        }
        self.budget = MemoryBudget(config.working_memory())
        self.processor = Processor(
            config,
            routes,
            self.store,
            InputResolver(self.store, self.http),
            self.http,
            self.cpu,
            self.budget,
            self.metrics,
        )
        self.webhooks = WebhookSender(
            self.http, attempts=config.webhook_attempts, backoff=config.webhook_backoff
        )
        self._redis: Any = None
        self._relay: Relay | None = None
        self._jobs: JobQueue | None = None
        self._worker: Worker | None = None
        self._queued: QueuedWork | None = None
        self._watches: list[asyncio.Task] = []  # background loops of the distributed mode
        self.sessions: SessionStore
        self.results: ResultsStore
        self.models: ModelCatalog
        self._published_models: RedisModelCatalog | None = None  # this worker's, in Redis
        work: WorkExecutor
        if config.redis is None:
            self.sessions = InMemorySessions(linger=config.session_linger)
            self.results = InMemoryResultsBook(self.store, config.result_retention, clock=clock)
            self.models = LocalModelCatalog(registry.catalog())
            work = LocalWork(self.processor)
        else:
            work = self._distributed(config, largest_batch)
        jobs = self._jobs
        # On a gateway the cluster's job backlog counts towards the overload limit.
        self.workload = Workload(
            config.max_queued_tasks, backlog=(lambda: jobs.backlog) if jobs else lambda: 0
        )
        self._keys = tuple(key.encode() for key in config.api_keys)
        self.tasks = TaskPorts(
            self.results, work, self.workload, self.webhooks, self.metrics, self.key_is_valid
        )
        self.sockets = OpenSockets(
            self.metrics, config.max_sockets_per_key, keys_required=bool(config.api_keys)
        )
        self.context = ServerContext(
            config,
            self.tasks,
            self.sessions,
            self.store,
            self.metrics,
            self.sockets,
            pipeline_slots=config.socket_concurrency or max(4, 2 * largest_batch),
            unready_because=self.unready_because,
            key_guesses=KeyGuesses(config.max_key_failures_per_address),
            models=self.models,
            budget=self.budget,
        )

    def _distributed(self, config: Config, largest_batch: int) -> WorkExecutor:
        """Queue, results book and sessions in Redis; this process's role decides which end."""
        assert config.redis is not None
        self._redis = connect_to_redis(config.redis)
        results = RedisResultsBook(self._redis, self.store, config.result_retention)
        self.results = results
        self._relay = Relay(self._redis, linger=config.session_linger)
        self.sessions = RedisSessions(self._relay)
        self.models = RedisModelCatalog(self._redis)
        work: WorkExecutor = LocalWork(self.processor)
        if config.serves_clients:
            self._jobs = JobQueue(self._redis, results)
            work = self._queued = QueuedWork(
                self.processor, self._jobs, results, linger=config.session_linger
            )
            self._relay.on_relayed = self._queued.relayed
        if config.runs_models:
            self._worker = Worker(
                self._redis,
                self.processor,
                results,
                self.webhooks,
                max_batch=largest_batch,
                claim_after=config.claim_after,
                max_attempts=config.max_attempts,
            )
            self._published_models = self.models
        return work

    def _build_batchers(self) -> dict[str, MicroBatcher]:
        """One batcher per distinct (runtime, family); model ids sharing both share it."""
        shared: dict[tuple[int, str], MicroBatcher] = {}
        by_id: dict[str, MicroBatcher] = {}
        for model in self.registry:
            key = (id(model.runtime), model.family.name)
            if key not in shared:
                shared[key] = MicroBatcher(
                    model.runtime.infer_batch,
                    stack=model.runtime.stack,
                    max_batch=self.config.max_batch or model.runtime.preferred_batch,
                    max_wait=self.config.max_wait_ms / 1000,
                    in_flight=self.config.batches_in_flight_on(model.runtime.feeds_accelerator),
                    name=model.id,
                    on_batch=self._batch_observer(model.id),
                )
                batcher = shared[key]
                log.info(
                    "batcher of %s: batches of up to %d, %d in flight",
                    model.id,
                    batcher.max_batch,
                    batcher.in_flight,
                )
            by_id[model.id] = shared[key]
        return by_id

    def _batch_observer(self, model_id: str) -> Callable[[int, float], None]:
        def observe(images: int, seconds: float) -> None:
            self.metrics.observe_batch(model_id, images, seconds)
            self.workload.observe_batch(images, seconds)

        return observe

    def key_is_valid(self, api_key: str) -> bool:
        if not self._keys:
            return True
        offered = api_key.encode()
        # compare_digest against every key, so the time taken says nothing about which matched
        return any([hmac.compare_digest(offered, key) for key in self._keys])

    async def start(self) -> None:
        if self._worker is not None:
            await self._worker.start()
        if self._worker is not None and self._published_models is not None:
            publishing = self._published_models.keep_published(
                self._worker.name, self.registry.catalog()
            )
            self._watches.append(asyncio.create_task(publishing, name="models"))
        if self._jobs is not None:
            self._watches.append(asyncio.create_task(self._jobs.watch(), name="backlog"))
        if self._queued is not None:
            self._watches.append(
                asyncio.create_task(self._queued.watch_for_lost_jobs(), name="lost-jobs")
            )

    def unready_because(self) -> str | None:
        """Why this process should get no traffic now (None: it may)."""
        if self.workload.draining:
            return "draining"
        if self._jobs is not None and not self._jobs.reachable:
            return "the job queue (Redis) cannot be reached"
        if self._relay is not None and self._relay.broken:
            return f"the session relay is broken ({self._relay.broken})"
        if self._worker is not None and self._worker.broken:
            return f"the worker is broken ({self._worker.broken})"
        if self._worker is not None and not self._worker.reachable:
            return "the job stream (Redis) cannot be read"
        return self.store.unready_because()

    async def housekeeping(self) -> None:
        """Close silent sockets (zombies left by reconnecting clients included), forget
        sessions nobody resumed, expired results and images. Forever."""
        interval = min(5.0, self.config.idle_timeout / 4)
        last_storage_sweep = 0.0
        while True:
            await asyncio.sleep(interval)
            for connection in self.sockets.silent_for(self.config.idle_timeout):
                log.info("closing a socket silent for %.0f s", self.config.idle_timeout)
                asyncio.create_task(connection.close(1000, "idle"))
            self.sessions.sweep()
            self.context.key_guesses.sweep()
            if time.monotonic() - last_storage_sweep >= 30:
                last_storage_sweep = time.monotonic()
                self.results.sweep()
                removed = await self.store.sweep()
                if removed:
                    log.debug("removed %d expired images", removed)

    async def drain(self) -> None:
        """Stop accepting, let accepted tasks finish (within the grace period)."""
        self.workload.draining = True
        deadline = time.monotonic() + self.config.drain_grace
        while self.workload.unfinished > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.workload.unfinished:
            log.warning("drain grace over with %d tasks unfinished", self.workload.unfinished)

    async def close(self) -> None:
        for watch in self._watches:
            watch.cancel()
        if self._worker is not None:
            await self._worker.stop()
        if self._worker is not None and self._published_models is not None:
            with contextlib.suppress(*REDIS_DOWN):  # Redis away: the key expires by itself
                await self._published_models.withdraw(self._worker.name)
        if self._relay is not None:
            await self._relay.close()
        await self.webhooks.close()
        for batcher in set(self._batchers.values()):
            await batcher.stop()
        await self.http.close()
        if self._redis is not None:
            await self._redis.aclose()
        self.cpu.shutdown()


def _image_store(config: Config, clock: Callable[[], float]) -> ImageStore:
    if config.s3_bucket is None:
        return DirectoryImageStore(config.storage_dir, config.default_ttl, clock)
    from .storage.s3 import S3ImageStore  # boto3 is imported only when S3 is used

    return S3ImageStore(
        config.s3_endpoint,
        config.s3_bucket,
        config.s3_access_key,
        config.s3_secret_key,
        config.s3_region,
        config.default_ttl,
        clock,
    )


def build_app(config: Config) -> App:
    # A gateway runs no model: it needs none loaded.
    return App(config, load_registry(config) if config.runs_models else ModelRegistry({}))


async def serve(app: App) -> Listener:
    """Listen on the configured address with everything ``app`` holds."""
    return await start_server(app.context)


class PortUnavailable(RuntimeError):
    """The configured address cannot be listened on; the message names the port and the flag."""


def check_port(config: Config) -> None:
    """Bind the address once before the models load (seconds), so that a port already in use
    is said in one line at once, not after the load with a traceback."""
    try:
        with socket.create_server((config.host, config.port), reuse_port=config.reuse_port):
            pass
    except OSError as error:
        raise _port_unavailable(config, error) from None


def _port_unavailable(config: Config, error: OSError) -> PortUnavailable:
    return PortUnavailable(
        f"cannot listen on {config.host}:{config.port}: {error.strerror or error}; "
        "choose another port with --port (or RBG_PORT)"
    )


async def run(config: Config) -> None:
    """Load the models, serve until SIGINT/SIGTERM, drain, close sockets (1001), exit."""
    check_port(config)
    if not config.api_keys:
        log.warning("no --api-key given: any API key is accepted")
    started = time.perf_counter()
    app = await asyncio.to_thread(build_app, config)
    if config.runs_models:
        await asyncio.to_thread(pipeline.warm_up)
    await app.start()
    log.info("models loaded and kernels warm in %.1f s", time.perf_counter() - started)
    try:
        server = await serve(app)
    except OSError as error:  # taken between the check and now
        raise _port_unavailable(config, error) from None
    housekeeping = asyncio.create_task(app.housekeeping(), name="housekeeping")
    for host, port in server.addresses:
        address = f"{'[' + host + ']' if ':' in host else host}:{port}"
        log.info("listening on ws://%s (images at %s/images/)", address, config.base_url())
        if config.serves_clients:
            log.info(
                "the page: http://%s/  REST: POST http://%s/v1  rembg's API: "
                "http://%s/api/remove  models: http://%s/v1/models",
                *[address] * 4,
            )
        log.info(
            "metrics: http://%s/metrics  probes: /healthz /readyz  API docs: http://%s/docs",
            address,
            address,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info(
        "shutting down: draining %d tasks (up to %.0f s)",
        app.workload.unfinished,
        config.drain_grace,
    )
    await app.drain()
    await server.close()  # closes open sockets with 1001 (going away)
    housekeeping.cancel()
    await app.close()
    log.info("stopped")
