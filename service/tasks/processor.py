"""Runs one typed work task to its typed result, whatever transport it came by.

The steps of a removal, each where it belongs: resolve the input (I/O, event loop) -> decode and
preprocess (worker thread) -> the model (micro-batcher) -> mask, cutout, background, encode
(worker thread) -> store -> result. Failures are raised as TaskFailure.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass

import msgspec
import numpy as np

from protocol.errors import Code, TaskFailure
from protocol.messages import (
    BackgroundRemovalResult,
    BackgroundSettings,
    ImageUpload,
    ImageUploadResult,
    OutputSpec,
    RemoveBackground,
)

from ..config import Config
from ..imaging import pipeline
from ..imaging.formats import CONTENT_TYPES, EXTENSIONS, check_encodable, payload_fields
from ..inference.families import Family
from ..inference.model_input import ModelInput
from ..metrics import Metrics
from ..net.delivery import put_to_upload_endpoint
from ..net.outbound import OutboundHttp
from ..scheduling.batcher import MicroBatcher
from ..scheduling.budget import MemoryBudget
from ..scheduling.fairness import FairExecutor
from ..storage.store import ImageStore, StoredImage
from .inputs import InputResolver

__all__ = ["ModelRoute", "Processor", "with_server_defaults"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRoute:
    """How a model id is served: its preprocessing and the batcher that runs it."""

    family: Family
    batcher: MicroBatcher


@dataclass
class _TaskFacts:
    """What the per-task log line says beyond the task itself, filled in as it is learnt."""

    size: tuple[int, int] | None = None


@contextlib.contextmanager
def _logged(task_type: str, task_uuid: str, model: str | None) -> Iterator[_TaskFacts]:
    """One INFO line when the task ends: taskUUID, model, image size, milliseconds, outcome
    (the error code on failure). --log-level WARNING silences it."""
    facts, started, outcome = _TaskFacts(), time.perf_counter(), "cancelled"
    try:
        yield facts
        outcome = "success"
    except TaskFailure as failure:
        outcome = f"failed {failure.code}"
        raise
    except Exception:
        outcome = f"failed {Code.INTERNAL}"
        raise
    finally:
        size = "x".join(map(str, facts.size)) if facts.size else "-"
        milliseconds = (time.perf_counter() - started) * 1000
        log.info(
            "task %s: %s model=%s size=%s %.0f ms %s",
            task_uuid,
            task_type,
            model or "-",
            size,
            milliseconds,
            outcome,
        )


class Processor:
    """Runs removals and uploads to their results.

    Args:
        models: every model id this process serves (none on a gateway).
        cpu: the pool for decode, resize, matting and encode, taking turns between lanes.
    """

    def __init__(
        self,
        config: Config,
        models: Mapping[str, ModelRoute],
        store: ImageStore,
        inputs: InputResolver,
        http: OutboundHttp,
        cpu: FairExecutor,
        budget: MemoryBudget,
        metrics: Metrics,
    ) -> None:
        self._budget = budget
        self._metrics = metrics
        self._config = config
        self._http = http
        self._models = models
        self._store = store
        self._inputs = inputs
        self._cpu = cpu

    def image_url(self, stored: StoredImage) -> str:
        return self._store.url_for(stored, self._config.base_url())

    async def upload(
        self, task: ImageUpload, scope: bytes, lane: Hashable = None
    ) -> ImageUploadResult:
        with _logged(task.task_type, task.task_uuid, None) as facts:
            return await self._upload(task, scope, lane, facts)

    async def _upload(
        self, task: ImageUpload, scope: bytes, lane: Hashable, facts: _TaskFacts
    ) -> ImageUploadResult:
        resolved = await self._inputs.resolve(task.image, "image", scope)
        # Refuse what could never be processed now, rather than at the first removal.
        max_pixels = self._config.max_image_pixels
        async with self._budget.reserved(_working_bytes(resolved.data, max_pixels, False), "image"):
            facts.size = await self._cpu.run(
                lane, _decodes, resolved.data, max_pixels, self._config.decode_timeout
            )
        return ImageUploadResult(
            taskType="imageUpload",
            taskUUID=task.task_uuid,
            imageUUID=resolved.stored.uuid,
            imageURL=self.image_url(resolved.stored),
        )

    def _route(self, task: RemoveBackground) -> ModelRoute:
        route = self._models.get(task.model)
        if route is None:
            raise TaskFailure(
                Code.UNSUPPORTED_MODEL,
                f"Unknown model {task.model!r}. Available: "
                + ", ".join(sorted(self._models))
                + ".",
                parameter="model",
                type="string",
            )
        return route

    def check_destinations(self, task: RemoveBackground) -> None:
        """Refuse forbidden webhook/upload URLs before any work is done (or acknowledged)."""
        if task.webhook_url is not None:
            self._http.check_url(task.webhook_url, "webhookURL")
        if task.upload_endpoint is not None:
            self._http.check_url(task.upload_endpoint, "uploadEndpoint")

    async def store_input(self, task: RemoveBackground, scope: bytes) -> RemoveBackground:
        """The distributed mode's gateway half: fetch or decode the input and store it, so that
        the job names it by imageUUID (workers read it from the shared storage)."""
        resolved = await self._inputs.resolve(task.image, task.image_parameter, scope)
        return msgspec.structs.replace(task, image=resolved.stored.uuid)

    async def remove_background(
        self, task: RemoveBackground, scope: bytes, lane: Hashable = None
    ) -> BackgroundRemovalResult:
        """Run the removal for ``scope`` (the key whose images it may name and under which its
        images are stored); ``lane`` is whom the CPU pool and the batcher take turns between
        (see scheduling.fairness). The task's destinations were checked when it was accepted."""
        with _logged(task.task_type, task.task_uuid, task.model) as facts:
            return await self._remove_background(task, scope, lane, facts)

    async def _remove_background(
        self, task: RemoveBackground, scope: bytes, lane: Hashable, facts: _TaskFacts
    ) -> BackgroundRemovalResult:
        route = self._route(task)
        resolved = await self._inputs.resolve(task.image, task.image_parameter, scope)
        max_pixels, limit_name = self._config.max_image_pixels, "the limit"
        matting = task.settings.alpha_matting
        if matting and self._config.max_matting_pixels < max_pixels:
            max_pixels, limit_name = self._config.max_matting_pixels, "the limit with alphaMatting"
        working = _working_bytes(resolved.data, max_pixels, matting)
        async with self._budget.reserved(working, task.image_parameter):
            decoded, model_input = await self._cpu.run(
                lane,
                _prepare,
                resolved.data,
                route.family,
                max_pixels,
                task.image_parameter,
                limit_name,
                task.output.format,
                self._config.decode_timeout,
            )
            facts.size = decoded.size
            prediction = await route.batcher.submit(model_input, lane)
            # Freed now, not after the render: the next image's model input then reuses memory
            # still in the cache (docs/performance.md, XEON-167).
            del model_input
            rendered, inline = await self._cpu.run(
                lane,
                _render,
                decoded,
                prediction,
                route.family,
                with_server_defaults(task.settings, self._config),
                task.output,
                self._config.png_compress_level,
            )
            del decoded, prediction
        if rendered.matting_fallback is not None:
            log.warning(
                "task %s: alpha matting fell back to the decontaminated cutout: %s",
                task.task_uuid,
                rendered.matting_fallback,
            )
            self._metrics.matting_fallbacks.inc()
        encoded = rendered.encoded
        extension = EXTENSIONS[task.output.format]
        if task.upload_endpoint is not None:
            await put_to_upload_endpoint(
                self._http, task.upload_endpoint, encoded, CONTENT_TYPES[extension]
            )
        stored = await self._store.put(encoded, extension, task.output.ttl, scope=scope)
        result = BackgroundRemovalResult(
            taskType="imageBackgroundRemoval",
            taskUUID=task.task_uuid,
            imageUUID=stored.uuid,
            inputImageUUID=resolved.stored.uuid,
            cost=self._config.price_per_image if task.include_cost else None,
        )
        if task.output.type == "URL":
            result.imageURL = self.image_url(stored)
            return result
        return msgspec.structs.replace(result, **inline)


