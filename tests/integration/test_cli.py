"""python -m service.cli remove: files and folders through the service, cutouts written."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from service.inference.registry import STAND_IN_WARNING
from tests.support import FIXTURES, ROOT, UNIT, open_image


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "remove", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300 * UNIT,
    )


def test_in_process_service_writes_cutouts_and_lists_failures(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(FIXTURES / "car-1.jpg", inputs / "car-1.jpg")
    (inputs / "broken.png").write_bytes(b"not really a png")
    (inputs / "notes.txt").write_text("ignored: not an image suffix")
    finished = cli(str(inputs), "--out", str(tmp_path / "out"))
    assert finished.returncode == 1
    assert "1 of 2 written" in finished.stdout
    assert "broken.png: invalidImage" in finished.stderr
    # no RMBG-1.4 file here: the default model is the embedded stand-in, and the run says so
    assert f"WARNING: {STAND_IN_WARNING}" in finished.stderr
    cutout = open_image((tmp_path / "out" / "car-1.png").read_bytes())
    assert cutout.mode == "RGBA" and cutout.size == (480, 360)


def test_a_running_service_with_settings(server, tmp_path):
    finished = cli(
        str(FIXTURES / "car-1.jpg"),
        str(FIXTURES / "anime-girl-1.jpg"),
        "--out",
        str(tmp_path),
        "--url",
        server.ws_url,
        "--only-mask",
        "--format",
        "JPG",
        "--quality",
        "80",
    )
    assert finished.returncode == 0, finished.stderr
    assert "2 of 2 written" in finished.stdout
    mask = open_image((tmp_path / "anime-girl-1.jpg").read_bytes())
    assert mask.format == "JPEG" and mask.mode == "L" and mask.size == (850, 601)


def test_decontaminate_reaches_the_service(server, tmp_path):
    finished = cli(
        str(FIXTURES / "car-1.jpg"),
        "--out",
        str(tmp_path),
        "--url",
        server.ws_url,
        "--decontaminate",
    )
    assert finished.returncode == 0, finished.stderr
    ours = np.asarray(open_image((tmp_path / "car-1.png").read_bytes()).convert("RGBA"), np.int16)
    golden = np.asarray(
        Image.open(FIXTURES / "golden" / "car-1.decontaminated.png").convert("RGBA"), np.int16
    )
    visible = golden[..., 3] > 0
    assert np.abs(ours[visible][:, :3] - golden[visible][:, :3]).mean() <= 1.0
