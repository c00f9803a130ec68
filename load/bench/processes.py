"""What the experiments share: where things are, starting and stopping the processes measured
(the service, redis-server), and reading what a process used (/proc, /metrics, py-spy)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.net.loopback import free_port

from ..harness import LoadConfig, run_load

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "u2netp.onnx"
BENCH_DIR = ROOT / ".bench"
PHOTOS = ROOT / "tests" / "fixtures"  # rembg's test photos (tests/fixtures/README.md)
# What one benchmarked service may write to its image store: a few hundred large PNGs.
STORE_ROOM_BYTES = 4 * 1024**3


def wait_http(url: str, timeout: float, process: subprocess.Popen) -> None:
    """Return once ``url`` answers at all; raise when ``process`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: up
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


@contextmanager
def started(
    command: list[str], ready_url: str, env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[subprocess.Popen]:
    """``command`` running in its own process group until the block ends, its output in a log
    under .bench/; entered once ``ready_url`` answers."""
    BENCH_DIR.mkdir(exist_ok=True)
    log = open(BENCH_DIR / f"{Path(command[0]).name}-{int(time.time())}.log", "wb")
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        wait_http(ready_url, timeout, process)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


def service_process(runtime: str = "auto", *flags: str, store: Path | None = None):
    """A free port and the service to start on it (``with`` it), with ``flags``; its image
    store is ``store`` (processes of one cluster share one) or a fresh one of its own."""
    port = free_port()
    return port, _service(port, runtime, flags, store)


@contextmanager
def fresh_store() -> Iterator[Path]:
    """An empty image-store directory, gone afterwards: files left by earlier runs would be
    stat-ed by each sweep and billed to this one. In memory where there is room, since deleting
    a store on disk is not free either: on an ext4 without a journal each new inode skips those
    deleted in the last 5-10 minutes, so the stores of earlier runs were billed to later ones."""
    BENCH_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-storage-", dir=_store_parent()) as directory:
        yield Path(directory)


def _store_parent() -> Path:
    memory = Path("/dev/shm")
    roomy = memory.is_dir() and os.access(memory, os.W_OK)
    return memory if roomy and shutil.disk_usage(memory).free >= STORE_ROOM_BYTES else BENCH_DIR


@contextmanager
def _service(
    port: int, runtime: str, flags: tuple[str, ...], store: Path | None
) -> Iterator[subprocess.Popen]:
    with contextlib.ExitStack() as stack:
        directory = store or stack.enter_context(fresh_store())
        command = [sys.executable, "-m", "service", "--port", str(port), "--runtime", runtime]
        command += ["--storage-dir", str(directory), "--log-level", "WARNING", *flags]
        with started(command, f"http://127.0.0.1:{port}/healthz") as process:
            yield process


@contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server on a free loopback port, keeping nothing on disk; its URL."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(BENCH_DIR)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def service_load(port: int, image: bytes, connections: int, tasks: int, pid: int) -> dict:
    """The load harness's summary of ``connections`` sockets x ``tasks`` PNG removals of
    ``image`` (base64 out, one task in flight per socket), the server's memory included."""
    config = LoadConfig(
        url=f"ws://127.0.0.1:{port}",
        images=(image,),
        connections=connections,
        tasks_per_connection=tasks,
        window=1,
        output_type="base64Data",
        output_format="PNG",
        server_pid=pid,
        progress=False,
    )
    return asyncio.run(run_load(config)).summary()


def stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU time in a /proc stat file (a process's or one thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc)."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds of a service process by thread role (the OS thread names of
    service.scheduling.threads): the event loop (the main thread), CPU workers, the device's
    inference and staging threads, and the rest (I/O threads, runtimes' own)."""
    roles: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            seconds = stat_cpu_seconds(task / "stat")
        except FileNotFoundError:
            continue  # the thread ended
        if task.name == str(pid):
            role = "event loop"
        elif name.startswith("cpu_"):
            role = "CPU workers"
        elif name.startswith(("infer-", "stage-")):
            role = "device threads"  # the inference call, and stacking the batch for it
        else:
            role = "other threads"
        roles[role] = roles.get(role, 0.0) + seconds
    return roles


def batch_sums(port: int) -> dict[str, float]:
    """Sums of the batch histograms on /metrics: images, inference calls, seconds inferring."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    sums = {"images": 0.0, "calls": 0.0, "seconds": 0.0}
    names = {
        "rbg_batch_size_sum": "images",
        "rbg_batch_size_count": "calls",
        "rbg_inference_seconds_sum": "seconds",
    }
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            sums[names[name]] += float(line.rsplit(" ", 1)[1])
    return sums


def gil_held(pid: int, seconds: float) -> subprocess.Popen | None:
    """Start sampling which threads hold the GIL (py-spy --gil), or None without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    command = [spy, "record", "--gil", "--nonblocking", "-r", "100", "-d", str(int(seconds))]
    command += ["-f", "raw", "-o", str(BENCH_DIR / "gil.txt"), "-p", str(pid)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def gil_fraction(spy: subprocess.Popen | None, seconds: float) -> float | None:
    """The share of samples in which some thread held the GIL."""
    if spy is None or spy.wait(seconds + 30) != 0:
        return None
    samples = sum(
        int(line.rsplit(" ", 1)[1])
        for line in (BENCH_DIR / "gil.txt").read_text().splitlines()
        if line.strip()
    )
    return min(1.0, samples / (100 * int(seconds)))
