"""service.scheduling.batcher with an injected inference function (a test double for the model only)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.scheduling.batcher import MicroBatcher


class GatedModel:
    """Doubles each input; each call blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        self.entered.set()
        assert self.gate.wait(30)
        return batch * 2


async def wait_entered(model: GatedModel) -> None:
    await asyncio.to_thread(model.entered.wait, 30)
    model.entered.clear()


async def test_images_queued_during_a_batch_form_the_next_batch_up_to_max_batch():
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch=4, max_wait=0.0)
    first = asyncio.create_task(batcher.submit(np.full(2, 1.0)))
    await wait_entered(model)  # batch 1 (one image) is running
    rest = [asyncio.create_task(batcher.submit(np.full(2, float(i)))) for i in range(2, 8)]
    await asyncio.sleep(0)
    model.gate.set()
    outputs = await asyncio.gather(first, *rest)
    assert model.calls == [1, 4, 2]
    assert [float(o[0]) for o in outputs] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]
    await batcher.stop()


async def test_a_full_batch_does_not_wait_for_max_wait():
    model = GatedModel()
    model.gate.set()
    batcher = MicroBatcher(model, max_batch=3, max_wait=3600.0)
    outputs = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(np.full(1, float(i))) for i in range(3))), 30
    )
    assert model.calls == [3] and [float(o[0]) for o in outputs] == [0.0, 2.0, 4.0]
    await batcher.stop()


async def test_a_failing_batch_fails_only_its_own_images():
    calls = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return batch + 1

    batcher = MicroBatcher(flaky, max_batch=8, max_wait=0.0)
    with pytest.raises(RuntimeError, match="device lost"):
        await batcher.submit(np.zeros(1))
    assert float((await batcher.submit(np.zeros(1)))[0]) == 1.0
    await batcher.stop()


async def test_a_wrong_number_of_outputs_is_an_error_not_a_misdelivery():
    batcher = MicroBatcher(lambda batch: batch[:1], max_batch=2, max_wait=3600.0)
    results = await asyncio.gather(
        batcher.submit(np.zeros(1)), batcher.submit(np.ones(1)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    await batcher.stop()


async def test_cancelled_callers_are_left_out_of_the_batch():
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch=4, max_wait=0.0)
    first = asyncio.create_task(batcher.submit(np.zeros(1)))
    await wait_entered(model)
    gone = asyncio.create_task(batcher.submit(np.zeros(1)))
    kept = asyncio.create_task(batcher.submit(np.ones(1)))
    await asyncio.sleep(0)
    gone.cancel()
    model.gate.set()
    await first
    assert float((await kept)[0]) == 2.0
    assert model.calls == [1, 1]
    await batcher.stop()


class FakeTime:
    """An injected clock and sleep: sleeps end only when the test moves time past them."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[tuple[float, asyncio.Future]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for wake_at, future in list(self.sleepers):
            if wake_at <= self.now and not future.done():
                future.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_partial_batch_waits_max_wait_then_runs():
    time = FakeTime()
    calls = []
    batcher = MicroBatcher(
        lambda b: calls.append(len(b)) or b,
        max_batch=4,
        max_wait=0.010,
        clock=time.clock,
        sleep=time.sleep,
    )
    first = asyncio.create_task(batcher.submit(np.zeros(1)))
    await settle()
    await time.advance(0.005)
    second = asyncio.create_task(batcher.submit(np.ones(1)))
    await settle()
    assert calls == []  # still inside the 10 ms window, and not full
    await time.advance(0.005)  # the window closes at 10 ms from the first image, not the second
    await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert calls == [2]
    await batcher.stop()


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_round_robin_across_lanes_bounds_the_wait_of_a_small_socket(in_flight):
    """A socket's single image waits behind at most the batches already handed to the device
    (``in_flight``), whatever another socket queued."""
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch=2, max_wait=0.0, in_flight=in_flight)
    order: list[str] = []

    async def submit(lane: str, value: float):
        await batcher.submit(np.full(1, value), lane=lane)
        order.append(lane)

    heavy = [asyncio.create_task(submit("heavy", i)) for i in range(100)]
    await wait_entered(model)  # batch 1: two of heavy's images
    light = asyncio.create_task(submit("light", -1))
    await settle()
    model.gate.set()
    await asyncio.gather(light, *heavy)
    # light's one image went into the first batch collected after it came, beside one of
    # heavy's: the very next batch, or the one after the batch already queued
    assert order.index("light") <= 1 + 2 * in_flight
    assert model.calls[:2] == [2, 2] and sum(model.calls) == 101
    await batcher.stop()


async def test_lanes_take_turns_within_a_batch():
    model = GatedModel()
    model.gate.set()
    seen: list[float] = []

    def record(batch):
        seen.extend(float(v[0]) for v in batch)
        return model(batch)

    batcher = MicroBatcher(record, max_batch=4, max_wait=0.001)
    tasks = [
        asyncio.create_task(batcher.submit(np.full(1, v), lane=o))
        for o, v in [("a", 1), ("a", 2), ("a", 3), ("b", 10), ("c", 20)]
    ]
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert seen[:4] == [1, 10, 20, 2] and seen[4] == 3
    await batcher.stop()


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_with_two_in_flight_the_next_batch_is_stacked_while_one_runs(in_flight):
    """The device must not wait for the next batch's stacking: with two batches in flight the
    second is stacked on the staging thread while the first is still inferring; with one it
    is not even collected until the first has ended."""
    model = GatedModel()
    stacked: list[int] = []
    stacked_second = threading.Event()

    def stack(images):
        stacked.append(len(images))
        if len(stacked) == 2:
            stacked_second.set()
        return np.stack(images)

    batcher = MicroBatcher(model, stack=stack, max_batch=1, max_wait=0.0, in_flight=in_flight)
    tasks = [asyncio.create_task(batcher.submit(np.full(1, float(i)))) for i in range(3)]
    await wait_entered(model)  # the first batch is on the device, held there
    staged = await asyncio.to_thread(stacked_second.wait, 2 if in_flight == 2 else 0.3)
    assert staged == (in_flight == 2)
    assert model.calls == [1]  # the second batch waits for the device, stacked or not
    model.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert [float(r[0]) for r in results] == [0.0, 2.0, 4.0]
    await batcher.stop()
