"""Thread pools whose threads carry their names into the operating system too (Linux), so that
``top -H``, ``/proc/PID/task/*/comm`` and the bench's CPU-per-role figures tell the CPU workers,
the inference threads and the event loop apart."""

from __future__ import annotations

import ctypes
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["named_pool"]

_PR_SET_NAME = 15
_NAME_BYTES = 15  # the kernel keeps 16 bytes, the last a NUL


def _name_this_thread() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    name = threading.current_thread().name.encode()[:_NAME_BYTES]
    prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def named_pool(workers: int, prefix: str) -> ThreadPoolExecutor:
    """A ThreadPoolExecutor whose threads are named ``prefix_N`` for Python and the OS."""
    return ThreadPoolExecutor(workers, thread_name_prefix=prefix, initializer=_name_this_thread)
