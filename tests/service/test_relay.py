"""service.cluster.relay against a real redis-server: answers through a session's outbox."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis import asyncio as redis_asyncio

from protocol.errors import ErrorItem
from service.cluster.relay import RedisSessions, Relay
from tests.service.test_sessions import Socket
from tests.support import start_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    process = start_redis(tmp_path_factory.mktemp("redis"))
    yield process
    process.stop()


@pytest.fixture
async def sessions(redis_server):
    client = redis_asyncio.from_url(redis_server.url)
    await client.flushdb()
    relay = Relay(client, linger=30)
    yield RedisSessions(relay), relay, client
    await relay.close()
    await client.aclose()


async def until(condition, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def test_answers_wait_in_the_outbox_and_arrive_on_resume(sessions):
    store, _, _ = sessions
    session = await store.resume_or_create(None, "alice")
    await session.deliver(ErrorItem(code="invalidImage", message="m", taskUUID="a"))
    socket = Socket()
    resumed = await store.resume_or_create(session.uuid, "alice")
    assert resumed.uuid == session.uuid
    await resumed.attach(socket.send)
    await until(lambda: socket.frames)
    assert socket.frames == [
        json.loads('{"errors":[{"code":"invalidImage","message":"m","taskUUID":"a"}]}')
    ]
    assert (await store.resume_or_create(session.uuid, "bob")).uuid != session.uuid


async def test_a_socket_that_goes_away_lets_go_of_its_session(sessions):
    """The gateway stops holding (and refreshing) a session once its socket detached."""
    store, relay, client = sessions
    session = await store.resume_or_create(None, "alice")
    socket = Socket()
    await session.attach(socket.send)
    channel = session.handover.channel.encode()
    await until(lambda: channel in relay._attached)
    await client.persist(session.keys.session)  # so that the expiry seen below is left's own
    session.detach(socket.send, store.now())
    await relay.close()  # waits for the sessions being let go
    assert channel not in relay._attached
    assert 0 < await client.ttl(session.keys.session) <= 30
