"""The simulated accelerator (a benchmarking tool) and the OS names of pool threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service.inference.simulated import (
    DeviceLatency,
    SimulatedDevice,
    parse_latency,
    parse_simulated_device,
)
from service.scheduling.threads import named_pool


class Echo:
    path = Path("echo.onnx")
    provider = "echo"
    on_gpu = False
    feeds_accelerator = False
    preferred_batch = 1
    input_size = (4, 4)

    def infer_batch(self, batch: np.ndarray) -> np.ndarray:
        return batch[:, 0]


class DeviceClock:
    """The device's time: it moves when the device sleeps, or when the inner model "runs"."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_batch_takes_the_fixed_time_plus_the_per_image_time_and_passes_outputs_through():
    clock = DeviceClock()
    latency = DeviceLatency(fixed=0.02, per_image=0.01)
    device = SimulatedDevice(Echo(), latency, clock=clock, sleep=clock.sleep)
    batch = np.random.default_rng(0).random((5, 3, 4, 4), dtype=np.float32)
    outputs = device.infer_batch(batch)
    assert clock.now == pytest.approx(0.02 + 5 * 0.01) and len(clock.slept) == 1
    assert np.array_equal(outputs, batch[:, 0])
    assert device.preferred_batch == 16 and not device.on_gpu and device.feeds_accelerator
    assert "simulated device (20 ms + 10 ms per image) over echo" == device.provider


def test_the_inner_models_own_time_counts_towards_the_latency():
    """The wait is what is left of t(N) after the wrapped model's own run, none if it ran
    longer."""
    clock = DeviceClock()

    class Slow(Echo):
        cost = 0.0  # seconds each run takes on the device's clock

        def infer_batch(self, batch: np.ndarray) -> np.ndarray:
            clock.now += self.cost
            return batch[:, 0]

    inner = Slow()
    device = SimulatedDevice(inner, DeviceLatency(0.05, 0.0), clock=clock, sleep=clock.sleep)
    inner.cost = 0.03
    device.infer_batch(np.zeros((1, 3, 4, 4), np.float32))
    inner.cost = 0.08
    device.infer_batch(np.zeros((1, 3, 4, 4), np.float32))
    assert clock.slept == [pytest.approx(0.02)] and clock.now == pytest.approx(0.13)


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


def test_a_lock_file_is_read_after_the_latency():
    assert parse_simulated_device("3,0.5") == (DeviceLatency(0.003, 0.0005), None)
    latency, lock_file = parse_simulated_device("3,0.5,12@/tmp/gpu0.lock")
    assert latency == DeviceLatency(0.003, 0.0005, 12e9) and lock_file == Path("/tmp/gpu0.lock")
    with pytest.raises(ValueError):
        parse_simulated_device("3,0.5@")


@pytest.mark.parametrize("shared", [False, True])
def test_devices_naming_one_lock_file_run_one_call_at_a_time(tmp_path, shared):
    """Two devices (each its own open file, as two processes have) calling at once: with one
    lock file the second call waits for the first, so both take twice the latency; without,
    they overlap."""
    latency = DeviceLatency(fixed=0.2, per_image=0.0)
    lock_files = [tmp_path / "gpu.lock"] * 2 if shared else [None, None]
    devices = [SimulatedDevice(Echo(), latency, lock_file) for lock_file in lock_files]
    batch = np.zeros((1, 3, 4, 4), np.float32)
    started = time.perf_counter()
    runners = [threading.Thread(target=d.infer_batch, args=(batch,)) for d in devices]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    elapsed = time.perf_counter() - started
    if shared:
        assert elapsed >= 0.4
        assert "shared through" in devices[0].provider
    else:
        assert elapsed < 0.4


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


@pytest.mark.parametrize(
    ("configured", "accelerator", "expected"),
    [(None, True, 2), (None, False, 1), (1, True, 1), (3, False, 3)],
)
def test_two_batches_are_in_flight_by_default_only_on_an_accelerator(
    configured, accelerator, expected
):
    """On a GPU (or the simulated one) the next batch is stacked while one runs
    (docs/decisions/0012); on the CPU one at a time; --batches-in-flight decides when given."""
    from service.__main__ import config_from_args

    argv = [] if configured is None else ["--batches-in-flight", str(configured)]
    assert config_from_args(argv).batches_in_flight_on(accelerator) == expected
