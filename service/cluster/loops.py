"""The distributed mode's forever-loops end only when cancelled: anything else is a bug."""

from __future__ import annotations

import asyncio
import logging

__all__ = ["bug_that_stopped"]

log = logging.getLogger(__name__)


def bug_that_stopped(task: asyncio.Task, owner: str) -> str | None:
    """For a done loop: None if it was cancelled; else what stopped it, logged CRITICAL with
    its traceback, so that the process reports itself unready and is restarted, not idle."""
    if task.cancelled() or task.exception() is None:
        return None
    error = task.exception()
    reason = f"{task.get_name()} stopped: {type(error).__name__}: {error}"
    log.critical("%s: %s", owner, reason, exc_info=error)
    return reason
