"""A simulated accelerator: a benchmarking tool, never the default.

Wraps a runtime (normally the replay graph of ``load/standin.py``, whose own cost is next to
nothing) so that each ``infer_batch`` of N images takes ``fixed + per_image * N`` seconds, the
shape of a GPU's batch latency: a launch-bound part paid once per call and a part that grows
with the images. The wait is a sleep, which releases the GIL, as a real device's wait does.
It exists so that the CPU work around the model, the micro-batcher and the event loop can be
measured as a GPU host would run them (docs/performance.md, docs/models.md); it is only ever
made by ``--simulated-device``.

Processes given the same lock file share one simulated device, as processes sharing one GPU
do: a call holds the file's lock for its whole latency, so one process's batch waits while
another's runs (a GPU time-slices contexts; their kernels do not overlap).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .model_input import ModelBatch, ModelInput

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["DeviceLatency", "SimulatedDevice", "parse_latency", "parse_simulated_device"]


@dataclass(frozen=True)
class DeviceLatency:
    """t(N) = fixed + per_image * N + bytes moved / bandwidth, in seconds; the transfer term
    only when a bandwidth is given (the batch's input and output crossing the host link)."""

    fixed: float
    per_image: float
    bytes_per_second: float | None = None

    def of(self, images: int, moved_bytes: int = 0) -> float:
        transfer = moved_bytes / self.bytes_per_second if self.bytes_per_second else 0.0
        return self.fixed + self.per_image * images + transfer


def parse_latency(text: str) -> DeviceLatency:
    """ "FIXED_MS,PER_IMAGE_MS[,GB_PER_S]" (e.g. "3,1" or "3,1,12") as a DeviceLatency."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (2, 3):
        raise ValueError(
            f"expected FIXED_MS,PER_IMAGE_MS[,GB_PER_S] such as 3,1 or 3,1,12; got {text!r}"
        )
    if min(values) < 0 or (len(values) == 3 and values[2] == 0):
        raise ValueError(f"latencies cannot be negative, nor the bandwidth zero: {text!r}")
    bandwidth = values[2] * 1e9 if len(values) == 3 else None
    return DeviceLatency(values[0] / 1000, values[1] / 1000, bandwidth)


def parse_simulated_device(text: str) -> tuple[DeviceLatency, Path | None]:
    """ "FIXED_MS,PER_IMAGE_MS[,GB_PER_S][@LOCK_FILE]": the latency, and the lock file that
    processes sharing the device name (None: this process's device alone)."""
    latency, at, lock_file = text.partition("@")
    if at and not lock_file:
        raise ValueError(f"expected a lock file after '@': {text!r}")
    return parse_latency(latency), Path(lock_file) if lock_file else None


class SimulatedDevice:
    """``inner`` with a GPU's batch latency; batches of up to 16, as on CUDA."""

    on_gpu = False  # nothing here runs on a GPU
    feeds_accelerator = True  # but it stands for one
    preferred_batch = 16

    def __init__(
        self,
        inner: Runtime,
        latency: DeviceLatency,
        lock_file: Path | None = None,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``clock`` and ``sleep`` are the real ones unless a test drives time itself."""
        self._inner = inner
        self._latency = latency
        self._clock = clock
        self._sleep = sleep
        self._lock = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600) if lock_file else None
        self.path = inner.path
        self.input_size = inner.input_size
        transfer = (
            f" + bytes at {latency.bytes_per_second / 1e9:g} GB/s"
            if latency.bytes_per_second
            else ""
        )
        shared = f", shared through {lock_file}" if lock_file else ""
        self.provider = (
            f"simulated device ({latency.fixed * 1000:g} ms + {latency.per_image * 1000:g} ms"
            f" per image{transfer}{shared}) over {inner.provider}"
        )

    def stack(self, images: Sequence[ModelInput]) -> ModelBatch:
        return self._inner.stack(images)

    def infer_batch(self, batch: ModelBatch) -> np.ndarray:
        if self._lock is None:
            return self._run(batch)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # another process's batch may be running
        try:
            return self._run(batch)
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _run(self, batch: ModelBatch) -> np.ndarray:
        started = self._clock()
        outputs = self._inner.infer_batch(batch)
        moved = batch.nbytes + outputs.nbytes
        remaining = self._latency.of(len(batch), moved) - (self._clock() - started)
        if remaining > 0:
            self._sleep(remaining)
        return outputs
