"""With the ``gpu`` extra installed (``make test-gpu-libraries`` makes such an environment), the
runtime's loader finds CUDA's and cuDNN's libraries in it, with no LD_LIBRARY_PATH and no
system CUDA: all that the CUDA provider then lacks on a host without a GPU is the driver's own
libcuda.so.1. Skipped where the extra is not installed (CPU hosts, CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT

try:
    import nvidia.cudnn  # noqa: F401  (the gpu extra)
except ImportError:
    pytest.skip("the gpu extra is not installed: make test-gpu-libraries", allow_module_level=True)

_CHILD = """
import json, sys
from service.inference import cuda
cuda.load_cuda_libraries()
maps = open("/proc/self/maps").read().split()
loaded = sorted({path for path in maps if "/nvidia/" in path and ".so" in path})
print(json.dumps({"missing": cuda.missing_library(), "loaded": loaded}))
"""


def test_the_loader_finds_cuda_and_cudnn_in_the_environment():
    env = {key: value for key, value in os.environ.items() if key != "LD_LIBRARY_PATH"}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(child.stdout.splitlines()[-1])
    names = {path.rsplit("/", 1)[1] for path in found["loaded"]}
    assert {"libcudart.so.13", "libcublasLt.so.13", "libcudnn.so.9"} <= names, names
    assert all("site-packages/nvidia/" in path for path in found["loaded"])
    if found["missing"] is not None:  # a host without a GPU: only the driver is missing
        assert "libcuda.so.1" in found["missing"], found["missing"]
