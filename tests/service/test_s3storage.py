"""service.storage.s3 against a real S3 API (SeaweedFS's weed mini on loopback)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from service.storage.s3 import S3ImageStore
from tests.support import FakeClock, memory_growth, start_seaweedfs


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_seaweedfs(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


def store(s3, clock=None) -> S3ImageStore:
    extra = {"clock": clock} if clock else {}
    return S3ImageStore(
        s3.endpoint, s3.bucket, s3.access_key, s3.secret_key, "us-east-1", default_ttl=3600, **extra
    )


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


async def test_an_image_stored_by_one_process_is_read_by_another(s3):
    writer, reader = store(s3), store(s3)
    stored = await writer.put(b"\x89PNG-cutout", "png", ttl=600)
    assert stored.path is None and stored.filename == f"{stored.uuid}.png"
    loaded = await reader.load(stored.uuid)
    assert loaded is not None and loaded[1] == b"\x89PNG-cutout"
    assert loaded[0].extension == "png" and abs(loaded[0].expires_at - stored.expires_at) < 0.01
    assert await reader.load("0b5ad6c4-9d55-4f5e-b9a3-2a3d7f1f4a11") is None
    assert await reader.load("../etc/passwd") is None


async def test_an_expired_image_is_not_read(s3):
    clock = FakeClock()
    clock.now = 2_000_000_000.0
    images = store(s3, clock)
    stored = await images.put(b"x", "jpg", ttl=60)
    assert (await images.load(stored.uuid))[1] == b"x"
    clock.now += 60
    assert await images.load(stored.uuid) is None


async def test_the_presigned_url_serves_the_bytes_and_refuses_tampering_and_expiry(s3):
    images = store(s3)
    stored = await images.put(b"\x89PNG-presigned", "png", ttl=600)
    url = images.url_for(stored, "http://unused")
    assert (
        url.startswith(f"{s3.endpoint}/{s3.bucket}/{stored.uuid}.png?")
        and "X-Amz-Signature=" in url
    )
    assert await asyncio.to_thread(fetch, url) == (200, b"\x89PNG-presigned")
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    tampered = url.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    assert (await asyncio.to_thread(fetch, tampered))[0] == 403
    longer = url.replace("X-Amz-Expires=", "X-Amz-Expires=9")  # a client stretching its URL
    assert (await asyncio.to_thread(fetch, longer))[0] == 403

    short = await images.put(b"\x89PNG-short", "png", ttl=1)
    short_url = images.url_for(short, "http://unused")
    assert "X-Amz-Expires=1&" in short_url
    await asyncio.sleep(2.5)
    assert (await asyncio.to_thread(fetch, short_url))[0] == 403


async def test_memory_stays_bounded_and_an_older_image_is_still_read(s3):
    images = S3ImageStore(
        s3.endpoint, s3.bucket, s3.access_key, s3.secret_key, "us-east-1", 86_400, recent=10
    )
    first = await images.put(b"\x89PNG-first", "png")
    grown = await memory_growth(lambda: images.put(b"x", "jpg"), 20, 100, "*/service/storage/*")
    assert grown < 10_000  # records kept for all 100 would hold about 30 KB
    loaded = await images.load(first.uuid)  # forgotten here: found by trying each extension
    assert loaded is not None and loaded[1] == b"\x89PNG-first" and loaded[0].extension == "png"
