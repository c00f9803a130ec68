"""The micro-batcher: one queue per model runtime, one future per image, one batch at a time.

A batch forms from whatever is queued, up to ``max_batch`` images; when fewer are waiting it
waits at most ``max_wait`` seconds for more. Inference runs on the batcher's own thread (the
runtime parallelises inside one call); the event loop only moves arrays and futures.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["MicroBatcher", "InferBatch"]

log = logging.getLogger(__name__)

InferBatch = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Pending:
    tensor: np.ndarray
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Args:
        infer: float32[N,...] -> float32[N,...], one output per input, in order.
        max_batch: the most images one call receives.
        max_wait: seconds to wait for a batch to fill once one image is queued.
        executor: where ``infer`` runs; by default a thread of its own.
    """

    def __init__(self, infer: InferBatch, *, max_batch: int, max_wait: float,
                 executor: Executor | None = None, name: str = "model") -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._infer = infer
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"infer-{name}")
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._runner: asyncio.Task | None = None
        self.batches_run = 0

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def submit(self, tensor: np.ndarray) -> np.ndarray:
        """Queue one input; resolves to its own output row once its batch has run."""
        self.start()
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(tensor, future))
        return await future

    async def _collect(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            else:
                batch.append(self._queue.get_nowait())
        # A caller that went away (cancelled) needs no inference.
        return [pending for pending in batch if not pending.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            try:
                stacked = np.stack([pending.tensor for pending in batch])
                outputs = await loop.run_in_executor(self._executor, self._infer, stacked)
                if len(outputs) != len(batch):
                    raise RuntimeError(f"inference returned {len(outputs)} outputs for {len(batch)} inputs")
            except Exception as error:  # one failed batch fails its own futures, not the batcher
                log.exception("inference failed for a batch of %d", len(batch))
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            self.batches_run += 1
            for pending, output in zip(batch, outputs):
                if not pending.future.done():
                    pending.future.set_result(output)
