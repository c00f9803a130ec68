"""load.gpu_check's steps: each in its time box, a failing or hanging one reported without
losing the ones after it, and the report on disk as it grows."""

from __future__ import annotations

import threading

from load.gpu_check import Report, run_step


def test_a_failed_and_a_hung_step_do_not_lose_the_next(tmp_path):
    report = Report(tmp_path / "report.txt")
    release = threading.Event()

    def fails() -> list[str]:
        raise RuntimeError("no device")

    def hangs() -> list[str]:
        release.wait(30)
        return ["late"]

    outcomes = [
        run_step(report, "fails", 5, fails),
        run_step(report, "hangs", 0.2, hangs),
        run_step(report, "works", 5, lambda: ["42 images/s"]),
    ]
    release.set()
    assert outcomes == [False, False, True]
    written = (tmp_path / "report.txt").read_text()
    assert "FAILED: RuntimeError: no device" in written
    assert "FAILED: still running after 0 s" in written
    assert "42 images/s" in written and "late" not in written
