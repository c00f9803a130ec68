"""What a model runtime is given: each image's resized R, G and B as bytes, and the table that
turns each byte into the model's float. The runtime's graph looks the bytes up where the model
runs (``runtime.with_normaliser``): on a GPU a quarter of the bytes cross the host link, and
no pass over the image writes floats on the CPU. The lookup is exact, so the floats the model
sees are the ones rembg's ``normalize`` computes.

Plain data, no runtime: the pipeline makes these without loading a model runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ModelInput", "ModelBatch", "LOOKUP_SHAPE"]

LOOKUP_SHAPE = (3, 256)  # [band, byte]


def _looked_up(bands: np.ndarray, lookups: np.ndarray) -> np.ndarray:
    """float32[..., 3, H, W] of uint8 ``bands``, each band's bytes looked up in its row of
    ``lookups`` (float32[..., 3, 256]): what the graph's normaliser computes."""
    flat = bands.reshape(*bands.shape[:-2], -1).astype(np.intp)
    return np.take_along_axis(lookups, flat, axis=-1).reshape(bands.shape)


@dataclass(frozen=True)
class ModelInput:
    """One image for the model: ``bands`` uint8[3, S, S], ``lookup`` float32[3, 256]."""

    bands: np.ndarray
    lookup: np.ndarray

    def floats(self) -> np.ndarray:
        """float32[3, S, S]: the model input itself, as rembg makes it."""
        return _looked_up(self.bands, self.lookup)


@dataclass(frozen=True)
class ModelBatch:
    """N images for one call: ``bands`` uint8[N, 3, S, S], ``lookups`` float32[N, 3, 256]."""

    bands: np.ndarray
    lookups: np.ndarray

    @classmethod
    def of(cls, inputs: Sequence[ModelInput]) -> ModelBatch:
        """The inputs stacked; a batch of one is a view of its image, not a copy."""
        if len(inputs) == 1:
            return cls(inputs[0].bands[np.newaxis], inputs[0].lookup[np.newaxis])
        return cls(
            np.stack([each.bands for each in inputs]), np.stack([each.lookup for each in inputs])
        )

    @classmethod
    def zeros(cls, images: int, size: tuple[int, int]) -> ModelBatch:
        return cls(
            np.zeros((images, 3, *size), np.uint8), np.zeros((images, *LOOKUP_SHAPE), np.float32)
        )

    def __len__(self) -> int:
        return len(self.bands)

    def rows(self, start: int, stop: int) -> ModelBatch:
        """Images ``start`` to ``stop`` of the batch: views, not copies."""
        return ModelBatch(self.bands[start:stop], self.lookups[start:stop])

    @property
    def nbytes(self) -> int:
        """What crosses to the device."""
        return self.bands.nbytes + self.lookups.nbytes

    def floats(self) -> np.ndarray:
        """float32[N, 3, S, S]: what the runtime's normaliser gives the model."""
        return _looked_up(self.bands, self.lookups)
