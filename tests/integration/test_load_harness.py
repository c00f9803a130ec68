"""The load harness (python -m load) against the real server: it must count what it claims."""

from __future__ import annotations

import json
import subprocess
import sys

from load.stats import process_memory
from tests.support import FIXTURES, ROOT, UNIT


def run_load(*args: str) -> tuple[int, str]:
    finished = subprocess.run(
        [sys.executable, "-m", "load", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300 * UNIT,
    )
    return finished.returncode, finished.stdout


def test_every_task_is_answered_once_on_its_own_socket(server):
    code, out = run_load(
        "--url",
        server.ws_url,
        "--connections",
        "3",
        "--tasks-per-connection",
        "3",
        "--frame-size",
        "2",
        "--window",
        "2",
        "--image",
        str(FIXTURES / "car-1.jpg"),
        "--output-type",
        "dataURI",
        "--server-pid",
        str(server.process.pid),
        "--json",
    )
    summary = json.loads(out)
    assert code == 0
    assert summary["tasks_sent"] == 9 and summary["tasks_ok"] == 9
    assert (
        summary["lost"],
        summary["duplicated"],
        summary["cross_delivered"],
        summary["undecodable"],
    ) == (0, 0, 0, 0)
    assert (
        summary["images_per_s"] > 0 and summary["latency_s"]["p50"] <= summary["latency_s"]["max"]
    )
    assert summary["server_memory_bytes"]["peak_rss"] >= summary["server_memory_bytes"]["rss"] > 0


def test_errors_are_counted_by_code_and_urls_are_fetched(server):
    code, out = run_load(
        "--url",
        server.ws_url,
        "--connections",
        "1",
        "--tasks-per-connection",
        "2",
        "--image",
        str(FIXTURES / "car-1.jpg"),
        "--settings",
        '{"rgba": [1, 2]}',
        "--json",
    )
    summary = json.loads(out)
    assert summary["errors_by_code"] == {"invalidRgba": 2} and summary["lost"] == 0
    code, out = run_load(
        "--url",
        server.ws_url,
        "--tasks-per-connection",
        "2",
        "--output-type",
        "URL",
        "--output-format",
        "JPG",
        "--image",
        str(FIXTURES / "car-1.jpg"),
        "--json",
    )
    assert code == 0 and json.loads(out)["tasks_ok"] == 2


def test_idle_connections_report_the_servers_memory(server):
    code, out = run_load(
        "--url",
        server.ws_url,
        "--idle-connections",
        "50",
        "--duration",
        "0.5",
        "--server-pid",
        str(server.process.pid),
        "--json",
    )
    result = json.loads(out)
    assert code == 0 and result["connections_open"] == 50 and result["pongs"] == 50
    before, after = result["server_memory_before"], result["server_memory_after"]
    # The server's own /proc figures, read while the sockets were open: its RSS then lies
    # between a fresh server's and its peak, and the growth is what the two readings differ by.
    now = process_memory(server.process.pid)
    assert 10 * 2**20 < before["rss"] <= after["peak_rss"] <= now["peak_rss"]
    assert result["rss_growth_bytes"] == after["rss"] - before["rss"]
    assert result["bytes_per_connection"] == result["rss_growth_bytes"] // 50
    assert result["bytes_per_connection"] < 2**20  # an idle socket costs kilobytes, not MiB
