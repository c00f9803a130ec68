"""A simulated accelerator: a benchmarking tool, never the default.

Wraps a runtime (normally the replay graph of ``load/standin.py``, whose own cost is next to
nothing) so that each ``infer_batch`` of N images takes ``fixed + per_image * N`` seconds, the
shape of a GPU's batch latency: a launch-bound part paid once per call and a part that grows
with the images. The wait is a sleep, which releases the GIL, as a real device's wait does.
It exists so that the CPU work around the model, the micro-batcher and the event loop can be
measured as a GPU host would run them (docs/performance.md, docs/models.md); it is only ever
made by ``--simulated-device``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["DeviceLatency", "SimulatedDevice", "parse_latency"]


@dataclass(frozen=True)
class DeviceLatency:
    """t(N) = fixed + per_image * N, in seconds."""

    fixed: float
    per_image: float

    def of(self, images: int) -> float:
        return self.fixed + self.per_image * images


def parse_latency(text: str) -> DeviceLatency:
    """ "FIXED_MS,PER_IMAGE_MS" (e.g. "3,1") as a DeviceLatency."""
    try:
        fixed, per_image = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected FIXED_MS,PER_IMAGE_MS such as 3,1; got {text!r}") from None
    if fixed < 0 or per_image < 0:
        raise ValueError(f"latencies cannot be negative: {text!r}")
    return DeviceLatency(fixed / 1000, per_image / 1000)


class SimulatedDevice:
    """``inner`` with a GPU's batch latency; batches of up to 16, as on CUDA."""

    on_gpu = False  # nothing here runs on a GPU
    preferred_batch = 16

    def __init__(self, inner: Runtime, latency: DeviceLatency) -> None:
        self._inner = inner
        self._latency = latency
        self.path = inner.path
        self.input_size = inner.input_size
        self.provider = (
            f"simulated device ({latency.fixed * 1000:g} ms + {latency.per_image * 1000:g} ms"
            f" per image) over {inner.provider}"
        )

    def stack(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._inner.stack(images)

    def infer_batch(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        outputs = self._inner.infer_batch(batch)
        remaining = self._latency.of(len(batch)) - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)
        return outputs
