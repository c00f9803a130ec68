"""The REST twin, POST /v1, against the real server process: plain HTTP clients (urllib, and
curl running the README's own example)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import websockets

from tests.integration.conftest import API_KEYS
from tests.support import (
    ROOT,
    UNIT,
    Client,
    b64,
    fixture_bytes,
    new_uuid,
    open_image,
)

CAR = fixture_bytes("car-1.jpg")


def post(
    url: str,
    body: bytes | str | list,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict]:
    if isinstance(body, list):
        body = json.dumps(body)
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=120 * UNIT) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, dict(error.headers), json.loads(raw) if raw.startswith(b"{") else {}


def removal(image: str, **fields) -> dict:
    return {"taskType": "removeBackground", "taskUUID": new_uuid(), "inputImage": image, **fields}


def fast(**fields) -> dict:
    return removal(b64(CAR), model="fast", outputType="base64Data", outputFormat="PNG", **fields)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def by_uuid(items: list[dict]) -> dict[str, dict]:
    return {item["taskUUID"]: item for item in items}


# --------------------------------------------------------------------------- results


async def test_a_removal_over_rest_equals_the_same_removal_over_a_socket(keyed_server):
    """Same model, same pipeline, same bytes: the twin is the socket without the socket."""
    settings = {"outputType": "base64Data", "outputFormat": "PNG", "postProcessMask": True}
    over_rest = removal(b64(CAR), **settings)
    status, headers, answer = await asyncio.to_thread(
        post, f"{keyed_server.http_url}/v1", [over_rest], bearer(API_KEYS[0])
    )
    assert status == 200, answer
    assert headers["Content-Type"].startswith("application/json")
    assert answer["errors"] == []
    [item] = answer["data"]
    assert (
        item["taskType"] == "imageBackgroundRemoval" and item["taskUUID"] == over_rest["taskUUID"]
    )
    async with websockets.connect(keyed_server.ws_url, max_size=None) as websocket:
        client = Client(websocket)
        await client.authenticate(API_KEYS[0])
        over_socket = await client.run(removal(b64(CAR), **settings))
    rest_image = open_image(base64.b64decode(item["imageBase64Data"]))
    socket_image = open_image(base64.b64decode(over_socket["imageBase64Data"]))
    assert rest_image.mode == "RGBA" and rest_image.size == socket_image.size
    assert np.array_equal(np.asarray(rest_image), np.asarray(socket_image))


def test_authentication_can_be_the_first_element_instead_of_a_header(keyed_server):
    task = removal(b64(CAR), outputType="URL", outputFormat="PNG")
    status, _, answer = post(
        f"{keyed_server.http_url}/v1", [{"taskType": "authentication", "apiKey": API_KEYS[1]}, task]
    )
    assert status == 200, answer
    [item] = answer["data"]  # the authentication element adds no item
    assert item["taskUUID"] == task["taskUUID"] and item["imageURL"].endswith(".png")
    with urllib.request.urlopen(item["imageURL"]) as response:
        assert open_image(response.read()).mode == "RGBA"


def test_a_mixed_array_answers_every_task_in_its_own_list(server):
    good, also_good = fast(), fast(returnOnlyMask=True)
    bad = fast(outputQuality=5)
    not_a_uuid = fast(taskUUID="nope")
    duplicate = dict(good)
    tasks = [{"taskType": "ping", "ping": True}, good, bad, also_good, not_a_uuid, duplicate]
    status, _, answer = post(f"{server.http_url}/v1", tasks, bearer("mixed"))
    assert status == 200, answer
    pongs = [item for item in answer["data"] if item.get("taskType") == "ping"]
    assert pongs == [{"taskType": "ping", "pong": True}]
    results = by_uuid([item for item in answer["data"] if "taskUUID" in item])
    assert set(results) == {good["taskUUID"], also_good["taskUUID"]}
    assert (
        open_image(base64.b64decode(results[also_good["taskUUID"]]["imageBase64Data"])).mode == "L"
    )
    errors = answer["errors"]
    assert len(errors) == 3
    quality = next(e for e in errors if e.get("taskUUID") == bad["taskUUID"])
    assert quality["code"] == "invalidOutputQuality" and quality["parameter"] == "outputQuality"
    assert any(e["code"] == "invalidTaskUUID" for e in errors)
    conflict = [e for e in errors if e["code"] == "conflictTaskUUID"]
    assert conflict and conflict[0]["taskUUID"] == good["taskUUID"]


def test_async_over_rest_is_acknowledged_then_answered_by_get_response(server):
    url, key = f"{server.http_url}/v1", bearer("async-rest")
    task = fast(deliveryMethod="async")
    status, _, answer = post(url, [task], key)
    assert status == 200 and answer["data"] == [
        {"taskType": "removeBackground", "taskUUID": task["taskUUID"]}
    ]
    deadline = time.monotonic() + 60 * UNIT
    while True:
        status, _, polled = post(
            url, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}], key
        )
        assert status == 200, polled
        [item] = polled["data"]
        if item["status"] == "success":
            break
        assert item["status"] == "processing" and time.monotonic() < deadline
        time.sleep(0.1)
    assert open_image(base64.b64decode(item["imageBase64Data"])).mode == "RGBA"
    # Another key sees nothing of it.
    status, _, other = post(
        url, [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}], bearer("someone-else")
    )
    assert status == 400 and other["errors"][0]["code"] == "taskNotFound"


async def test_a_result_sent_over_rest_can_be_polled_from_a_socket(server):
    task = fast()
    status, _, answer = await asyncio.to_thread(
        post, f"{server.http_url}/v1", [task], bearer("both")
    )
    assert status == 200, answer
    async with websockets.connect(server.ws_url, max_size=None) as websocket:
        client = Client(websocket)
        await client.authenticate("both")
        polled = await client.run({"taskType": "getResponse", "taskUUID": task["taskUUID"]})
    assert polled["status"] == "success"
    assert polled["imageBase64Data"] == answer["data"][0]["imageBase64Data"]


# --------------------------------------------------------------------------- refusals


def test_no_key_or_a_wrong_key_is_401_and_nothing_runs(keyed_server):
    """The key is checked before the body is read (test_bodies.py): one error, naming the first
    task when the body began with it."""
    url, task = f"{keyed_server.http_url}/v1", removal(b64(CAR))
    status, _, answer = post(url, [task])
    assert status == 401 and answer["data"] == []
    assert answer["errors"][0]["code"] == "missingApiKey"
    assert answer["errors"][0]["taskUUID"] == task["taskUUID"]
    status, _, answer = post(url, [task], bearer("wrong"))
    assert status == 401
    assert [e["code"] for e in answer["errors"]] == ["invalidApiKey"]
    status, _, answer = post(url, [task], {"Authorization": "Basic abc"})
    assert status == 401 and answer["errors"][0]["code"] == "invalidApiKey"


@pytest.mark.parametrize(
    "body, code",
    [
        (b"{not json", "invalidJSON"),
        (b'{"taskType": "ping"}', "invalidFrame"),
        (b"[42]", "invalidTask"),
        (b"[" * 100_000 + b"]" * 100_000, "invalidJSON"),
    ],
)
def test_a_body_that_is_not_an_array_of_tasks_is_400(server, body, code):
    status, _, answer = post(f"{server.http_url}/v1", body, bearer("garbage"))
    assert status == 400 and answer["data"] == []
    assert answer["errors"][0]["code"] == code


def test_only_post_is_allowed_and_foreign_pages_are_refused(server):
    request = urllib.request.Request(f"{server.http_url}/v1")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 405 and refused.value.headers["Allow"] == "POST"
    status, _, _ = post(
        f"{server.http_url}/v1", [fast()], {**bearer("page"), "Origin": "https://evil.example.net"}
    )
    assert status == 403


@pytest.fixture(scope="module")
def small_limits_server(fast_server_with):
    return fast_server_with("--frame-error-bytes", "400000", "--max-tasks-per-frame", "2")


def test_limits_answer_413_or_an_error_for_the_rest(small_limits_server):
    url = f"{small_limits_server.http_url}/v1"
    status, _, answer = post(url, [removal("A" * 500_000, model="fast")], bearer("limits"))
    assert status == 413 and answer["errors"][0]["code"] == "frameTooLarge"
    tasks = [fast(), fast(), fast()]
    status, _, answer = post(url, tasks, bearer("limits"))
    assert status == 200  # two ran; one error covers the rest
    assert {item["taskUUID"] for item in answer["data"]} == {t["taskUUID"] for t in tasks[:2]}
    [beyond] = answer["errors"]
    assert beyond["code"] == "tooManyTasks" and beyond["max"] == 2


def test_a_chunked_body_over_the_limit_is_refused_too(small_limits_server):
    """No Content-Length up front: the limit holds while the body streams in."""

    def chunks():
        yield b'[{"taskType":"removeBackground","inputImage":"'
        for _ in range(10):
            yield b"A" * 100_000
        yield b'"}]'

    request = urllib.request.Request(
        f"{small_limits_server.http_url}/v1",
        data=chunks(),
        method="POST",
        headers={"Transfer-Encoding": "chunked", **bearer("limits")},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 413
    assert json.loads(refused.value.read())["errors"][0]["code"] == "frameTooLarge"


# --------------------------------------------------------------------------- the README


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- rest-example[^>]*-->\n```sh\n(?P<body>.*?)```", readme, re.S)
    assert block, "the README lost its REST example"
    return block["body"]


def test_the_readme_curl_example_works_as_written(keyed_server, tmp_path):
    assert shutil.which("curl"), "curl is needed for this test"
    (tmp_path / "photo.jpg").write_bytes(CAR)
    script = (
        readme_example()
        .replace("http://127.0.0.1:7600", keyed_server.http_url)
        .replace("YOUR_KEY", API_KEYS[0])
    )
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        timeout=120 * UNIT,
        check=True,
    )
    answer = json.loads(run.stdout)
    assert answer["errors"] == []
    [item] = answer["data"]
    with urllib.request.urlopen(item["imageURL"]) as response:
        cutout = open_image(response.read())
    assert cutout.mode == "RGBA" and cutout.size == open_image(CAR).size
