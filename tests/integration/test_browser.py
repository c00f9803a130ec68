"""The browser page in headless Chromium (Debian's package; make test installs it if missing)."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np

from tests.support import FIXTURES, ROOT, http_get, open_image, run_js

ARTIFACTS = ROOT / "tests" / "artifacts"


def run_in_chromium(script: str, *args: str, timeout: float) -> dict:
    """Run one of tests/js's Chromium scripts; the JSON object it printed last."""
    assert shutil.which("chromium"), "Debian's chromium is needed (make test installs it)"
    return run_js(script, *args, timeout=timeout)


def test_the_page_is_plain_html_from_the_service(server):
    status, headers, body = http_get(f"{server.http_url}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<script src" not in body and b"https://" not in body  # no CDN, nothing external


def test_a_photo_dropped_on_the_page_comes_back_as_a_cutout(server, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not really a jpeg")
    config = tmp_path / "browser.json"
    config.write_text(
        json.dumps(
            {
                "url": f"{server.http_url}/",
                "image": str(FIXTURES / "car-1.jpg"),
                "broken": str(broken),
                "artifacts": str(ARTIFACTS),
                "model": "u2netp",
                "decontaminate": True,
            }
        )
    )
    result = run_in_chromium("browser_page.mjs", str(config), timeout=240)

    # The settings: the picker from GET /v1/models, the stand-in marked; matting thresholds
    # only with the matting switch; an opaque background colour by default, labelled.
    assert result["favicon"].startswith("data:image/svg+xml")
    assert len(result["models"]) == 4 and result["chosenModel"] == "runware:109@1"
    [stand_in] = [text for text in result["models"] if "stand-in" in text]
    assert stand_in.startswith("runware:109@1") and "u2netp.onnx" in stand_in
    assert "embedded u2netp.onnx" in result["modelNote"] and result["noteAfterPicking"] == ""
    assert result["mattingDisabledAtFirst"] and result["mattingEnabledWithSwitch"]
    assert result["mattingDisabledAgain"] and result["colourDisabledAtFirst"]
    assert result["opacityLabel"].startswith("opacity") and result["opacityDefault"] == "255"

    # The photo: its original at once with a working indicator, then the cutout over it.
    assert result["states"][:1] == ["working"] and result["states"][-1] == "done"
    assert result["originalShown"] == 480
    assert (result["width"], result["height"]) == (480, 360)
    assert result["transparent"] > 1000 and result["visible"] > 1000  # a cutout, not a copy
    assert result["caption"].startswith("car-1.jpg") and result["download"] == "car-1.png"
    assert result["used"] == "model u2netp, PNG, decontaminate"
    assert result["clipAtZero"] == "inset(0px 100% 0px 0px)"
    # the board is larger than the 260x200 it was, shaped like the photo (480x360)
    assert result["overlayBox"]["sameAsBoard"] and result["overlayBox"]["height"] > 200
    # At 50%: the left half of the board is the cutout over a checkerboard (grey and white
    # squares where the background was), the right half the original photo.
    board = np.asarray(
        open_image((ARTIFACTS / "browser-board-half.png").read_bytes()).convert("RGB")
    )
    corner_left, corner_right = board[30:50, 5:45].astype(int), board[30:50, -45:-5].astype(int)
    # only the checkerboard: its greys, blended where a square's edge falls between pixels
    assert (corner_left == corner_left[..., :1]).all() and corner_left.min() >= 204
    assert len(np.unique(corner_right.reshape(-1, 3), axis=0)) > 20  # a photo's many colours
    assert result["largeOpen"] and result["largeClosed"]
    assert result["largeSource"] == "data:image/png;base64,"

    # The broken file: its error, no checkerboard.
    assert "broken.jpg" in result["failed"]["text"] and result["failed"]["boards"] == 0

    # "download all" made a zip of the cutout; "clear" emptied the page.
    assert result["zipName"] == "cutouts.zip"
    with zipfile.ZipFile(result["zipPath"]) as archive:
        assert archive.testzip() is None and archive.namelist() == ["car-1.png"]
        cutout = open_image(archive.read("car-1.png"))
    assert cutout.size == (480, 360) and cutout.mode == "RGBA"
    assert result["afterClear"] == {"figures": 0, "downloadAllDisabled": True}

    assert result["sentModel"] == "u2netp" and result["sentSettings"]["decontaminate"] is True
    assert "alphaMattingForegroundThreshold" not in result["sentSettings"]  # matting was off
    assert "rgba" not in result["sentSettings"]  # no background colour chosen
    assert result["foreign"] == "refused"
    for name in ("cutout", "before-after", "large", "failed"):
        assert (ARTIFACTS / f"browser-{name}.png").stat().st_size > 10_000


def test_the_api_docs_render_every_route_from_the_service_alone(server):
    """/docs is Swagger UI on /openapi.json, every file served by the service (no CDN)."""
    ARTIFACTS.mkdir(exist_ok=True)
    shown = run_in_chromium(
        "docs_page.mjs", f"{server.http_url}/docs", str(ARTIFACTS / "docs.png"), timeout=120
    )
    assert shown["title"].startswith("rembg-stream HTTP API"), shown["title"]
    operations = set(zip(shown["methods"], shown["operations"], strict=True))
    assert {("POST", "/v1"), ("GET", "/api/remove"), ("POST", "/api/remove")} <= operations
    assert len(operations) == len(openapi_operations(server)), operations
    assert all(url.startswith(server.http_url) for url in shown["requests"]), shown["requests"]
    assert not shown["errors"], shown["errors"]
    status, _, _ = http_get(f"{server.http_url}/docs/")
    assert status == 200  # redirected to /docs


def openapi_operations(server) -> list[tuple[str, str]]:
    document = json.loads(http_get(f"{server.http_url}/openapi.json")[2])
    return [(method, path) for path, item in document["paths"].items() for method in item]


def test_the_page_fits_a_phone_and_shapes_each_result_like_its_photo(server):
    """At 390 px the page was 583 px wide with the settings cut off; previews were 260x200 and
    an opaque background colour showed checkerboard strips beside a photo of another shape."""
    ARTIFACTS.mkdir(exist_ok=True)
    shown = run_in_chromium(
        "page_layout.mjs",
        f"{server.http_url}/",
        str(FIXTURES / "car-1.jpg"),
        str(ARTIFACTS),
        timeout=180,
    )
    for name, at in shown.items():
        assert at["scrollWidth"] <= at["viewport"], (name, at)
        assert at["settingsRight"] <= at["viewport"], (name, at)
        assert abs(at["boardRatio"] - at["photoRatio"]) < 0.01 * at["photoRatio"], (name, at)
    assert shown["phone"]["boardWidth"] >= 340, shown["phone"]
    assert shown["desktop"]["boardWidth"] >= 360, shown["desktop"]


def test_samples_urls_and_pastes_come_in_and_the_large_view_compares(server):
    """A sample photo by one click, an image URL, a pasted image; the large view opened from
    the keyboard, with before/after, download, Esc and a close button."""
    ARTIFACTS.mkdir(exist_ok=True)
    shown = run_in_chromium("page_inputs.mjs", f"{server.http_url}/", str(ARTIFACTS), timeout=180)
    assert shown["samples"] == ["car-1.jpg", "girl-1.jpg", "animal-2.jpg"]
    status, headers, body = http_get(f"{server.http_url}/samples/car-1.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body == (FIXTURES / "car-1.jpg").read_bytes()
    # newest first: the paste, the URL (named by its path), the sample
    names = [caption.split(" — ")[0] for caption in shown["captions"]]
    assert names == ["pasted.jpg", "girl-1.jpg", "car-1.jpg"], shown["captions"]
    sample, by_url, pasted = shown["sent"]
    assert sample.startswith("data:image/jpeg;base64,") and pasted.startswith("data:image/jpeg")
    assert (
        by_url == f"{server.http_url}/samples/girl-1.jpg"
    )  # the URL itself: the server fetches it
    assert shown["openedByEnter"] and shown["closeFocused"]
    assert shown["download"] == {"name": "pasted.png", "href": "data:image/png;base64,"}
    assert shown["largeClip"] == "inset(0px 50% 0px 0px)" and shown["largeSize"] > 360
    assert shown["closedByEscape"] and shown["openedByClick"] and shown["closedByButton"]
    assert (ARTIFACTS / "page-large-compare.png").stat().st_size > 10_000
