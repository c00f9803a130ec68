"""Turn-taking between lanes: the queue both the CPU pool and the batcher draw from.

A lane is whoever takes turns: a socket, or on a worker a client session. Each lane has its own
FIFO; ``take`` serves lanes in round-robin order, one item per lane per turn, so a lane with 100
items waiting delays another lane's single item by at most one item per lane ahead of it, not by
100.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from .threads import named_pool

__all__ = ["RoundRobin", "FairExecutor"]

T = TypeVar("T")


class RoundRobin(Generic[T]):
    def __init__(self) -> None:
        self._queues: OrderedDict[Hashable, deque[T]] = OrderedDict()

    def put(self, lane: Hashable, item: T) -> None:
        self._queues.setdefault(lane, deque()).append(item)

    def take(self) -> T:
        """The next item in turn. Raises IndexError when empty."""
        if not self._queues:
            raise IndexError("take from an empty RoundRobin")
        return self._pop(next(iter(self._queues)))

    def take_first(self, eligible: Callable[[Hashable], bool]) -> T | None:
        """The next item of the first lane in turn that is ``eligible``; None when none is."""
        for lane in self._queues:  # a lane may be None itself: no sentinel here
            if eligible(lane):
                return self._pop(lane)
        return None

    def _pop(self, lane: Hashable) -> T:
        queue = self._queues[lane]
        item = queue.popleft()
        if queue:
            self._queues.move_to_end(lane)  # its next item waits for the others' turn
        else:
            del self._queues[lane]
        return item

    def __bool__(self) -> bool:
        return bool(self._queues)

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())


class FairExecutor:
    """Runs blocking callables on ``workers`` threads, taking turns between lanes.

    A plain ThreadPoolExecutor is first-come first-served: a socket that sent 100 images would
    have all its decodes ahead of another socket's one. Taking turns is not enough when one
    lane's jobs are long (a huge matting, a costly decode) and hold every worker: the pool
    keeps ``spare`` more threads that only run a job of a lane with nothing running, so
    another lane's image starts at once instead of waiting for the long jobs to end. All
    bookkeeping happens on the event loop; the threads only run the callables.
    """

    def __init__(self, workers: int, name: str = "cpu", spare: int = 1) -> None:
        self._pool = named_pool(workers + spare, name)
        self._workers = workers
        self._spare = spare
        self._busy = 0
        self._running: dict[Hashable, int] = {}  # jobs running, by lane
        self._waiting: RoundRobin[tuple[Hashable, Callable[..., Any], tuple, asyncio.Future]] = (
            RoundRobin()
        )

    async def run(self, lane: Hashable, function: Callable[..., T], *args: Any) -> T:
        future = asyncio.get_running_loop().create_future()
        self._waiting.put(lane, (lane, function, args, future))
        self._start_next()
        return await future

    def _idle(self, lane: Hashable) -> bool:
        return not self._running.get(lane)

    def _next_job(self) -> tuple[Hashable, Callable[..., Any], tuple, asyncio.Future] | None:
        if self._busy < self._workers:
            return self._waiting.take()
        if self._busy < self._workers + self._spare:
            return self._waiting.take_first(self._idle)  # a lane with nothing running
        return None

    def _start_next(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            job = self._next_job()
            if job is None:
                return
            lane, function, args, future = job
            if future.done():  # its caller went away
                continue
            self._busy += 1
            self._running[lane] = self._running.get(lane, 0) + 1
            submitted = self._pool.submit(function, *args)
            submitted.add_done_callback(functools.partial(self._finished_soon, loop, lane, future))

    def _finished_soon(
        self,
        loop: asyncio.AbstractEventLoop,
        lane: Hashable,
        future: asyncio.Future[Any],
        job: Future[Any],
    ) -> None:
        """On the worker thread: let the event loop take the outcome."""
        loop.call_soon_threadsafe(self._finished, lane, job, future)

    def _finished(self, lane: Hashable, job: Future[Any], future: asyncio.Future[Any]) -> None:
        self._busy -= 1
        self._running[lane] -= 1
        if not self._running[lane]:
            del self._running[lane]
        if not future.done():
            error = job.exception()
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(job.result())
        self._start_next()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
