"""service.batcher with an injected inference function (a test double for the model only)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import MicroBatcher


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
        asyncio.gather(*(batcher.submit(np.full(1, float(i))) for i in range(3))), 30)
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
    results = await asyncio.gather(batcher.submit(np.zeros(1)), batcher.submit(np.ones(1)),
                                   return_exceptions=True)
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
