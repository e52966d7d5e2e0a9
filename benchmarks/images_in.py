"""img2img, inpainting, outpainting and hires fix against txt2img: what do they cost?

Runs the example recipes that start from a picture (and hires fix, which
samples twice), on sdflow-tiny at its own size (64x64, 20 Euler steps,
cfg 3), beside the plain txt2img recipe, two ways:

(a) Whole process: `python -m sdflow.cli run RECIPE --output DIR` as a
    subprocess, a fresh output folder each run, after one untimed run of
    each (file cache).  Round r runs every recipe once, the order rotated by
    r, so that the machine's drift hits all alike.  Min, median and max wall
    time, and the ratio of medians to txt2img.
(b) In one process, one shared Executor (the checkpoint stays loaded; every
    other stage runs again each time): after one warm-up run of each, the
    median of the same rotated rounds, the sample stages' own seconds (from
    the run's JSON events), and the U-Net steps counted from its step events.

ComfyUI's denoise keeps the step count: `steps=20, denoise=0.6` runs the
last 20 steps of a 33-step schedule (`int(steps / denoise)`), so img2img
costs what txt2img does.  A1111's img2img runs `denoise x steps` (12); the
row "img2img steps=12" is that amount of work in sdflow.  Prints a table,
asserts nothing.

    .venv/bin/python benchmarks/images_in.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# label -> (recipe, --set overrides, the sample stages' (steps, latent side in pixels))
CASES = {
    "txt2img": ("txt2img", {}, [(20, 64)]),
    "img2img": ("img2img", {}, [(20, 64)]),  # denoise 0.6: 20 of a 33-step schedule
    "img2img steps=12": ("img2img", {"steps": "12"}, [(12, 64)]),  # 12 of 20: A1111's 0.6 x 20
    "inpaint": ("inpaint", {}, [(20, 64)]),
    "outpaint": ("outpaint", {}, [(20, 64)]),
    "hires_fix": ("hires_fix", {}, [(20, 64), (20, 128)]),  # then 20 of a 40-step schedule at 2x
}


def work(passes: list[tuple[int, int]]) -> float:
    """U-Net steps weighted by latent area, in 64x64 steps (attention grows faster than this)."""
    return sum(steps * (side / 64) ** 2 for steps, side in passes)


def rotated(labels: list[str], round_: int) -> list[str]:
    shift = round_ % len(labels)
    return labels[shift:] + labels[:shift]


def whole_process(label: str, out: Path, env: dict) -> float:
    """Wall seconds of one `sdflow run` of a case, into the fresh folder ``out``."""
    recipe, overrides, _ = CASES[label]
    command = [sys.executable, "-m", "sdflow.cli", "run", str(EXAMPLES / f"{recipe}.sdflow"), "--output", str(out)]
    for name, value in overrides.items():
        command += ["--set", f"{name}={value}"]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def in_process(rounds: int, tmp: Path) -> dict[str, dict[str, list[float]]]:
    """Per case: wall seconds, sample stages' seconds and counted steps of each warm run."""
    from sdflow.execute import Events, Executor
    from sdflow.registry import default_registry
    from sdflow.testing import run_recipe

    registry = default_registry()
    stream = io.StringIO()
    executor = Executor(events=Events(json_stream=stream))
    texts = {label: (EXAMPLES / f"{recipe}.sdflow").read_text() for label, (recipe, _, _) in CASES.items()}
    found = {label: {"wall": [], "sample": [], "steps": []} for label in CASES}
    runs = 0

    def once(label: str) -> tuple[float, float, int]:
        nonlocal runs
        runs += 1
        stream.seek(0)
        stream.truncate()
        start = time.perf_counter()
        run_recipe(texts[label], registry, tmp / f"in{runs}", overrides=CASES[label][1], executor=executor,
                   recipe_dir=EXAMPLES)
        wall = time.perf_counter() - start
        events = [json.loads(line) for line in stream.getvalue().splitlines()]
        sampled = sum(e["seconds"] for e in events if e["event"] == "stage_done" and e["type"] == "sample")
        steps = sum(1 for e in events if e["event"] == "step" and e["what"] == "steps")
        return wall, sampled, steps

    for label in CASES:  # warm-up: loads the checkpoint, fills torch's caches
        once(label)
    for round_ in range(rounds):
        for label in rotated(list(CASES), round_):
            for key, value in zip(("wall", "sample", "steps"), once(label)):
                found[label][key].append(value)
    return found


def report(process: dict[str, list[float]], warm: dict[str, dict[str, list[float]]], rounds: int) -> None:
    base_process = statistics.median(process["txt2img"])
    base_warm = statistics.median(warm["txt2img"]["wall"])
    base_sample = statistics.median(warm["txt2img"]["sample"])
    base_work = work(CASES["txt2img"][2])
    print(f"sdflow-tiny, 64x64, euler / normal, cfg 3; {rounds} rounds, recipes interleaved, order rotated")
    print(f"{'':<18}| {'whole process (a), s':^28} | {'warm, in one process (b)':^35} | {'U-Net steps':^21}")
    print(f"{'recipe':<18}| {'min':>6} {'median':>7} {'max':>6} {'ratio':>5} | "
          f"{'run s':>6} {'ratio':>5} {'sample s':>8} {'ratio':>5} {'ms/step':>7} | "
          f"{'counted':>7} {'64x64-eq':>8} {'ratio':>4}")
    for label, times in process.items():
        median = statistics.median(times)
        wall = statistics.median(warm[label]["wall"])
        sample = statistics.median(warm[label]["sample"])
        steps = statistics.median(warm[label]["steps"])
        equivalent = work(CASES[label][2])
        print(f"{label:<18}| {min(times):>6.2f} {median:>7.2f} {max(times):>6.2f} {median / base_process:>5.2f} | "
              f"{wall:>6.3f} {wall / base_warm:>5.2f} {sample:>8.3f} {sample / base_sample:>5.2f} "
              f"{1000 * sample / equivalent:>7.1f} | {steps:>7.0f} {equivalent:>8.0f} {equivalent / base_work:>4.1f}")
    print("ratio: to txt2img's median; ms/step: sample seconds per 64x64-equivalent step; "
          "64x64-eq: steps x latent area / 64x64")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    env = dict(os.environ)
    labels = list(CASES)
    process: dict[str, list[float]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = 0
        for label in labels:  # untimed: warm the file cache
            runs += 1
            whole_process(label, tmp / f"out{runs}", env)
        for round_ in range(args.rounds):
            for label in rotated(labels, round_):
                runs += 1
                process[label].append(whole_process(label, tmp / f"out{runs}", env))
        warm = in_process(args.rounds, tmp)
    report(process, warm, args.rounds)


if __name__ == "__main__":
    main()
