"""The published protocol: JSON Schema, an AsyncAPI document for the socket and an OpenAPI
document for the HTTP routes, all generated from the structs.

Pure functions returning dicts; ``python -m service.publish_schema`` (``make schema``) writes
them to ``protocol/schema/``, and a test fails when the checked-in files drift from the code.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .errors import ErrorItem
from .messages import (
    REQUEST_TYPES,
    RESULT_TYPES,
    RGBA_TEXT_PATTERN,
    ModelList,
    RembgError,
    RembgRemoveParameters,
    RestResponse,
)

__all__ = ["json_schema", "asyncapi", "openapi", "operations"]

_REF = "#/$defs/{name}"
_TITLE = "Runware background-removal WebSocket protocol (rembg-stream subset)"


def _components(ref_template: str, *more: type) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        (*REQUEST_TYPES, *RESULT_TYPES, ErrorItem, *more), ref_template=ref_template
    )
    if "RestResponse" in components:
        # Its lists are typed Any in the struct (the items are encoded as they come); the
        # document says what they hold, so that generated clients keep the response type.
        properties = components["RestResponse"]["properties"]
        properties["data"]["items"] = {"anyOf": [_ref(ref_template, t) for t in RESULT_TYPES]}
        properties["errors"]["items"] = _ref(ref_template, ErrorItem)
    if "RemoveBackgroundRequest" in components:
        # The image is required, in either of the two places the SDKs put it: without a
        # string at inputs.image, inputImage must be one. (if/then rather than anyOf: client
        # generators ignore it instead of splitting the request type in two.)
        image_in_inputs = {
            "required": ["inputs"],
            "properties": {
                "inputs": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string"}},
                }
            },
        }
        components["RemoveBackgroundRequest"]["if"] = {"not": image_in_inputs}
        components["RemoveBackgroundRequest"]["then"] = {
            "required": ["inputImage"],
            "properties": {"inputImage": {"type": "string"}},
        }
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


DEFAULT_BASE_URL = "http://127.0.0.1:7600"  # `make schema`'s documents: the default address


def asyncapi(base_url: str = DEFAULT_BASE_URL) -> dict[str, Any]:
    """An AsyncAPI 3.0 document for the one WebSocket channel of the server at ``base_url``."""
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
        "servers": {"local": _socket_server(base_url)},
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


# --------------------------------------------------------------------------- OpenAPI

_SCHEMAS = "#/components/schemas/{name}"
_JSON = "application/json"
_TEXT = "text/plain"


def _content(media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {media_type: {"schema": schema}}


def _answer(description: str, media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": _content(media_type, schema)}


def _text(description: str) -> dict[str, Any]:
    return _answer(description, _TEXT, {"type": "string"})


def _binary(media_type: str) -> dict[str, Any]:
    # "format": "binary" is what client generators (openapi-python-client) read to send a file
    # part as bytes; contentMediaType is OpenAPI 3.1's own word for it.
    return {"type": "string", "format": "binary", "contentMediaType": media_type}


def _rembg_fields() -> dict[str, Any]:
    """The JSON Schema of each of ``/api/remove``'s parameters: the struct's, narrowed where
    the route accepts less (``_REMBG_NARROWER``)."""
    schema = msgspec.json.schema(RembgRemoveParameters)
    properties: dict[str, Any] = schema["$defs"]["RembgRemoveParameters"]["properties"]
    return {**properties, **_REMBG_NARROWER}


def _rembg_parameters(location: str, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """``/api/remove``'s parameters as OpenAPI parameter objects, from the struct's schema."""
    fields = _rembg_fields()
    parameters = []
    for name in names:
        schema = dict(fields[name])
        description = schema.pop("description", "")
        parameters.append(
            {
                "name": name,
                "in": location,
                "required": name == "url",
                "description": description,
                "schema": schema,
            }
        )
    return parameters


# Where the struct's type is wider than what the route accepts (it also serves POST, where
# ``url`` is absent; ``vm`` is parsed to be refused), the document says what is accepted.
_REMBG_NARROWER: dict[str, dict[str, Any]] = {
    "url": {
        "description": "the image to fetch: an absolute http or https URL with a host",
        "type": "string",
        "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@:\\s]",
    },
    "bgc": {
        "description": "background colour R,G,B (opaque) or R,G,B,A, each 0-255",
        "type": "string",
        "pattern": RGBA_TEXT_PATTERN,
    },
    "vm": {
        "description": "rembg's ViTMatte refinement: not served, so only false is accepted",
        "type": "boolean",
        "enum": [False],
    },
}

_FORM_FIELDS = ("model", "a", "af", "ab", "ae", "om", "ppm", "dc", "vm")


def _rembg_answers() -> dict[str, Any]:
    error = _ref(_SCHEMAS, RembgError)
    return {
        "200": _answer("The cutout, as rembg answers it", "image/png", _binary("image/png")),
        "400": _answer("What the client must fix: the image, the URL, the model", _JSON, error),
        "401": _answer("No API key, or a wrong one", _JSON, error),
        "413": _answer("The body is larger than the limit", _JSON, error),
        "422": _answer("A parameter out of range or missing, in FastAPI's shape", _JSON, error),
        "429": _answer("Over a limit: retry later", _JSON, error),
        "503": _answer("Shutting down, or the cluster's store is away", _JSON, error),
    }


def _rembg_form() -> dict[str, Any]:
    fields = _rembg_fields()
    properties = {"file": _binary("application/octet-stream")}
    properties.update({name: fields[name] for name in _FORM_FIELDS})
    return {"type": "object", "properties": properties, "required": ["file"]}


def _paths(open_rembg_api: bool) -> dict[str, Any]:
    rest = _ref(_SCHEMAS, RestResponse)
    rest_statuses = {
        "200": "Something succeeded: every task's item in data or errors",
        "400": "Nothing succeeded; the first error is one the client must fix",
        "401": "Nothing succeeded: no API key, or a wrong one",
        "413": "The body or the number of tasks is over the limit",
        "429": "Over a limit (Retry-After says when to retry)",
        "500": "A server fault",
        "503": "Shutting down, or the cluster's store is away (Retry-After)",
    }
    json_document = _answer("The document", _JSON, {"type": "object"})
    # /v1 takes the key from the header or from a leading authentication task; rembg's route
    # only from the header, unless the server opened it.
    key_in_header_or_body: list[dict[str, list[str]]] = [{"bearer": []}, {}]
    rembg_security: list[dict[str, list[str]]] = [{}] if open_rembg_api else [{"bearer": []}]
    return {
        "/v1": {
            "post": {
                "summary": "The REST twin: a JSON array of tasks in, every answer out",
                "operationId": "runTasks",
                "security": key_in_header_or_body,
                "requestBody": {
                    "required": True,
                    "content": _content(_JSON, {"$ref": _SCHEMAS.format(name="ClientFrame")}),
                },
                "responses": {
                    status: _answer(text, _JSON, rest) for status, text in rest_statuses.items()
                },
            }
        },
        "/api/remove": {
            "get": {
                "summary": "rembg's API: remove the background of the image at a URL",
                "operationId": "removeFromUrl",
                "security": rembg_security,
                "parameters": _rembg_parameters("query", ("url", *_FORM_FIELDS, "bgc", "extras")),
                "responses": _rembg_answers(),
            },
            "post": {
                "summary": "rembg's API: remove the background of an uploaded image",
                "operationId": "removeFromUpload",
                "security": rembg_security,
                "parameters": _rembg_parameters("query", ("bgc", "extras")),
                "requestBody": {
                    "required": True,
                    "content": _content("multipart/form-data", _rembg_form()),
                },
                "responses": _rembg_answers(),
            },
        },
        "/v1/models": {
            "get": {
                "summary": "Every model id served, with its family, file and provider",
                "operationId": "listModels",
                "responses": {
                    "200": _answer("The models", _JSON, _ref(_SCHEMAS, ModelList)),
                    "503": _text("The distributed mode's store is away"),
                },
            }
        },
        "/images/{name}": {
            "get": {
                "summary": "A stored image (an output, or an uploaded input) until its ttl",
                "operationId": "getImage",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "description": "IMAGEUUID.EXT, as imageURL names it",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The image",
                        "content": {
                            media: {"schema": _binary(media)}
                            for media in ("image/png", "image/jpeg", "image/webp")
                        },
                    },
                    "404": _text("No such image, or its ttl has passed"),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process is alive",
                "operationId": "health",
                "responses": {"200": _text("ok")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Whether the process should get traffic",
                "operationId": "ready",
                "responses": {
                    "200": _text("ready"),
                    "503": _text("Why not: draining, or Redis cannot be reached"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {"200": _text("The Prometheus text format 0.0.4")},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": json_document},
            }
        },
        "/asyncapi.json": {
            "get": {
                "summary": "The WebSocket protocol's AsyncAPI document",
                "operationId": "asyncapi",
                "responses": {"200": json_document},
            }
        },
        "/docs": {
            "get": {
                "summary": "This document in Swagger UI, served from an installed package",
                "operationId": "docs",
                "responses": {"200": _answer("The page", "text/html", {"type": "string"})},
            }
        },
        "/": {
            "get": {
                "summary": "The browser page",
                "operationId": "page",
                "responses": {"200": _answer("The page", "text/html", {"type": "string"})},
            }
        },
    }


def operations(open_rembg_api: bool = False) -> list[tuple[str, str, str]]:
    """Every HTTP route the OpenAPI document declares, as (METHOD, path, operationId): the one
    declaration the server's router is built from (paths in ``{name}`` template form)."""
    return [
        (method.upper(), path, operation["operationId"])
        for path, methods in _paths(open_rembg_api).items()
        for method, operation in methods.items()
    ]


