"""The twins behind each port behave alike: the in-memory ones (one process) and the Redis ones
(the distributed mode) pass the same tests, through the port's methods only."""

from __future__ import annotations

import asyncio
import base64

import pytest
from redis import asyncio as redis_asyncio

from protocol.errors import ErrorItem
from protocol.messages import ModelInfo, TaskStatusItem
from service.cluster.models import RedisModelCatalog
from service.cluster.relay import RedisSessions, Relay
from service.cluster.results import RedisResultsBook
from service.storage.directory import DirectoryImageStore
from service.tasks.models import LocalModelCatalog
from service.tasks.ports import SessionStore, TaskState
from service.tasks.records import scope_of
from service.tasks.results import InMemoryResultsBook
from service.tasks.sessions import InMemorySessions
from tests.service.fakes import Socket, until
from tests.service.test_results import T1, result

ALICE, BOB = scope_of("alice"), scope_of("bob")
TWINS = [pytest.param("memory"), pytest.param("redis", marks=pytest.mark.integration)]


async def empty_redis(request) -> redis_asyncio.Redis:
    """A client of the module's redis-server, emptied (only the Redis twins ask for one)."""
    client = redis_asyncio.from_url(request.getfixturevalue("redis_server").url)
    await client.flushdb()
    return client


@pytest.fixture(params=TWINS)
async def results(request, tmp_path):
    store = DirectoryImageStore(tmp_path, default_ttl=1000)
    if request.param == "memory":
        yield InMemoryResultsBook(store, retention=100), store
        return
    client = await empty_redis(request)
    yield RedisResultsBook(client, store, retention=100), store
    await client.aclose()


@pytest.fixture(params=TWINS)
async def sessions(request):
    if request.param == "memory":
        yield InMemorySessions(linger=120)
        return
    client = await empty_redis(request)
    relay = Relay(client, linger=120)
    yield RedisSessions(relay)
    await relay.close()
    await client.aclose()


async def test_a_task_uuid_is_taken_once_per_scope(results):
    book, _ = results
    assert await book.begin(ALICE, T1, "removeBackground")
    assert not await book.begin(ALICE, T1, "removeBackground")
    assert await book.begin(BOB, T1, "removeBackground")
    record = await book.get(ALICE, T1)
    assert record.state is TaskState.PROCESSING
    assert await book.reply(record, T1) == TaskStatusItem("removeBackground", T1, "processing")


async def test_a_task_uuid_is_one_task_in_any_case(results):
    book, _ = results
    assert await book.begin(ALICE, T1, "removeBackground")
    assert not await book.begin(ALICE, T1.upper(), "removeBackground")
    assert await book.succeed(ALICE, T1.upper(), result("u", imageURL="http://x/u.png"))
    assert (await book.get(ALICE, T1)).state is TaskState.SUCCESS


async def test_only_the_first_end_counts(results):
    book, _ = results
    await book.begin(ALICE, T1, "removeBackground")
    assert await book.succeed(ALICE, T1, result("u", imageURL="http://x/u.png"))
    assert not await book.fail(ALICE, T1, ErrorItem(code="internalServerError", message="m"))
    reply = await book.reply(await book.get(ALICE, T1), T1)
    assert (reply.status, reply.taskType, reply.imageURL) == (
        "success",
        "removeBackground",
        "http://x/u.png",
    )


async def test_a_failure_is_kept_with_its_error(results):
    book, _ = results
    await book.begin(BOB, T1, "imageUpload")
    error = ErrorItem(code="invalidImage", message="m", taskUUID=T1, parameter="image")
    assert await book.fail(BOB, T1, error)
    record = await book.get(BOB, T1)
    assert record.state is TaskState.FAILED and record.error == error
    assert await book.get(ALICE, T1) is None


async def test_inline_payloads_are_rebuilt_from_the_image_store(results):
    book, store = results
    stored = await store.put(b"\x89PNG-bytes", "png", ttl=60)
    await book.begin(ALICE, T1, "removeBackground")
    inline = base64.b64encode(b"\x89PNG-bytes").decode()
    await book.succeed(ALICE, T1, result(stored.uuid, imageBase64Data=inline))
    record = await book.get(ALICE, T1)
    assert record.result.imageBase64Data is None and record.payload_kind == "base64Data"
    assert (await book.reply(record, T1)).imageBase64Data == inline


