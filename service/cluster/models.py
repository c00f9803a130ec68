"""The Redis ModelCatalog: each worker publishes the models it serves under a key that
expires unless renewed, so a gateway lists what the live workers serve.

Keys: ``{prefix}:models:{worker}`` -> a JSON array of ModelInfo, renewed every
``interval`` seconds, expiring after three intervals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import msgspec

from protocol.messages import ModelInfo

from .reachability import REDIS_DOWN

__all__ = ["RedisModelCatalog"]

log = logging.getLogger(__name__)

_DECODER = msgspec.json.Decoder(list[ModelInfo])


class RedisModelCatalog:
    def __init__(self, redis: Any, prefix: str = "rbg", interval: float = 10.0) -> None:
        self._redis = redis
        self._pattern = f"{prefix}:models:*"
        self._prefix = f"{prefix}:models:"
        self._interval = interval

    async def publish(self, worker: str, models: Sequence[ModelInfo]) -> None:
        """Say once that ``worker`` serves ``models``, for three intervals."""
        await self._redis.set(
            self._prefix + worker,
            msgspec.json.encode(list(models)),
            px=int(3 * self._interval * 1000),
        )

    async def keep_published(self, worker: str, models: Sequence[ModelInfo]) -> None:
        """Publish now and every interval, forever; a Redis outage is logged once and waited
        out."""
        failing = False
        while True:
            try:
                await self.publish(worker, models)
                failing = False
            except REDIS_DOWN as error:  # the next round tries again
                if not failing:
                    log.warning("publishing the models of %s failed: %s", worker, error)
                failing = True
            await asyncio.sleep(self._interval)

    async def withdraw(self, worker: str) -> None:
        """A worker stopping: its models leave the catalog at once."""
        await self._redis.delete(self._prefix + worker)

    async def models(self) -> list[ModelInfo]:
        """The union over live workers; where workers disagree about an id (one on a GPU, one
        on a CPU), each distinct description is listed."""
        keys = [key async for key in self._redis.scan_iter(match=self._pattern, count=100)]
        published = await self._redis.mget(keys) if keys else []
        seen: set[ModelInfo] = set()
        for value in published:
            if value is not None:  # expired between the scan and the read
                seen.update(_DECODER.decode(value))
        return sorted(seen, key=lambda info: (info.model, info.provider, info.fileName))
