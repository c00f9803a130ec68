"""The distributed mode's overhead: one redis-server, one gateway, 1 or 2 workers, against the
embedded mode, all at 8 sockets on the same cores. Two workers split the cores (one inference
and one CPU thread each), so the comparison is at the same core count."""

from __future__ import annotations

import contextlib

from .experiment import Options
from .processes import fresh_store, redis_server, service_load, service_process


def run(options: Options) -> dict:
    image = options.image.read_bytes()
    tasks_per_socket = max(2, options.tasks // 2)
    results = {}
    port, server = service_process()
    with server as process:
        service_load(port, image, 1, 2, process.pid)
        results["embedded"] = service_load(port, image, 8, tasks_per_socket, process.pid)
    with redis_server() as url:
        for workers, split in ((1, ()), (2, ("--inference-threads", "1", "--cpu-workers", "1"))):
            with fresh_store() as store:  # one for the cluster, as on one machine
                gateway_port, gateway = service_process(
                    "auto", "--redis", url, "--role", "gateway", store=store
                )
                with gateway as gateway_process, contextlib.ExitStack() as stack:
                    for _ in range(workers):
                        worker = service_process(
                            "auto", "--redis", url, "--role", "worker", *split, store=store
                        )
                        stack.enter_context(worker[1])
                    service_load(gateway_port, image, 1, 2, gateway_process.pid)
                    results[f"workers_{workers}"] = service_load(
                        gateway_port, image, 8, tasks_per_socket, gateway_process.pid
                    )
    return results


def lines(d: dict) -> list[str]:
    embedded = d["embedded"]["images_per_s"]
    result = ["distributed mode (redis, 1 gateway) vs embedded, 8 sockets, same cores"]
    result.append(f"  embedded                       {embedded:7.2f} img/s")
    for workers in (1, 2):
        row = d[f"workers_{workers}"]
        result.append(
            f"  {workers} worker{'s' if workers > 1 else ' '}                      "
            f"{row['images_per_s']:7.2f} img/s   x{row['images_per_s'] / embedded:.2f} embedded"
            f"   lost/dup {row['lost']}/{row['duplicated']}"
        )
    return result
