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
from pathlib import Path

from .config import Config, ModelOverride
from .models import FAMILIES

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
    """``ID=PATH`` or ``ID=PATH:FAMILY`` (FAMILY one of u2net, isnet)."""
    model_id, equals, rest = spec.partition("=")
    if not equals or not model_id or not rest:
        raise argparse.ArgumentTypeError(f"expected ID=PATH[:FAMILY], got {spec!r}")
    path, colon, family = rest.rpartition(":")
    if colon and family in FAMILIES:
        return ModelOverride(model_id, Path(path), family)
    return ModelOverride(model_id, Path(rest))


def build_parser() -> argparse.ArgumentParser:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Background-removal WebSocket service speaking the Runware task API.",
        epilog=f"Every flag can also be set by an environment variable: {ENV_PREFIX}<FLAG> "
               f"(e.g. {ENV_PREFIX}PORT, {ENV_PREFIX}API_KEY=k1,k2, {ENV_PREFIX}ALLOW_PRIVATE_URLS=1).",
    )
    add = parser.add_argument
    add("--host", default=_env("HOST") or defaults.host, help="address to listen on (default %(default)s)")
    add("--port", type=int, default=int(_env("PORT") or defaults.port), help="port (default %(default)s)")
    add("--api-key", action="append", dest="api_keys", metavar="KEY",
        help="accepted API key; repeat for several. None given: any key is accepted")
    add("--model", action="append", dest="models", type=parse_model, metavar="ID=PATH[:FAMILY]",
        help="serve an ONNX file under a model id, e.g. runware:109@1=/models/rmbg-1.4.onnx")
    add("--models-dir", type=Path, default=Path(_env("MODELS_DIR") or defaults.models_dir),
        help="every <name>.onnx here is served as model id <name> (default %(default)s)")
    add("--public-url", default=_env("PUBLIC_URL"),
        help="base URL of imageURL results (default http://HOST:PORT)")
    add("--allow-private-urls", action="store_true", default=_env_flag("ALLOW_PRIVATE_URLS"),
        help="let URL inputs, webhooks and uploads reach loopback/private addresses")
    add("--log-level", default=_env("LOG_LEVEL") or defaults.log_level,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    add("--storage-dir", type=Path, default=Path(_env("STORAGE_DIR") or defaults.storage_dir),
        help="where stored inputs and outputs live (default %(default)s)")
    add("--default-ttl", type=int, default=int(_env("DEFAULT_TTL") or defaults.default_ttl),
        help="seconds a stored image lives when the task sets no ttl (default %(default)s)")
    add("--price-per-image", type=float,
        default=float(_env("PRICE_PER_IMAGE") or defaults.price_per_image),
        help="cost reported per image with includeCost (default %(default)s)")
    add("--max-batch", type=int, default=int(_env("MAX_BATCH") or 0) or None,
        help="most images per inference call (default: 16 on CUDA, 1 on CPU)")
    add("--max-wait-ms", type=float, default=float(_env("MAX_WAIT_MS") or defaults.max_wait_ms),
        help="how long a batch waits to fill (default %(default)s ms)")
    add("--cpu-workers", type=int, default=int(_env("CPU_WORKERS") or 0) or None,
        help="threads for decode/matting/encode (default: one per core)")
    add("--inference-threads", type=int, default=int(_env("INFERENCE_THREADS") or 0) or None,
        help="onnxruntime intra-op threads (default: one per core)")
    add("--max-frame-bytes", type=int, default=int(_env("MAX_FRAME_BYTES") or defaults.max_frame_bytes),
        help="largest incoming WebSocket frame (default %(default)s)")
    add("--max-image-pixels", type=int,
        default=int(_env("MAX_IMAGE_PIXELS") or defaults.max_image_pixels),
        help="largest image accepted, in pixels, checked before decoding (default %(default)s)")
    add("--max-download-bytes", type=int,
        default=int(_env("MAX_DOWNLOAD_BYTES") or defaults.max_download_bytes),
        help="largest URL input downloaded (default %(default)s)")
    return parser


def config_from_args(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    api_keys = args.api_keys if args.api_keys is not None else _env_list("API_KEY")
    models = args.models if args.models is not None else [parse_model(s) for s in _env_list("MODEL")]
    return Config(
        host=args.host, port=args.port, api_keys=tuple(api_keys), models=tuple(models),
        models_dir=args.models_dir, public_url=args.public_url,
        allow_private_urls=args.allow_private_urls, log_level=args.log_level,
        storage_dir=args.storage_dir, default_ttl=args.default_ttl,
        price_per_image=args.price_per_image, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, cpu_workers=args.cpu_workers,
        inference_threads=args.inference_threads, max_frame_bytes=args.max_frame_bytes,
        max_image_pixels=args.max_image_pixels, max_download_bytes=args.max_download_bytes,
    )


def main(argv: list[str] | None = None) -> None:
    config = config_from_args(argv)
    logging.basicConfig(level=config.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLevelName(config.log_level)))
    from .server import run  # after logging is set up: loading models logs

    try:
        asyncio.run(run(config))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
