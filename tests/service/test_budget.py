"""service.scheduling.budget: working memory in bytes, handed out in order, bounded waits."""

from __future__ import annotations

import asyncio

import pytest

from protocol.errors import TaskFailure
from service.scheduling.budget import MemoryBudget


async def test_tasks_wait_in_order_for_room_and_never_exceed_the_budget():
    budget = MemoryBudget(total=100, max_wait=5)
    order: list[str] = []
    peak = 0

    async def task(name: str, nbytes: int, hold: float) -> None:
        nonlocal peak
        async with budget.reserved(nbytes, "inputImage"):
            order.append(name)
            peak = max(peak, budget.in_use)
            await asyncio.sleep(hold)

    await asyncio.gather(task("a", 60, 0.05), task("b", 60, 0.01), task("c", 30, 0.01))
    # c would fit beside a, but b came first: no overtaking, so a large image is not starved
    assert order == ["a", "b", "c"] and peak <= 100 and budget.in_use == 0


async def test_an_image_that_could_never_fit_is_refused_at_once():
    budget = MemoryBudget(total=100)
    with pytest.raises(TaskFailure) as refused:
        async with budget.reserved(101, "inputImage"):
            pass
    assert refused.value.code == "imageTooLarge" and refused.value.parameter == "inputImage"


async def test_a_wait_past_the_bound_is_overloaded_and_lets_the_next_in():
    budget = MemoryBudget(total=100, max_wait=0.1)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with budget.reserved(90, "inputImage"):
            holding.set()
            await release.wait()

    running = asyncio.create_task(holder())
    await holding.wait()
    with pytest.raises(TaskFailure) as refused:
        async with budget.reserved(50, "inputImage"):
            pass
    assert refused.value.code == "overloaded" and refused.value.retry_after_ms > 0
    async with budget.reserved(10, "inputImage"):  # fits beside the holder
        assert budget.in_use == 100
    release.set()
    await running
    assert budget.in_use == 0


async def test_a_cancelled_wait_gives_nothing_away():
    budget = MemoryBudget(total=100, max_wait=5)
    granted = asyncio.Event()

    async def wait_for_half() -> None:
        async with budget.reserved(50, "inputImage"):
            granted.set()

    async with budget.reserved(100, "inputImage"):
        waiter = asyncio.create_task(wait_for_half())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert budget.in_use == 0 and not granted.is_set()
    async with budget.reserved(100, "inputImage", max_wait=0):  # no cancelled waiter ahead
        assert budget.in_use == 100
