"""service.cluster.relay against a real redis-server: answers through a session's outbox."""

from __future__ import annotations

import pytest
from redis import asyncio as redis_asyncio

from service.cluster.relay import RedisSessions, Relay
from tests.service.fakes import Socket


@pytest.fixture
async def sessions(redis_server):
    client = redis_asyncio.from_url(redis_server.url)
    await client.flushdb()
    relay = Relay(client, linger=30)
    yield RedisSessions(relay), relay, client
    await relay.close()
    await client.aclose()


async def test_a_socket_that_goes_away_lets_go_of_its_session(sessions):
    """The gateway stops holding (and refreshing) a session once its socket detached."""
    store, relay, client = sessions
    session = await store.resume_or_create(None, "alice")
    socket = Socket()
    await session.attach(socket.send)
    channel = session.handover.channel
    assert await client.pubsub_numsub(channel) == [(channel.encode(), 1)]
    await client.persist(session.keys.session)  # so that the expiry seen below is left's own
    session.detach(socket.send, store.now())
    await relay.close()  # waits for the sessions being let go
    assert await client.pubsub_numsub(channel) == [(channel.encode(), 0)]
    assert 0 < await client.ttl(session.keys.session) <= 30
