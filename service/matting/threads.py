"""Two parts of one matting computation at once: the caller's thread and an idle helper.

The matting kernels split their work in two (the solves' halves and chains, the foreground's
two sweeps) and run the second part on a helper thread while the caller runs the first. When
every helper is busy (other matting jobs hold them), the caller runs both parts itself, first
then second, rather than wait: with every core already working, waiting would gain nothing. So
a second part may wait for the first, never the other way round.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["side_by_side"]

T = TypeVar("T")
U = TypeVar("U")

_HELPER_COUNT = max((os.cpu_count() or 1) - 1, 0)
_IDLE_HELPERS = threading.BoundedSemaphore(max(_HELPER_COUNT, 1))


@functools.cache
def _helpers() -> ThreadPoolExecutor:
    """The helper threads, started by the first matting computation that splits in two."""
    return ThreadPoolExecutor(max_workers=max(_HELPER_COUNT, 1), thread_name_prefix="matting-half")


def side_by_side(first: Callable[[], T], second: Callable[[], U]) -> tuple[T, U]:
    """Both results; the second computed on an idle helper thread if there is one."""
    if _HELPER_COUNT == 0 or not _IDLE_HELPERS.acquire(blocking=False):
        return first(), second()
    try:
        pending = _helpers().submit(second)
        try:
            first_result = first()
        finally:
            second_result = pending.result()  # the parts share arrays: never leave one running
    finally:
        _IDLE_HELPERS.release()
    return first_result, second_result
