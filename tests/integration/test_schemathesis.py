"""Schemathesis (from PyPI, in a throw-away venv: a tool, not a dependency) runs every check
against the server's own /openapi.json: a keyed server with its key and without it, and an open
server. Bounded: 25 examples an operation and a fixed seed, so that a failure reproduces.
tests/schemathesis.toml says where a schema-valid request may still be refused and why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import ServerProcess, tool_venv

pytestmark = pytest.mark.integration

TOOL = "schemathesis>=4.3,<5"
CONFIG = Path(__file__).resolve().parents[1] / "schemathesis.toml"
KEY = "schemathesis-key"


@pytest.fixture(scope="module")
def schemathesis(tmp_path_factory) -> Path:
    return tool_venv(tmp_path_factory.mktemp("schemathesis"), TOOL) / "schemathesis"


@pytest.fixture(scope="module")
def keyed_server(fast_server_with) -> ServerProcess:
    return fast_server_with("--api-key", KEY, "--allow-private-urls")


def run(schemathesis: Path, server: ServerProcess, *flags: str) -> None:
    finished = subprocess.run(
        [
            schemathesis,
            "--config-file",
            str(CONFIG),
            "run",
            f"{server.http_url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "20261204",
            "--request-timeout",
            "30",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=schemathesis.parent,  # its cache directory goes there, not into the checkout
    )
    report = finished.stdout[-6000:] + finished.stderr[-2000:]
    assert finished.returncode == 0, report
    assert "Tested: 10" in finished.stdout or "Tested: 11" in finished.stdout, report


def test_every_check_passes_on_a_keyed_server_with_its_key(schemathesis, keyed_server):
    run(schemathesis, keyed_server, "--header", f"Authorization: Bearer {KEY}")


def test_every_check_passes_on_a_keyed_server_without_a_key(schemathesis, keyed_server):
    run(schemathesis, keyed_server)


def test_every_check_passes_on_an_open_server(schemathesis, server):
    # An open server takes any key by definition: "invalid credentials accepted" is its promise.
    run(schemathesis, server, "--exclude-checks", "ignored_auth")
