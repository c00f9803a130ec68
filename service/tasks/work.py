"""Work tasks run in this process: the ``WorkExecutor`` of the single-process mode, and of a
gateway for what it runs itself (image uploads)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.messages import ImageUpload, RemoveBackground

from .ports import Requester, WorkResult, WorkTask

if TYPE_CHECKING:  # the pipeline (numba, Pillow) loads where a processor is built
    from .processor import Processor

__all__ = ["LocalWork"]


class LocalWork:
    def __init__(self, processor: Processor) -> None:
        self._processor = processor

    def check_destinations(self, task: RemoveBackground) -> None:
        self._processor.check_destinations(task)

    async def execute(self, task: WorkTask, requester: Requester) -> WorkResult:
        async with requester.pipeline_slots:
            if isinstance(task, ImageUpload):
                return await self._processor.upload(task, requester.scope, requester.lane)
            return await self._processor.remove_background(task, requester.scope, requester.lane)
