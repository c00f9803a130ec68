"""service.tasks.inputs: every kind of image input becomes stored bytes, or a clear error."""

from __future__ import annotations

import base64

import pytest

from protocol.errors import TaskFailure
from service.storage.directory import DirectoryImageStore
from service.tasks.inputs import InputResolver
from service.tasks.records import scope_of
from tests.support import fixture_bytes

JPEG = fixture_bytes("car-1.jpg")
ALICE, BOB = scope_of("alice"), scope_of("bob")


class FakeHttp:
    """``OutboundHttp`` at the resolver's port: serves one body per URL."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        self.bodies = bodies
        self.fetched: list[str] = []

    async def get(self, url: str, parameter: str) -> bytes:
        self.fetched.append(url)
        return self.bodies[url]


@pytest.fixture
def resolver(tmp_path):
    http = FakeHttp({"https://images.example.com/car.jpg": JPEG})
    return InputResolver(DirectoryImageStore(tmp_path, default_ttl=60), http), http  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        "data:image/jpeg;base64," + base64.b64encode(JPEG).decode(),
        "DATA:image/jpeg;charset=x;base64," + base64.b64encode(JPEG).decode(),
        base64.b64encode(JPEG).decode(),
        "  " + base64.b64encode(JPEG).decode()[:40] + "\n" + base64.b64encode(JPEG).decode()[40:],
    ],
)
async def test_inline_images_are_decoded_and_stored(resolver, value):
    inputs, _ = resolver
    resolved = await inputs.resolve(value, "inputImage", ALICE)
    assert resolved.data == JPEG and resolved.stored.extension == "jpg"


async def test_a_url_is_fetched_and_a_stored_uuid_read_back(resolver):
    inputs, http = resolver
    fetched = await inputs.resolve("https://images.example.com/car.jpg", "inputImage", ALICE)
    assert http.fetched == ["https://images.example.com/car.jpg"] and fetched.data == JPEG
    again = await inputs.resolve(fetched.stored.uuid.upper(), "inputs.image", ALICE)
    assert again.data == JPEG and again.stored.uuid == fetched.stored.uuid


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("9ad4918a-e9d0-440a-ac59-057a966cd421", "unknownImageUUID"),
        ("ftp://images.example.com/car.jpg", "forbiddenURL"),
        ("data:image/png,notbase64", "invalidInputImage"),
        ("not base64 at all!", "invalidInputImage"),
        (base64.b64encode(b"just some text").decode(), "invalidImage"),
    ],
)
async def test_bad_inputs_name_the_parameter(resolver, value, code):
    inputs, _ = resolver
    with pytest.raises(TaskFailure) as refused:
        await inputs.resolve(value, "inputImage", ALICE)
    assert refused.value.code == code and refused.value.parameter == "inputImage"


async def test_another_keys_stored_image_is_not_found(resolver):
    inputs, _ = resolver
    mine = await inputs.resolve(base64.b64encode(JPEG).decode(), "inputImage", ALICE)
    with pytest.raises(TaskFailure) as refused:
        await inputs.resolve(mine.stored.uuid, "inputImage", BOB)
    assert refused.value.code == "unknownImageUUID"
    assert (await inputs.resolve(mine.stored.uuid, "inputImage", ALICE)).data == JPEG
