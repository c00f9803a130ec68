"""The official JS SDK (@runware/sdk-js 1.3.2) under node, unmodified, against the real server.

``make test`` installs it with ``npm ci`` into tests/js. The SDK never uploads: strings pass
through, and ``removeBackground`` sends taskType ``removeBackground`` with whatever fields the
caller gave. With ``deliveryMethod: "async"`` it takes the acknowledgement and then polls
getResponse every 2 s until an item with ``status: "success"`` arrives.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT, SEED_SETTINGS, UNIT, data_uri, fixture_bytes, http_get, open_image

JS = ROOT / "tests" / "js"
CAR = data_uri(fixture_bytes("car-1.jpg"))


def run_js_sdk(
    url: str, calls: list[dict], tmp_path: Path, api_key: str = "js-sdk-key"
) -> list[dict]:
    node = shutil.which("node")
    assert node, "node is needed for the JS SDK tests"
    assert (JS / "node_modules" / "@runware" / "sdk-js").is_dir(), "run `make test` (npm ci)"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"url": url, "apiKey": api_key, "calls": calls}))
    finished = subprocess.run(
        [node, "remove_background.mjs", str(config)],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=240 * UNIT,
    )
    assert finished.returncode == 0, finished.stderr
    lines = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(calls), finished.stdout + finished.stderr
    return lines


def test_sync_and_async_removals(server, tmp_path):
    calls = [
        {
            "model": "runware:109@1",
            "inputs": {"image": CAR},
            "outputType": "URL",
            "outputFormat": "PNG",
            "includeCost": True,
            "settings": SEED_SETTINGS,
        },
        {"inputImage": CAR, "outputType": "base64Data", "outputFormat": "WEBP"},
        {
            "model": "runware:109@1",
            "inputs": {"image": CAR},
            "outputType": "dataURI",
            "outputFormat": "PNG",
            "deliveryMethod": "async",
        },
        {
            "model": "runware:109@1",
            "inputs": {"image": CAR},
            "deliveryMethod": "sync",
            "outputFormat": "JPG",
        },
    ]
    sync_url, sync_b64, async_uri, sync_jpg = run_js_sdk(server.ws_url, calls, tmp_path)
    for answer in (sync_url, sync_b64, async_uri, sync_jpg):
        assert answer["ok"], answer
    result = sync_url["result"]
    assert result["taskType"] == "imageBackgroundRemoval" and result["cost"] == pytest.approx(
        0.0013
    )
    status, _, body = http_get(result["imageURL"])
    assert status == 200 and open_image(body).size == (480, 360)
    assert open_image(base64.b64decode(sync_b64["result"]["imageBase64Data"])).format == "WEBP"
    polled = async_uri["result"]
    assert polled["status"] == "success" and polled["imageDataURI"].startswith(
        "data:image/png;base64,"
    )
    assert open_image(base64.b64decode(polled["imageDataURI"].split(",", 1)[1])).mode == "RGBA"
    assert sync_jpg["result"]["imageURL"].endswith(".jpg")


def test_errors_reach_the_sdk_as_api_errors(server, tmp_path):
    (answer,) = run_js_sdk(
        server.ws_url, [{"inputs": {"image": CAR}, "outputQuality": 5}], tmp_path
    )
    assert not answer["ok"]
    assert answer["error"]["code"] == "invalidOutputQuality"


def test_a_wrong_key_rejects_initialisation(keyed_server, tmp_path):
    node = shutil.which("node")
    script = (
        "import { Runware } from '@runware/sdk-js';"
        f"try {{ await Runware.initialize({{apiKey: 'wrong', url: '{keyed_server.ws_url}'}});"
        "console.log('connected'); } catch (e) { console.log(JSON.stringify(e)); }"
        "process.exit(0);"
    )
    finished = subprocess.run(
        [node, "--input-type=module", "-e", script],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
    )
    assert json.loads(finished.stdout.strip().splitlines()[-1])["error"]["code"] == "invalidApiKey"
