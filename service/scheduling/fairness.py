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
        return self._pop(next(iter(self._queues)))

    def take_first(self, eligible: Callable[[Hashable], bool]) -> T | None:
        """The next item of the first client in turn that is ``eligible``; None when none is."""
        for client in self._queues:  # a client may be None itself: no sentinel here
            if eligible(client):
                return self._pop(client)
        return None

    def _pop(self, client: Hashable) -> T:
        queue = self._queues[client]
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
    have all its decodes ahead of another socket's one. Taking turns is not enough when one
    client's jobs are long (a huge matting, a costly decode) and hold every worker: the pool
    keeps ``spare`` more threads that only run a job of a client with nothing running, so
    another client's image starts at once instead of waiting for the long jobs to end. All
    bookkeeping happens on the event loop; the threads only run the callables.
    """

    def __init__(self, workers: int, name: str = "cpu", spare: int = 1) -> None:
        self._pool = named_pool(workers + spare, name)
        self._workers = workers
        self._spare = spare
        self._busy = 0
        self._running: dict[Hashable, int] = {}  # jobs running, by client
        self._waiting: RoundRobin[tuple[Hashable, Callable[..., Any], tuple, asyncio.Future]] = (
            RoundRobin()
        )

    async def run(self, client: Hashable, function: Callable[..., T], *args: Any) -> T:
        future = asyncio.get_running_loop().create_future()
        self._waiting.put(client, (client, function, args, future))
        self._start_next()
        return await future

    def _idle(self, client: Hashable) -> bool:
        return not self._running.get(client)

    def _next_job(self) -> tuple[Hashable, Callable[..., Any], tuple, asyncio.Future] | None:
        if self._busy < self._workers:
            return self._waiting.take()
        if self._busy < self._workers + self._spare:
            return self._waiting.take_first(self._idle)  # a client with nothing running
        return None

    def _start_next(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            job = self._next_job()
            if job is None:
                return
            client, function, args, future = job
            if future.done():  # its caller went away
                continue
            self._busy += 1
            self._running[client] = self._running.get(client, 0) + 1
            submitted = self._pool.submit(function, *args)
            submitted.add_done_callback(
                functools.partial(self._finished_soon, loop, client, future)
            )

    def _finished_soon(
        self,
        loop: asyncio.AbstractEventLoop,
        client: Hashable,
        future: asyncio.Future[Any],
        job: Future[Any],
    ) -> None:
        """On the worker thread: let the event loop take the outcome."""
        loop.call_soon_threadsafe(self._finished, client, job, future)

    def _finished(self, client: Hashable, job: Future[Any], future: asyncio.Future[Any]) -> None:
        self._busy -= 1
        self._running[client] -= 1
        if not self._running[client]:
            del self._running[client]
        if not future.done():
            error = job.exception()
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(job.result())
        self._start_next()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
