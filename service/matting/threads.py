"""Two parts of one matting computation at once: the caller's thread and an idle helper.

The matting kernels split their work in two (the solves' halves and chains, the foreground's
two sweeps) and run the second part on a helper thread while the caller runs the first. When
every helper is busy (other matting jobs hold them), the caller runs both parts itself, first
then second, rather than wait: with every core already working, waiting would gain nothing. So
a second part may wait for the first, never the other way round.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["side_by_side", "use_cores"]

T = TypeVar("T")
U = TypeVar("U")


class _Helpers:
    """As many helpers as the cores matting may use, less the caller's own."""

    def __init__(self, cores: int) -> None:
        self.count = max(cores - 1, 0)
        self.idle = threading.BoundedSemaphore(max(self.count, 1))
        # Its threads start with the first matting computation that splits in two.
        self.pool = ThreadPoolExecutor(
            max_workers=max(self.count, 1), thread_name_prefix="matting-half"
        )


_helpers = _Helpers(os.cpu_count() or 1)


def use_cores(cores: int) -> None:
    """Size the helpers for ``cores`` (the service's --cpu-workers) instead of every core the
    machine has; called once by the composition root, before any matting runs."""
    global _helpers
    _helpers = _Helpers(cores)


def side_by_side(first: Callable[[], T], second: Callable[[], U]) -> tuple[T, U]:
    """Both results; the second computed on an idle helper thread if there is one."""
    helpers = _helpers
    if helpers.count == 0 or not helpers.idle.acquire(blocking=False):
        return first(), second()
    try:
        pending = helpers.pool.submit(second)
        try:
            first_result = first()
        finally:
            second_result = pending.result()  # the parts share arrays: never leave one running
    finally:
        helpers.idle.release()
    return first_result, second_result
