"""service.results: what getResponse answers, for how long, and to whom."""

from __future__ import annotations

import base64

from protocol.errors import ErrorItem
from protocol.messages import BackgroundRemovalResult, TaskStatusItem
from service.results import ResultsBook, TaskState, owner_of
from service.storage import ImageStore
from tests.support import FakeClock

ALICE, BOB = owner_of("alice"), owner_of("bob")
T1 = "9ad4918a-e9d0-440a-ac59-057a966cd421"


def book(tmp_path, retention: float = 100) -> tuple[ResultsBook, ImageStore, FakeClock]:
    clock = FakeClock()
    store = ImageStore(tmp_path, default_ttl=1000, clock=clock)
    return ResultsBook(store, retention=retention, clock=clock), store, clock


def result(image_uuid: str, **payload) -> BackgroundRemovalResult:
    return BackgroundRemovalResult(taskType="imageBackgroundRemoval", taskUUID=T1,
                                   imageUUID=image_uuid, inputImageUUID=image_uuid, **payload)


async def test_processing_then_success_with_the_request_task_type(tmp_path):
    results, _, _ = book(tmp_path)
    assert results.begin(ALICE, T1, "removeBackground")
    record = results.get(ALICE, T1)
    assert await results.reply(record, T1) == TaskStatusItem("removeBackground", T1, "processing")
    results.succeed(ALICE, T1, result("u", imageURL="http://x/u.png"))
    reply = await results.reply(results.get(ALICE, T1), T1)
    assert (reply.status, reply.taskType, reply.imageURL) == ("success", "removeBackground", "http://x/u.png")


async def test_a_known_task_uuid_is_refused_until_it_expires(tmp_path):
    results, _, clock = book(tmp_path, retention=100)
    assert results.begin(ALICE, T1, "removeBackground")
    assert not results.begin(ALICE, T1, "removeBackground")
    assert results.begin(BOB, T1, "removeBackground")  # another key: another namespace
    results.fail(ALICE, T1, ErrorItem(code="invalidImage", message="m", taskUUID=T1))
    clock.now += 99
    assert results.get(ALICE, T1).state is TaskState.FAILED
    clock.now += 1
    assert results.get(ALICE, T1) is None and results.begin(ALICE, T1, "removeBackground")


async def test_records_are_invisible_to_other_keys(tmp_path):
    results, _, _ = book(tmp_path)
    results.begin(ALICE, T1, "removeBackground")
    assert results.get(BOB, T1) is None


async def test_a_long_ttl_keeps_the_result_beyond_the_retention(tmp_path):
    results, _, clock = book(tmp_path, retention=100)
    results.begin(ALICE, T1, "removeBackground")
    results.succeed(ALICE, T1, result("u"), ttl=500)
    clock.now += 499
    assert results.get(ALICE, T1) is not None
    assert results.sweep() == 0
    clock.now += 1
    assert results.sweep() == 1 and len(results) == 0


async def test_inline_payloads_are_not_kept_but_rebuilt_from_storage(tmp_path):
    results, store, clock = book(tmp_path)
    stored = await store.put(b"\x89PNG-bytes", "png", ttl=60)
    results.begin(ALICE, T1, "removeBackground")
    results.succeed(ALICE, T1, result(stored.uuid, imageDataURI="data:image/png;base64,AAAA"))
    record = results.get(ALICE, T1)
    assert record.result.imageDataURI is None and record.payload_kind == "dataURI"
    reply = await results.reply(record, T1)
    assert reply.imageDataURI == "data:image/png;base64," + base64.b64encode(b"\x89PNG-bytes").decode()
    clock.now += 60  # the image's own ttl ran out first
    assert await results.reply(results.get(ALICE, T1), T1) is None
