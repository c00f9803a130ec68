"""``python -m service``: read flags and environment once, build the Config, run the server.

This is the only module that reads the environment. Every flag has an environment variable
(``RBG_`` + the flag's name in capitals); a flag given on the command line wins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Config, ModelOverride
from .inference.errors import ModelLoadError
from .inference.families import FAMILIES
from .inference.registry import parse_model_spec
from .inference.simulated import parse_simulated_device
from .scheduling.allocator import reuse_freed_memory

ENV_PREFIX = "RBG_"


def _env(name: str) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else None


def _env_flag(name: str) -> bool:
    return (_env(name) or "").lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> list[str]:
    """Comma-separated values (API keys, model specs)."""
    return [item.strip() for item in (_env(name) or "").split(",") if item.strip()]


def parse_model(spec: str) -> ModelOverride:
    """``--model ID=PATH[:FAMILY]`` for argparse."""
    try:
        return parse_model_spec(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# (flag, value type, help) for every scalar setting; the Config field is the flag's name with
# "_" for "-", the environment variable RBG_ + that name in capitals.
_SCALAR_FLAGS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("--host", str, "address to listen on"),
    ("--port", int, "port (WebSocket and HTTP)"),
    ("--models-dir", Path, "every <name>.onnx here is served as model id <name>"),
    ("--public-url", str, "base URL of imageURL results (default: http://HOST:PORT)"),
    ("--storage-dir", Path, "where stored inputs and outputs live"),
    ("--default-ttl", int, "seconds a stored image lives when the task sets no ttl"),
    (
        "--result-retention",
        int,
        "seconds getResponse answers for a finished task (at least its ttl)",
    ),
    ("--webhook-attempts", int, "tries per webhook delivery"),
    ("--webhook-backoff", float, "seconds before the second webhook try, doubled after each"),
    ("--price-per-image", float, "cost reported per image with includeCost"),
    (
        "--runtime",
        str,
        "auto, cuda, onnxruntime or openvino (auto: CUDA where a GPU driver answers, and "
        "the start stops if CUDA cannot run there; else OpenVINO; onnxruntime: its CPU "
        "provider)",
    ),
    (
        "--precision",
        str,
        "fp32, or fp16 on CUDA only: faster, masks within ~1/255 of fp32's on average "
        "but no longer equal to rembg's (docs/models.md)",
    ),
    (
        "--max-batch",
        int,
        "most images per inference call (default: what the runtime prefers: "
        "16 on CUDA, one per OpenVINO stream, 1 for onnxruntime on CPU)",
    ),
    ("--max-wait-ms", float, "milliseconds a batch waits to fill"),
    (
        "--batches-in-flight",
        int,
        "batches handed to the device at once; with 2 the next batch is stacked while the "
        "device runs one and starts the moment it ends (default: 2 on a GPU, 1 on the CPU)",
    ),
    (
        "--simulated-device",
        str,
        "FIXED_MS,PER_IMAGE_MS[,GB_PER_S][@LOCK_FILE]: for benchmarks only, every model call "
        "takes this long per batch (a GPU's latency, and the batch's bytes at that bandwidth), "
        "e.g. with the stand-in model of load/standin.py; processes naming the same lock file "
        "share one device",
    ),
    (
        "--socket-concurrency",
        int,
        "images of one socket in the pipeline at once (default: 2 x max batch, at least 4)",
    ),
    ("--cpu-workers", int, "threads for decode/matting/encode (default: one per core)"),
    ("--inference-threads", int, "onnxruntime intra-op threads (default: one per core)"),
    (
        "--max-frame-bytes",
        int,
        "hard cap on an incoming frame: beyond it the socket is closed (1009)",
    ),
    (
        "--frame-error-bytes",
        int,
        "soft cap: a larger frame is refused with frameTooLarge, the socket stays",
    ),
    ("--max-tasks-per-frame", int, "tasks accepted from one frame"),
    ("--max-in-flight-per-socket", int, "unfinished tasks one socket may have"),
    ("--max-sockets-per-key", int, "open sockets one API key may have"),
    (
        "--max-key-failures-per-address",
        int,
        "wrong API keys one client address may send in a minute; beyond them its "
        "authentications are refused until the minute has passed",
    ),
    ("--max-queued-tasks", int, "unfinished tasks service-wide; beyond it new ones get overloaded"),
    ("--send-timeout", float, "seconds a send may wait on a client that does not read"),
    (
        "--ping-interval",
        float,
        "seconds between keepalive pings; a peer whose pong is not "
        "back within half of it is dropped",
    ),
    (
        "--handshake-timeout",
        float,
        "seconds a connection may take to send a whole request (a socket's handshake); idle "
        "HTTP keep-alive connections are closed after it too",
    ),
    (
        "--body-timeout",
        float,
        "seconds an HTTP request body may take to arrive, however slowly it trickles; then "
        "408 and the connection is closed",
    ),
    (
        "--idle-timeout",
        float,
        "seconds without a frame in, an answer out or a task running before a socket is closed",
    ),
    ("--session-linger", float, "seconds results wait for a client that went away (resume)"),
    ("--drain-grace", float, "seconds in-flight tasks get to finish on SIGTERM"),
    ("--max-image-pixels", int, "largest image accepted, in pixels, checked before decoding"),
    (
        "--decode-timeout",
        float,
        "CPU seconds an image may take to decode before it is refused as invalidImage",
    ),
    ("--max-matting-pixels", int, "largest image accepted with alphaMatting, in pixels"),
    ("--max-download-bytes", int, "largest URL input downloaded"),
    (
        "--working-memory-bytes",
        int,
        "memory the images in the pipeline may take together; a task waits for room, then "
        "gets overloaded (default: half the machine's memory)",
    ),
    (
        "--s3-bucket",
        str,
        "keep images in this S3 bucket instead of --storage-dir; imageURL is "
        "then a presigned GET that expires with the image",
    ),
    ("--s3-endpoint", str, "the S3 API's URL, for S3-compatible stores (SeaweedFS, MinIO, ...)"),
    (
        "--s3-access-key",
        str,
        "S3 access key (default: AWS_ACCESS_KEY_ID and boto3's other sources)",
    ),
    ("--s3-secret-key", str, "S3 secret key (better given as RBG_S3_SECRET_KEY)"),
    ("--s3-region", str, "S3 region (signing)"),
    (
        "--redis",
        str,
        "redis://HOST:PORT/DB: the distributed mode (gateways and workers share "
        "queue, results and sessions there); none: everything in this process",
    ),
    (
        "--role",
        str,
        "with --redis: gateway (holds sockets, queues tasks), worker (runs the "
        "model on queued tasks) or all (both)",
    ),
    (
        "--claim-after",
        float,
        "with --redis: seconds a job may go unfinished before other "
        "workers take it over from its (dead) worker",
    ),
    ("--max-attempts", int, "with --redis: workers that may start one job before it fails"),
)


def _field(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Background-removal WebSocket service speaking the Runware task API.",
        epilog=f"Every flag can also be set by an environment variable: {ENV_PREFIX}<FLAG> "
        f"(e.g. {ENV_PREFIX}PORT, {ENV_PREFIX}API_KEY=k1,k2, {ENV_PREFIX}ALLOW_PRIVATE_URLS=1).",
    )
    for flag, kind, help_text in _SCALAR_FLAGS:
        field = _field(flag)
        from_env = _env(field.upper())
        default = kind(from_env) if from_env is not None else getattr(defaults, field)
        shown = "" if default is None else " (default %(default)s)"
        parser.add_argument(flag, type=kind, default=default, dest=field, help=help_text + shown)
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accepted API key; repeat for several. None given: any key is accepted",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        dest="allowed_origins",
        metavar="ORIGIN",
        help="a web page origin allowed to open sockets, e.g. https://app.example.com; "
        "repeatable (the service's own origin always is)",
    )
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        type=parse_model,
        metavar="ID=PATH[:FAMILY]",
        help="serve an ONNX file under a model id, e.g. runware:109@1=/m/rmbg-1.4.onnx; "
        f"FAMILY one of {', '.join(FAMILIES)} (default: from the input size, 320 u2net, "
        "1024 isnet)",
    )
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        default=_env_flag("ALLOW_PRIVATE_URLS"),
        help="let URL inputs, webhooks and uploads reach loopback/private addresses",
    )
    parser.add_argument(
        "--open-rembg-api",
        action="store_true",
        default=_env_flag("OPEN_REMBG_API"),
        help="serve /api/remove (rembg's HTTP API) without an API key: only on a trusted "
        "network (default: Authorization: Bearer KEY, as on /v1)",
    )
    parser.add_argument(
        "--decontaminate",
        action="store_true",
        default=_env_flag("DECONTAMINATE"),
        help="remove colour fringes on soft edges (settings.decontaminate) in the tasks that "
        "do not say",
    )
    parser.add_argument(
        "--allow-tf32",
        action="store_true",
        default=_env_flag("ALLOW_TF32"),
        help="let CUDA convolutions use TF32 on tensor cores: faster, masks no longer equal "
        "to rembg's (docs/models.md)",
    )
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        default=_env_flag("REUSE_PORT"),
        help="share the port with other service processes (SO_REUSEPORT): the kernel spreads "
        "new connections over them; with --redis they share sessions and results",
    )
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL") or defaults.log_level,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
    )
    return parser


def config_from_args(argv: list[str] | None = None) -> Config:
    values = vars(build_parser().parse_args(argv))
    if values["api_keys"] is None:
        values["api_keys"] = _env_list("API_KEY")
    if values["models"] is None:
        values["models"] = [parse_model(spec) for spec in _env_list("MODEL")]
    if values["allowed_origins"] is None:
        values["allowed_origins"] = _env_list("ALLOWED_ORIGIN")
    values["api_keys"], values["models"] = tuple(values["api_keys"]), tuple(values["models"])
    values["allowed_origins"] = tuple(values["allowed_origins"])
    if values["role"] not in ("all", "gateway", "worker"):
        build_parser().error(f"--role must be all, gateway or worker, not {values['role']!r}")
    if values["simulated_device"] is not None:
        try:
            parse_simulated_device(values["simulated_device"])
        except ValueError as error:
            build_parser().error(f"--simulated-device: {error}")
    return Config(**values)


def main(argv: list[str] | None = None) -> None:
    config = config_from_args(argv)
    reuse_freed_memory()
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiohttp").setLevel(
        max(logging.WARNING, logging.getLevelName(config.log_level))
    )
    from .app import PortUnavailable, run  # after logging is set up: loading models logs

    try:
        asyncio.run(run(config))
    except KeyboardInterrupt:
        pass
    except (ModelLoadError, PortUnavailable) as error:  # the message names the fix
        logging.getLogger("service").critical("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
