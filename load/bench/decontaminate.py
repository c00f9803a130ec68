"""Decontamination: the time it adds to one removal of animal-3 on rembg's remove() and on a
task through the service (each the fastest of RUNS, plain and decontaminated), and how far the
two decontaminated files are apart."""

from __future__ import annotations

import asyncio
import io

import numpy as np

from .experiment import Options
from .processes import BENCH_DIR, service_process
from .rembg import rembg_timed
from .removal import fastest_removals, timed_removal

IMAGE = "animal-3.jpg"
RUNS = 7  # a difference of two times is noisier than a time: more runs, the fastest counts


def run(options: Options) -> dict:
    from PIL import Image

    images_dir = options.image.parent
    out_dir = BENCH_DIR / "decontaminate"
    option_sets = [{}, {"decontaminate": True}]
    rembg_plain, rembg_cleaned = rembg_timed(out_dir, images_dir, option_sets, [IMAGE], RUNS)[IMAGE]
    image = (images_dir / IMAGE).read_bytes()
    port, server = service_process()
    with server:
        asyncio.run(timed_removal(port, image, {}))  # not a first call on either side
        setting_sets = [{}, {"decontaminate": True}]
        (service_plain, _), (service_cleaned, png) = fastest_removals(
            port, image, setting_sets, RUNS
        )
    ours = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")).astype(int)
    theirs = np.asarray(Image.open(out_dir / f"{IMAGE}.1.png").convert("RGBA")).astype(int)
    visible = theirs[..., 3] > 0
    rembg_added, service_added = rembg_cleaned - rembg_plain, service_cleaned - service_plain
    return {
        "image": IMAGE,
        "size": "x".join(map(str, theirs.shape[1::-1])),
        "rembg_plain_s": round(rembg_plain, 3),
        "rembg_decontaminated_s": round(rembg_cleaned, 3),
        "service_plain_s": round(service_plain, 3),
        "service_decontaminated_s": round(service_cleaned, 3),
        "ratio": round(service_added / rembg_added, 3),
        "rgb_mean_diff_255": round(float(np.abs(ours - theirs)[visible][:, :3].mean()), 4),
        "alpha_mean_diff_255": round(float(np.abs(ours - theirs)[..., 3].mean()), 4),
    }


def lines(d: dict) -> list[str]:
    rembg_added = d["rembg_decontaminated_s"] - d["rembg_plain_s"]
    service_added = d["service_decontaminated_s"] - d["service_plain_s"]
    return [
        f"decontaminate: the time it adds to one removal of {d['image']} ({d['size']}), "
        f"fastest of {RUNS}",
        f"  rembg remove()   plain {d['rembg_plain_s']:6.3f} s  decontaminate "
        f"{d['rembg_decontaminated_s']:6.3f} s  added {rembg_added:+.3f} s",
        f"  service task     plain {d['service_plain_s']:6.3f} s  decontaminate "
        f"{d['service_decontaminated_s']:6.3f} s  added {service_added:+.3f} s",
        f"  ratio {d['ratio']:.3f}  RGB diff on visible pixels "
        f"{d['rgb_mean_diff_255']:.3f}/255  alpha diff {d['alpha_mean_diff_255']:.3f}/255",
    ]
