"""--weight-dtype file against run: an fp16 file's weights kept fp16 in a CPU run, or widened to fp32.

Run by hand; it prints one table and asserts nothing but that both sides
draw the same pixels.  Each round runs both sides as fresh processes, the
side that goes first alternating, ``sdflow run --device cpu --json
--profile --weight-dtype file|run``:

* ``recipe``: benchmarks/full_size.py's recipe (ComfyUI's default workflow,
  256x256, 4 steps, two images in one process: ``--sweep seed=1,2``) on the
  full-size SD 1.5 fp16 file it keeps (or ``--checkpoint``);
* ``tiny``: the default recipe on sdflow-tiny (an fp16 file too).

For each: the process's seconds, ``load_checkpoint``'s, the first and the
second image's ``sample`` and ``vae_decode`` seconds, and the peak RSS.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/weight_dtype.py [--rounds 3] [--only recipe tiny]

Figures: benchmarks/README.md ("weight_dtype.py").
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from cpu_allocator import alternate, print_pairs, recipe_command, run_process  # sibling scripts: benchmarks/ is on sys.path
from cpu_dtype import machine

SIDES = ("run", "file")
WORKS = ("recipe", "tiny")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=WORKS, default=list(WORKS))
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an SD 1.5 fp16 single file for 'recipe' (default: full_size.py's, written if missing)")
    args = parser.parse_args(argv)
    report: dict = {"machine": machine(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as folder:
        for work in args.only:
            sweep = ("--sweep", "seed=1,2") if work == "recipe" else ()
            command = recipe_command(work, Path(folder), args.checkpoint, *sweep)
            print(f"{work}: {args.rounds} rounds, --weight-dtype run and file alternating", flush=True)
            outputs = Path(folder) / work
            report[work] = alternate(list(SIDES), args.rounds, lambda side, round_: _run(
                command(outputs / f"{side}-{round_}") + ["--weight-dtype", side]))
            report[work]["same pixels"] = _same(sorted(outputs.glob("run-0/*.png")),
                                                sorted(outputs.glob("file-0/*.png")))
    report["load_after"] = os.getloadavg()
    print_pairs(report, WORKS, "run", "file")
    return report


def _run(command: list[str]) -> dict:
    """One process: its seconds, each stage's, its peak RSS."""
    seconds, events = run_process(command)
    done = [e for e in events if e.get("event") == "stage_done" and not e.get("cached")]
    result = {"process_s": round(seconds, 2)}
    for name, key in (("load_checkpoint", "load"), ("sample", "sample"), ("vae_decode", "decode")):
        for number, event in enumerate(e for e in done if e["type"] == name):
            result[f"{key}{'' if number == 0 else number + 1}_s"] = round(event["seconds"], 3)
    result["peak_mib"] = max((e.get("peak_rss_mib") or 0) for e in done)
    return result


def _same(ours: list[Path], theirs: list[Path]) -> bool:
    def pixels(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image)

    return len(ours) == len(theirs) > 0 and all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(ours, theirs))


if __name__ == "__main__":
    main()
