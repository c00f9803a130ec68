"""service.scheduling.fairness: lanes take turns, in the queue and in the CPU pool."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.scheduling.fairness import FairExecutor, RoundRobin
from tests.service.fakes import until


def test_round_robin_serves_one_item_per_lane_per_turn():
    queue: RoundRobin[str] = RoundRobin()
    for item in ("a1", "a2", "a3"):
        queue.put("a", item)
    queue.put("b", "b1")
    queue.put("c", "c1")
    assert len(queue) == 5
    assert [queue.take() for _ in range(5)] == ["a1", "b1", "c1", "a2", "a3"]
    assert not queue
    with pytest.raises(IndexError):
        queue.take()


async def test_a_busy_lane_does_not_hold_back_another_in_the_cpu_pool():
    # No spare thread: the light job must wait in the queue, where lanes take turns.
    executor = FairExecutor(1, name="test", spare=0)
    gate = threading.Event()
    started: list[str] = []

    def job(name: str) -> str:
        started.append(name)  # one worker: the start order is the order jobs left the queue
        gate.wait(30)
        return name

    heavy = [asyncio.create_task(executor.run("heavy", job, f"h{i}")) for i in range(20)]
    await until(lambda: started == ["h0"])  # h1..h19 wait
    light = asyncio.create_task(executor.run("light", job, "light"))
    await asyncio.sleep(0)
    gate.set()
    assert await light == "light"
    await asyncio.gather(*heavy)
    assert started[:3] == ["h0", "h1", "light"]  # heavy's turn was already due, then light's
    executor.shutdown()


async def test_errors_reach_their_caller_and_the_pool_goes_on():
    executor = FairExecutor(2, name="test")

    def fail() -> None:
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        await executor.run("a", fail)
    assert await executor.run("a", lambda: 42) == 42
    executor.shutdown()


async def test_a_lane_with_nothing_running_starts_while_long_jobs_hold_every_worker():
    """Both workers taken by one lane's long jobs (a costly decode, a huge matting): another
    lane's job runs at once on the spare thread, and no third job of the first lane does."""
    executor = FairExecutor(2, name="test")
    release = threading.Event()
    started: list[str] = []

    def long_job(name: str) -> str:
        started.append(name)
        release.wait(30)
        return name

    heavy = [asyncio.create_task(executor.run("heavy", long_job, f"h{i}")) for i in range(3)]
    await until(lambda: sorted(started) == ["h0", "h1"])  # h2 waits for a worker
    light = await asyncio.wait_for(executor.run("light", lambda: "light"), 5)
    assert light == "light" and sorted(started) == ["h0", "h1"]
    other = asyncio.create_task(executor.run("light", long_job, "l1"))
    await until(lambda: "l1" in started)  # light has nothing running: it may take the spare again
    release.set()
    assert await asyncio.gather(*heavy, other) == ["h0", "h1", "h2", "l1"]
    executor.shutdown()


def test_take_first_skips_lanes_that_are_not_eligible():
    queue: RoundRobin[str] = RoundRobin()
    queue.put("a", "a1")
    queue.put("b", "b1")
    queue.put("b", "b2")
    assert queue.take_first(lambda lane: lane == "b") == "b1"
    assert queue.take_first(lambda lane: lane == "c") is None
    assert [queue.take() for _ in range(2)] == ["a1", "b2"]
