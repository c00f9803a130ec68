"""service.scheduling.fairness: clients take turns, in the queue and in the CPU pool."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.scheduling.fairness import FairExecutor, RoundRobin


def test_round_robin_serves_one_item_per_client_per_turn():
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


async def test_a_busy_client_does_not_hold_back_another_in_the_cpu_pool():
    executor = FairExecutor(1, name="test")
    gate = threading.Event()
    order: list[str] = []

    def job(name: str) -> str:
        gate.wait(30)
        order.append(name)
        return name

    heavy = [asyncio.create_task(executor.run("heavy", job, f"h{i}")) for i in range(20)]
    await asyncio.sleep(0.05)  # h0 is running, h1..h19 wait
    light = asyncio.create_task(executor.run("light", job, "light"))
    await asyncio.sleep(0.05)
    gate.set()
    assert await light == "light"
    await asyncio.gather(*heavy)
    assert order.index("light") <= 2  # right after the running job (and at most one more)
    executor.shutdown()


async def test_errors_reach_their_caller_and_the_pool_goes_on():
    executor = FairExecutor(2, name="test")

    def fail() -> None:
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        await executor.run("a", fail)
    assert await executor.run("a", lambda: 42) == 42
    executor.shutdown()
