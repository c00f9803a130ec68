"""service.matting.threads: the helpers follow --cpu-workers, not the machine's core count."""

from __future__ import annotations

import threading

from service.matting import threads


def _where() -> str:
    return threading.current_thread().name


def test_one_core_runs_both_parts_on_the_callers_thread_two_use_a_helper():
    try:
        threads.use_cores(1)
        first, second = threads.side_by_side(_where, _where)
        assert first == second == threading.current_thread().name
        threads.use_cores(2)
        first, second = threads.side_by_side(_where, _where)
        assert first == threading.current_thread().name
        assert second.startswith("matting-half")
    finally:
        threads.use_cores(2)
