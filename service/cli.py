"""``python -m service.cli remove INPUT... --out DIR``: cut out files from the command line.

Sends every image (files, or every image in a folder) through the service over one socket,
writes each cutout as soon as it streams back, shows progress with images/s, and exits non-zero
listing the files that failed. Without ``--url`` it starts an in-process service for the run,
so it works on a machine with nothing running.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import websockets

__all__ = ["main", "collect_inputs"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
OUTPUT_SUFFIXES = {"PNG": ".png", "JPG": ".jpg", "WEBP": ".webp"}


def collect_inputs(paths: list[Path]) -> list[Path]:
    """Files as given, and the images directly inside any folder given (sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return found


def _settings(args: argparse.Namespace) -> dict:
    settings: dict = {}
    if args.alpha_matting:
        settings.update(
            alphaMatting=True,
            alphaMattingForegroundThreshold=args.foreground_threshold,
            alphaMattingBackgroundThreshold=args.background_threshold,
            alphaMattingErodeSize=args.erode_size,
        )
    if args.decontaminate:
        settings["decontaminate"] = True
    if args.post_process_mask:
        settings["postProcessMask"] = True
    if args.only_mask:
        settings["returnOnlyMask"] = True
    if args.background:
        settings["rgba"] = [int(v) for v in args.background.split(",")]
    return settings


@dataclass
class _Run:
    total: int
    done: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def progress(self) -> str:
        elapsed = time.monotonic() - self.started
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        rate = self.done / elapsed if elapsed > 0 else 0.0
        return (
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{rate:.2f} img/s, {len(self.failures)} failed"
        )


@contextlib.asynccontextmanager
async def _in_process_service() -> AsyncIterator[str]:
    """A whole service on a free loopback port, for this run only."""
    import logging

    from .app import build_app, serve
    from .config import Config
    from .imaging.pipeline import warm_up

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s: %(message)s")
    # The run's own output is the report, but a stand-in model must not pass unnoticed: the
    # registry's warning is printed as the server logs it.
    logging.getLogger("service.inference.registry").setLevel(logging.WARNING)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="rbg-cli-") as storage:
        models = Path(__file__).resolve().parent.parent / "models"  # where make install puts them
        config = Config(port=port, storage_dir=Path(storage), models_dir=models)
        app = await asyncio.to_thread(build_app, config)
        await asyncio.to_thread(warm_up)
        server = await serve(app)
        try:
            yield f"ws://127.0.0.1:{port}"
        finally:
            await server.close()
            await app.close()


async def _remove(args: argparse.Namespace, files: list[Path], url: str) -> _Run:
    run = _Run(total=len(files))
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = OUTPUT_SUFFIXES[args.format]
    settings = _settings(args)
    pending: dict[str, Path] = {}
    window = asyncio.Semaphore(args.window)
    show = sys.stderr.isatty() and not args.quiet

    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": args.api_key}]))
        reply = json.loads(await ws.recv())
        if "data" not in reply:
            raise SystemExit(f"authentication failed: {reply['errors'][0]['message']}")

        async def send_all() -> None:
            for path in files:
                await window.acquire()
                task_uuid = str(uuid.uuid4())
                pending[task_uuid] = path
                try:
                    image = base64.b64encode(path.read_bytes()).decode()
                except OSError as error:
                    pending.pop(task_uuid)
                    window.release()
                    run.failures.append((path, str(error)))
                    run.done += 1
                    continue
                task = {
                    "taskType": "removeBackground",
                    "taskUUID": task_uuid,
                    "inputs": {"image": image},
                    "outputType": "base64Data",
                    "outputFormat": args.format,
                    "outputQuality": args.quality,
                }
                if args.model:
                    task["model"] = args.model
                if settings:
                    task["settings"] = settings
                await ws.send(json.dumps([task]))

        sending = asyncio.create_task(send_all())
        while not (sending.done() and not pending) and run.done < run.total:
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
            except TimeoutError:
                continue
            for kind in ("data", "errors"):
                for item in frame.get(kind, []):
                    path = pending.pop(item.get("taskUUID"), None)
                    if path is None:
                        continue
                    window.release()
                    run.done += 1
                    if kind == "errors":
                        run.failures.append((path, f"{item['code']}: {item['message']}"))
                    else:
                        (out_dir / (path.stem + suffix)).write_bytes(
                            base64.b64decode(item["imageBase64Data"])
                        )
            if show:
                print(run.progress(), end="", file=sys.stderr, flush=True)
        await sending
    if show:
        print(run.progress(), file=sys.stderr)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.cli", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    remove = commands.add_parser("remove", help="remove the background of image files")
    add = remove.add_argument
    add("inputs", nargs="+", type=Path, help="image files, or folders of images")
    add("--out", type=Path, required=True, help="folder for the cutouts (NAME.png, ...)")
    add("--url", help="a running service (ws://HOST:PORT); default: start one in-process")
    add("--api-key", default="cli", help="API key for --url (default %(default)s)")
    add("--model", help="model id (default: the service's runware:109@1)")
    add(
        "--format",
        choices=sorted(OUTPUT_SUFFIXES),
        default="PNG",
        help="output format (default PNG)",
    )
    add("--quality", type=int, default=95, help="JPG/WEBP quality 20-99 (default 95)")
    add("--alpha-matting", action="store_true", help="refine edges with alpha matting")
    add("--foreground-threshold", type=int, default=240)
    add("--background-threshold", type=int, default=10)
    add("--erode-size", type=int, default=10)
    add(
        "--decontaminate",
        action="store_true",
        help="the true foreground colour under soft edges, no halo (like rembg -dc)",
    )
    add("--post-process-mask", action="store_true")
    add("--only-mask", action="store_true", help="write the mask instead of the cutout")
    add("--background", metavar="R,G,B,A", help="background colour, e.g. 255,255,255,255")
    add("--window", type=int, default=4, help="images in flight at once (default %(default)s)")
    add("--quiet", action="store_true", help="no progress bar")
    return parser


async def _main(args: argparse.Namespace) -> int:
    files = collect_inputs(args.inputs)
    if not files:
        print("no images found", file=sys.stderr)
        return 2
    if args.url:
        run = await _remove(args, files, args.url)
    else:
        async with _in_process_service() as url:
            run = await _remove(args, files, url)
    ok = run.total - len(run.failures)
    print(f"{ok} of {run.total} written to {args.out}")
    for path, reason in run.failures:
        print(f"failed: {path}: {reason}", file=sys.stderr)
    return 1 if run.failures else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
