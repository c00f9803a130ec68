"""A GPU host without usable CUDA libraries, as the service sees it: a driver that answers (a
stand-in libcuda.so.1 built from tests/fixtures/fake_driver) and no CUDA 13 or cuDNN 9 in the
environment. ``--runtime auto`` must stop with one line naming what is missing and the fix,
never serve from the CPU in silence; ``--runtime openvino`` serves on purpose."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support import FIXTURES, MODEL, ROOT, free_port, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def driver_dir(tmp_path_factory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the stand-in driver")
    folder = tmp_path_factory.mktemp("driver")
    subprocess.run(
        [
            compiler,
            "-shared",
            "-fPIC",
            "-o",
            str(folder / "libcuda.so.1"),
            str(FIXTURES / "fake_driver" / "libcuda.c"),
        ],
        check=True,
    )
    return folder


def _cuda_libraries_installed() -> bool:
    try:
        import nvidia.cudnn  # noqa: F401  (the gpu extra)
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_cuda_libraries_installed(), reason="the gpu extra is installed here")
def test_a_driver_without_cuda_libraries_stops_auto_with_one_line(driver_dir, tmp_path):
    env = {**os.environ, "LD_LIBRARY_PATH": str(driver_dir)}
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "service",
            "--port",
            str(free_port()),
            "--models-dir",
            str(MODEL.parent),
            "--storage-dir",
            str(tmp_path / "images"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 2, finished.stderr
    assert "Traceback" not in finished.stderr
    errors = [line for line in finished.stderr.splitlines() if "CRITICAL" in line]
    assert len(errors) == 1, finished.stderr
    assert "a GPU driver answers but CUDA cannot be used" in errors[0]
    assert "cannot open shared object file" in errors[0]
    assert "--runtime openvino" in errors[0] and "make install GPU=1" in errors[0]
    assert "listening" not in finished.stderr


def test_openvino_still_serves_on_such_a_host(driver_dir, tmp_path):
    server = start_server(
        tmp_path, "--runtime", "openvino", env={"LD_LIBRARY_PATH": str(driver_dir)}
    )
    try:
        with urllib.request.urlopen(f"{server.http_url}/v1/models", timeout=5) as response:
            models = json.load(response)["data"]
        assert models and all(model["provider"].startswith("OpenVINO CPU") for model in models)
        with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'rbg_model_info{model="u2netp",provider="OpenVINO CPU' in metrics
    finally:
        server.stop()
