"""protocol.codec: frames to typed tasks and errors, results to bytes. Pure function calls."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from protocol.codec import decode_frame, decode_leading_task, encode_data, encode_errors
from protocol.errors import ErrorItem
from protocol.messages import (
    Authenticate,
    BackgroundRemovalResult,
    BackgroundSettings,
    GetResponse,
    ImageUpload,
    OutputSpec,
    Ping,
    PongResult,
    RemoveBackground,
)
from tests.support import SEED_SETTINGS

U1 = "9ad4918a-e9d0-440a-ac59-057a966cd421"
U2 = "13190307-6303-4012-a578-cb4595dc8eae"


def decode(*tasks) -> tuple[list, list[ErrorItem]]:
    frame = decode_frame(json.dumps(list(tasks)).encode())
    return frame.tasks, frame.errors


def only_task(task: dict):
    tasks, errors = decode(task)
    assert errors == [] and len(tasks) == 1
    return tasks[0]


def only_error(task) -> ErrorItem:
    tasks, errors = decode(task)
    assert tasks == [] and len(errors) == 1
    return errors[0]


# --------------------------------------------------------------------------- accepted tasks


def test_authentication_with_and_without_session():
    assert only_task({"apiKey": "k", "taskType": "authentication"}) == Authenticate(api_key="k")
    resumed = only_task({"taskType": "authentication", "apiKey": "k", "connectionSessionUUID": U1})
    assert resumed.session_uuid == U1


def test_ping_and_get_response():
    assert only_task({"taskType": "ping", "ping": True}) == Ping()
    assert only_task({"taskType": "getResponse", "taskUUID": U1}) == GetResponse(task_uuid=U1)


def test_image_upload():
    assert only_task(
        {"taskType": "imageUpload", "taskUUID": U1, "image": "data:image/png;base64,AA=="}
    ) == ImageUpload(task_uuid=U1, image="data:image/png;base64,AA==")


SEED_EXPECTED = BackgroundSettings(
    rgba=(255, 255, 255, 0),
    post_process_mask=True,
    alpha_matting=True,
    foreground_threshold=230,
    background_threshold=15,
    erode_size=8,
)


def test_the_three_spellings_of_a_removal_make_one_typed_task():
    common = {
        "taskUUID": U1,
        "outputType": "URL",
        "outputFormat": "PNG",
        "includeCost": True,
        "model": "runware:109@1",
    }
    modern = only_task(
        {
            "taskType": "removeBackground",
            "inputs": {"image": "abc"},
            "settings": SEED_SETTINGS,
            **common,
        }
    )
    flat = only_task(
        {"taskType": "removeBackground", "inputImage": "abc", **SEED_SETTINGS, **common}
    )
    legacy = only_task(
        {"taskType": "imageBackgroundRemoval", "inputImage": "abc", **SEED_SETTINGS, **common}
    )
    for task in (modern, flat, legacy):
        assert isinstance(task, RemoveBackground)
        assert task.settings == SEED_EXPECTED
        assert task.output == OutputSpec(type="URL", format="PNG", quality=95)
        assert task.include_cost and task.image == "abc" and task.model == "runware:109@1"
    assert modern.image_parameter == "inputs.image" and legacy.image_parameter == "inputImage"
    assert legacy.task_type == "imageBackgroundRemoval" and modern.task_type == "removeBackground"


def test_defaults_are_the_platforms():
    task = only_task({"taskType": "imageBackgroundRemoval", "taskUUID": U1, "inputImage": "x"})
    assert task.settings == BackgroundSettings()
    assert task.output == OutputSpec(type="URL", format="JPG", quality=95, ttl=None)
    assert task.model == "runware:109@1" and task.include_cost is False
    assert task.delivery_method == "sync"


def test_nested_settings_win_over_flat_ones():
    task = only_task(
        {
            "taskType": "removeBackground",
            "taskUUID": U1,
            "inputImage": "x",
            "alphaMattingErodeSize": 3,
            "alphaMatting": True,
            "settings": {"alphaMattingErodeSize": 7},
        }
    )
    assert task.settings.erode_size == 7 and task.settings.alpha_matting is True


@pytest.mark.parametrize(
    "fields,expected",
    [
        ({}, None),  # not said: the server's default decides
        ({"decontaminate": True}, True),
        ({"settings": {"decontaminate": False}, "decontaminate": True}, False),
    ],
)
def test_decontaminate_is_read_flat_or_nested(fields, expected):
    task = only_task({"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", **fields})
    assert task.settings.decontaminate is expected


def test_output_names_are_case_insensitive():
    task = only_task(
        {
            "taskType": "removeBackground",
            "taskUUID": U1,
            "inputImage": "x",
            "outputType": "datauri",
            "outputFormat": "jpeg",
            "outputQuality": 20,
            "ttl": 60,
        }
    )
    assert task.output == OutputSpec(type="dataURI", format="JPG", quality=20, ttl=60)


def test_integer_model_ids_and_unknown_fields_are_accepted():
    task = only_task(
        {
            "taskType": "imageBackgroundRemoval",
            "taskUUID": U1,
            "inputImage": "x",
            "model": 109,
            "providerSettings": {"x": {}},
            "safety": {"mode": "none"},
        }
    )
    assert task.model == "109"


# --------------------------------------------------------------------------- refused tasks

BAD_TASKS = [
    # (task, code, parameter)
    ({"taskType": "removeBackground", "taskUUID": U1}, "missingInputImage", "inputImage"),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputs": {}},
        "missingInputImage",
        "inputs.image",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputs": {"image": "  "}},
        "invalidInputImage",
        "inputs.image",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputs": {"image": 5}},
        "invalidInputImage",
        "inputs.image",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "outputQuality": 19},
        "invalidOutputQuality",
        "outputQuality",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "outputQuality": 100},
        "invalidOutputQuality",
        "outputQuality",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "outputQuality": "95"},
        "invalidOutputQuality",
        "outputQuality",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "outputType": "file"},
        "invalidOutputType",
        "outputType",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "outputFormat": "GIF"},
        "invalidOutputFormat",
        "outputFormat",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "ttl": 59},
        "invalidTtl",
        "ttl",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "includeCost": "yes"},
        "invalidIncludeCost",
        "includeCost",
    ),
    (
        {
            "taskType": "removeBackground",
            "taskUUID": U1,
            "inputImage": "x",
            "deliveryMethod": "later",
        },
        "invalidDeliveryMethod",
        "deliveryMethod",
    ),
    (
        {
            "taskType": "removeBackground",
            "taskUUID": U1,
            "inputImage": "x",
            "settings": {"rgba": [1, 2, 3]},
        },
        "invalidRgba",
        "settings.rgba",
    ),
    (
        {
            "taskType": "removeBackground",
            "taskUUID": U1,
            "inputImage": "x",
            "settings": {"rgba": [1, 2, 3, 256]},
        },
        "invalidRgba",
        "settings.rgba",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "rgba": [1, 2, 3, -1]},
        "invalidRgba",
        "rgba",
    ),
    (
        {
            "taskType": "removeBackground",
            "taskUUID": U1,
            "inputImage": "x",
            "settings": {"alphaMattingErodeSize": 0},
        },
        "invalidAlphaMattingErodeSize",
        "settings.alphaMattingErodeSize",
    ),
    (
        {
            "taskType": "removeBackground",
            "taskUUID": U1,
            "inputImage": "x",
            "alphaMattingForegroundThreshold": 256,
        },
        "invalidAlphaMattingForegroundThreshold",
        "alphaMattingForegroundThreshold",
    ),
    (
        {
            "taskType": "removeBackground",
            "taskUUID": U1,
            "inputImage": "x",
            "alphaMattingBackgroundThreshold": 0,
        },
        "invalidAlphaMattingBackgroundThreshold",
        "alphaMattingBackgroundThreshold",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "alphaMatting": 1},
        "invalidAlphaMatting",
        "alphaMatting",
    ),
    (
        {
            "taskType": "removeBackground",
            "taskUUID": U1,
            "inputImage": "x",
            "settings": {"postProcessMask": "true"},
        },
        "invalidPostProcessMask",
        "settings.postProcessMask",
    ),
    (
        {
            "taskType": "removeBackground",
            "taskUUID": U1,
            "inputImage": "x",
            "returnOnlyMask": None,
            "settings": 3,
        },
        "invalidSettings",
        "settings",
    ),
    (
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "model": ""},
        "invalidModel",
        "model",
    ),
    ({"taskType": "removeBackground", "inputImage": "x"}, "missingTaskUUID", "taskUUID"),
    (
        {"taskType": "removeBackground", "taskUUID": "not-a-uuid", "inputImage": "x"},
        "invalidTaskUUID",
        "taskUUID",
    ),
    ({"taskType": "imageUpload", "taskUUID": U1}, "missingImage", "image"),
    ({"taskType": "imageUpload", "taskUUID": U1, "image": ""}, "missingImage", "image"),
    ({"taskType": "authentication"}, "missingApiKey", "apiKey"),
    ({"taskType": "authentication", "apiKey": 42}, "invalidApiKey", "apiKey"),
    (
        {"taskType": "authentication", "apiKey": "k", "connectionSessionUUID": "zz"},
        "invalidConnectionSessionUUID",
        "connectionSessionUUID",
    ),
    ({"taskType": "imageInference", "taskUUID": U1}, "unsupportedTaskType", "taskType"),
    ({"taskType": 7, "taskUUID": U1}, "unsupportedTaskType", "taskType"),
    ({"taskUUID": U1}, "missingTaskType", "taskType"),
]


@pytest.mark.parametrize("task,code,parameter", BAD_TASKS, ids=[c for _, c, _ in BAD_TASKS])
def test_each_bad_task_gets_its_own_routable_error(task, code, parameter):
    error = only_error(task)
    assert (error.code, error.parameter) == (code, parameter)
    assert error.message
    if isinstance(task.get("taskUUID"), str):
        assert error.taskUUID == task["taskUUID"]
    if isinstance(task.get("taskType"), str):
        assert error.taskType == task["taskType"]


def test_range_errors_carry_the_expected_type_and_bounds():
    error = only_error(
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "outputQuality": 5}
    )
    assert (error.type, error.min, error.max) == ("integer", 20, 99)
    assert (
        only_error(
            {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "alphaMatting": 1}
        ).type
        == "boolean"
    )


def test_siblings_of_a_bad_task_still_decode():
    tasks, errors = decode(
        {"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "outputQuality": 1},
        {"taskType": "removeBackground", "taskUUID": U2, "inputImage": "y"},
        "not an object",
        {"taskType": "ping", "ping": True},
    )
    assert [t.task_uuid for t in tasks] == [U2, None]
    assert [e.code for e in errors] == ["invalidOutputQuality", "invalidTask"]


@pytest.mark.parametrize(
    "frame,code",
    [
        (b"", "invalidJSON"),
        (b"{not json", "invalidJSON"),
        (b"\xff\xfe", "invalidJSON"),
        (b'"a string"', "invalidFrame"),
        (b"42", "invalidFrame"),
        (b"null", "invalidFrame"),
    ],
)
def test_a_frame_that_is_not_an_array_gets_one_frame_level_error(frame, code):
    decoded = decode_frame(frame)
    assert decoded.tasks == [] and [e.code for e in decoded.errors] == [code]


def test_a_lone_task_object_is_refused_but_routed_to_its_sender():
    decoded = decode_frame(json.dumps({"taskType": "removeBackground", "taskUUID": U1}))
    (error,) = decoded.errors
    assert (error.code, error.taskUUID, error.taskType) == ("invalidFrame", U1, "removeBackground")


def test_empty_array_is_nothing_to_do():
    assert decode_frame(b"[]").tasks == [] and decode_frame(b"[]").errors == []


# --------------------------------------------------------------------------- encoding


def test_results_encode_without_empty_fields_and_with_their_task_type():
    result = BackgroundRemovalResult(
        taskType="imageBackgroundRemoval",
        taskUUID=U1,
        imageUUID=U2,
        inputImageUUID=U1,
        imageURL="http://x/y.png",
        cost=0.0013,
    )
    assert json.loads(encode_data([result])) == {
        "data": [
            {
                "taskType": "imageBackgroundRemoval",
                "taskUUID": U1,
                "imageUUID": U2,
                "inputImageUUID": U1,
                "imageURL": "http://x/y.png",
                "cost": 0.0013,
            }
        ]
    }


def test_pong_is_a_real_boolean_in_its_own_data_array():
    assert (
        encode_data([PongResult(taskType="ping", pong=True)])
        == b'{"data":[{"taskType":"ping","pong":true}]}'
    )


def test_errors_encode_without_nulls():
    item = ErrorItem(
        code="invalidApiKey",
        message="Invalid API key.",
        parameter="apiKey",
        taskType="authentication",
    )
    assert json.loads(encode_errors([item])) == {
        "errors": [
            {
                "code": "invalidApiKey",
                "message": "Invalid API key.",
                "parameter": "apiKey",
                "taskType": "authentication",
            }
        ]
    }


def test_protocol_imports_no_io_or_numeric_libraries():
    """protocol/ stays pure: importing all of it pulls in none of these."""
    forbidden = [
        "asyncio",
        "numpy",
        "onnxruntime",
        "PIL",
        "websockets",
        "aiohttp",
        "service",
        "socket",
    ]
    code = (
        "import sys, protocol.codec, protocol.auth, protocol.errors, protocol.messages;"
        f"print([m for m in {forbidden!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "prefix, expected",
    [
        (b' [ {"taskType":"authentication","apiKey":"k\\"}"}, {"taskType"', 'k"}'),
        (b'[{"taskType":"authentication","apiKey":"k"}]', "k"),
    ],
)
def test_the_leading_authentication_is_read_from_a_frames_first_bytes(prefix, expected):
    leading = decode_leading_task(prefix)
    assert isinstance(leading, Authenticate) and leading.api_key == expected


@pytest.mark.parametrize("prefix", [b"", b"  ", b"[", b'[{"taskType":"authentication","apiK'])
def test_more_bytes_are_asked_for_while_the_first_element_is_open(prefix):
    assert decode_leading_task(prefix) is None


@pytest.mark.parametrize("prefix", [b'{"taskType":"ping"}', b"[42,", b"[]", b"[[1]]"])
def test_a_frame_that_does_not_begin_with_a_task_object_leads_with_an_error(prefix):
    assert isinstance(decode_leading_task(prefix), ErrorItem)
