"""The published schema is generated from the structs and checked in: it must never drift."""

from __future__ import annotations

import json

import pytest

from protocol.schema import json_schema
from service.publish_schema import DEFAULT_DIR, FILES, render


@pytest.mark.parametrize("name", sorted(FILES))
def test_checked_in_schema_matches_the_code(name):
    assert (DEFAULT_DIR / name).read_text() == render(FILES[name]), \
        "protocol/schema is stale: run `make schema` and commit the result"


def test_every_wire_message_is_described():
    definitions = json_schema()["$defs"]
    for name in ("AuthenticationRequest", "PingRequest", "ImageUploadRequest", "GetResponseRequest",
                 "RemoveBackgroundRequest", "BackgroundRemovalResult", "ErrorItem", "ClientFrame",
                 "DataFrame", "ErrorsFrame"):
        assert name in definitions
    quality = definitions["RemoveBackgroundRequest"]["properties"]["outputQuality"]
    assert {"type": "integer", "minimum": 20, "maximum": 99} in quality["anyOf"]
    json.dumps(json_schema())
