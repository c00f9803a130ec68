"""The service's configuration: one frozen object, built once by ``__main__`` from flags and env."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Config", "ModelOverride"]


@dataclass(frozen=True)
class ModelOverride:
    """``--model ID=PATH[:FAMILY]``: an operator-supplied ONNX file served under ``id``."""

    id: str
    path: Path
    family: str | None = None  # None: detected from the model's input size


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 7600
    # Bind with SO_REUSEPORT: several processes share the port and the kernel spreads new
    # connections over them (docs/scaling.md: one host, more than one process).
    reuse_port: bool = False
    api_keys: tuple[str, ...] = ()  # empty: any key is accepted (a warning is logged)
    models: tuple[ModelOverride, ...] = ()
    models_dir: Path = Path("models")
    public_url: str | None = None  # base of imageURL; default http://HOST:PORT
    allow_private_urls: bool = False
    # Browser pages allowed to open sockets (their Origin header). The service's own origin
    # (from base_url) is always allowed, and clients that send no Origin (SDKs, curl) too.
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    storage_dir: Path = Path(".data/images")
    default_ttl: int = 86_400  # seconds a stored image lives when the task gives no ttl
    result_retention: int = 3600  # seconds getResponse answers for a finished task (>= its ttl)
    webhook_attempts: int = 4
    webhook_backoff: float = 1.0  # seconds before the 2nd webhook try, doubled after each
    price_per_image: float = 0.0013  # USD, reported as `cost` when includeCost is set
    runtime: str = "auto"  # auto | cuda | onnxruntime | openvino (service.inference.runtime)
    # fp16 weights and arithmetic, on CUDA only: faster, masks measurably off rembg's.
    precision: str = "fp32"
    # TF32 convolutions on CUDA: faster on tensor cores, masks measurably off rembg's.
    allow_tf32: bool = False
    # Micro-batching. None = what the runtime prefers (1 for onnxruntime on CPU, one image per
    # stream for OpenVINO, 16 on CUDA).
    max_batch: int | None = None
    max_wait_ms: float = 4.0
    # Batches handed over at once; with 2 the next one is stacked while the device runs one.
    # None: 2 on an accelerator, 1 on the CPU (docs/decisions/0012, batches_in_flight_on).
    batches_in_flight: int | None = None
    # Benchmarking only: "FIXED_MS,PER_IMAGE_MS[,GB_PER_S]" wraps every model in a simulated
    # accelerator with that batch latency (service/inference/simulated.py). None: the real one.
    simulated_device: str | None = None
    # settings.decontaminate for the tasks that do not say (SDKs that drop unknown settings).
    decontaminate: bool = False
    # /api/remove (rembg's HTTP API) without an API key, for a trusted network.
    open_rembg_api: bool = False
    # Images of one socket in the pipeline at once; more wait their turn in the socket's own
    # queue, so one busy socket cannot fill the CPU pool ahead of everybody else.
    socket_concurrency: int | None = None  # None = 2 x max batch, at least 4
    # Threads for decode/resize/matting/encode; None = one per core.
    cpu_workers: int | None = None
    # Threads onnxruntime may use inside one inference; None = one per core.
    inference_threads: int | None = None
    max_frame_bytes: int = 32 * 1024 * 1024  # hard cap: the socket is closed with 1009
    frame_error_bytes: int = 16 * 1024 * 1024  # soft cap: the frame is refused, socket stays up
    max_tasks_per_frame: int = 256
    max_in_flight_per_socket: int = 64
    max_sockets_per_key: int = 1000
    # Wrong API keys one client address may send in a minute before it is refused outright.
    max_key_failures_per_address: int = 30
    max_queued_tasks: int = 1024  # accepted, unfinished work tasks service-wide (with --redis:
    # this gateway's not yet queued ones plus the cluster's job backlog)
    send_timeout: float = 30.0  # a client that stops reading is cut off after this
    # Control-frame pings; a peer whose pong is not back within half the interval is dropped.
    ping_interval: float = 5.0
    # A connection has this long to send a whole request (its headers: the handshake, for a
    # socket); idle HTTP keep-alive connections are closed after it too.
    handshake_timeout: float = 10.0
    # An HTTP request body must arrive within this many seconds of being awaited (408).
    body_timeout: float = 60.0
    idle_timeout: float = 120.0  # idle sockets (no frame, no answer, no task) are closed
    session_linger: float = 120.0  # results kept for a client that is away (resume)
    drain_grace: float = 30.0  # on SIGTERM, seconds for in-flight tasks to finish
    max_image_pixels: int = 40_000_000
    # CPU seconds a decode may take before the image is refused; with the pixel limit and the
    # JPEG scan cap a legitimate image needs well under 2 s (docs/operations.md).
    decode_timeout: float = 10.0
    # With alphaMatting, memory grows faster than the pixel count (docs/performance.md,
    # "Matting"); bands whose factor would pass 2 GiB take the iterative solve.
    max_matting_pixels: int = 25_000_000
    max_download_bytes: int = 25 * 1024 * 1024
    # Working memory images in the pipeline may take together; None: half the machine's.
    working_memory_bytes: int | None = None
    download_connect_timeout: float = 5.0
    download_total_timeout: float = 20.0
    png_compress_level: int = 1  # ISA-L deflate level 0-3 (see imaging.png.encode)
    # S3-compatible storage instead of storage_dir (service.storage.s3); None = the directory.
    s3_endpoint: str | None = None  # e.g. http://127.0.0.1:8333; AWS when only a bucket is given
    s3_bucket: str | None = None
    s3_access_key: str | None = None  # None: boto3's usual sources (AWS_ACCESS_KEY_ID, ...)
    s3_secret_key: str | None = None
    s3_region: str = "us-east-1"
    # The distributed mode (service.cluster): None = one process does it all.
    redis: str | None = None
    role: str = "all"  # gateway | worker | all
    claim_after: float = 30.0  # seconds before a silent worker's jobs are taken over
    max_attempts: int = 3  # workers that may start one job

    @property
    def serves_clients(self) -> bool:
        return self.redis is None or self.role in ("gateway", "all")

    @property
    def runs_models(self) -> bool:
        return self.redis is None or self.role in ("worker", "all")

    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def own_origin(self) -> str:
        """scheme://host[:port] of base_url, as a browser would send it in Origin."""
        scheme, _, rest = self.base_url().partition("://")
        return f"{scheme}://{rest.split('/', 1)[0]}"

    def working_memory(self) -> int:
        if self.working_memory_bytes is not None:
            return self.working_memory_bytes
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2

    def cpu_worker_count(self) -> int:
        return self.cpu_workers or os.cpu_count() or 1

    def batches_in_flight_on(self, accelerator: bool) -> int:
        """The batches in flight for a runtime: as configured, else 2 on an accelerator (the
        next batch stacked while the device runs one: +22-40% images/s under the simulated
        device, docs/decisions/0012) and 1 on the CPU (where stacking competes with the
        model for the same cores, and a socket's image would wait behind two batches)."""
        if self.batches_in_flight is not None:
            return self.batches_in_flight
        return 2 if accelerator else 1
