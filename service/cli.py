"""``python -m service.cli remove INPUT...``: cut out images from the command line, as people
use rembg's ``i`` and ``p`` commands.

Sends every image (files, every image in a folder, or stdin as ``-``) through the service over
one socket, writes each cutout as soon as it streams back, shows progress, and exits non-zero
listing the files that failed. Cutouts go beside their inputs as ``NAME.out.png`` unless
``--out`` names a folder, a file, or ``-`` (stdout); an existing file is not overwritten without
``--force``. ``--watch`` keeps going, cutting out each new image that appears in the folders.
Without ``--url`` it starts an in-process service for the run, so it works on a machine with
nothing running.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from protocol.errors import ErrorItem
from protocol.messages import parse_rgba

from .config import ModelOverride
from .inference.registry import parse_model_spec
from .progress import StatusLine, bar
from .protocol_client import ProtocolClient, Refused, Unreachable

__all__ = ["main", "collect_inputs", "parse_colour"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
OUTPUT_SUFFIXES = {"PNG": ".png", "JPG": ".jpg", "WEBP": ".webp"}
OUTPUT_MARK = ".out"  # NAME.out.png: our own outputs, never taken as inputs
STDIO = "-"
_WATCH_INTERVAL_S = 0.5
_PROGRESS_LINE_EVERY_S = 5.0


class UsageError(Exception):
    """A mistake in the command line, found before anything is sent."""


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith(OUTPUT_MARK)


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(path for path in found if path.is_file() and _is_image(path))


def collect_inputs(paths: list[Path], recursive: bool = False) -> list[Path]:
    """Files as given, and the images inside any folder given (with ``recursive``, in its
    subfolders too), sorted; our own ``*.out.*`` files are left out."""
    found: list[Path] = []
    for path in paths:
        found += _images_in(path, recursive) if path.is_dir() else [path]
    return found


def parse_colour(text: str) -> list[int]:
    """``--background``: ``R,G,B`` (opaque) or ``R,G,B,A``, checked by argparse."""
    try:
        return parse_rgba(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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
        settings["rgba"] = args.background
    return settings


# --------------------------------------------------------------------------- where cutouts go


@dataclass(frozen=True)
class Removal:
    """One image to cut out: where it comes from (a file, or stdin), where its cutout goes."""

    source: Path | None  # None: stdin
    target: Path | None  # None: stdout

    @property
    def name(self) -> str:
        return str(self.source) if self.source is not None else "stdin"

    def read(self) -> bytes:
        return self.source.read_bytes() if self.source is not None else sys.stdin.buffer.read()

    def write(self, data: bytes) -> None:
        if self.target is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        self.target.parent.mkdir(parents=True, exist_ok=True)
        partial = self.target.with_name(self.target.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, self.target)  # a watcher of the folder never sees half a file


class OutputPaths:
    """Where the cutout of each input goes, by ``--out``: beside the input (NAME.out.png),
    into a folder (NAME.png, folders given keep their subfolders), one file, or stdout."""

    def __init__(self, out: str | None, suffix: str, inputs: list[str]) -> None:
        self._suffix = suffix
        self._stdout = out == STDIO or (out is None and inputs == [STDIO])
        self._file: Path | None = None
        self._folder: Path | None = None
        if out is not None and not self._stdout:
            path = Path(out)
            single = len(inputs) == 1 and not Path(inputs[0]).is_dir()
            if single and path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir():
                self._file = path
            else:
                self._folder = path
        if self._stdout and (len(inputs) != 1 or Path(inputs[0]).is_dir()):
            raise UsageError("--out - (stdout) takes exactly one input file or -")
        if inputs.count(STDIO) and (len(inputs) != 1):
            raise UsageError("- (stdin) must be the only input")
        self._roots = [Path(i) for i in inputs if i != STDIO and Path(i).is_dir()]

    def removal(self, source: Path | None) -> Removal:
        if self._stdout:
            return Removal(source, None)
        if source is None:  # stdin into a file or folder
            target = self._file or (self._folder or Path.cwd()) / f"stdin{self._suffix}"
            return Removal(None, target)
        if self._file is not None:
            return Removal(source, self._file)
        if self._folder is not None:
            return Removal(source, self._folder / self._relative(source).with_suffix(self._suffix))
        return Removal(source, source.with_name(source.stem + OUTPUT_MARK + self._suffix))

    def _relative(self, source: Path) -> Path:
        for root in self._roots:
            if source.is_relative_to(root):
                return source.relative_to(root)
        return Path(source.name)


def _refuse_collisions(removals: Iterable[Removal]) -> None:
    """Two inputs whose cutouts would land on one file (colA/x.jpg and colB/x.jpg into one
    --out folder, a.jpg and a.png beside each other): refused before any work, --force or not,
    since one cutout would silently replace the other."""
    sources: dict[Path, list[str]] = {}
    for removal in removals:
        if removal.target is not None:
            sources.setdefault(removal.target.resolve(), []).append(removal.name)
    clashes = [(target, names) for target, names in sources.items() if len(names) > 1]
    if clashes:
        shown = "; ".join(f"{', '.join(names)} -> {target}" for target, names in clashes[:5])
        more = f" and {len(clashes) - 5} more" if clashes[5:] else ""
        raise UsageError(
            f"these inputs would write the same file: {shown}{more}; give them separate "
            "--out folders, or rename one"
        )


def _refuse_overwrites(removals: Iterable[Removal]) -> None:
    existing = [
        str(removal.target)
        for removal in removals
        if removal.target is not None and removal.target.exists()
    ]
    if existing:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if existing[3:] else "")
        raise UsageError(f"would overwrite {shown}; pass --force to replace")


# --------------------------------------------------------------------------- progress


@dataclass
class _Run:
    total: int | None  # None: watching, no end known
    done: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        counted = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        return f"{counted} done, {rate:.2f} img/s, {len(self.failures)} failed"

    def bar(self) -> str:
        if self.total is None:
            return self.summary()
        return f"{bar(self.done / self.total if self.total else 1.0)} {self.summary()}"


class _Progress:
    """The run's progress line (service.progress): a bar on a terminal, the summary elsewhere;
    nothing with --quiet."""

    def __init__(self, run: _Run, quiet: bool) -> None:
        self._run = run
        self._line = None if quiet else StatusLine(sys.stderr, every_s=_PROGRESS_LINE_EVERY_S)

    def update(self, final: bool = False) -> None:
        if self._line is not None:
            text = self._run.bar() if self._line.tty else self._run.summary()
            self._line.show(text, final=final)

    def finish(self) -> None:
        self.update(final=True)


# --------------------------------------------------------------------------- the service


@contextlib.asynccontextmanager
async def _in_process_service(models: tuple[ModelOverride, ...] = ()) -> AsyncIterator[str]:
    """A whole service on a free loopback port, for this run only, serving ``models`` beside
    the embedded one."""
    import logging

    from .app import build_app, serve
    from .config import Config
    from .imaging.pipeline import warm_up
    from .net.loopback import free_port

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s: %(message)s")
    # The run's own output is the report, but a stand-in model must not pass unnoticed: the
    # registry's warning is printed as the server logs it.
    logging.getLogger("service.inference.registry").setLevel(logging.WARNING)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="rbg-cli-") as storage:
        models_dir = Path(__file__).resolve().parent.parent / "models"  # make install's
        config = Config(port=port, storage_dir=Path(storage), models_dir=models_dir, models=models)
        app = await asyncio.to_thread(build_app, config)
        await asyncio.to_thread(warm_up)
        server = await serve(app)
        try:
            yield f"ws://127.0.0.1:{port}"
        finally:
            await server.close()
            await app.close()


def _task(args: argparse.Namespace, image: bytes, settings: dict) -> dict:
    task = {
        "taskType": "removeBackground",
        "taskUUID": str(uuid.uuid4()),
        "inputs": {"image": base64.b64encode(image).decode()},
        "outputType": "base64Data",
        "outputFormat": args.format,
        "outputQuality": args.quality,
    }
    if args.model:
        task["model"] = args.model.partition("=")[0]  # an ID=PATH file is served as ID
    if settings:
        task["settings"] = settings
    return task


async def _remove(
    args: argparse.Namespace, removals: asyncio.Queue[Removal | None], run: _Run, url: str
) -> None:
    """Cut out every removal the queue gives until it gives None, over one socket, ``--window``
    images in flight; each cutout is written as it arrives."""
    settings = _settings(args)
    pending: dict[str, Removal] = {}
    window = asyncio.Semaphore(args.window)
    progress = _Progress(run, args.quiet or args.out == STDIO)

    def failed(removal: Removal, reason: str) -> None:
        run.failures.append((removal.name, reason))
        run.done += 1

    try:
        client = await ProtocolClient.connect(url, args.api_key)
    except Unreachable as error:
        raise UsageError(str(error)) from None
    except Refused as refused:
        raise UsageError(f"authentication failed: {refused.error.message}") from None
    async with client:

        async def send_all() -> None:
            while (removal := await removals.get()) is not None:
                await window.acquire()
                try:
                    image = await asyncio.to_thread(removal.read)
                except OSError as error:
                    window.release()
                    failed(removal, str(error))
                    continue
                task = _task(args, image, settings)
                pending[task["taskUUID"]] = removal
                await client.send([task])

        sending = asyncio.create_task(send_all())
        try:
            while not (sending.done() and not pending):
                try:
                    frame = await client.frame(1.0)
                except TimeoutError:
                    continue
                for item in frame.items():
                    removal = pending.pop(item.taskUUID or "", None)
                    if removal is None:
                        continue
                    window.release()
                    if isinstance(item, ErrorItem):
                        failed(removal, f"{item.code}: {item.message}")
                    else:
                        data = base64.b64decode(item.imageBase64Data or "")
                        await asyncio.to_thread(removal.write, data)
                        run.done += 1
                progress.update()
            await sending
        finally:
            sending.cancel()
    progress.finish()


async def _watch(
    folders: list[Path],
    recursive: bool,
    removal_for: Callable[[Path], Removal],
    removals: asyncio.Queue,
    seen: set[Path],
) -> None:
    """Queue each image that appears in ``folders`` and is not in ``seen`` (those already
    planned), once its size has stopped changing (a file still being copied is not taken
    half-written). Forever."""
    sizes: dict[Path, int] = {}
    while True:
        await asyncio.sleep(_WATCH_INTERVAL_S)
        for path in (p for folder in folders for p in _images_in(folder, recursive)):
            if path in seen:
                continue
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                if sizes.get(path) == size and size > 0:
                    seen.add(path)
                    del sizes[path]
                    await removals.put(removal_for(path))
                else:
                    sizes[path] = size


# --------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.cli",
        description="Cut out images from the command line, as people use rembg's i and p "
        "commands: python -m service.cli remove INPUT...",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    remove = commands.add_parser(
        "remove",
        help="remove the background of image files",
        description="Cut out images: files, folders of images, or - for stdin.",
    )
    add = remove.add_argument
    add("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or - (stdin)")
    add(
        "-o",
        "--out",
        metavar="OUT",
        help="where cutouts go: a folder, a file (one input), or - (stdout); "
        "default: beside each input as NAME.out.png (stdout for stdin)",
    )
    add("--force", action="store_true", help="overwrite existing output files")
    add("-r", "--recursive", action="store_true", help="take images in subfolders too")
    add(
        "-w",
        "--watch",
        action="store_true",
        help="after the images there now, keep cutting out each new image that appears in the "
        "folders given, until Ctrl-C",
    )
    add("--url", help="a running service (ws://HOST:PORT); default: start one in-process")
    add("--api-key", default="cli", help="API key for --url (default %(default)s)")
    add(
        "--model",
        help="model id (default: the service's runware:109@1); without --url also "
        "ID=PATH[:FAMILY], an ONNX file served under ID for the run, as the service's --model",
    )
    add(
        "--format",
        choices=sorted(OUTPUT_SUFFIXES),
        default="PNG",
        help="output format (default PNG)",
    )
    add("--quality", type=int, default=95, help="JPG/WEBP quality 20-99 (default 95)")
    add("--alpha-matting", action="store_true", help="refine edges with alpha matting")
    add(
        "--foreground-threshold",
        type=int,
        default=240,
        help="alpha matting: mask values above this are sure foreground (1-255, default 240)",
    )
    add(
        "--background-threshold",
        type=int,
        default=10,
        help="alpha matting: mask values below this are sure background (1-255, default 10)",
    )
    add(
        "--erode-size",
        type=int,
        default=10,
        help="alpha matting: how far the sure regions are eroded, pixels (1-255, default 10)",
    )
    add(
        "--decontaminate",
        action="store_true",
        help="the true foreground colour under soft edges, no halo (like rembg -dc)",
    )
    add(
        "--post-process-mask",
        action="store_true",
        help="smooth the mask's edges and remove specks (like rembg -ppm)",
    )
    add("--only-mask", action="store_true", help="write the mask instead of the cutout")
    add(
        "--background",
        metavar="R,G,B[,A]",
        type=parse_colour,
        help="background colour, e.g. 255,255,255 (opaque) or 255,255,255,128",
    )
    add("--window", type=int, default=4, help="images in flight at once (default %(default)s)")
    add(
        "--quiet",
        action="store_true",
        help="print nothing on success: no progress, no report (failures are still listed)",
    )
    return parser


@dataclass(frozen=True)
class _Plan:
    outputs: OutputPaths
    removals: list[Removal]  # the images there when the command was given
    folders: list[Path]  # the folders to watch with --watch


def _plan(args: argparse.Namespace) -> _Plan:
    """The removals for what is there now, and the folders to watch: every usage error is found
    here, before a service starts and anything is sent."""
    names = [str(i) for i in args.inputs]
    outputs = OutputPaths(args.out, OUTPUT_SUFFIXES[args.format], names)
    missing = [n for n in names if n != STDIO and not Path(n).exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    folders = [Path(n) for n in names if n != STDIO and Path(n).is_dir()]
    if args.watch and (not folders or len(folders) != len(names)):
        raise UsageError("--watch takes folders only")
    if names == [STDIO]:
        removals = [outputs.removal(None)]
    else:
        removals = [
            outputs.removal(p) for p in collect_inputs([Path(n) for n in names], args.recursive)
        ]
    _refuse_collisions(removals)
    if not args.force:
        _refuse_overwrites(removals)
    return _Plan(outputs, removals, folders)


async def _run(args: argparse.Namespace, url: str, plan: _Plan) -> _Run:
    run = _Run(total=None if args.watch else len(plan.removals))
    removals: asyncio.Queue[Removal | None] = asyncio.Queue()
    for removal in plan.removals:
        removals.put_nowait(removal)
    if not args.watch:
        removals.put_nowait(None)
        await _remove(args, removals, run, url)
        return run
    planned_sources = {removal.source for removal in plan.removals if removal.source is not None}
    watching = asyncio.create_task(
        _watch(plan.folders, args.recursive, plan.outputs.removal, removals, planned_sources)
    )

    def stop() -> None:  # Ctrl-C or SIGTERM: finish what was sent, then report
        watching.cancel()
        removals.put_nowait(None)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        await _remove(args, removals, run, url)
    finally:
        watching.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return run


def _model_files(args: argparse.Namespace) -> tuple[ModelOverride, ...]:
    """``--model ID=PATH[:FAMILY]``: the file the in-process service serves under ID."""
    if not args.model or "=" not in args.model:
        return ()
    if args.url:
        raise UsageError("--model ID=PATH serves a file in-process: with --url give a model id")
    try:
        override = parse_model_spec(args.model)
    except ValueError as error:
        raise UsageError(f"--model: {error}") from None
    if not override.path.is_file():
        raise UsageError(f"--model: no file at {override.path}")
    return (override,)


async def _main(args: argparse.Namespace) -> int:
    plan = _plan(args)
    models = _model_files(args)
    if args.url:
        run = await _run(args, args.url, plan)
    else:
        async with _in_process_service(models) as url:
            run = await _run(args, url, plan)
    ok = run.done - len(run.failures)
    report = sys.stderr if args.out == STDIO or args.inputs == [STDIO] else sys.stdout
    if not (args.quiet and not run.failures):  # --quiet: nothing on success
        print(f"{ok} of {run.done} written", file=report)
    for name, reason in run.failures:
        print(f"failed: {name}: {reason}", file=sys.stderr)
    return 1 if run.failures else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the run began
        return 130


if __name__ == "__main__":
    sys.exit(main())