# Working memory per pixel while an image is in the pipeline: the decoded image, the cutout,
# its composite and the PNG's filtered rows (about 20 bytes); with alpha matting, its system,
# factor and foreground levels on top (docs/performance.md, "Matting", has it measured).
_BYTES_PER_PIXEL = 24
_MATTING_BYTES_PER_PIXEL = 240


def _working_bytes(data: bytes, max_pixels: int, matting: bool) -> int:
    """What the image will take in the pipeline; 0 for what decoding will refuse anyway."""
    size = pipeline.image_size(data)
    if size is None or size[0] * size[1] > max_pixels:
        return 0
    per_pixel = _MATTING_BYTES_PER_PIXEL if matting else _BYTES_PER_PIXEL
    return size[0] * size[1] * per_pixel


def _decodes(data: bytes, max_pixels: int, max_seconds: float) -> tuple[int, int]:
    """Decode and let go: whether the image can be processed at all; its size."""
    return pipeline.decode_image(data, max_pixels, "image", max_seconds=max_seconds).size


def _render(
    decoded: pipeline.DecodedImage,
    prediction: np.ndarray,
    family: Family,
    settings: BackgroundSettings,
    output: OutputSpec,
    png_compress_level: int,
) -> tuple[pipeline.Rendered, dict[str, str]]:
    """The result file, and the field carrying it inline unless it goes by URL: one trip to the
    CPU pool for both."""
    rendered = pipeline.render(decoded, prediction, family, settings, output, png_compress_level)
    if output.type == "URL":
        return rendered, {}
    fields = payload_fields(rendered.encoded, EXTENSIONS[output.format], output.type)
    return rendered, fields


def _prepare(
    data: bytes,
    family: Family,
    max_pixels: int,
    parameter: str,
    limit_name: str,
    output_format: str,
    max_seconds: float,
) -> tuple[pipeline.DecodedImage, ModelInput]:
    decoded = pipeline.decode_image(data, max_pixels, parameter, limit_name, max_seconds)
    check_encodable(decoded.size, output_format)  # before the model and the render run
    return decoded, pipeline.preprocess(decoded, family)


def with_server_defaults(settings: BackgroundSettings, config: Config) -> BackgroundSettings:
    """A task's settings, with the server's default where the task did not say."""
    if settings.decontaminate is not None:
        return settings
    return msgspec.structs.replace(settings, decontaminate=config.decontaminate)
