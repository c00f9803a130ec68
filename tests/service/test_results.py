"""service.tasks.results and service.cluster.results: what each twin does beyond the shared
behaviour of test_twins (expiry by its clock, the admission lease, the hand-over)."""

from __future__ import annotations

import asyncio
import base64
import json

import msgspec
import pytest
from redis import asyncio as redis_asyncio

from protocol.codec import decode_frame
from protocol.errors import ErrorItem
from protocol.messages import BackgroundRemovalResult
from service.cluster.jobs import JobQueue
from service.cluster.results import Handover, RedisResultsBook
from service.storage.directory import DirectoryImageStore
from service.tasks.ports import TaskState
from service.tasks.records import scope_of
from service.tasks.results import InMemoryResultsBook
from tests.support import FakeClock

ALICE, BOB = scope_of("alice"), scope_of("bob")
T1 = "9ad4918a-e9d0-440a-ac59-057a966cd421"


def book(
    tmp_path, retention: float = 100
) -> tuple[InMemoryResultsBook, DirectoryImageStore, FakeClock]:
    clock = FakeClock()
    store = DirectoryImageStore(tmp_path, default_ttl=1000, clock=clock)
    return InMemoryResultsBook(store, retention=retention, clock=clock), store, clock


def result(image_uuid: str, **payload) -> BackgroundRemovalResult:
    return BackgroundRemovalResult(
        taskType="imageBackgroundRemoval",
        taskUUID=T1,
        imageUUID=image_uuid,
        inputImageUUID=image_uuid,
        **payload,
    )


async def test_a_known_task_uuid_is_refused_until_it_expires(tmp_path):
    results, _, clock = book(tmp_path, retention=100)
    assert await results.begin(ALICE, T1, "removeBackground")
    assert not await results.begin(ALICE, T1, "removeBackground")
    assert await results.begin(BOB, T1, "removeBackground")  # another key: another namespace
    await results.fail(ALICE, T1, ErrorItem(code="invalidImage", message="m", taskUUID=T1))
    clock.now += 99
    assert (await results.get(ALICE, T1)).state is TaskState.FAILED
    clock.now += 1
    assert await results.get(ALICE, T1) is None and await results.begin(
        ALICE, T1, "removeBackground"
    )


async def test_a_long_ttl_keeps_the_result_beyond_the_retention(tmp_path):
    results, _, clock = book(tmp_path, retention=100)
    await results.begin(ALICE, T1, "removeBackground")
    await results.succeed(ALICE, T1, result("u"), ttl=500)
    clock.now += 499
    assert await results.get(ALICE, T1) is not None
    assert results.sweep() == 0
    clock.now += 1
    assert results.sweep() == 1 and len(results) == 0


async def test_inline_payloads_are_not_kept_but_rebuilt_from_storage(tmp_path):
    results, store, clock = book(tmp_path)
    stored = await store.put(b"\x89PNG-bytes", "png", ttl=60)
    await results.begin(ALICE, T1, "removeBackground")
    await results.succeed(ALICE, T1, result(stored.uuid, imageDataURI="data:image/png;base64,AAAA"))
    record = await results.get(ALICE, T1)
    assert record.result.imageDataURI is None and record.payload_kind == "dataURI"
    reply = await results.reply(record, T1)
    assert (
        reply.imageDataURI == "data:image/png;base64," + base64.b64encode(b"\x89PNG-bytes").decode()
    )
    clock.now += 60  # the image's own ttl ran out first
    assert await results.reply(await results.get(ALICE, T1), T1) is None


# --------------------------------------------------------------------------- on Redis


@pytest.fixture
async def redis_book(redis_server, tmp_path):
    client = redis_asyncio.from_url(redis_server.url)
    await client.flushdb()
    store = DirectoryImageStore(tmp_path, default_ttl=1000)
    yield RedisResultsBook(client, store, retention=100), store, client
    await client.aclose()


async def test_redis_an_accepted_task_holds_only_a_lease_until_it_is_queued(redis_book):
    """A gateway that dies between accepting and queueing must not block the task's retry."""
    results, _, client = redis_book
    await results.begin(ALICE, T1, "removeBackground")
    assert 0 < await client.ttl(results.key(ALICE, T1)) <= results.ADMISSION_LEASE
    await JobQueue(client, results).add(removal(), ALICE, None)
    assert await client.ttl(results.key(ALICE, T1)) > results.ADMISSION_LEASE
    assert await client.xlen("rbg:jobs") == 1


def removal(task_uuid: str = T1):
    return decode_frame(
        json.dumps([{"taskType": "removeBackground", "taskUUID": task_uuid, "inputImage": "x"}])
    ).tasks[0]


async def test_redis_a_task_held_by_its_gateway_outlives_the_admission_lease(redis_book):
    """Storing a slow input may take longer than the lease: the gateway keeps it alive, so
    getResponse still knows the task meanwhile."""
    results, _, client = redis_book
    results.ADMISSION_LEASE = 1
    await results.begin(ALICE, T1, "removeBackground")
    async with results.held(ALICE, T1):
        await asyncio.sleep(2.5)
        assert (await results.get(ALICE, T1)).state is TaskState.PROCESSING
    assert 0 < await client.ttl(results.key(ALICE, T1)) <= 1


async def test_redis_a_task_queued_after_its_lease_ran_out_is_recorded_and_answered(redis_book):
    """Queueing enters the record again if it expired: the worker's answer is not refused as
    'not processing', and getResponse knows the task."""
    results, store, client = redis_book
    await results.begin(ALICE, T1, "removeBackground")
    await client.delete(results.key(ALICE, T1))  # the lease ran out
    await JobQueue(client, results).add(removal(), ALICE, None)
    record = await results.get(ALICE, T1)
    assert record is not None and record.state is TaskState.PROCESSING
    assert await client.ttl(results.key(ALICE, T1)) > results.ADMISSION_LEASE
    error = ErrorItem(code="invalidImage", message="m", taskUUID=T1)
    assert await results.fail(ALICE, T1, error)


async def test_redis_only_the_first_to_end_a_task_records_and_hands_over(redis_book):
    results, store, client = redis_book
    stored = await store.put(b"\x89PNG-bytes", "png", ttl=60)
    await results.begin(ALICE, T1, "removeBackground")
    handover = Handover("rbg:outbox:s1", "rbg:wake:s1", 100, 60)
    outcome = result(stored.uuid, imageBase64Data=base64.b64encode(b"\x89PNG-bytes").decode())
    answer = msgspec.json.encode(outcome)
    assert await results.finish_and_hand_over(ALICE, T1, outcome, 300, handover)
    assert not await results.finish_and_hand_over(ALICE, T1, outcome, 300, handover)  # a slow twin
    failure = ErrorItem(code="internalServerError", message="m")
    assert not await results.finish_and_hand_over(ALICE, T1, failure, None, handover)
    [(_, fields)] = await client.xrange("rbg:outbox:s1")
    assert fields[b"kind"] == b"data" and fields[b"item"] == answer
    assert 100 < await client.ttl(results.key(ALICE, T1)) <= 300  # the ttl beyond the retention
    record = await results.get(ALICE, T1)
    assert record.result.imageBase64Data is None and record.payload_kind == "base64Data"
    reply = await results.reply(record, T1)
    assert reply.status == "success" and reply.imageBase64Data == outcome.imageBase64Data
