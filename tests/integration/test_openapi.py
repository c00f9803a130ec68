"""The OpenAPI document the server serves, and real answers of every route checked against it."""

from __future__ import annotations

import json
import urllib.request
import uuid

import jsonschema
import pytest

from protocol.schema import asyncapi, openapi
from tests.support import b64, fixture_bytes, http_get, http_request, multipart, run_js

DOCUMENT = openapi()


def check(path: str, method: str, status: int, headers: dict[str, str], body: bytes) -> None:
    """The answer is one the document describes: its status, its media type, and a JSON body
    that validates against the schema given for them."""
    operation = DOCUMENT["paths"][path][method]
    assert str(status) in operation["responses"], f"{method} {path} answered {status}"
    media_type = headers["Content-Type"].split(";")[0]
    content = operation["responses"][str(status)]["content"]
    assert media_type in content, f"{method} {path} {status} answered {media_type}"
    if media_type == "application/json":
        schema = {**content[media_type]["schema"], "components": DOCUMENT["components"]}
        jsonschema.Draft202012Validator(schema).validate(json.loads(body))


def post(url: str, body: bytes, headers: dict[str, str]):
    return http_request(urllib.request.Request(url, data=body, headers=headers, method="POST"))


def test_the_served_documents_are_the_published_ones_for_this_server(server):
    for path, build in (("/openapi.json", openapi), ("/asyncapi.json", asyncapi)):
        status, headers, body = http_get(f"{server.http_url}{path}")
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert json.loads(body) == build(server.http_url)
        check(path, "get", status, headers, body)
    assert json.loads(http_get(f"{server.http_url}/openapi.json")[2])["servers"] == [
        {"url": server.http_url}
    ]


def test_the_documents_name_the_public_url(fast_server_with):
    """They named http://127.0.0.1:7600 whatever --port, --host or --public-url said: a
    generated client called the wrong server."""
    public = fast_server_with("--public-url", "https://rbg.example.com/cutouts/")
    openapi_document = json.loads(http_get(f"{public.http_url}/openapi.json")[2])
    assert openapi_document["servers"] == [{"url": "https://rbg.example.com/cutouts"}]
    asyncapi_document = json.loads(http_get(f"{public.http_url}/asyncapi.json")[2])
    assert asyncapi_document["servers"]["local"] == {
        "host": "rbg.example.com",
        "protocol": "wss",
        "pathname": "/cutouts",
    }


def test_the_rest_twins_answers_validate(server):
    task = {
        "taskType": "removeBackground",
        "taskUUID": str(uuid.uuid4()),
        "inputImage": b64(fixture_bytes("car-1.jpg")),
        "outputType": "URL",
        "outputFormat": "PNG",
    }
    good = post(f"{server.http_url}/v1", json.dumps([task]).encode(), {"Authorization": "Bearer k"})
    check("/v1", "post", *good)
    image_url = json.loads(good[2])["data"][0]["imageURL"]
    stored = http_get(image_url)
    check("/images/{name}", "get", *stored)
    check("/images/{name}", "get", *http_get(image_url.replace(".png", ".webp")))
    keyless = post(f"{server.http_url}/v1", json.dumps([task]).encode(), {})
    assert keyless[0] == 401
    check("/v1", "post", *keyless)


@pytest.mark.parametrize(
    "fields,expected",
    [({"model": "u2netp"}, 200), ({"model": "nope"}, 400), ({"af": "0"}, 422)],
)
def test_rembgs_api_answers_validate(server, fields, expected):
    body, content_type = multipart(fields, {"file": ("car-1.jpg", fixture_bytes("car-1.jpg"))})
    headers = {"Authorization": "Bearer k", "Content-Type": content_type}
    answer = post(f"{server.http_url}/api/remove", body, headers)
    assert answer[0] == expected
    check("/api/remove", "post", *answer)


def test_the_models_probes_and_metrics_validate(server):
    for path in ("/v1/models", "/healthz", "/readyz", "/metrics", "/"):
        check(path, "get", *http_get(f"{server.http_url}{path}"))


@pytest.mark.parametrize("public_url", [None, "https://rbg.example.com/cutouts/"])
def test_the_asyncapi_document_validates_with_asyncapis_own_parser(
    server, fast_server_with, public_url
):
    """@asyncapi/parser (tests/js, npm) reads the served document with no error or warning."""
    target = server if public_url is None else fast_server_with("--public-url", public_url)
    parsed = run_js("validate_asyncapi.mjs", f"{target.http_url}/asyncapi.json", timeout=120)
    assert parsed == {"ok": True, "channels": 1}


def test_the_router_serves_each_declared_method_and_refuses_the_others_with_allow(server):
    """The server's routes are built from the document: each path answers the methods the
    document gives it (never 404 or 405), and any other method gets a one-line 405 naming
    them in Allow; a path the document does not name gets a one-line 404."""
    for path, methods in DOCUMENT["paths"].items():
        if path == "/images/{name}":
            path = f"/images/{uuid.uuid4()}.png"
        declared = {method.upper() for method in methods}
        if "GET" in declared and path != "/api/remove":
            status = http_get(f"{server.http_url}{path}")[0]
            assert status not in (404, 405) or path.startswith("/images/"), (path, status)
        refused = http_request(
            urllib.request.Request(f"{server.http_url}{path}", data=b"", method="DELETE")
        )
        assert refused[0] == 405, path
        allowed = {method.strip() for method in refused[1]["Allow"].split(",")}
        assert declared <= allowed <= declared | {"HEAD"}, (path, allowed)
        assert (
            refused[2]
            == f"DELETE is not served on {path}; it answers {refused[1]['Allow']}\n".encode()
        )
    status, _, body = http_get(f"{server.http_url}/no/such/path")
    assert (status, body) == (404, b"nothing is served on /no/such/path\n")
