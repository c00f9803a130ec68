"""The published protocol: JSON Schema and an AsyncAPI document, generated from the structs.

Pure functions returning dicts; ``python -m service.publish_schema`` (``make schema``) writes
them to ``protocol/schema/``, and a test fails when the checked-in files drift from the code.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .errors import ErrorItem
from .messages import REQUEST_TYPES, RESULT_TYPES

__all__ = ["json_schema", "asyncapi"]

_REF = "#/$defs/{name}"
_TITLE = "Runware background-removal WebSocket protocol (rembg-stream subset)"


def _components(ref_template: str) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        (*REQUEST_TYPES, *RESULT_TYPES, ErrorItem), ref_template=ref_template
    )
    return components


def _ref(template: str, struct: type) -> dict[str, str]:
    return {"$ref": template.format(name=struct.__name__)}


def _frames(template: str) -> dict[str, Any]:
    """The three frame shapes, built by hand: the message unions are untagged on purpose (the
    wire dispatches on taskType, and results carry no tag of their own)."""
    return {
        "ClientFrame": {
            "title": "ClientFrame",
            "description": "Client to server: a JSON array of task objects (the SDKs send one).",
            "type": "array",
            "items": {"anyOf": [_ref(template, t) for t in REQUEST_TYPES]},
        },
        "DataFrame": {
            "title": "DataFrame",
            "description": "Server to client: results, acknowledgements, pongs.",
            "type": "object",
            "properties": {
                "data": {
                    "type": "array",
                    "items": {"anyOf": [_ref(template, t) for t in RESULT_TYPES]},
                }
            },
            "required": ["data"],
        },
        "ErrorsFrame": {
            "title": "ErrorsFrame",
            "description": "Server to client: errors, one per frame, each with its taskUUID.",
            "type": "object",
            "properties": {"errors": {"type": "array", "items": _ref(template, ErrorItem)}},
            "required": ["errors"],
        },
    }


def json_schema() -> dict[str, Any]:
    """One JSON Schema document: a frame is a ClientFrame, DataFrame or ErrorsFrame."""
    definitions = {**_components(_REF), **_frames(_REF)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": _TITLE,
        "anyOf": [
            {"$ref": _REF.format(name=name)} for name in ("ClientFrame", "DataFrame", "ErrorsFrame")
        ],
        "$defs": dict(sorted(definitions.items())),
    }


def asyncapi() -> dict[str, Any]:
    """An AsyncAPI 3.0 document for the one WebSocket channel."""
    template = "#/components/schemas/{name}"
    schemas = {**_components(template), **_frames(template)}
    messages = {
        name: {
            "name": name,
            "contentType": "application/json",
            "payload": {"$ref": template.format(name=name)},
        }
        for name in ("ClientFrame", "DataFrame", "ErrorsFrame")
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": _TITLE,
            "version": "1.0.0",
            "description": "Text frames of JSON. Clients send arrays of tasks; the server "
            "answers each task with a data item or an error item carrying "
            "its taskUUID, in completion order.",
        },
        "servers": {"local": {"host": "127.0.0.1:7600", "protocol": "ws"}},
        "channels": {
            "tasks": {
                "address": "/",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
            }
        },
        "operations": {
            "sendTasks": {
                "action": "receive",
                "channel": {"$ref": "#/channels/tasks"},
                "messages": [{"$ref": "#/channels/tasks/messages/ClientFrame"}],
            },
            "streamResults": {
                "action": "send",
                "channel": {"$ref": "#/channels/tasks"},
                "messages": [
                    {"$ref": "#/channels/tasks/messages/DataFrame"},
                    {"$ref": "#/channels/tasks/messages/ErrorsFrame"},
                ],
            },
        },
        "components": {"schemas": dict(sorted(schemas.items())), "messages": messages},
    }
