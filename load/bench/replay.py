"""The service around a model that costs nothing: the replay graph of ``load.standin`` served
on onnxruntime with one thread, and the loads the experiments send it."""

from __future__ import annotations

from pathlib import Path

from ..harness import LoadConfig
from ..standin import write_replay_model
from .processes import BENCH_DIR
from .raw import model_input, u2netp_core_ms


def replay_flags(replay: Path, family: str = "u2net") -> tuple[str, ...]:
    """Serve the replay graph on onnxruntime with one thread: like a GPU runtime's, its CPU side
    is a thin call (OpenVINO's CPU threads would spin between calls and bill the CPU work)."""
    return ("onnxruntime", "--inference-threads", "1", "--model", f"replay={replay}:{family}")


def replay_load(
    port: int,
    image: bytes,
    output_type: str,
    connections: int,
    tasks: int,
    window: int,
    model: str | None = "replay",
) -> LoadConfig:
    """A load of PNG removals on ``model`` (the replay model unless told; None: the server's
    default), answers neither checked nor fetched."""
    return LoadConfig(
        url=f"ws://127.0.0.1:{port}",
        images=(image,),
        connections=connections,
        tasks_per_connection=tasks,
        window=window,
        output_type=output_type,
        output_format="PNG",
        model=model,
        progress=False,
        verify_images=False,
        fetch_urls=False,
    )


def replay_model(image: Path, size: int = 320) -> tuple[float, Path]:
    """One-thread u2netp core-ms, and the replay graph answering ``image``'s real u2netp
    prediction at ``size`` x ``size`` (1024: resized as RMBG-1.4's output would lie)."""
    from scipy import ndimage

    core_ms, prediction = u2netp_core_ms(model_input(image.read_bytes()))
    if size != prediction.shape[-1]:
        prediction = ndimage.zoom(prediction, size / prediction.shape[-1], order=1)
    BENCH_DIR.mkdir(exist_ok=True)
    return core_ms, write_replay_model(BENCH_DIR / f"replay-{size}.onnx", prediction)
