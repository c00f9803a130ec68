"""service.fetch_model --url: a model file by URL and checksum, from a real HTTP server on
loopback that can cut connections short, ignore ranges or answer 404."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from service.fetch_model import ModelFetchError, fetch_url
from tests.support import ROOT

BODY = os.urandom(3 * (1 << 20) + 12345)  # a few chunks and a ragged end
SHA256 = hashlib.sha256(BODY).hexdigest()


class ModelHost(http.server.ThreadingHTTPServer):
    """Serves BODY at /model.onnx; ``cut_first`` requests end after half the bytes they
    promised, ``ranges`` says whether Range is honoured. Records each request's Range."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.cut_first = 0
        self.ranges = True
        self.seen: list[str | None] = []
        self.token: str | None = None  # when set, requests without it get 401

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/model.onnx"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: ModelHost

    def do_GET(self) -> None:
        host = self.server
        asked = self.headers.get("Range")
        host.seen.append(asked)
        if self.path != "/model.onnx":
            self.send_error(404)
            return
        if host.token and self.headers.get("Authorization") != f"Bearer {host.token}":
            self.send_error(401)
            return
        start = int(asked[len("bytes=") : -1]) if asked and host.ranges else 0
        if start >= len(BODY):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(BODY)}")
            self.end_headers()
            return
        body = BODY[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if host.cut_first > 0:
            host.cut_first -= 1
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def host():
    server = ModelHost()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_file_is_streamed_verified_and_moved_into_place(host, tmp_path):
    dest = tmp_path / "models" / "birefnet.onnx"
    calls = []
    assert fetch_url(host.url, SHA256.upper(), dest, lambda *a, **k: calls.append((a, k))) == dest
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "models" / "birefnet.onnx.partial").exists()
    assert calls[-1] == ((len(BODY), len(BODY)), {"final": True})
    assert len(calls) > 2  # a report per chunk


def test_a_checksum_mismatch_is_refused_and_the_file_removed(host, tmp_path):
    dest = tmp_path / "m.onnx"
    with pytest.raises(ModelFetchError, match="sha256 .* expected"):
        fetch_url(host.url, "0" * 64, dest)
    assert list(tmp_path.iterdir()) == []


def test_a_cut_connection_is_resumed_from_where_it_stopped(host, tmp_path):
    host.cut_first = 1
    dest = tmp_path / "m.onnx"
    fetch_url(host.url, SHA256, dest)
    assert dest.read_bytes() == BODY
    assert host.seen == [None, f"bytes={len(BODY) // 2}-"]


def test_a_partial_file_from_an_earlier_run_is_resumed(host, tmp_path):
    dest = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.partial").write_bytes(BODY[:1000])
    fetch_url(host.url, SHA256, dest)
    assert dest.read_bytes() == BODY and host.seen == ["bytes=1000-"]


def test_a_whole_partial_file_is_verified_without_downloading_again(host, tmp_path):
    dest = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.partial").write_bytes(BODY)
    fetch_url(host.url, SHA256, dest)
    assert dest.read_bytes() == BODY and host.seen == [f"bytes={len(BODY)}-"]


def test_a_server_without_ranges_gets_a_restart_from_byte_zero(host, tmp_path):
    host.ranges = False
    dest = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.partial").write_bytes(b"stale bytes of an earlier download")
    fetch_url(host.url, SHA256, dest)
    assert dest.read_bytes() == BODY


def test_a_file_already_in_place_is_not_downloaded(host, tmp_path):
    dest = tmp_path / "m.onnx"
    dest.write_bytes(BODY)
    fetch_url(host.url, SHA256, dest)
    assert host.seen == []


def test_a_missing_file_fails_at_once_without_retries(host, tmp_path):
    with pytest.raises(ModelFetchError, match="HTTP 404"):
        fetch_url(host.url.replace("model.onnx", "nope.onnx"), SHA256, tmp_path / "m.onnx")
    assert host.seen == [None]


def test_bad_arguments_are_refused_before_any_request(host, tmp_path):
    with pytest.raises(ModelFetchError, match="64 hex digits"):
        fetch_url(host.url, "abc", tmp_path / "m.onnx")
    with pytest.raises(ModelFetchError, match="http"):
        fetch_url("file:///etc/passwd", SHA256, tmp_path / "m.onnx")
    assert host.seen == []


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.fetch_model", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_line_fetches_and_reports_progress_as_lines(host, tmp_path):
    dest = tmp_path / "m.onnx"
    done = run_cli("--url", host.url, "--sha256", SHA256, "--dest", str(dest))
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == BODY and f"sha256 {SHA256}" in done.stdout
    # stderr is not a terminal: whole lines, no carriage returns
    assert "\r" not in done.stderr and "MiB" in done.stderr.splitlines()[-1]


def test_the_command_line_refuses_a_mismatch_with_a_one_line_error(host, tmp_path):
    dest = tmp_path / "m.onnx"
    done = run_cli("--url", host.url, "--sha256", "1" * 64, "--dest", str(dest))
    assert done.returncode == 1 and "fetch_model:" in done.stderr and "Traceback" not in done.stderr
    assert not dest.exists() and not Path(f"{dest}.partial").exists()
    assert run_cli("--url", host.url, "--dest", str(dest)).returncode == 2  # no --sha256


def test_a_gated_file_is_fetched_with_the_token_from_the_environment(host, tmp_path):
    host.token = "hf_secret"
    dest = tmp_path / "m.onnx"
    refused = run_cli("--url", host.url, "--sha256", SHA256, "--dest", str(dest))
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    args = ("--url", host.url, "--sha256", SHA256, "--dest", str(dest), "--token-env", "HF_TOKEN")
    assert run_cli(*args).returncode == 2  # the variable is not set
    done = run_cli(*args, env={"HF_TOKEN": "hf_secret"})
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == BODY
