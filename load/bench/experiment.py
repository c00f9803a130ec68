"""What an experiment is: a function from the run's options to a result (plain JSON data), and
one from that result to the report's lines. Targets are in docs/performance.md, not here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Options:
    seconds: float  # per raw-runtime measurement
    tasks: int  # tasks per socket at concurrency 1 (half as many per socket at 8)
    image: Path  # the photo the throughput experiments send


@dataclass(frozen=True)
class Experiment:
    about: str
    run: Callable[[Options], dict]
    lines: Callable[[dict], list[str]]
    needs_rembg: bool = False  # installs and runs rembg in a throw-away venv
