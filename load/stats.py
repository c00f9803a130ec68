"""Numbers for the load harness's report: percentiles, rates, the server's memory."""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["percentile", "process_memory"]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def process_memory(pid: int) -> dict[str, int] | None:
    """Current and peak resident memory of ``pid`` in bytes (Linux /proc), or None."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    if "VmRSS" not in values:
        return None
    return {"rss": values["VmRSS"], "peak_rss": values.get("VmHWM", values["VmRSS"])}
