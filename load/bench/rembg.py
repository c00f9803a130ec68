"""rembg itself, for comparison: rembg 2.0.86 from PyPI in a throw-away venv under .bench/ (never
a dependency of the project), given the same u2netp file through U2NET_HOME."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .processes import BENCH_DIR, MODEL

REMBG_VERSION = "2.0.86"
FASTEST_OF = 3  # runs per image and side; the fastest counts (noise only adds time)

# Runs inside rembg's venv: rembg's own remove(**options) for each set of options, the sets
# taking turns (so that they meet the same noise), timed, the last output of each kept.
# argv: output folder, warm-up image, runs, a JSON list of remove()'s options, image names.
# Prints {name: [fastest seconds per set of options]}; set k's output is NAME.k.png.
_REMBG_TIMED = """
import json, sys, time
from pathlib import Path
from rembg import new_session, remove
session = new_session("u2netp")
remove(Path(sys.argv[2]).read_bytes(), session=session)  # load the model
option_sets = json.loads(sys.argv[4])
times = {}
for name in sys.argv[5:]:
    data = Path(sys.argv[2]).parent.joinpath(name).read_bytes()
    fastest = [float("inf")] * len(option_sets)
    for _ in range(int(sys.argv[3])):
        for k, options in enumerate(option_sets):
            start = time.perf_counter()
            out = remove(data, session=session, **options)
            fastest[k] = min(fastest[k], time.perf_counter() - start)
            Path(sys.argv[1]).joinpath(f"{name}.{k}.png").write_bytes(out)
    times[name] = fastest
print(json.dumps(times))
"""


def rembg_python() -> Path:
    """The throw-away venv's Python, rembg[cpu,cli] installed in it (once)."""
    venv = BENCH_DIR / f"rembg-{REMBG_VERSION}-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        print(f"installing rembg[cpu,cli]=={REMBG_VERSION} into {venv} (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"rembg[cpu,cli]=={REMBG_VERSION}"],
            check=True,
        )
        stamp.touch()
    return python


def u2net_home() -> Path:
    """The U2NET_HOME that gives rembg the project's own u2netp file."""
    home = BENCH_DIR / "u2net-home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODEL, home / "u2netp.onnx")
    return home


def rembg_timed(
    out_dir: Path,
    images_dir: Path,
    option_sets: list[dict],
    names: list[str],
    runs: int = FASTEST_OF,
) -> dict[str, list[float]]:
    """rembg's remove(**options) per image and set of options in its venv, the fastest of
    ``runs``, set k's output kept as out_dir/NAME.k.png; the first image is removed once
    before, untimed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    finished = subprocess.run(
        [
            str(rembg_python()),
            "-c",
            _REMBG_TIMED,
            str(out_dir),
            str(images_dir / names[0]),
            str(runs),
            json.dumps(option_sets),
            *names,
        ],
        env={**os.environ, "U2NET_HOME": str(u2net_home())},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(finished.stdout.strip().splitlines()[-1])
