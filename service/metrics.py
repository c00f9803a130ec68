"""The service's metrics, exposed at ``GET /metrics`` in the Prometheus text format.

One registry per App (not prometheus_client's global one), so that several apps in one
process (tests) never share counters.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from protocol.codec import TASK_TYPES

__all__ = ["Metrics"]

# Labels come from fixed sets: a client's made-up taskType must not become a time series.
_TASK_TYPE_LABELS = frozenset(TASK_TYPES)
_OTHER = "other"

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The standard process_* series (resident memory, CPU seconds, open fds, ...) from /proc.
        ProcessCollector(registry=r)
        self.tasks = Counter(
            "rbg_tasks",
            "Tasks answered, by task type and outcome (a code on failure)",
            ["task_type", "outcome"],
            registry=r,
        )
        self.task_seconds = Histogram(
            "rbg_task_seconds",
            "Seconds from accepting a work task to its answer",
            ["task_type"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.queued = Gauge("rbg_queued_tasks", "Accepted work tasks not yet finished", registry=r)
        self.batch_size = Histogram(
            "rbg_batch_size",
            "Images per inference call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "rbg_inference_seconds",
            "Seconds per inference call",
            ["model"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.models = Gauge(
            "rbg_model_info",
            "1 for each model this process serves, with the provider that runs it",
            ["model", "provider"],
            registry=r,
        )
        self.sockets = Gauge("rbg_open_sockets", "Open WebSocket connections", registry=r)
        self.bytes_in = Counter(
            "rbg_received_bytes", "Bytes of WebSocket frames received", registry=r
        )
        self.bytes_out = Counter("rbg_sent_bytes", "Bytes of WebSocket frames sent", registry=r)
        self.frames_refused = Counter(
            "rbg_frames_refused", "Frames refused whole, by code", ["code"], registry=r
        )
        self.matting_fallbacks = Counter(
            "rbg_matting_fallbacks",
            "Alpha matting tasks answered with the decontaminated cutout: no solvable trimap",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def count_task(self, task_type: str | None, outcome: str) -> None:
        """One task answered: ``outcome`` is "success" or an error code (a fixed set)."""
        label = task_type if task_type in _TASK_TYPE_LABELS else _OTHER
        self.tasks.labels(label, outcome).inc()

    def serve_model(self, model: str, provider: str) -> None:
        self.models.labels(model, provider).set(1)

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.inference_seconds.labels(model).observe(seconds)
