"""``python -m load.bench``: run the experiments of the table (all, or those named by
``--only``), printing each one's report lines as it ends."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import (
    decontaminate,
    distributed,
    matting,
    rembg_api,
    shared_device,
    simulated_gpu,
    standin_device,
    throughput,
)
from .experiment import Experiment, Options
from .processes import BENCH_DIR, PHOTOS

EXPERIMENTS: dict[str, Experiment] = {
    "throughput": Experiment(
        "this service at 1 and 8 sockets against raw onnxruntime and OpenVINO, fairness, memory",
        throughput.run,
        throughput.lines,
    ),
    "rembg-api": Experiment(
        "our /api/remove and WebSocket against rembg s, rembg's client at 1 and 8",
        rembg_api.run,
        rembg_api.lines,
        needs_rembg=True,
    ),
    "distributed": Experiment(
        "the distributed mode (redis, gateway, 1 and 2 workers) against the embedded one",
        distributed.run,
        distributed.lines,
    ),
    "matting": Experiment(
        "alpha matting against rembg's, time and alpha difference",
        matting.run,
        matting.lines,
        needs_rembg=True,
    ),
    "decontaminate": Experiment(
        "what decontaminate adds to a removal, against rembg's",
        decontaminate.run,
        decontaminate.lines,
        needs_rembg=True,
    ),
    "standin-device": Experiment(
        "the CPU work around a model that costs nothing, at 320 and 1024",
        standin_device.run,
        standin_device.lines,
    ),
    "simulated-gpu": Experiment(
        "the service feeding a simulated accelerator: what saturates first",
        simulated_gpu.run,
        simulated_gpu.lines,
    ),
    "shared-device": Experiment(
        "one simulated GPU shared by one service process or two: batches and images/s",
        shared_device.run,
        shared_device.lines,
    ),
}


def main(argv: list[str] | None = None) -> int:
    experiments = "\n".join(f"  {name}: {e.about}" for name, e in EXPERIMENTS.items())
    parser = argparse.ArgumentParser(
        prog="python -m load.bench",
        description="Measure this service in one run on one machine; print each ratio.",
        epilog=f"experiments, in the order they run:\n{experiments}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(EXPERIMENTS),
        metavar="NAME",
        help="run only this experiment (repeatable); by default all of them",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per raw-runtime measurement")
    parser.add_argument("--tasks", type=int, default=16, help="tasks per socket at concurrency 1")
    parser.add_argument(
        "--skip-rembg", action="store_true", help="leave out the experiments that run rembg"
    )
    parser.add_argument("--json", action="store_true", help="print everything as JSON too")
    args = parser.parse_args(argv)
    BENCH_DIR.mkdir(exist_ok=True)
    options = Options(seconds=args.seconds, tasks=args.tasks, image=PHOTOS / "anime-girl-1.jpg")
    names = args.only or [
        name for name, e in EXPERIMENTS.items() if not (args.skip_rembg and e.needs_rembg)
    ]
    results: dict = {"cpus": os.cpu_count()}
    for name in names:
        experiment = EXPERIMENTS[name]
        results[name] = experiment.run(options)
        print("\n".join(experiment.lines(results[name])), end="\n\n", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
