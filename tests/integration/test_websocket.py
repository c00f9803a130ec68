"""The real server process and a real websockets client: the protocol end to end."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import numpy as np
import pytest
import websockets
from PIL import Image

from service.imaging import pipeline
from service.inference.families import FAMILIES
from tests.support import (
    SEED_SETTINGS,
    Client,
    b64,
    data_uri,
    fixture_bytes,
    http_get,
    new_uuid,
    open_image,
    start_server,
)

CAR = fixture_bytes("car-1.jpg")
ANIME = fixture_bytes("anime-girl-1.jpg")


def removal(image: str, **fields) -> dict:
    return {
        "taskType": "removeBackground",
        "taskUUID": new_uuid(),
        "inputs": {"image": image},
        **fields,
    }


def result_image(item: dict) -> Image.Image:
    """The image a result carries, whichever outputType it used."""
    if "imageURL" in item:
        status, headers, body = http_get(item["imageURL"])
        assert status == 200, item
        return open_image(body)
    if "imageDataURI" in item:
        header, _, payload = item["imageDataURI"].partition(",")
        assert header.startswith("data:image/") and header.endswith(";base64")
        return open_image(base64.b64decode(payload))
    return open_image(base64.b64decode(item["imageBase64Data"]))


def assert_ok(item: dict) -> dict:
    assert item["kind"] == "data", item
    assert item["taskType"] == "imageBackgroundRemoval"
    assert item["imageUUID"] and item["inputImageUUID"]
    assert not {"code", "error", "errorId"} & set(item)
    return item


def assert_error(item: dict, code: str, parameter: str | None = None) -> dict:
    assert item["kind"] == "errors", item
    assert item["code"] == code, item
    if parameter is not None:
        assert item["parameter"] == parameter, item
    assert item["message"] and item["taskUUID"]
    return item


# --------------------------------------------------------------------------- the seed's examples


async def test_seed_example_modern_form_with_a_data_uri(client: Client):
    task = removal(
        data_uri(CAR),
        model="runware:109@1",
        settings=SEED_SETTINGS,
        outputType="URL",
        outputFormat="PNG",
        outputQuality=95,
        includeCost=True,
    )
    item = assert_ok(await client.run(task))
    assert item["taskUUID"] == task["taskUUID"] and item["cost"] == pytest.approx(0.0013)
    assert item["imageURL"].endswith(f"/images/{item['imageUUID']}.png")
    image = result_image(item)
    assert image.mode == "RGBA" and image.size == (480, 360)
    alpha = np.asarray(image)[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255


async def test_seed_example_legacy_form_as_the_python_sdk_sends_it(client: Client):
    task = {
        "taskType": "imageBackgroundRemoval",
        "taskUUID": new_uuid(),
        "inputImage": b64(CAR),
        "outputType": "URL",
        "outputFormat": "PNG",
        "includeCost": True,
        "model": "runware:109@1",
        "returnOnlyMask": False,
        "alphaMatting": True,
        "postProcessMask": True,
        "alphaMattingErodeSize": 10,
        "alphaMattingForegroundThreshold": 240,
        "alphaMattingBackgroundThreshold": 10,
        "rgba": [255, 255, 255, 0],
    }
    item = assert_ok(await client.run(task))
    assert result_image(item).size == (480, 360)


async def test_flat_remove_background_as_the_js_legacy_alias_sends_it(client: Client):
    task = {
        "inputImage": data_uri(CAR),
        "outputType": "dataURI",
        "outputFormat": "WEBP",
        "taskType": "removeBackground",
        "taskUUID": new_uuid(),
    }
    item = assert_ok(await client.run(task))
    assert item["imageDataURI"].startswith("data:image/webp;base64,")
    assert "cost" not in item


# --------------------------------------------------------------------------- outputs and settings


async def test_every_output_type_and_format_in_one_frame(client: Client):
    tasks = [
        removal(b64(CAR), outputType=output_type, outputFormat=fmt, outputQuality=90)
        for output_type in ("URL", "dataURI", "base64Data")
        for fmt in ("JPG", "PNG", "WEBP")
    ]
    await client.send(*tasks)
    answers = await client.collect([t["taskUUID"] for t in tasks])
    for task in tasks:
        item = assert_ok(answers[task["taskUUID"]])
        key = {"URL": "imageURL", "dataURI": "imageDataURI", "base64Data": "imageBase64Data"}
        assert set(key.values()) & set(item) == {key[task["outputType"]]}
        image = result_image(item)
        expected = {"JPG": ("JPEG", "RGB"), "PNG": ("PNG", "RGBA"), "WEBP": ("WEBP", "RGBA")}
        assert (image.format, image.mode) == expected[task["outputFormat"]]
        assert image.size == (480, 360)


async def test_default_output_is_a_jpg_url_flattened_on_white(client: Client):
    item = assert_ok(await client.run(removal(b64(CAR))))
    assert item["imageURL"].endswith(".jpg")
    status, headers, body = http_get(item["imageURL"])
    assert headers["Content-Type"] == "image/jpeg"
    image = np.asarray(open_image(body))
    assert image[0, 0].min() > 240  # the top-left corner is background: white


async def test_return_only_mask(client: Client):
    item = assert_ok(
        await client.run(removal(b64(CAR), outputFormat="PNG", settings={"returnOnlyMask": True}))
    )
    mask = result_image(item)
    assert mask.mode == "L" and mask.size == (480, 360)


async def test_opaque_rgba_background_fills_the_transparency(client: Client):
    item = assert_ok(
        await client.run(removal(b64(CAR), outputFormat="PNG", settings={"rgba": [0, 0, 255, 255]}))
    )
    image = np.asarray(result_image(item))
    assert (image[..., 3] == 255).all()
    assert tuple(image[0, 0]) == (0, 0, 255, 255)


async def test_post_process_mask_gives_a_hard_edge(client: Client):
    item = assert_ok(
        await client.run(removal(b64(CAR), outputFormat="PNG", settings={"postProcessMask": True}))
    )
    assert set(np.unique(np.asarray(result_image(item))[..., 3])) <= {0, 255}


async def test_alpha_matting_refines_the_edge(client: Client):
    plain, matted = (
        removal(b64(CAR), outputFormat="PNG"),
        removal(b64(CAR), outputFormat="PNG", settings={"alphaMatting": True}),
    )
    await client.send(plain, matted)
    answers = await client.collect([plain["taskUUID"], matted["taskUUID"]])
    a = np.asarray(result_image(assert_ok(answers[plain["taskUUID"]])))[..., 3]
    b = np.asarray(result_image(assert_ok(answers[matted["taskUUID"]])))[..., 3]
    assert (a != b).mean() > 0.001


async def test_cutout_over_the_wire_equals_the_reference(client: Client):
    item = assert_ok(await client.run(removal(data_uri(ANIME), outputFormat="PNG", model="u2netp")))
    ours = np.asarray(result_image(item))[..., 3].astype(np.int16)
    reference = np.asarray(Image.open("tests/fixtures/anime-girl-1.u2netp.png"))[..., 3]
    assert np.abs(ours - reference).mean() < 0.5


# --------------------------------------------------------------------------- inputs by UUID and URL


async def test_input_and_output_uuids_are_usable_as_inputs(client: Client):
    first = assert_ok(await client.run(removal(b64(CAR), outputFormat="PNG")))
    again = assert_ok(await client.run(removal(first["inputImageUUID"], outputFormat="PNG")))
    assert again["inputImageUUID"] == first["inputImageUUID"]
    assert np.array_equal(np.asarray(result_image(first)), np.asarray(result_image(again)))
    chained = assert_ok(await client.run(removal(first["imageUUID"], outputFormat="PNG")))
    assert chained["inputImageUUID"] == first["imageUUID"]


@pytest.mark.parametrize("form", ["dataURI", "base64", "URL"])
async def test_image_upload_then_use_by_uuid(client: Client, image_host: str, form: str):
    image = {"dataURI": data_uri(CAR), "base64": b64(CAR), "URL": f"{image_host}/car.jpg"}[form]
    upload = await client.run({"taskType": "imageUpload", "image": image})
    assert upload["kind"] == "data" and upload["taskType"] == "imageUpload"
    status, headers, body = http_get(upload["imageURL"])
    assert status == 200 and body == CAR and headers["Content-Type"] == "image/jpeg"
    item = assert_ok(
        await client.run(
            {
                "taskType": "imageBackgroundRemoval",
                "taskUUID": new_uuid(),
                "inputImage": upload["imageUUID"],
            }
        )
    )
    assert item["inputImageUUID"] == upload["imageUUID"]


async def test_url_input_follows_redirects(client: Client, image_host: str):
    item = assert_ok(await client.run(removal(f"{image_host}/redirect", outputFormat="PNG")))
    assert result_image(item).size == (480, 360)


async def test_url_input_failures_are_clear_errors(client: Client, image_host: str):
    tasks = [
        removal(f"{image_host}/missing"),
        removal(f"{image_host}/text"),
        removal("ftp://example.com/a.jpg"),
        removal("http://127.0.0.1:1/refused.jpg"),
    ]
    await client.send(*tasks)
    answers = await client.collect([t["taskUUID"] for t in tasks])
    codes = [answers[t["taskUUID"]]["code"] for t in tasks]
    assert codes == ["downloadFailed", "invalidImage", "forbiddenURL", "downloadFailed"]
    for task in tasks:
        assert answers[task["taskUUID"]]["parameter"] == "inputs.image"


async def test_private_urls_are_refused_unless_allowed(keyed_server, image_host: str):
    async with websockets.connect(keyed_server.ws_url) as websocket:
        client = Client(websocket)
        await client.authenticate("secret-one")
        by_ip = await client.run(removal(f"{image_host}/car.jpg"))
        by_name = await client.run(
            {
                "taskType": "imageUpload",
                "image": f"{image_host.replace('127.0.0.1', 'localhost')}/car.jpg",
            }
        )
        assert_error(by_ip, "forbiddenURL", "inputs.image")
        assert_error(by_name, "forbiddenURL", "image")


# --------------------------------------------------------------------------- errors keep the socket


async def test_bad_tasks_fail_alone_and_the_socket_stays_up(client: Client):
    good = removal(b64(CAR), outputType="base64Data")
    tasks = [
        removal(b64(CAR), outputQuality=5),
        removal(b64(CAR), model="no-such-model"),
        removal("00000000-0000-4000-8000-000000000000"),
        removal(b64(b"this is text, not an image")),
        removal("%%% not base64 %%%"),
        good,
    ]
    await client.send(*tasks)
    answers = await client.collect([t["taskUUID"] for t in tasks])
    assert_error(answers[tasks[0]["taskUUID"]], "invalidOutputQuality", "outputQuality")
    assert_error(answers[tasks[1]["taskUUID"]], "unsupportedModel", "model")
    assert_error(answers[tasks[2]["taskUUID"]], "unknownImageUUID", "inputs.image")
    assert_error(answers[tasks[3]["taskUUID"]], "invalidImage", "inputs.image")
    assert_error(answers[tasks[4]["taskUUID"]], "invalidInputImage", "inputs.image")
    assert_ok(answers[good["taskUUID"]])
    assert await client.ping()


@pytest.mark.parametrize(
    "frame,code",
    [
        ("{not json", "invalidJSON"),
        ('{"taskType": "ping"}', "invalidFrame"),
        ("[1]", "invalidTask"),
    ],
)
async def test_malformed_frames_get_errors_and_the_socket_stays_up(client: Client, frame, code):
    await client.send_raw(frame)
    reply = await client.recv()
    assert reply["errors"][0]["code"] == code
    assert await client.ping()


async def test_a_binary_frame_is_read_like_a_text_frame(client: Client):
    await client.send_raw(b'[{"taskType":"ping","ping":true}]')
    assert (await client.recv())["data"][0]["pong"] is True


async def test_a_task_uuid_reused_while_running_is_a_conflict(client: Client):
    task = removal(b64(CAR))
    await client.send(task, dict(task))
    first = await client.recv()
    assert_error({"kind": "errors", **first["errors"][0]}, "conflictTaskUUID", "taskUUID")
    assert_ok({"kind": "data", **(await client.recv())["data"][0]})


async def test_results_stream_in_completion_order(client: Client):
    slow = removal(b64(ANIME), outputFormat="PNG", settings={"alphaMatting": True})
    fast = removal(b64(CAR), outputType="base64Data")
    await client.send(slow, fast)
    first = await client.recv()
    second = await client.recv()
    assert first["data"][0]["taskUUID"] == fast["taskUUID"]
    assert second["data"][0]["taskUUID"] == slow["taskUUID"]


async def test_frames_larger_than_a_mebibyte_are_accepted(client: Client):
    big = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    import io

    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, "PNG")
    assert len(buffer.getvalue()) > 4_000_000
    item = assert_ok(await client.run(removal(b64(buffer.getvalue()), outputType="base64Data")))
    assert result_image(item).size == (1600, 1200)


async def test_many_tasks_across_sockets_are_each_answered_once_on_their_own_socket(server):
    async def one_socket(n: int) -> None:
        async with websockets.connect(server.ws_url, max_size=None) as websocket:
            client = Client(websocket)
            await client.authenticate()
            tasks = [
                removal(b64(CAR), outputType="base64Data", outputFormat="JPG", outputQuality=50)
                for _ in range(n)
            ]
            await client.send(*tasks)
            answers = await client.collect([t["taskUUID"] for t in tasks])
            assert all(a["kind"] == "data" for a in answers.values())

    await asyncio.gather(*(one_socket(4) for _ in range(3)))


# --------------------------------------------------------------------------- models


async def test_an_isnet_family_model_is_served_with_its_own_preprocessing(client: Client):
    item = assert_ok(
        await client.run(
            removal(
                b64(CAR), model="isnet-test", outputFormat="PNG", settings={"returnOnlyMask": True}
            )
        )
    )
    mask = np.asarray(result_image(item)).astype(np.int16)
    # What the stand-in model computes, from the isnet recipe (1024 px, /255, mean 0.5, std 1).
    decoded = pipeline.decode_image(CAR, 40_000_000)
    tensor = pipeline.preprocess(decoded, FAMILIES["isnet"]).floats()
    prediction = 1 / (1 + np.exp(-tensor.mean(axis=0)))
    expected = pipeline.mask_from_prediction(prediction.astype(np.float32), decoded.size)
    assert np.abs(mask - expected).max() <= 1
    u2net = assert_ok(
        await client.run(
            removal(b64(CAR), model="u2netp", outputFormat="PNG", settings={"returnOnlyMask": True})
        )
    )
    assert np.abs(np.asarray(result_image(u2net)).astype(np.int16) - mask).mean() > 10


def test_the_model_list_names_every_id_with_its_family_file_and_the_stand_in(server, keyed_server):
    status, headers, body = http_get(f"{server.http_url}/v1/models")
    assert status == 200 and headers["Content-Type"] == "application/json"
    models = {item["model"]: item for item in json.loads(body)["data"]}
    assert sorted(models) == ["fast", "isnet-test", "runware:109@1", "u2netp"]
    assert models["runware:109@1"] == {
        "model": "runware:109@1",
        "family": "u2net",
        "fileName": "u2netp.onnx",
        "inputSize": 320,
        "provider": models["u2netp"]["provider"],
        "standIn": True,
    }
    assert models["u2netp"]["standIn"] is False
    assert models["u2netp"]["provider"].startswith("OpenVINO CPU")
    assert models["isnet-test"]["family"] == "isnet" and models["isnet-test"]["inputSize"] == 1024
    assert models["isnet-test"]["fileName"] == "isnet-test.onnx"
    # The list needs no key, as the page reads it before any.
    status, _, body = http_get(f"{keyed_server.http_url}/v1/models")
    assert status == 200
    keyed = {item["model"]: item for item in json.loads(body)["data"]}
    assert keyed["u2netp"]["provider"] == "CPUExecutionProvider"


def test_start_up_logs_models_providers_and_url(server, keyed_server):
    assert "family=u2net provider=CPUExecutionProvider" in keyed_server.log()
    log = server.log()
    assert "model u2netp: file=" in log and "family=u2net provider=OpenVINO CPU" in log
    assert "model isnet-test:" in log and "family=isnet" in log
    assert "runware:109@1 is served by the embedded u2netp model" in log
    assert f"listening on ws://127.0.0.1:{server.port}" in log
    address = f"127.0.0.1:{server.port}"
    assert f"the page: http://{address}/  REST: POST http://{address}/v1" in log
    assert f"http://{address}/api/remove" in log and f"metrics: http://{address}/metrics" in log
    assert "any API key is accepted" in log
    # on the CPU one batch at a time (docs/decisions/0012)
    assert re.search(r"batcher of u2netp: batches of up to \d+, 1 in flight", log)
    assert "ERROR" not in log and "Traceback" not in log


def test_a_runtime_feeding_an_accelerator_keeps_two_batches_in_flight(tmp_path):
    """The simulated device stands for a GPU: the next batch is stacked while one runs."""
    simulated = start_server(tmp_path, "--simulated-device", "5,1", "--cpu-workers", "1")
    try:
        assert "batcher of u2netp: batches of up to 16, 2 in flight" in simulated.log()
    finally:
        simulated.stop()


# --------------------------------------------------------------------------- authentication


async def test_ping_is_answered_before_authentication(anonymous_keyed_client: Client):
    assert await anonymous_keyed_client.ping()


async def test_tasks_before_authentication_are_refused_and_nothing_runs(
    anonymous_keyed_client: Client,
):
    task = removal(b64(CAR))
    error = await anonymous_keyed_client.run(task)
    assert_error(error, "missingApiKey")
    assert error["taskType"] == "removeBackground"


async def test_a_wrong_key_is_refused_as_the_sdks_expect(anonymous_keyed_client: Client):
    await anonymous_keyed_client.send({"taskType": "authentication", "apiKey": "wrong"})
    (error,) = (await anonymous_keyed_client.recv())["errors"]
    assert error["code"] == "invalidApiKey" and error["taskType"] == "authentication"
    assert "taskUUID" not in error
    assert await anonymous_keyed_client.ping()
    assert_error(await anonymous_keyed_client.run(removal(b64(CAR))), "missingApiKey")


async def test_both_configured_keys_work_and_a_session_resumes_only_under_its_key(keyed_server):
    async with (
        websockets.connect(keyed_server.ws_url) as first,
        websockets.connect(keyed_server.ws_url) as second,
        websockets.connect(keyed_server.ws_url) as third,
    ):
        session = await Client(first).authenticate("secret-one")
        await Client(second).send(
            {"taskType": "authentication", "apiKey": "secret-one", "connectionSessionUUID": session}
        )
        reply = await Client(second).recv()
        assert reply == {"data": [{"taskType": "authentication", "connectionSessionUUID": session}]}
        await Client(third).send(
            {"taskType": "authentication", "apiKey": "secret-two", "connectionSessionUUID": session}
        )
        other = (await Client(third).recv())["data"][0]["connectionSessionUUID"]
        assert other != session
        item = await Client(third).run(removal(b64(CAR), outputType="base64Data"))
        assert_ok(item)


async def test_the_js_sdk_query_string_and_any_path_are_accepted(server):
    async with websockets.connect(f"{server.ws_url}/v1?sdk=js&version=1.3.2") as websocket:
        assert await Client(websocket).ping()


async def test_each_finished_task_logs_one_line_unless_warnings_only(
    client, server, fast_server_with
):
    good, bad = removal(b64(CAR), model="u2netp"), removal(b64(b"GIF89a-broken"))
    assert (await client.run(good))["kind"] == "data"
    assert (await client.run(bad))["kind"] == "errors"
    lines = server.log().splitlines()
    [done] = [line for line in lines if f"task {good['taskUUID']}:" in line]
    assert re.search(r"INFO .*: removeBackground model=u2netp size=480x360 \d+ ms success$", done)
    [failed] = [line for line in lines if f"task {bad['taskUUID']}:" in line]
    assert failed.endswith("failed invalidImage") and "size=-" in failed
    quiet = fast_server_with("--log-level", "WARNING")
    async with websockets.connect(quiet.ws_url, max_size=None) as websocket:
        other = Client(websocket)
        await other.authenticate()
        assert (await other.run(removal(b64(CAR), model="fast")))["kind"] == "data"
    assert "removeBackground model=" not in quiet.log()
