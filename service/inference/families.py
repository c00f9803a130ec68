"""Preprocessing families: how a model's input is made from an image.

- ``u2net``: 320x320, pixels divided by the image's max, ImageNet mean/std (rembg's recipe);
- ``isnet``: 1024x1024, pixels/255, mean 0.5, std 1.0 (the RMBG-1.4 recipe).

Plain data, no runtime: the pipeline and the flags read it without loading a model runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Family", "FAMILIES", "FAMILY_BY_SIZE"]


@dataclass(frozen=True)
class Family:
    name: str
    size: int
    divide_by_max: bool  # True: pixels / image max (rembg); False: pixels / 255
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


FAMILIES = {
    "u2net": Family("u2net", 320, True, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "isnet": Family("isnet", 1024, False, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
}
FAMILY_BY_SIZE = {family.size: family for family in FAMILIES.values()}
