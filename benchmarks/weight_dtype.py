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
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cpu_dtype import machine, sd15_checkpoint  # sibling scripts: benchmarks/ is on sys.path
from full_size import NEGATIVE, PROMPT, RECIPE

ROOT = Path(__file__).resolve().parent.parent
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
            command = _command(work, Path(folder), args.checkpoint)
            print(f"{work}: {args.rounds} rounds, --weight-dtype run and file alternating", flush=True)
            runs: dict[str, list[dict]] = {side: [] for side in SIDES}
            images: dict[str, list[Path]] = {}
            for round_ in range(args.rounds):
                for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
                    out = Path(folder) / f"{work}-{side}-{round_}"
                    run = _run(command(out) + ["--weight-dtype", side])
                    runs[side].append(run)
                    images.setdefault(side, sorted(out.glob("*.png")))
                    print(f"  round {round_ + 1} {side}: " + ", ".join(f"{k} {v:g}" for k, v in run.items()),
                          flush=True)
            report[work] = {side: {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0]}
                            for side, rows in runs.items()}
            report[work]["same_pixels"] = _same(images["run"], images["file"])
    report["load_after"] = os.getloadavg()
    _print_table(report)
    return report


def _command(work: str, folder: Path, checkpoint: Path | None):
    recipe, extra = ROOT / "examples" / "txt2img.sdflow", []
    if work == "recipe":
        recipe = folder / "full_size.sdflow"
        recipe.write_text(RECIPE.format(prompt=PROMPT, negative=NEGATIVE), encoding="utf-8")
        extra = ["--set", f"checkpoint={checkpoint or sd15_checkpoint()}", "--set", "size=256", "--set", "steps=4",
                 "--sweep", "seed=1,2"]
    return lambda out: [sys.executable, "-m", "sdflow.cli", "run", str(recipe), "--device", "cpu", "--json",
                        "--profile", "--output", str(out), *extra]


def _run(command: list[str]) -> dict:
    """One process: its seconds, each stage's, its peak RSS."""
    start = time.perf_counter()
    child = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{child.stderr[-3000:]}")
    events = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
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


def _print_table(report: dict) -> None:
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores; torch {m['torch']} ({m['torch_threads']} threads), Python "
          f"{m['python']}; load average {report['load_before'][0]:.1f} before, {report['load_after'][0]:.1f} after")
    print(f"{'work':<7} {'figure':<12} {'run':>10} {'file':>10} {'file/run':>9}")
    for work in WORKS:
        if work not in report:
            continue
        wide, narrow = report[work]["run"], report[work]["file"]
        for key in wide:
            ratio = f"x{narrow[key] / wide[key]:.2f}" if wide[key] else "-"
            print(f"{work:<7} {key:<12} {wide[key]:>10g} {narrow[key]:>10g} {ratio:>9}")
        print(f"{work:<7} same pixels: {report[work]['same_pixels']}")


if __name__ == "__main__":
    main()
