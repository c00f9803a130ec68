"""The in-memory ModelCatalog: the models this process loaded."""

from __future__ import annotations

from collections.abc import Sequence

from protocol.messages import ModelInfo

__all__ = ["LocalModelCatalog"]


class LocalModelCatalog:
    def __init__(self, models: Sequence[ModelInfo]) -> None:
        self._models = sorted(models, key=lambda info: info.model)

    async def models(self) -> list[ModelInfo]:
        return list(self._models)
