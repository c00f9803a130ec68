"""Why alpha matting gives up on an image: the caller answers with the decontaminated cutout
instead, as rembg does when pymatting raises."""

from __future__ import annotations

__all__ = ["UnsolvableTrimap"]


class UnsolvableTrimap(ValueError):
    """No alpha can be solved from this trimap: it has no sure foreground or no sure
    background, no 3x3 window fits the image, or its system cannot be factorised."""
