"""Why the models could not be loaded: each message is one line that names the fix, printed by
``python -m service`` instead of a traceback."""

from __future__ import annotations

__all__ = ["ModelLoadError", "CudaUnusable"]


class ModelLoadError(RuntimeError):
    """A model file, family or runtime that cannot serve; the start stops."""


class CudaUnusable(ModelLoadError):
    """A GPU host whose CUDA provider cannot run: serving from the CPU instead would be silent
    and many times slower, so the start stops unless the operator chose the CPU."""
