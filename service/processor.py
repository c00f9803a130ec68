"""Runs one typed work task to its typed result, whatever transport it came by.

The steps of a removal, each where it belongs: resolve the input (I/O, event loop) -> decode and
preprocess (worker thread) -> the model (micro-batcher) -> mask, cutout, background, encode
(worker thread) -> store -> result. Failures are raised as TaskFailure.
"""

from __future__ import annotations

from typing import Hashable

import msgspec

from protocol.errors import Code, TaskFailure
from protocol.messages import (
    BackgroundRemovalResult, ImageUpload, ImageUploadResult, RemoveBackground,
)

from . import pipeline
from .batcher import MicroBatcher
from .config import Config
from .delivery import put_to_upload_endpoint
from .fairness import FairExecutor
from .inputs import InputResolver
from .outbound import OutboundHttp
from .models import LoadedModel, ModelRegistry
from .storage import ImageStorage, StoredImage

__all__ = ["Processor"]


class Processor:
    def __init__(self, config: Config, registry: ModelRegistry, batchers: dict[str, MicroBatcher],
                 store: ImageStorage, inputs: InputResolver, http: OutboundHttp, cpu: FairExecutor) -> None:
        self._config = config
        self._http = http
        self._registry = registry
        self._batchers = batchers  # by model id
        self._store = store
        self._inputs = inputs
        self._cpu = cpu

    def image_url(self, stored: StoredImage) -> str:
        return self._store.url_for(stored, self._config.base_url())

    async def upload(self, task: ImageUpload, owner: Hashable = None) -> ImageUploadResult:
        resolved = await self._inputs.resolve(task.image, "image")
        # Refuse what could never be processed now, rather than at the first removal.
        await self._cpu.run(owner, pipeline.decode_image, resolved.data,
                            self._config.max_image_pixels, "image")
        return ImageUploadResult(taskType="imageUpload", taskUUID=task.task_uuid,
                                 imageUUID=resolved.stored.uuid,
                                 imageURL=self.image_url(resolved.stored))

    def _model(self, task: RemoveBackground) -> tuple[LoadedModel, MicroBatcher]:
        model = self._registry.get(task.model)
        if model is None:
            raise TaskFailure(Code.UNSUPPORTED_MODEL,
                              f"Unknown model {task.model!r}. Available: "
                              + ", ".join(self._registry.ids()) + ".",
                              parameter="model", type="string")
        return model, self._batchers[task.model]

    def check_destinations(self, task: RemoveBackground) -> None:
        """Refuse forbidden webhook/upload URLs before any work is done (or acknowledged)."""
        if task.webhook_url is not None:
            self._http.check_url(task.webhook_url, "webhookURL")
        if task.upload_endpoint is not None:
            self._http.check_url(task.upload_endpoint, "uploadEndpoint")

    async def store_input(self, task: RemoveBackground) -> RemoveBackground:
        """The distributed mode's gateway half: fetch or decode the input and store it, so that
        the job names it by imageUUID (workers read it from the shared storage)."""
        self.check_destinations(task)
        resolved = await self._inputs.resolve(task.image, task.image_parameter)
        return msgspec.structs.replace(task, image=resolved.stored.uuid)

    async def remove_background(self, task: RemoveBackground, owner: Hashable = None) -> BackgroundRemovalResult:
        """``owner`` (the socket) is whom the CPU pool and the batcher take turns between."""
        model, batcher = self._model(task)
        self.check_destinations(task)
        resolved = await self._inputs.resolve(task.image, task.image_parameter)
        max_pixels, limit_name = self._config.max_image_pixels, "the limit"
        if task.settings.alpha_matting and self._config.max_matting_pixels < max_pixels:
            max_pixels, limit_name = self._config.max_matting_pixels, "the limit with alphaMatting"
        decoded, tensor = await self._cpu.run(owner, _prepare, resolved.data, model, max_pixels,
                                             task.image_parameter, limit_name)
        prediction = await batcher.submit(tensor, owner)
        encoded = await self._cpu.run(owner, pipeline.render, decoded, prediction, task.settings,
                                     task.output, self._config.png_compress_level)
        extension = pipeline.EXTENSIONS[task.output.format]
        if task.upload_endpoint is not None:
            await put_to_upload_endpoint(self._http, task.upload_endpoint, encoded,
                                         pipeline.CONTENT_TYPES[extension])
        stored = await self._store.put(encoded, extension, task.output.ttl)
        result = BackgroundRemovalResult(
            taskType="imageBackgroundRemoval", taskUUID=task.task_uuid, imageUUID=stored.uuid,
            inputImageUUID=resolved.stored.uuid,
            cost=self._config.price_per_image if task.include_cost else None,
        )
        if task.output.type == "URL":
            result.imageURL = self.image_url(stored)
            return result
        fields = await self._cpu.run(owner, pipeline.payload_fields, encoded, extension, task.output.type)
        return msgspec.structs.replace(result, **fields)


def _prepare(data: bytes, model: LoadedModel, max_pixels: int, parameter: str, limit_name: str):
    decoded = pipeline.decode_image(data, max_pixels, parameter, limit_name)
    return decoded, pipeline.preprocess(decoded, model.family)
