"""Whether an NVIDIA driver answers on this host: its own library loads, initialises, and
counts at least one device.

Standard library only, so that ``make install`` can ask it with the system's Python before any
package is installed (``python3 service/inference/driver.py`` exits 0 when a driver answers),
and the runtime asks the same question the same way.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["driver_answers"]

DRIVER_LIBRARY = "libcuda.so.1"  # the driver's own; every CUDA library above it needs it


def driver_answers() -> bool:
    """True when the driver library loads, ``cuInit`` succeeds and it reports a device."""
    try:
        driver = ctypes.CDLL(DRIVER_LIBRARY)
    except OSError:
        return False
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0


if __name__ == "__main__":
    sys.exit(0 if driver_answers() else 1)
