"""A service-wide budget of working memory, in bytes, for images in the pipeline.

Counts of tasks bound nothing when one image can be a thousand times another: a task reserves
what its image will take before it is decoded, waits its turn (first come, first served) while
the budget is spent, and is refused with ``overloaded`` when the wait runs past a bound. A task
that could never fit is refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

from protocol.errors import Code, TaskFailure

__all__ = ["MemoryBudget"]


class MemoryBudget:
    """Args:
    total: bytes that images in the pipeline may take together.
    max_wait: seconds a task waits for room before it is refused.
    """

    def __init__(self, total: int, max_wait: float = 30.0) -> None:
        self.total = total
        self.max_wait = max_wait
        self.in_use = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def reserved(
        self, nbytes: int, parameter: str, max_wait: float | None = None
    ) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the body of the ``with``, after waiting at most
        ``max_wait`` seconds for room (the budget's own bound when None)."""
        await self._acquire(nbytes, parameter, max_wait)
        try:
            yield
        finally:
            self.in_use -= nbytes
            self._grant()

    async def _acquire(self, nbytes: int, parameter: str, max_wait: float | None = None) -> None:
        max_wait = self.max_wait if max_wait is None else max_wait
        if nbytes > self.total:
            raise TaskFailure(
                Code.IMAGE_TOO_LARGE,
                f"The image needs about {nbytes / 2**20:,.0f} MiB to process; the service's "
                f"working memory is {self.total / 2**20:,.0f} MiB.",
                parameter=parameter,
                type="string",
            )
        if not self._waiting and self.in_use + nbytes <= self.total:
            self.in_use += nbytes
            return
        granted = asyncio.get_running_loop().create_future()
        entry = (nbytes, granted)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(granted), max_wait)
        except TimeoutError:
            if granted.done():  # granted just as the wait ran out: keep it
                return
            self._waiting.remove(entry)
            self._grant()  # those behind it may fit now
            raise TaskFailure(
                Code.OVERLOADED,
                "The server's working memory is taken by images and request bodies in progress; "
                "retry shortly.",
                retry_after_ms=max(1000, int(max_wait * 1000 / 2)),
            ) from None
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.in_use -= nbytes  # granted, but nobody will use it
            elif entry in self._waiting:
                self._waiting.remove(entry)
            self._grant()
            raise

    def _grant(self) -> None:
        """Let waiting tasks in, in order, while the first of them fits."""
        while self._waiting and self.in_use + self._waiting[0][0] <= self.total:
            nbytes, granted = self._waiting.popleft()
            if granted.done():
                continue
            self.in_use += nbytes
            granted.set_result(None)
