"""The browser page in headless Chromium (Debian's package; make test installs it if missing)."""

from __future__ import annotations

import json
import shutil
import subprocess

from tests.support import FIXTURES, ROOT, UNIT, http_get

JS = ROOT / "tests" / "js"
ARTIFACTS = ROOT / "tests" / "artifacts"


def test_the_page_is_plain_html_from_the_service(server):
    status, headers, body = http_get(f"{server.http_url}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<script src" not in body and b"https://" not in body  # no CDN, nothing external


def test_a_photo_dropped_on_the_page_comes_back_as_a_cutout(server, tmp_path):
    assert shutil.which("chromium"), "Debian's chromium is needed (make test installs it)"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "browser-cutout.png"
    config = tmp_path / "browser.json"
    config.write_text(
        json.dumps(
            {
                "url": f"{server.http_url}/",
                "image": str(FIXTURES / "car-1.jpg"),
                "screenshot": str(screenshot),
                "model": "u2netp",
                "decontaminate": True,
            }
        )
    )
    finished = subprocess.run(
        ["node", "browser_page.mjs", str(config)],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=240 * UNIT,
    )
    assert finished.returncode == 0, finished.stderr
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    assert (result["width"], result["height"]) == (480, 360)
    assert result["transparent"] > 1000 and result["visible"] > 1000  # a cutout, not a copy
    assert result["caption"].startswith("car-1.jpg") and result["download"] == "car-1.png"
    assert screenshot.stat().st_size > 10_000
    assert result["foreign"] == "refused"
    # The picker lists every model the server serves, starting on the default, whose
    # stand-in is marked; the task carries what was picked.
    assert len(result["models"]) == 4 and result["chosenModel"] == "runware:109@1"
    [stand_in] = [text for text in result["models"] if "stand-in" in text]
    assert stand_in.startswith("runware:109@1") and "u2netp.onnx" in stand_in
    assert "embedded u2netp.onnx" in result["modelNote"] and result["noteAfterPicking"] == ""
    assert result["sentModel"] == "u2netp" and result["sentDecontaminate"] is True
