"""The micro-batcher: one per model runtime, one future per image, batches run one at a time, fair.

A batch forms from whatever is queued, up to ``max_batch`` images; when fewer are waiting it
waits at most ``max_wait`` seconds for more. Images are taken round-robin across their lanes
(sockets), one per lane per turn, so a socket that queued 100 images delays another socket's
single image by at most one batch. A batch is stacked on the batcher's staging thread and
inferred on its inference thread (the runtime parallelises inside one call), so that with two
batches in flight the next one is stacked while the device runs the current one; the event loop
only moves arrays and futures.

Time is injectable (``clock`` and ``sleep``) so that tests drive max_wait without real waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .fairness import RoundRobin
from .threads import named_pool

__all__ = ["MicroBatcher", "InferBatch"]

log = logging.getLogger(__name__)

# The runtime's: ModelInput and ModelBatch (service.inference.model_input); anything for tests.
InferBatch = Callable[[Any], np.ndarray]
StackBatch = Callable[[Sequence[Any]], Any]


@dataclass
class _Pending:
    model_input: Any
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Collects single images into batches for one inference function.

    Args:
        infer: a batch of N inputs -> float32[N,...], one output per input, in order.
        stack: N single inputs into the batch ``infer`` takes (the runtime's own, e.g. into
            one of its page-locked buffers); it runs on the staging thread, not on the event
            loop, one batch after another.
        max_batch: the most images one call receives.
        max_wait: seconds to wait for a batch to fill once one image is queued.
        executor: where ``infer`` runs; by default a thread of its own. ``stack`` runs on a
            second thread of its own, or on ``executor`` when one is given.
        clock / sleep: the event loop's time and asyncio.sleep unless a test injects others.
        on_batch: called with (images, seconds) after each inference call (metrics).
        in_flight: batches handed over at once. With 2, the next batch is collected and
            stacked while the device runs the current one, and starts the moment it ends; a
            socket's image then waits behind up to two batches (docs/decisions/0012).
    """

    def __init__(
        self,
        infer: InferBatch,
        *,
        stack: StackBatch = np.stack,
        max_batch: int,
        max_wait: float,
        executor: Executor | None = None,
        name: str = "model",
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_batch: Callable[[int, float], None] | None = None,
        in_flight: int = 1,
    ) -> None:
        if max_batch < 1 or in_flight < 1:
            raise ValueError("max_batch and in_flight must be at least 1")
        self.in_flight = in_flight
        self._infer = infer
        self._stack = stack
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._executor = executor or named_pool(1, f"infer-{name}")
        self._staging = executor or named_pool(1, f"stage-{name}")
        self._clock = clock
        self._sleep = sleep
        self._on_batch = on_batch  # (images, seconds) after each inference call
        self._queue: RoundRobin[_Pending] = RoundRobin()  # images by lane, taken in turn
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task | None = None

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None

    async def submit(self, model_input: Any, lane: Hashable = None) -> np.ndarray:
        """Queue one input for ``lane``; resolves to its own output row once its batch ran."""
        self.start()
        future = asyncio.get_running_loop().create_future()
        self._queue.put(lane, _Pending(model_input, future))
        self._arrived.set()
        return await future

    def _take_round_robin(self, limit: int) -> list[_Pending]:
        """Up to ``limit`` images, one per lane per turn, in round-robin order."""
        taken: list[_Pending] = []
        while len(taken) < limit and self._queue:
            pending = self._queue.take()
            if not pending.future.done():  # a caller that went away needs no inference
                taken.append(pending)
        return taken

    async def _wait_for_arrival(self, timeout: float) -> bool:
        """True when an image arrived within ``timeout`` seconds."""
        self._arrived.clear()
        arrival = asyncio.ensure_future(self._arrived.wait())
        timer = asyncio.ensure_future(self._sleep(timeout))
        try:
            await asyncio.wait((arrival, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            arrival.cancel()
            timer.cancel()
        return self._arrived.is_set()

    async def _collect(self) -> list[_Pending]:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        batch = self._take_round_robin(self.max_batch)
        deadline = self._now() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue:
                remaining = deadline - self._now()
                if remaining <= 0 or not await self._wait_for_arrival(remaining):
                    break
            batch.extend(self._take_round_robin(self.max_batch - len(batch)))
        return batch

    def _timed_infer(self, batch: Any) -> tuple[np.ndarray, float]:
        """The batch's outputs and the seconds inference took."""
        started = time.perf_counter()
        return self._infer(batch), time.perf_counter() - started

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.in_flight)
        running: set[asyncio.Task] = set()

        def finished(task: asyncio.Task) -> None:
            running.discard(task)
            slots.release()

        try:
            while True:
                await slots.acquire()
                batch = await self._collect()
                if not batch:
                    slots.release()
                    continue
                task = asyncio.get_running_loop().create_task(self._run_batch(batch))
                running.add(task)
                task.add_done_callback(finished)
        finally:
            for task in running:
                task.cancel()

    async def _run_batch(self, batch: list[_Pending]) -> None:
        """One batch stacked on the staging thread, then inferred on the inference thread
        (batches pass each one at a time, in the order they were handed over), its outputs to
        its futures."""
        loop = asyncio.get_running_loop()
        try:
            inputs = [pending.model_input for pending in batch]
            stacked = await loop.run_in_executor(self._staging, self._stack, inputs)
            outputs, seconds = await loop.run_in_executor(
                self._executor, self._timed_infer, stacked
            )
            if self._on_batch is not None:
                self._on_batch(len(batch), seconds)
            if len(outputs) != len(batch):
                raise RuntimeError(
                    f"inference returned {len(outputs)} outputs for {len(batch)} inputs"
                )
        except Exception as error:  # one failed batch fails its own futures, not the batcher
            log.exception("inference failed for a batch of %d", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        for pending, output in zip(batch, outputs, strict=True):
            if not pending.future.done():
                pending.future.set_result(output)
