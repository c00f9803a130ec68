"""Turn-taking between clients (sockets, client sessions): the queue both the CPU pool and the batcher draw from.

Each client has its own FIFO; ``take`` serves clients in round-robin order, one item per client
per turn, so an client with 100 items waiting delays another client's single item by at most one
item per client ahead of it, not by 100.
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

    def put(self, client: Hashable, item: T) -> None:
        self._queues.setdefault(client, deque()).append(item)

    def take(self) -> T:
        """The next item in turn. Raises IndexError when empty."""
        if not self._queues:
            raise IndexError("take from an empty RoundRobin")
        client, queue = next(iter(self._queues.items()))
        item = queue.popleft()
        if queue:
            self._queues.move_to_end(client)  # its next item waits for the others' turn
        else:
            del self._queues[client]
        return item

    def __bool__(self) -> bool:
        return bool(self._queues)

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())


class FairExecutor:
    """Runs blocking callables on ``workers`` threads, taking turns between clients.

    A plain ThreadPoolExecutor is first-come first-served: a socket that sent 100 images would
    have all its decodes ahead of another socket's one. All bookkeeping happens on the event
    loop; the threads only run the callables.
    """

    def __init__(self, workers: int, name: str = "cpu") -> None:
        self._pool = named_pool(workers, name)
        self._workers = workers
        self._busy = 0
        self._waiting: RoundRobin[tuple[Callable[..., Any], tuple, asyncio.Future]] = RoundRobin()

    async def run(self, client: Hashable, function: Callable[..., T], *args: Any) -> T:
        future = asyncio.get_running_loop().create_future()
        self._waiting.put(client, (function, args, future))
        self._start_next()
        return await future

    def _start_next(self) -> None:
        loop = asyncio.get_running_loop()
        while self._busy < self._workers and self._waiting:
            function, args, future = self._waiting.take()
            if future.done():  # its caller went away
                continue
            self._busy += 1
            job = self._pool.submit(function, *args)
            job.add_done_callback(functools.partial(self._finished_soon, loop, future))

    def _finished_soon(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], job: Future[Any]
    ) -> None:
        """On the worker thread: let the event loop take the outcome."""
        loop.call_soon_threadsafe(self._finished, job, future)

    def _finished(self, job: Future[Any], future: asyncio.Future[Any]) -> None:
        self._busy -= 1
        if not future.done():
            error = job.exception()
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(job.result())
        self._start_next()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
