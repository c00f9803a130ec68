"""python -m service.cli remove: files and folders through the service, cutouts written."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from service.inference.registry import STAND_IN_WARNING
from service.net.loopback import free_port
from tests.support import FIXTURES, ROOT, UNIT, open_image


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The command as a user runs it; stdout and stderr as bytes and text."""
    finished = subprocess.run(
        [sys.executable, "-m", "service.cli", "remove", *args],
        cwd=ROOT,
        capture_output=True,
        input=stdin if stdin is not None else b"",
        timeout=300 * UNIT,
    )
    finished.stdout_bytes = finished.stdout
    finished.stdout = finished.stdout.decode(errors="replace")
    finished.stderr = finished.stderr.decode(errors="replace")
    return finished


def car_into(folder, url: str, *flags: str) -> subprocess.CompletedProcess:
    """car-1.jpg cut out into ``folder`` by the service at ``url``."""
    return cli(str(FIXTURES / "car-1.jpg"), "--out", str(folder), "--url", url, *flags)


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
    finished = car_into(tmp_path, server.ws_url, "--decontaminate")
    assert finished.returncode == 0, finished.stderr
    ours = np.asarray(open_image((tmp_path / "car-1.png").read_bytes()).convert("RGBA"), np.int16)
    golden = np.asarray(
        Image.open(FIXTURES / "golden" / "car-1.decontaminated.png").convert("RGBA"), np.int16
    )
    visible = golden[..., 3] > 0
    assert np.abs(ours[visible][:, :3] - golden[visible][:, :3]).mean() <= 1.0


def test_stdin_to_stdout_as_in_a_pipe(server):
    finished = cli(
        "-", "-o", "-", "--url", server.ws_url, stdin=(FIXTURES / "car-1.jpg").read_bytes()
    )
    assert finished.returncode == 0, finished.stderr
    cutout = open_image(finished.stdout_bytes)
    assert cutout.format == "PNG" and cutout.size == (480, 360)
    assert "1 of 1 written" in finished.stderr  # the report keeps out of the image's way


def test_cutouts_go_beside_inputs_and_are_not_overwritten_without_force(server, tmp_path):
    source = tmp_path / "car-1.jpg"
    shutil.copy(FIXTURES / "car-1.jpg", source)
    target = tmp_path / "car-1.out.png"
    assert cli(str(source), "--url", server.ws_url).returncode == 0
    assert open_image(target.read_bytes()).size == (480, 360)
    target.write_bytes(b"keep me")
    refused = cli(str(source), "--url", server.ws_url)
    assert refused.returncode == 2 and "would overwrite" in refused.stderr
    assert "--force" in refused.stderr and target.read_bytes() == b"keep me"
    assert cli(str(source), "--url", server.ws_url, "--force").returncode == 0
    assert open_image(target.read_bytes()).format == "PNG"


def test_folders_recursively_and_own_outputs_left_out(server, tmp_path):
    (tmp_path / "sub").mkdir()
    shutil.copy(FIXTURES / "car-1.jpg", tmp_path / "top.jpg")
    shutil.copy(FIXTURES / "car-1.jpg", tmp_path / "sub" / "deep.jpg")
    flat = cli(str(tmp_path), "--url", server.ws_url)
    assert flat.returncode == 0 and "1 of 1 written" in flat.stdout
    assert (tmp_path / "top.out.png").exists() and not (tmp_path / "sub" / "deep.out.png").exists()
    deep = cli(str(tmp_path), "-r", "--force", "--url", server.ws_url, "--out", str(tmp_path / "o"))
    assert deep.returncode == 0 and "2 of 2 written" in deep.stdout  # not top.out.png
    assert (tmp_path / "o" / "top.png").exists() and (tmp_path / "o" / "sub" / "deep.png").exists()


