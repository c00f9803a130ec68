"""service.cluster.jobs.claim_stale against a real redis-server: a dead worker's jobs are found
however many live workers' jobs stand before them in the pending list."""

from __future__ import annotations

import asyncio

import pytest
from redis import asyncio as redis_asyncio

from service.cluster.jobs import GROUP, Worker, claim_stale


@pytest.fixture
async def redis(redis_server):
    client = redis_asyncio.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


async def test_a_dead_workers_jobs_behind_many_live_ones_are_claimed(redis):
    """Two workers read 60 jobs and keep them fresh; a third read 5 and died. Claiming in
    batches of 2 from the head of the list (XAUTOCLAIM scans ten times its count) never reached
    the dead one's jobs: tasks neither answered nor reported."""
    stream = "test:jobs"
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = [await redis.xadd(stream, {"job": str(n)}) for n in range(65)]
    await redis.xreadgroup(GROUP, "live-1", {stream: ">"}, count=30)
    await redis.xreadgroup(GROUP, "live-2", {stream: ">"}, count=30)
    await redis.xreadgroup(GROUP, "dead", {stream: ">"}, count=5)
    await asyncio.sleep(0.2)
    # The live workers' keepalive: their entries are never idle.
    live = ids[:60]
    await redis.xclaim(stream, GROUP, "live-1", 0, live[:30], justid=True)
    await redis.xclaim(stream, GROUP, "live-2", 0, live[30:], justid=True)
    claimed = await claim_stale(redis, stream, "rescuer", idle_ms=100, count=2)
    assert sorted(entry_id for entry_id, _ in claimed) == sorted(ids[60:])
    pending = await redis.xpending_range(stream, GROUP, min="-", max="+", count=100)
    owners = {entry["message_id"]: entry["consumer"] for entry in pending}
    assert all(owners[entry_id] == b"rescuer" for entry_id in ids[60:])


def worker(redis, name: str) -> Worker:
    # No job reaches these workers: nothing runs a removal.
    return Worker(redis, None, None, None, max_batch=2, claim_after=0.6, prefix="test", name=name)


async def test_workers_starting_together_make_the_group_once(redis):
    workers = [worker(redis, f"w{n}") for n in range(8)]
    await asyncio.gather(*(w.start() for w in workers))
    groups = await redis.xinfo_groups("test:jobs")
    assert [g["name"] for g in groups] == [GROUP.encode()]
    await asyncio.gather(*(w.stop() for w in workers))


async def test_an_error_reply_that_is_no_outage_stops_the_worker_loudly(redis, caplog):
    """The stream key turned into a string: WRONGTYPE is a bug, not Redis being away. The
    worker says so once, CRITICAL, and reports itself broken (unready), still reachable."""
    running = worker(redis, "w")
    await running.start()
    await redis.delete("test:jobs")
    await redis.set("test:jobs", "not a stream")
    for _ in range(100):
        if running.broken:
            break
        await asyncio.sleep(0.05)
    assert running.broken and "WRONGTYPE" in running.broken, running.broken
    assert running.reachable
    assert [r.levelname for r in caplog.records if "WRONGTYPE" in r.getMessage()] == ["CRITICAL"]
    await running.stop()