def _socket_server(base_url: str) -> dict[str, str]:
    """AsyncAPI's server object for the socket beside ``base_url``'s HTTP routes."""
    scheme, _, rest = base_url.partition("://")
    host, _, path = rest.partition("/")
    server = {"host": host, "protocol": "wss" if scheme == "https" else "ws"}
    if path.strip("/"):
        server["pathname"] = "/" + path.strip("/")
    return server


def openapi(base_url: str = DEFAULT_BASE_URL, open_rembg_api: bool = False) -> dict[str, Any]:
    """An OpenAPI 3.1 document for every HTTP route of the server at ``base_url`` (whose
    ``/api/remove`` needs no key when ``open_rembg_api``)."""
    schemas = {
        **_components(_SCHEMAS, RestResponse, ModelList, RembgError),
        **_frames(_SCHEMAS),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rembg-stream HTTP API",
            "version": "1.0.0",
            "description": "The HTTP routes beside the WebSocket (GET / with an Upgrade header, "
            "described by /asyncapi.json): the REST twin of the socket's tasks, rembg's "
            "/api/remove, the model list, stored images, probes and metrics.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": base_url.rstrip("/")}],
        "paths": _paths(open_rembg_api),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The API key: /v1 also takes it from a leading "
                    "authentication task; /api/remove needs it unless the server runs with "
                    "--open-rembg-api",
                }
            },
        },
    }
