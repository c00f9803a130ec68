"""The cores matting uses (``use_cores``, from --cpu-workers): two parts of one matting
computation at once, on the caller's thread and an idle helper.

The matting kernels split their work in two (the solves' halves and chains, the foreground's
two sweeps) and run the second part on a helper thread while the caller runs the first. When
every helper is busy (other matting jobs hold them), the caller runs both parts itself, first
then second, rather than wait: with every core already working, waiting would gain nothing. So
a second part may wait for the first, never the other way round.
"""

from __future__ import annotations

import ctypes
import glob
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
    machine has, and give BLAS one thread: matting's parallelism is the helpers', and BLAS's
    own threads beside them would start more threads than there are cores. Called once by the
    composition root, before any matting runs."""
    global _helpers
    _helpers = _Helpers(cores)
    _one_blas_thread()


def _one_blas_thread() -> None:
    """scipy's OpenBLAS (it serves only the exact solve's kernels here; numpy has its own copy)
    set to one thread. Where its library cannot be found BLAS keeps its threads: slower on a
    busy host, the same result."""
    import scipy

    libraries = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in glob.glob(os.path.join(libraries, "libscipy_openblas*.so*")):
        library = ctypes.CDLL(path)
        if hasattr(library, "scipy_openblas_set_num_threads"):
            library.scipy_openblas_set_num_threads(1)
            return


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
