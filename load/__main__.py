"""``python -m load --url ws://HOST:PORT [...]``: drive a running service and report.

Examples:
    python -m load --url ws://127.0.0.1:7600 --connections 8 --tasks-per-connection 20
    python -m load --url ws://127.0.0.1:7600 --connections 4 --duration 30 --rate 3 --json
    python -m load --url ws://127.0.0.1:7600 --idle-connections 1000 --server-pid 1234
    python -m load --urls ws://10.0.0.1:7600,ws://10.0.0.2:7600 --connections 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from .harness import LoadConfig, run_idle, run_load

DEFAULT_IMAGE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "anime-girl-1.jpg"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m load", description=__doc__.splitlines()[0])
    add = parser.add_argument
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="the service's WebSocket URL")
    target.add_argument(
        "--urls",
        help="several gateways' URLs, comma-separated: the sockets are spread over them in turn",
    )
    add("--connections", type=int, default=1, help="sockets opened (default %(default)s)")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument(
        "--tasks-per-connection",
        type=int,
        default=None,
        help="tasks each socket sends (default 10)",
    )
    amount.add_argument("--duration", type=float, default=None, help="seconds to keep sending")
    add(
        "--rate",
        type=float,
        default=None,
        help="total tasks per second across sockets (open loop); default: closed loop",
    )
    add(
        "--window",
        type=int,
        default=4,
        help="outstanding tasks per socket, closed loop (default %(default)s)",
    )
    add("--frame-size", type=int, default=1, help="tasks per frame (default %(default)s)")
    add(
        "--image",
        type=Path,
        action="append",
        dest="images",
        help=f"image file(s) to send, cycled (default {DEFAULT_IMAGE.name})",
    )
    add(
        "--settings",
        type=json.loads,
        default={},
        help="settings object as JSON, e.g. '{\"alphaMatting\": true}'",
    )
    add("--output-type", default="base64Data", choices=["URL", "dataURI", "base64Data"])
    add("--output-format", default="PNG", choices=["JPG", "PNG", "WEBP"])
    add("--model", default=None, help="model id to ask for (default: the server's runware:109@1)")
    add("--api-key", default="load-test")
    add(
        "--task-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for answers after the last send (default %(default)s)",
    )
    add("--server-pid", type=int, default=None, help="read the server's memory from /proc")
    add(
        "--idle-connections",
        type=int,
        default=None,
        help="instead: open N sockets that only authenticate and ping, report server memory",
    )
    add("--json", action="store_true", help="print the summary as one JSON object")
    add("--no-progress", action="store_true", help="no live progress line")
    return parser


def _print_summary(summary: dict) -> None:
    latency = summary["latency_s"]
    fairness = summary["per_connection_images_per_s"]
    print(
        f"tasks ok        {summary['tasks_ok']} / {summary['tasks_sent']}"
        f"  (lost {summary['lost']}, duplicated {summary['duplicated']}, "
        f"cross-delivered {summary['cross_delivered']}, undecodable {summary['undecodable']})"
    )
    print(f"errors          {summary['errors_by_code'] or 'none'}")
    print(f"throughput      {summary['images_per_s']} images/s over {summary['elapsed_s']} s")
    print(
        f"latency         p50 {latency['p50']} s, p90 {latency['p90']} s, p99 {latency['p99']} s, "
        f"max {latency['max']} s"
    )
    print(f"per connection  min {fairness['min']} / max {fairness['max']} images/s")
    memory = summary["server_memory_bytes"]
    if memory:
        print(
            f"server memory   rss {memory['rss'] / 2**20:.1f} MiB, peak {memory['peak_rss'] / 2**20:.1f} MiB"
        )
    for failure in summary["connection_failures"]:
        print(f"connection failed: {failure}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.url = args.url or args.urls
    if args.idle_connections:
        result = asyncio.run(
            run_idle(
                args.url, args.idle_connections, args.duration or 5.0, args.server_pid, args.api_key
            )
        )
        print(json.dumps(result, indent=None if args.json else 2))
        return 0 if result["connection_failures"] == 0 else 1
    tasks = args.tasks_per_connection if args.duration is None else None
    config = LoadConfig(
        url=args.url,
        images=tuple(p.read_bytes() for p in (args.images or [DEFAULT_IMAGE])),
        connections=args.connections,
        tasks_per_connection=tasks if tasks is not None else (None if args.duration else 10),
        duration=args.duration,
        rate=args.rate,
        window=args.window,
        frame_size=args.frame_size,
        settings=args.settings,
        output_type=args.output_type,
        output_format=args.output_format,
        model=args.model,
        api_key=args.api_key,
        task_timeout=args.task_timeout,
        server_pid=args.server_pid,
        progress=not args.no_progress and not args.json,
    )
    summary = asyncio.run(run_load(config)).summary()
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    clean = (
        summary["lost"] == 0
        and summary["duplicated"] == 0
        and summary["cross_delivered"] == 0
        and summary["undecodable"] == 0
        and not summary["connection_failures"]
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
