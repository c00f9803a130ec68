"""The simulated accelerator (a benchmarking tool) and the OS names of pool threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.inference.simulated import DeviceLatency, SimulatedDevice, parse_latency
from service.scheduling.threads import named_pool


class Echo:
    path = Path("echo.onnx")
    provider = "echo"
    on_gpu = False
    preferred_batch = 1
    input_size = (4, 4)

    def infer_batch(self, batch: np.ndarray) -> np.ndarray:
        return batch[:, 0]


def test_a_batch_takes_the_fixed_time_plus_the_per_image_time_and_passes_outputs_through():
    device = SimulatedDevice(Echo(), DeviceLatency(fixed=0.02, per_image=0.01))
    batch = np.random.default_rng(0).random((5, 3, 4, 4), dtype=np.float32)
    started = time.perf_counter()
    outputs = device.infer_batch(batch)
    assert time.perf_counter() - started >= 0.02 + 5 * 0.01
    assert np.array_equal(outputs, batch[:, 0])
    assert device.preferred_batch == 16 and not device.on_gpu
    assert "simulated device (20 ms + 10 ms per image) over echo" == device.provider


def test_the_wait_lets_other_threads_run():
    device = SimulatedDevice(Echo(), DeviceLatency(fixed=0.3, per_image=0.0))
    counted = 0

    def count() -> None:
        nonlocal counted
        deadline = time.perf_counter() + 0.25
        while time.perf_counter() < deadline:
            counted += 1

    runner = threading.Thread(target=device.infer_batch, args=(np.zeros((1, 3, 4, 4)),))
    runner.start()
    count()
    runner.join()
    assert counted > 10_000  # a busy loop beside a GIL-holding wait would barely advance


@pytest.mark.parametrize("text", ["3", "a,b", "1,2,3,4", "-1,2", "1,2,0"])
def test_a_malformed_latency_is_refused(text):
    with pytest.raises(ValueError):
        parse_latency(text)


def test_a_latency_is_read_in_milliseconds_and_a_bandwidth_in_gigabytes():
    assert parse_latency("3,0.5") == DeviceLatency(fixed=0.003, per_image=0.0005)
    assert parse_latency("3,0.5,12") == DeviceLatency(0.003, 0.0005, bytes_per_second=12e9)


def test_the_transfer_stage_adds_the_bytes_moved_at_the_bandwidth():
    latency = DeviceLatency(fixed=0.003, per_image=0.001, bytes_per_second=1e9)
    assert latency.of(4, moved_bytes=2_000_000) == pytest.approx(0.003 + 0.004 + 0.002)
    assert DeviceLatency(0.003, 0.001).of(4, moved_bytes=2_000_000) == pytest.approx(0.007)


def test_pool_threads_carry_their_names_into_the_os():
    with named_pool(2, "cpu") as pool:
        names = set(pool.map(lambda _: _os_name(), range(8)))
    assert names <= {"cpu_0", "cpu_1"} and names


def _os_name() -> str:
    time.sleep(0.01)
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
