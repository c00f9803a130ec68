"""The model registry: which model id is served by which ONNX file, with which preprocessing.

Each model id has a preprocessing family (``service.inference.families``), given by the
operator or told from the model's input size.

Ids: every ``<name>.onnx`` in the models dir (the embedded ``u2netp``), every ``--model ID=PATH``,
and ``runware:109@1`` (RemBG 1.4), which falls back to the embedded model when the operator gave
no RMBG-1.4 file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from protocol.messages import DEFAULT_MODEL, ModelInfo

from ..config import Config, ModelOverride
from .errors import ModelLoadError
from .families import FAMILIES, FAMILY_BY_SIZE, Family
from .simulated import SimulatedDevice, parse_simulated_device

if TYPE_CHECKING:  # onnx and onnxruntime load with the first model, not with this module
    from .runtime import Runtime

__all__ = [
    "LoadedModel",
    "ModelRegistry",
    "ModelLoadError",
    "load_registry",
    "EMBEDDED_ID",
    "STAND_IN_WARNING",
    "parse_model_spec",
]

log = logging.getLogger(__name__)

EMBEDDED_ID = "u2netp"
STAND_IN_WARNING = (
    f"no RMBG-1.4 file given: {DEFAULT_MODEL} is served by the embedded {EMBEDDED_ID} model "
    f"(pass --model {DEFAULT_MODEL}=/path/to/rmbg-1.4.onnx for the real one)"
)


@dataclass(frozen=True)
class LoadedModel:
    id: str
    runtime: Runtime
    family: Family
    stand_in: bool = False  # the embedded model, serving an id whose file was not given

    def info(self) -> ModelInfo:
        return ModelInfo(
            model=self.id,
            family=self.family.name,
            fileName=self.runtime.path.name,
            inputSize=self.family.size,
            provider=self.runtime.provider,
            standIn=self.stand_in,
        )


class ModelRegistry:
    def __init__(self, models: dict[str, LoadedModel]) -> None:
        self._models = models

    def get(self, model_id: str) -> LoadedModel | None:
        return self._models.get(model_id)

    def ids(self) -> list[str]:
        return sorted(self._models)

    def catalog(self) -> list[ModelInfo]:
        """Every model id with its family, file and provider, by id."""
        return [self._models[model_id].info() for model_id in self.ids()]

    def __iter__(self):
        return iter(self._models.values())


def parse_model_spec(spec: str) -> ModelOverride:
    """``ID=PATH`` or ``ID=PATH:FAMILY`` (FAMILY a name of inference/families.py), as
    ``--model`` takes it; ValueError for anything else."""
    model_id, equals, rest = spec.partition("=")
    if not equals or not model_id or not rest:
        raise ValueError(f"expected ID=PATH[:FAMILY], got {spec!r}")
    path, colon, family = rest.rpartition(":")
    if colon and family in FAMILIES:
        return ModelOverride(model_id, Path(path), family)
    return ModelOverride(model_id, Path(rest))


def _family(runtime: Runtime, requested: str | None, model_id: str) -> Family:
    if requested is not None:
        if requested not in FAMILIES:
            raise ModelLoadError(
                f"model {model_id}: unknown family {requested!r} (known: {', '.join(FAMILIES)})"
            )
        return FAMILIES[requested]
    size = runtime.input_size
    if size is None or size[0] != size[1] or size[0] not in FAMILY_BY_SIZE:
        raise ModelLoadError(
            f"model {model_id}: cannot tell its family from input size {size}; "
            f"give it as --model {model_id}=PATH:FAMILY ({', '.join(FAMILIES)})"
        )
    return FAMILY_BY_SIZE[size[0]]


def load_registry(config: Config) -> ModelRegistry:
    """Load every configured model into a runtime (one session per distinct file)."""
    from .cuda import CudaOptions
    from .runtime import load_runtime, select_runtime

    options = CudaOptions(allow_tf32=config.allow_tf32)
    kind = select_runtime(config.runtime, config.precision, options)
    specs: dict[str, tuple[Path, str | None]] = {}
    if config.models_dir.is_dir():
        for path in sorted(config.models_dir.glob("*.onnx")):
            specs[path.stem] = (path, None)
    for override in config.models:
        specs[override.id] = (override.path, override.family)
    stand_ins: set[str] = set()
    if DEFAULT_MODEL not in specs:
        if EMBEDDED_ID not in specs:
            raise ModelLoadError(
                f"no model file for {DEFAULT_MODEL} and no embedded "
                f"{config.models_dir / (EMBEDDED_ID + '.onnx')}: run `make install`"
            )
        log.warning(STAND_IN_WARNING)
        specs[DEFAULT_MODEL] = specs[EMBEDDED_ID]
        stand_ins = {DEFAULT_MODEL}

    runtimes: dict[Path, Runtime] = {}
    models: dict[str, LoadedModel] = {}
    for model_id, (path, family_name) in specs.items():
        resolved = path.resolve()
        if not resolved.is_file():
            raise ModelLoadError(f"model {model_id}: no file at {path}")
        if resolved not in runtimes:
            runtimes[resolved] = load_runtime(
                resolved,
                kind,
                threads=config.inference_threads,
                options=options,
                precision=config.precision,
                max_batch=config.max_batch,
                staging_buffers=config.batches_in_flight_on(accelerator=True),
            )
            if config.simulated_device:  # a benchmarking tool (inference/simulated.py)
                latency, lock_file = parse_simulated_device(config.simulated_device)
                runtimes[resolved] = SimulatedDevice(runtimes[resolved], latency, lock_file)
        runtime = runtimes[resolved]
        family = _family(runtime, family_name, model_id)
        models[model_id] = LoadedModel(model_id, runtime, family, model_id in stand_ins)
        log.info(
            "model %s: file=%s family=%s provider=%s",
            model_id,
            resolved,
            family.name,
            runtime.provider,
        )
    return ModelRegistry(models)
