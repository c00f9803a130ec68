"""The published schema is generated from the structs and checked in: it must never drift."""

from __future__ import annotations

import json

import jsonschema
import pytest

from protocol.schema import json_schema
from service.publish_schema import DEFAULT_DIR, FILES, render
from tests.support import SEED_SETTINGS


@pytest.mark.parametrize("name", sorted(FILES))
def test_checked_in_schema_matches_the_code(name):
    assert (DEFAULT_DIR / name).read_text() == render(FILES[name]), (
        "protocol/schema is stale: run `make schema` and commit the result"
    )


def test_every_wire_message_is_described():
    definitions = json_schema()["$defs"]
    for name in (
        "AuthenticationRequest",
        "PingRequest",
        "ImageUploadRequest",
        "GetResponseRequest",
        "RemoveBackgroundRequest",
        "BackgroundRemovalResult",
        "ErrorItem",
        "ClientFrame",
        "DataFrame",
        "ErrorsFrame",
    ):
        assert name in definitions
    quality = definitions["RemoveBackgroundRequest"]["properties"]["outputQuality"]
    assert {"type": "integer", "minimum": 20, "maximum": 99} in quality["anyOf"]
    json.dumps(json_schema())


# Frames as the SDKs send and receive them (shared/PROTOCOL-EXAMPLES.md), and ours.
U = "9ad4918a-e9d0-440a-ac59-057a966cd421"
CLIENT_FRAMES = [
    [{"taskType": "authentication", "apiKey": "k"}],
    [{"taskType": "authentication", "apiKey": "k", "connectionSessionUUID": U}],
    [{"taskType": "ping", "ping": True}],
    [{"taskType": "imageUpload", "taskUUID": U, "image": "data:image/png;base64,AAAA"}],
    [
        {
            "model": "runware:109@1",
            "inputs": {"image": "https://example.com/cat.jpg"},
            "outputType": "URL",
            "outputFormat": "PNG",
            "includeCost": True,
            "settings": SEED_SETTINGS,
            "taskType": "removeBackground",
            "taskUUID": U,
        }
    ],
    [
        {
            "taskType": "imageBackgroundRemoval",
            "taskUUID": U,
            "inputImage": U,
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
    ],
    [{"taskType": "getResponse", "taskUUID": U}],
]
SERVER_FRAMES = [
    {"data": [{"taskType": "authentication", "connectionSessionUUID": U}]},
    {"data": [{"taskType": "ping", "pong": True}]},
    {
        "data": [
            {
                "taskType": "imageBackgroundRemoval",
                "taskUUID": U,
                "imageUUID": U,
                "inputImageUUID": U,
                "imageURL": "http://x/y.png",
                "cost": 0.0013,
            }
        ]
    },
    {"data": [{"taskType": "removeBackground", "taskUUID": U, "status": "processing"}]},
    {
        "errors": [
            {
                "code": "invalidApiKey",
                "message": "Invalid API key.",
                "parameter": "apiKey",
                "taskType": "authentication",
            }
        ]
    },
]


@pytest.mark.parametrize("frame", CLIENT_FRAMES + SERVER_FRAMES)
def test_real_frames_validate_against_the_schema(frame):
    jsonschema.validate(frame, json_schema())


@pytest.mark.parametrize(
    "frame",
    [
        [{"taskType": "removeBackground", "taskUUID": U, "outputQuality": 5}],
        {"data": {"taskType": "ping", "pong": True}},  # data must be an array
        [{"taskType": "authentication"}],
    ],
)
def test_invalid_frames_do_not_validate(frame):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(frame, json_schema())


def test_the_openapi_document_is_valid_openapi_3_1():
    from openapi_spec_validator import validate

    from protocol.schema import openapi

    document = openapi()
    validate(document)
    assert document["openapi"] == "3.1.0"
    for path in ("/v1", "/api/remove", "/v1/models", "/images/{name}", "/healthz", "/readyz"):
        assert path in document["paths"]
    assert "/metrics" in document["paths"] and "/asyncapi.json" in document["paths"]
