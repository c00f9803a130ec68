"""A line of progress for the command-line tools (``service.cli``, ``service.fetch_model``).

On a terminal the line is redrawn in place; anywhere else (a log, a pipe, CI) a carriage return
would pile up, so a whole line is printed every few seconds instead, and once at the end.
"""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["StatusLine", "bar"]


def bar(fraction: float, width: int = 30) -> str:
    """``[#####.....]``: ``fraction`` (0 to 1) of ``width`` filled."""
    filled = max(0, min(width, int(width * fraction)))
    return f"[{'#' * filled}{'.' * (width - filled)}]"


class StatusLine:
    """Shows the latest text on ``stream``: redrawn at most every ``redraw_s`` on a terminal,
    printed as a new line every ``every_s`` elsewhere; ``final=True`` always shows and ends
    the line. The first text shows at once with ``at_once``, else after one interval."""

    def __init__(
        self,
        stream: TextIO,
        *,
        every_s: float = 5.0,
        redraw_s: float = 0.0,
        at_once: bool = False,
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._every_s = redraw_s if self.tty else every_s
        self._last = float("-inf") if at_once else time.monotonic()

    def show(self, text: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self._every_s:
            return
        self._last = now
        if self.tty:
            print("\r" + text, end="\n" if final else "", file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)
