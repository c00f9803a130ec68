"""``make gpu-check`` (``python -m load.gpu_check``): one command that proves a GPU host.

On a GPU host it prints, step by step:
1. the device, as nvidia-smi names it;
2. the runtime ``--runtime auto`` chooses and the provider a session really runs on;
3. raw onnxruntime CUDA throughput of the served model at batch 1, 8, 16 and 32, in fp32 and
   fp16, with each size's first call (cuDNN's algorithm search);
4. the service under the load harness (32 sockets, base64 and URL outputs): images/s, p50 and
   p95 latency, the mean batch, server core-ms per image, and GPU utilisation sampled during
   the run.
On a host without a GPU it says so and runs the CPU-side part only: step 4 against the
stand-in device (a replay graph that costs nothing, load.standin), as CI does.

Every step has a time box; a step that fails or runs out of time is reported and the next one
runs. The report is printed as it goes and written whole to ``--report``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .bench.processes import BENCH_DIR, MODEL, PHOTOS, batch_sums, cpu_seconds, service_process
from .bench.replay import replay_flags, replay_load, replay_model
from .harness import run_load

RAW_BATCHES = (1, 8, 16, 32)
LOAD_SOCKETS = 32
TOTAL_BUDGET_S = 8 * 60


@dataclass
class Report:
    """Lines as they are printed, written to ``path`` after every step."""

    path: Path
    lines: list[str] = field(default_factory=list)

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")


def run_step(report: Report, title: str, budget_s: float, step: Callable[[], list[str]]) -> bool:
    """Run ``step`` on a thread, at most ``budget_s`` seconds; its lines, or why it failed.
    A step still running past its box is left behind (daemon thread) and reported."""
    report.say(f"== {title} (at most {budget_s:.0f} s)")
    lines: list[str] = []
    errors: list[str] = []

    def target() -> None:
        try:
            lines.extend(step())
        except Exception as error:  # a failed step is reported; the next one runs
            errors.append(f"{type(error).__name__}: {error}")

    started = time.monotonic()
    thread = threading.Thread(target=target, name=f"step-{title}", daemon=True)
    thread.start()
    thread.join(budget_s)
    if thread.is_alive():
        report.say(f"   FAILED: still running after {budget_s:.0f} s")
        return False
    if errors:
        report.say(f"   FAILED: {errors[0]}")
        return False
    for line in lines:
        report.say(f"   {line}")
    report.say(f"   ({time.monotonic() - started:.1f} s)")
    return True


# --------------------------------------------------------------------------- the steps


def device_lines() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ["nvidia-smi: not found"]
    query = "name,driver_version,memory.total,compute_cap"
    answer = subprocess.run(
        [smi, f"--query-gpu={query}", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    if answer.returncode != 0:
        return [f"nvidia-smi: {answer.stderr.strip() or answer.stdout.strip()}"]
    return [f"GPU {index}: {line}" for index, line in enumerate(answer.stdout.splitlines())]


def provider_lines() -> list[str]:
    from service.inference.errors import ModelLoadError
    from service.inference.runtime import load_runtime, select_runtime

    try:
        kind = select_runtime("auto")
    except ModelLoadError as error:
        return [f"--runtime auto would not start: {error}"]
    model = load_runtime(MODEL, kind)
    return [f"--runtime auto: {kind}; the session runs on {model.provider}"]


def raw_cuda_lines(seconds_per_size: float = 3.0) -> list[str]:
    """Raw onnxruntime CUDA images/s of the embedded model at each batch size."""
    from service.inference import cuda
    from service.inference.model_input import ModelBatch
    from service.inference.runtime import OnnxModel

    lines = []
    for precision in ("fp32", "fp16"):
        model = OnnxModel(
            MODEL, options=cuda.CudaOptions(), precision=precision, max_batch=max(RAW_BATCHES)
        )
        size = model.input_size or (320, 320)
        for batch in RAW_BATCHES:
            inputs = ModelBatch.zeros(batch, size)
            inputs.bands[:] = np.random.default_rng(0).integers(0, 256, inputs.bands.shape)
            inputs.lookups[:] = np.linspace(-2, 2, 256, dtype=np.float32)
            started = time.perf_counter()
            model.infer_batch(inputs)
            first = time.perf_counter() - started
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds_per_size:
                model.infer_batch(inputs)
                calls += 1
            rate = calls * batch / (time.perf_counter() - started)
            lines.append(
                f"{precision} batch {batch:>2}: {rate:8.1f} images/s  (first call {first * 1000:.0f} ms)"
            )
    return lines


class GpuSampler:
    """nvidia-smi's utilisation every half second while a load runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="gpu-sampler")

    def _run(self) -> None:
        smi = shutil.which("nvidia-smi")
        while smi and not self._stop.wait(0.5):
            answer = subprocess.run(
                [smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            values = [float(v) for v in answer.stdout.split() if v.replace(".", "").isdigit()]
            if values:
                self.samples.append(max(values))

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(6)

    def line(self) -> str:
        if not self.samples:
            return "GPU utilisation: no samples"
        mean = sum(self.samples) / len(self.samples)
        return f"GPU utilisation: mean {mean:.0f}%, max {max(self.samples):.0f}% ({len(self.samples)} samples)"


def service_lines(flags: tuple[str, ...], model: str | None, tasks: int) -> list[str]:
    """The service with ``flags`` under 32 sockets of PNG removals of anime-girl-1, for each
    output type: throughput, latency, mean batch, server core-ms per image, GPU use."""
    image = (PHOTOS / "anime-girl-1.jpg").read_bytes()
    lines = []
    port, server = service_process(*flags)
    with server as process:
        for output_type in ("base64Data", "URL"):
            config = replay_load(port, image, output_type, LOAD_SOCKETS, tasks, 2, model)
            asyncio.run(run_load(replace(config, tasks_per_connection=1)))
            batches_before, cpu_before = batch_sums(port), cpu_seconds(process.pid)
            with GpuSampler() as gpu:
                summary = asyncio.run(run_load(config)).summary()
            batches = {k: v - batches_before[k] for k, v in batch_sums(port).items()}
            used = cpu_seconds(process.pid) - cpu_before
            ok = max(summary["tasks_ok"], 1)
            latency = summary["latency_s"]
            lines.append(
                f"{output_type:<10} {summary['images_per_s']:7.1f} images/s  "
                f"p50 {latency['p50'] * 1000:.0f} ms  p95 {latency['p95'] * 1000:.0f} ms  "
                f"mean batch {batches['images'] / max(batches['calls'], 1):.1f}  "
                f"server {used * 1000 / ok:.1f} core-ms/image  lost {summary['lost']}"
            )
            if shutil.which("nvidia-smi"):
                lines.append(f"{'':<10} {gpu.line()}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.gpu_check", description=__doc__)
    parser.add_argument(
        "--report", type=Path, default=BENCH_DIR / "gpu-check.txt", help="where the report goes"
    )
    parser.add_argument(
        "--tasks-per-socket",
        type=int,
        default=None,
        help="tasks each of the 32 sockets sends per output type (default: 30 on a GPU, 3 without)",
    )
    args = parser.parse_args(argv)
    from service.inference.driver import driver_answers

    BENCH_DIR.mkdir(exist_ok=True)
    report = Report(args.report)
    started = time.monotonic()
    on_gpu = driver_answers()
    report.say(
        f"gpu-check on {'a GPU host' if on_gpu else 'a host without a GPU'}, python {sys.version.split()[0]}"
    )
    results = [run_step(report, "device", 30, device_lines)]
    if on_gpu:
        results.append(run_step(report, "runtime and provider", 120, provider_lines))
        results.append(run_step(report, "raw onnxruntime CUDA", 150, raw_cuda_lines))
        tasks = args.tasks_per_socket or 30
        results.append(
            run_step(
                report,
                f"the service, {LOAD_SOCKETS} sockets, --runtime auto",
                150,
                lambda: service_lines(("auto",), None, tasks),
            )
        )
    else:
        report.say("no GPU driver answers here: the CPU-side part only (the stand-in device)")
        tasks = args.tasks_per_socket or 3

        def standin() -> list[str]:
            _, replay = replay_model(PHOTOS / "anime-girl-1.jpg")
            return service_lines(replay_flags(replay), "replay", tasks)

        results.append(
            run_step(
                report, f"the service on the stand-in device, {LOAD_SOCKETS} sockets", 150, standin
            )
        )
    elapsed = time.monotonic() - started
    report.say(
        f"{sum(results)} of {len(results)} steps passed in {elapsed:.0f} s "
        f"(budget {TOTAL_BUDGET_S} s); report: {args.report}"
    )
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
