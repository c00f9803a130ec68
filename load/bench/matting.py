"""Alpha matting: one task through the service against rembg's remove(alpha_matting=True), per
fixture and for one fixture at twice its size, with the alpha difference between the outputs."""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path

import numpy as np

from .experiment import Options
from .processes import BENCH_DIR, service_process
from .rembg import FASTEST_OF, rembg_timed
from .removal import fastest_removals, timed_removal

IMAGES = ("animal-3.jpg", "cloth-1.jpg", "anime-girl-1.jpg", "car-1.jpg")
# One photo again at twice its size (LANCZOS, JPEG quality 92), for how both sides scale.
ENLARGED = ("animal-3.jpg", 2, "animal-3-x2.jpg")


def _inputs(images_dir: Path) -> tuple[Path, list[str]]:
    """The matting fixtures and the enlarged one, in one directory under .bench/, and their names."""
    from PIL import Image

    inputs = BENCH_DIR / "matting-inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    names = [n for n in IMAGES if (images_dir / n).exists()]
    for name in names:
        shutil.copyfile(images_dir / name, inputs / name)
    source, factor, enlarged = ENLARGED
    if source in names:
        with Image.open(images_dir / source) as opened:
            image = opened.convert("RGB")
            image.resize(
                (image.width * factor, image.height * factor), Image.Resampling.LANCZOS
            ).save(inputs / enlarged, quality=92)
        names.append(enlarged)
    return inputs, names


def run(options: Options) -> dict:
    """Per image: rembg's remove(alpha_matting=True) against a task through the service."""
    from PIL import Image

    images_dir, names = _inputs(options.image.parent)
    out_dir = BENCH_DIR / "matting"
    rembg_times = rembg_timed(out_dir, images_dir, [{"alpha_matting": True}], names)
    rows = []
    port, server = service_process()
    with server:
        # As on rembg's side: one plain removal first, so that neither side times a first call.
        asyncio.run(timed_removal(port, (images_dir / names[0]).read_bytes(), {}))
        for name in names:
            image = (images_dir / name).read_bytes()
            [(seconds, png)] = fastest_removals(port, image, [{"alphaMatting": True}])
            ours = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[..., 3].astype(int)
            theirs = np.asarray(Image.open(out_dir / f"{name}.0.png").convert("RGBA"))[..., 3]
            difference = np.abs(ours - theirs)
            rows.append(
                {
                    "image": name,
                    "size": "x".join(map(str, theirs.shape[::-1])),
                    "rembg_s": round(rembg_times[name][0], 3),
                    "service_s": round(seconds, 3),
                    "ratio": round(seconds / rembg_times[name][0], 3),
                    "alpha_mean_diff_255": round(float(difference.mean()), 4),
                    "alpha_max_diff_255": int(difference.max()),
                }
            )
    return {"rows": rows}


def lines(result: dict) -> list[str]:
    report = [
        "alpha matting: one task through the service vs rembg remove(alpha_matting=True), "
        f"fastest of {FASTEST_OF}"
    ]
    for row in result["rows"]:
        report.append(
            f"  {row['image']:16s} {row['size']:>9s}  rembg {row['rembg_s']:6.2f} s  "
            f"service {row['service_s']:6.2f} s  ratio {row['ratio']:.2f}  alpha diff mean "
            f"{row['alpha_mean_diff_255']:.3f}/255 max {row['alpha_max_diff_255']}/255"
        )
    return report
