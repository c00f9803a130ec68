"""Preprocessing families: how a model's input is made from an image, and its output read.

A family is data: the square input size, how pixels are scaled to [0, 1] (by the image's own
maximum, as rembg's ``normalize`` does, or by 255), the per-channel mean and std subtracted and
divided after that, and whether the first output holds logits that take a sigmoid before the
per-image min-max. Each reproduces the session of rembg 2.0.86 that runs such files:

- ``u2net``: 320, max, ImageNet mean/std (u2net, u2netp, u2net_human_seg, silueta);
- ``isnet``: 1024, /255, mean 0.5, std 1.0 (BRIA's RMBG-1.4 recipe, ``runware:109@1``);
- ``isnet-general``: 1024, max, mean 0.5, std 1.0 (rembg's isnet-general-use);
- ``birefnet``: 1024, max, ImageNet mean/std, sigmoid (rembg's birefnet-* sessions);
- ``bria-rmbg2``: 1024, max, ImageNet mean/std, no sigmoid (rembg's bria-rmbg, RMBG-2.0).

Plain data, no runtime: the pipeline and the flags read it without loading a model runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Family", "FAMILIES", "FAMILY_BY_SIZE"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Family:
    name: str
    size: int
    divide_by_max: bool  # True: pixels / image max (rembg); False: pixels / 255
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sigmoid: bool = False  # the output is logits: sigmoid before the min-max


FAMILIES = {
    family.name: family
    for family in (
        Family("u2net", 320, True, _IMAGENET_MEAN, _IMAGENET_STD),
        Family("isnet", 1024, False, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
        Family("isnet-general", 1024, True, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
        Family("birefnet", 1024, True, _IMAGENET_MEAN, _IMAGENET_STD, sigmoid=True),
        Family("bria-rmbg2", 1024, True, _IMAGENET_MEAN, _IMAGENET_STD),
    )
}
# A file's family told from its input size alone: 1024 is RMBG-1.4, the default model's.
# Other 1024 families are named by the operator (--model ID=PATH:FAMILY).
FAMILY_BY_SIZE = {320: FAMILIES["u2net"], 1024: FAMILIES["isnet"]}
