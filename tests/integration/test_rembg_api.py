"""rembg's HTTP API (/api/remove) on a real server: the requests a client of ``rembg s`` sends,
real multipart bodies and real URL fetches, compared with rembg 2.0.86's own remove()
(tests/fixtures/golden)."""

from __future__ import annotations

import io
import json
import re
import socket
import urllib.parse
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from tests.support import GOLDEN, fixture_bytes, http_get, http_request, multipart

CAR = fixture_bytes("car-1.jpg")
KEY = {"Authorization": "Bearer any-key"}


def post(server, fields: dict[str, str], query: str = "", headers=KEY, image: bytes = CAR):
    body, content_type = multipart(fields, {"file": ("car-1.jpg", image)})
    request = urllib.request.Request(
        f"{server.http_url}/api/remove{query}",
        data=body,
        headers={**headers, "Content-Type": content_type},
        method="POST",
    )
    return http_request(request)


def png(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG"
    return image


def alpha_difference(image: Image.Image, golden: str) -> float:
    ours = np.asarray(image.convert("RGBA"))[..., 3].astype(np.int16)
    theirs = np.asarray(Image.open(GOLDEN / golden).convert("RGBA"))[..., 3]
    return float(np.abs(ours - theirs).mean())


def test_a_multipart_post_answers_rembgs_png(server):
    status, headers, body = post(server, {"model": "u2netp"})
    assert status == 200 and headers["Content-Type"] == "image/png"
    image = png(body)
    assert image.mode == "RGBA" and image.size == (480, 360)
    ours = np.asarray(image)[..., 3].astype(np.int16)
    theirs = np.asarray(Image.open(GOLDEN / "car-1.u2netp-alpha.png"))
    assert np.abs(ours - theirs).mean() <= 0.5


def test_a_url_is_fetched_as_rembg_fetches_it(server, image_host):
    query = urllib.parse.urlencode({"url": f"{image_host}/redirect", "model": "u2netp"})
    status, headers, body = http_get(f"{server.http_url}/api/remove?{query}", KEY)
    assert status == 200 and headers["Content-Type"] == "image/png"
    theirs = np.asarray(Image.open(GOLDEN / "car-1.u2netp-alpha.png"))
    assert np.abs(np.asarray(png(body))[..., 3].astype(np.int16) - theirs).mean() <= 0.5


@pytest.mark.parametrize(
    "fields,query,golden",
    [
        ({"om": "true"}, "", "car-1.only-mask.png"),
        ({"ppm": "1"}, "", "car-1.post-process.png"),
        ({"a": "true"}, "", "car-1.alpha-matting.png"),
        ({"dc": "on"}, "", "car-1.decontaminated.png"),
        (
            {"a": "true", "ppm": "true", "af": "230", "ab": "15", "ae": "8"},
            "?bgc=255,255,255,0",
            "car-1.alpha-matting-seed.png",
        ),
    ],
)
def test_rembgs_parameters_do_what_they_do_in_rembg(server, fields, query, golden):
    status, _, body = post(server, {"model": "u2netp", **fields}, query)
    assert status == 200, body
    image = png(body)
    assert image.mode == Image.open(GOLDEN / golden).mode
    assert alpha_difference(image, golden) <= 0.5 if image.mode != "L" else True
    if image.mode == "L":
        ours = np.asarray(image).astype(np.int16)
        assert np.abs(ours - np.asarray(Image.open(GOLDEN / golden))).mean() <= 0.5


def test_an_opaque_background_colour_may_be_given_as_three_numbers(server):
    status, _, body = post(server, {"model": "u2netp"}, "?bgc=0,0,255")
    assert status == 200
    pixels = np.asarray(png(body).convert("RGBA"))
    assert pixels[..., 3].min() == 255 and tuple(pixels[2, 2]) == (0, 0, 255, 255)


def test_without_a_model_the_services_default_answers(server):
    status, _, body = post(server, {})
    assert status == 200 and png(body).size == (480, 360)


def test_extras_are_accepted_and_ignored(server):
    status, _, body = post(server, {"model": "u2netp"}, "?extras=" + urllib.parse.quote("{}"))
    assert status == 200


def test_a_model_we_do_not_serve_gets_400_listing_those_we_do(server):
    status, _, body = post(server, {"model": "bria-rmbg"})
    assert status == 400
    detail = json.loads(body)["detail"]
    assert "bria-rmbg" in detail and "u2netp" in detail and "runware:109@1" in detail


@pytest.mark.parametrize(
    "fields,name",
    [
        ({"af": "300"}, "af"),
        ({"ae": "0"}, "ae"),
        ({"a": "maybe"}, "a"),
        ({"vm": "true"}, "vm"),
    ],
)
def test_a_parameter_out_of_range_gets_fastapis_422(server, fields, name):
    status, _, body = post(server, {"model": "u2netp", **fields})
    assert status == 422
    [detail] = json.loads(body)["detail"]
    assert detail["loc"] == ["body", name] and name in detail["msg"]


def test_a_post_without_a_file_and_a_get_without_a_url_get_422(server):
    body, content_type = multipart({"model": "u2netp"}, {})
    request = urllib.request.Request(
        f"{server.http_url}/api/remove",
        data=body,
        headers={**KEY, "Content-Type": content_type},
        method="POST",
    )
    status, _, answer = http_request(request)
    assert status == 422 and json.loads(answer)["detail"][0]["loc"] == ["body", "file"]
    status, _, answer = http_get(f"{server.http_url}/api/remove", KEY)
    assert status == 422 and json.loads(answer)["detail"][0]["loc"] == ["query", "url"]


def test_a_broken_image_gets_400_with_the_reason(server):
    status, _, body = post(server, {}, image=b"not an image at all")
    assert status == 400 and "not a JPEG, PNG" in json.loads(body)["detail"]


def test_the_api_key_is_required_and_checked(keyed_server):
    status, _, body = post(keyed_server, {}, headers={})
    assert status == 401 and "Bearer" in json.loads(body)["detail"]
    status, _, _ = post(keyed_server, {}, headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, _, body = post(keyed_server, {}, headers={"Authorization": "Bearer secret-one"})
    assert status == 200 and png(body).size == (480, 360)


def test_private_urls_are_refused_unless_allowed(keyed_server, image_host):
    query = urllib.parse.urlencode({"url": f"{image_host}/car.jpg"})
    headers = {"Authorization": "Bearer secret-two"}
    status, _, body = http_get(f"{keyed_server.http_url}/api/remove?{query}", headers)
    assert status == 400 and "non-public address" in json.loads(body)["detail"]


def test_an_open_rembg_api_needs_no_key_and_counts_in_metrics(fast_server_with):
    server = fast_server_with("--open-rembg-api", "--api-key", "only-key")
    status, _, body = post(server, {"model": "fast"}, headers={})
    assert status == 200 and png(body).size == (480, 360)
    _, _, metrics = http_get(f"{server.http_url}/metrics")
    counted = re.search(
        rb'rbg_tasks_total\{outcome="success",task_type="removeBackground"\} (\S+)', metrics
    )
    assert counted is not None and float(counted.group(1)) >= 1
    # /v1 stays keyed
    task = {"taskType": "removeBackground", "taskUUID": str(uuid.uuid4()), "inputImage": "x"}
    request = urllib.request.Request(
        f"{server.http_url}/v1", data=json.dumps([task]).encode(), method="POST"
    )
    assert http_request(request)[0] == 401


def test_a_file_too_large_for_a_task_gets_413_before_any_work(fast_server_with):
    server = fast_server_with("--frame-error-bytes", "200000")
    big = b"\xff\xd8" + bytes(160_000)  # within the body limit, over it once in base64
    status, _, body = post(server, {}, image=big)
    assert status == 413 and "The file has 160,002 bytes" in json.loads(body)["detail"]
    status, _, body = post(server, {"model": "fast"})
    assert status == 200  # a file that fits still goes through


def test_pages_of_allowed_origins_may_call_it_from_their_scripts(fast_server_with):
    server = fast_server_with("--allowed-origin", "http://app.test")
    preflight = urllib.request.Request(
        f"{server.http_url}/api/remove",
        method="OPTIONS",
        headers={
            "Origin": "http://app.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    status, headers, _ = http_request(preflight)
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "http://app.test"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    status, headers, body = post(
        server, {"model": "fast"}, headers={**KEY, "Origin": "http://app.test"}
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://app.test"
    status, headers, _ = post(
        server, {"model": "fast"}, headers={**KEY, "Origin": "http://evil.test"}
    )
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


def test_any_origin_when_the_operator_allows_star_as_rembg_does(fast_server_with):
    server = fast_server_with("--allowed-origin", "*")
    status, headers, _ = post(
        server, {"model": "fast"}, headers={**KEY, "Origin": "http://any.test"}
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://any.test"


def _raw_post(server, body: bytes, content_type: str) -> tuple[int, bytes]:
    """A POST as a hostile client writes it: the bytes as given."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(30)
    sock.sendall(
        f"POST /api/remove HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


_PART = b'Content-Disposition: form-data; name="file"; filename="a.jpg"\r\n'


@pytest.mark.parametrize(
    "body, content_type, status",
    [
        (b"--XX\r\n" + _PART + b"\r\nAAAA", "multipart/form-data; boundary=XX", 400),
        (
            b'--XX\r\nContent-Disposition: form-data; name="' + b"n" * 1_000_000 + b'"\r\n\r\n'
            b"AAAA\r\n--XX--\r\n",
            "multipart/form-data; boundary=XX",
            413,
        ),
        (
            b"--XX\r\n" + _PART.replace(b"a.jpg", b"f" * 1_000_000) + b"\r\nA\r\n--XX--\r\n",
            "multipart/form-data; boundary=XX",
            413,
        ),
        (
            b"--XX\r\n"
            + _PART
            + b"".join(b"X-%d: v\r\n" % i for i in range(1000))
            + b"\r\nAAAA\r\n--XX--\r\n",
            "multipart/form-data; boundary=XX",
            400,
        ),
        (b"garbage", "multipart/form-data", 400),
    ],
)
def test_a_malformed_multipart_body_gets_a_one_line_reason(server, body, content_type, status):
    """Unterminated, a 1 MB part name or filename, 1,000 part headers, no boundary: 400/413
    with rembg's {"detail": ...} shape, and no traceback in the log (they were 500s)."""
    before = server.log().count("Traceback")
    answered, payload = _raw_post(server, body, content_type)
    assert answered == status
    detail = json.loads(payload)["detail"]
    assert detail.startswith("The multipart body could not be read: ") and "\n" not in detail
    assert server.log().count("Traceback") == before


@pytest.mark.parametrize(
    "url", ["null", "example.com/car.jpg", "http://", "/relative/car.jpg", "http://[", "http://a]"]
)
def test_a_url_that_is_not_an_absolute_http_url_gets_a_clear_400(server, url):
    """url=null was read as base64 image data and answered "not a JPEG, PNG, ..."; an
    unclosed IPv6 bracket made the URL parser raise, answered 500 (found by Schemathesis)."""
    query = urllib.parse.urlencode({"url": url})
    status, _, body = http_get(f"{server.http_url}/api/remove?{query}", KEY)
    assert status == 400
    detail = json.loads(body)["detail"]
    assert detail.startswith("url must be an absolute http or https URL") and repr(url) in detail