async def test_a_session_resumes_only_under_its_own_key(sessions: SessionStore):
    first = await sessions.resume_or_create(None, "alice")
    assert (await sessions.resume_or_create(first.uuid, "alice")).uuid == first.uuid
    assert (await sessions.resume_or_create(first.uuid, "bob")).uuid != first.uuid
    ephemeral = await sessions.ephemeral()
    assert (await sessions.resume_or_create(ephemeral.uuid, "alice")).uuid != ephemeral.uuid


async def test_answers_wait_for_a_resume_and_arrive_in_order(sessions: SessionStore):
    session = await sessions.resume_or_create(None, "alice")
    old = Socket()
    await session.attach(old.send)
    await session.deliver(ErrorItem(code="invalidImage", message="m", taskUUID="a"))
    await until(lambda: len(old.frames) == 1)
    old.open = False
    session.detach(old.send, sessions.now())
    for name in "bc":
        await session.deliver(ErrorItem(code="invalidImage", message="m", taskUUID=name))
    new = Socket()
    resumed = await sessions.resume_or_create(session.uuid, "alice")
    await resumed.attach(new.send)
    await until(lambda: len(new.frames) == 2)
    assert [f["errors"][0]["taskUUID"] for f in new.frames] == ["b", "c"]


async def test_frames_a_dead_socket_held_unread_go_out_again_on_resume(sessions: SessionStore):
    session = await sessions.resume_or_create(None, "alice")
    old = Socket()
    await session.attach(old.send)
    for name in "ab":
        await session.deliver(ErrorItem(code="invalidImage", message="m", taskUUID=name))
    await until(lambda: len(old.frames) == 2)
    old.open = False
    unread = [old.raw[1]]  # "b" was written, and no receipt said it was read
    session.detach(old.send, sessions.now(), unread)
    await session.deliver(ErrorItem(code="invalidImage", message="m", taskUUID="c"))
    new = Socket()
    resumed = await sessions.resume_or_create(session.uuid, "alice")
    await resumed.attach(new.send)
    await until(lambda: len(new.frames) == 2)
    assert sorted(f["errors"][0]["taskUUID"] for f in new.frames) == ["b", "c"]


async def test_unread_frames_of_a_replaced_socket_reach_the_new_one(sessions: SessionStore):
    """The client resumed on a new socket before the old one's death was noticed."""
    session = await sessions.resume_or_create(None, "alice")
    old, new = Socket(), Socket()
    await session.attach(old.send)
    await session.deliver(ErrorItem(code="invalidImage", message="m", taskUUID="a"))
    await until(lambda: len(old.frames) == 1)
    resumed = await sessions.resume_or_create(session.uuid, "alice")
    await resumed.attach(new.send)
    old.open = False
    session.detach(old.send, sessions.now(), old.raw)
    await until(lambda: len(new.frames) == 1)
    assert new.frames[0]["errors"][0]["taskUUID"] == "a"


# --------------------------------------------------------------------------- model catalogs

U2NETP = ModelInfo("u2netp", "u2net", "u2netp.onnx", 320, "OpenVINO CPU (2 streams)", False)
STAND_IN = ModelInfo("runware:109@1", "u2net", "u2netp.onnx", 320, "OpenVINO CPU", True)


@pytest.fixture(params=TWINS)
async def catalog(request):
    """The catalog of a process serving U2NETP and STAND_IN: its own list, or one worker's
    publication read back from Redis."""
    if request.param == "memory":
        yield LocalModelCatalog([U2NETP, STAND_IN])
        return
    client = await empty_redis(request)
    published = RedisModelCatalog(client)
    await published.publish("worker-1", [U2NETP, STAND_IN])
    yield published
    await client.aclose()


async def test_a_catalog_lists_every_model_by_id(catalog):
    assert await catalog.models() == [STAND_IN, U2NETP]


@pytest.mark.integration
async def test_the_redis_catalog_is_the_union_of_live_workers(request):
    client = await empty_redis(request)
    catalog = RedisModelCatalog(client, interval=0.1)
    on_gpu = ModelInfo("u2netp", "u2net", "u2netp.onnx", 320, "CUDAExecutionProvider", False)
    await catalog.publish("cpu-worker", [U2NETP, STAND_IN])
    await catalog.publish("gpu-worker", [on_gpu, STAND_IN])
    assert await catalog.models() == [STAND_IN, on_gpu, U2NETP]
    await catalog.withdraw("gpu-worker")
    assert await catalog.models() == [STAND_IN, U2NETP]
    # A worker that stops renewing is gone after three intervals.
    await asyncio.sleep(0.35)
    assert await catalog.models() == []
    await client.aclose()