@pytest.mark.parametrize("force", [(), ("--force",)])
def test_inputs_that_would_write_the_same_file_are_refused_before_any_work(server, tmp_path, force):
    """colA/x.jpg and colB/x.jpg into one --out folder printed "2 of 2 written" and left one
    file; stem/a.jpg and stem/a.png both became a.out.png. Refused with the list, exit 2."""
    for folder in ("colA", "colB", "stem"):
        (tmp_path / folder).mkdir()
    shutil.copy(FIXTURES / "car-1.jpg", tmp_path / "colA" / "x.jpg")
    shutil.copy(FIXTURES / "car-2.jpg", tmp_path / "colB" / "x.jpg")
    shutil.copy(FIXTURES / "car-1.jpg", tmp_path / "stem" / "a.jpg")
    open_image((FIXTURES / "car-2.jpg").read_bytes()).save(tmp_path / "stem" / "a.png")
    out = tmp_path / "colout"
    folders = cli(
        str(tmp_path / "colA"),
        str(tmp_path / "colB"),
        "--out",
        str(out),
        "--url",
        server.ws_url,
        *force,
    )
    assert folders.returncode == 2 and "would write the same file" in folders.stderr
    assert "colA/x.jpg" in folders.stderr and "colB/x.jpg" in folders.stderr
    assert not out.exists()  # nothing was sent, nothing written
    stems = cli(str(tmp_path / "stem"), "--url", server.ws_url, *force)
    assert stems.returncode == 2 and "a.out.png" in stems.stderr
    assert not (tmp_path / "stem" / "a.out.png").exists()
    apart = cli(
        str(tmp_path / "colA"), "--out", str(tmp_path / "a"), "--url", server.ws_url, *force
    )
    assert apart.returncode == 0 and (tmp_path / "a" / "x.png").exists()


def test_watch_cuts_out_each_new_image_until_interrupted(server, tmp_path):
    watched = tmp_path / "incoming"
    watched.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "remove", str(watched), "--watch"]
        + ["--url", server.ws_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        shutil.copy(FIXTURES / "car-1.jpg", watched / "new.jpg")
        target = watched / "new.out.png"
        deadline = time.monotonic() + 60 * UNIT
        while not target.exists():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the new image was never cut out"
            time.sleep(0.2)
        assert open_image(target.read_bytes()).size == (480, 360)
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30 * UNIT)
    assert process.returncode == 0, stderr
    assert "1 of 1 written" in stdout and "Traceback" not in stderr


def test_an_unreachable_server_is_one_line_not_a_traceback(tmp_path):
    dead = free_port()  # nothing listens on it
    finished = car_into(tmp_path, f"ws://127.0.0.1:{dead}")
    assert finished.returncode == 2
    assert finished.stderr.startswith(f"error: cannot reach the service at ws://127.0.0.1:{dead}")
    assert len(finished.stderr.strip().splitlines()) == 1


def test_the_background_colour_is_checked_before_anything_is_sent(server, tmp_path):
    bad = car_into(tmp_path, "ws://127.0.0.1:1", "--background", "1,2")
    assert (
        bad.returncode == 2
        and "R,G,B or R,G,B,A" in bad.stderr
        and "cannot reach" not in bad.stderr
    )
    opaque = car_into(tmp_path, server.ws_url, "--background", "0,0,255")
    assert opaque.returncode == 0, opaque.stderr
    pixels = np.asarray(open_image((tmp_path / "car-1.png").read_bytes()).convert("RGBA"))
    assert pixels[..., 3].min() == 255 and tuple(pixels[2, 2]) == (0, 0, 255, 255)


def test_progress_is_a_line_not_a_redrawn_bar_when_not_a_terminal(server, tmp_path):
    finished = car_into(tmp_path, server.ws_url)
    assert "\r" not in finished.stderr and "1/1 done" in finished.stderr


def test_every_option_has_help(capsys):
    """Read from the printed help: an entry without help is its invocation alone on a line,
    followed by the next entry rather than by an indented description."""
    from service.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["remove", "--help"])
    lines = capsys.readouterr().out.splitlines()
    entries = [i for i, line in enumerate(lines) if re.match(r"  [-A-Z]", line)]
    assert len(entries) > 15
    for i in entries:
        described_here = re.search(r"\S\s{2,}\S", lines[i].strip())
        continued = i + 1 < len(lines) and lines[i + 1].startswith(" " * 4)
        assert described_here or continued, f"{lines[i].strip()} has no help"


def test_the_in_process_service_serves_a_model_file_and_quiet_prints_nothing(tmp_path, fast_model):
    """--model ID=PATH[:FAMILY], which the stand-in warning recommends, was refused by the CLI;
    --quiet still printed the report on success."""
    source = tmp_path / "car-1.jpg"
    shutil.copy(FIXTURES / "car-1.jpg", source)
    spec = f"runware:109@1={fast_model}:u2net"
    done = cli(str(source), "--model", spec, "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert open_image((tmp_path / "car-1.out.png").read_bytes()).size == (480, 360)
    with_url = cli(str(source), "--force", "--model", spec, "--url", "ws://127.0.0.1:9")
    assert with_url.returncode == 2 and "with --url give a model id" in with_url.stderr
    missing = cli(str(source), "--force", "--model", "x=/no/such.onnx")
    assert missing.returncode == 2 and "no file at /no/such.onnx" in missing.stderr
