"""glibc's malloc as sdflow sets it for CPU runs, against glibc's defaults.

Run by hand; it prints one table and asserts nothing.  sdflow keeps the
memory torch frees on the CPU for the next tensor
(``run_options.keep_freed_memory``: no ``mmap`` per block, 1 GiB kept at
the heap's top); a user's own malloc setting switches that off, and this
script sets one that changes nothing, ``GLIBC_TUNABLES=glibc.malloc.perturb=0``,
for the "glibc" side.  Each round runs both sides as fresh processes, the side that
goes first alternating:

* ``unet``: SD 1.5's U-Net (the shipped config, seeded random weights), six
  forward passes of a batch of 2 at 32x32 latents (a 256x256 image with
  cfg); the median of the last five, and the page faults per pass;
* ``recipe``: benchmarks/full_size.py's recipe (ComfyUI's default workflow,
  256x256, 4 steps) on the full-size SD 1.5 fp16 file it keeps (or
  ``--checkpoint``): the process's seconds, the sample and decode stages'
  seconds, page faults and peak RSS;
* ``tiny``: the default recipe on sdflow-tiny, the same figures.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cpu_allocator.py [--rounds 3] [--only unet recipe tiny]

Figures: benchmarks/README.md ("The CPU's allocator").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from cpu_dtype import machine, sd15_checkpoint  # sibling scripts: benchmarks/ is on sys.path
from full_size import NEGATIVE, PROMPT, RECIPE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# A malloc tunable that changes nothing (glibc's default) but makes sdflow leave malloc alone; a MALLOC_*
# variable would not do: setting the mmap limit or threshold also stops glibc moving its threshold
SIDES = {"glibc": {"GLIBC_TUNABLES": "glibc.malloc.perturb=0"}, "sdflow": {}}
WORKS = ("unet", "recipe", "tiny")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=WORKS, default=list(WORKS))
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an SD 1.5 single file for 'recipe' (default: full_size.py's, written if missing)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _unet_worker(int(args.worker[1]))
    report: dict = {"machine": machine(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as folder:
        for work in args.only:
            command = _command(work, Path(folder), args.checkpoint)
            print(f"{work}: {args.rounds} rounds, glibc's defaults and sdflow's alternating", flush=True)
            report[work] = alternate(list(SIDES), args.rounds, lambda side, round_: _run(
                command(Path(folder) / f"{work}-{side}-{round_}"), SIDES[side]))
    report["load_after"] = os.getloadavg()
    print_pairs(report, WORKS, "glibc", "sdflow")
    return report


def alternate(sides: list[str], rounds: int, measure: Callable[[str, int], dict]) -> dict[str, dict]:
    """``measure(side, round)`` of each side in each round, the side that
    goes first alternating, each run printed; per side, the median of each figure."""
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(rounds):
        for side in sides if round_ % 2 == 0 else sides[::-1]:
            run = measure(side, round_)
            runs[side].append(run)
            print(f"  round {round_ + 1} {side}: " + ", ".join(f"{k} {v:g}" for k, v in run.items()), flush=True)
    return {side: {key: round(statistics.median(r[key] for r in rows), 3) for key in rows[0]}
            for side, rows in runs.items()}


def _command(work: str, folder: Path, checkpoint: Path | None):
    if work == "unet":
        return lambda out: [sys.executable, __file__, "--worker", "unet", "32"]
    return recipe_command(work, folder, checkpoint)


def recipe_command(work: str, folder: Path, checkpoint: Path | None, *extra: str):
    """``out -> argv`` of ``sdflow run --device cpu --json --profile`` for
    ``work``: "recipe" (full_size.py's recipe at 256x256, 4 steps, on an
    SD 1.5 file) or "tiny" (the default recipe); ``extra`` arguments appended."""
    recipe = ROOT / "examples" / "txt2img.sdflow"
    if work == "recipe":
        recipe = folder / "full_size.sdflow"
        recipe.write_text(RECIPE.format(prompt=PROMPT, negative=NEGATIVE), encoding="utf-8")
        extra = ("--set", f"checkpoint={checkpoint or sd15_checkpoint()}", "--set", "size=256", "--set", "steps=4",
                 *extra)
    return lambda out: [sys.executable, "-m", "sdflow.cli", "run", str(recipe), "--device", "cpu", "--json",
                        "--profile", "--output", str(out), *extra]


def _run(command: list[str], env: dict[str, str]) -> dict:
    """One process: its seconds, its page faults, its peak RSS, and what it reports."""
    faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
    seconds, events = run_process(command, env)
    result = {"process_s": round(seconds, 2),
              "faults": resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - faults}  # children run one at a time
    stages = {e["type"]: e for e in events if e.get("event") == "stage_done"}
    for name, key in (("sample", "sample_s"), ("vae_decode", "decode_s")):
        if name in stages:
            result[key] = round(stages[name]["seconds"], 3)
    if stages:
        result["peak_mib"] = max((e.get("peak_rss_mib") or 0) for e in stages.values())
    for event in events:
        if event.get("event") == "unet":
            result.update({k: v for k, v in event.items() if k != "event"})
    return result


def run_process(command: list[str], env: dict[str, str] | None = None) -> tuple[float, list[dict]]:
    """``command`` as a fresh process, offline, with ``env`` over the
    environment less any malloc setting of the caller's: its seconds and
    the JSON events it printed (exits with its stderr if it fails)."""
    base = {key: value for key, value in os.environ.items()
            if not key.startswith("MALLOC_") and key != "GLIBC_TUNABLES"}
    start = time.perf_counter()
    child = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                           env={**base, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})})
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{child.stderr[-3000:]}")
    return seconds, [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]


def _unet_worker(latent: int) -> dict:
    import diffusers
    import torch

    from sdflow_diffusion.models.families import family_dir
    from sdflow_diffusion.models.files import read_json
    from sdflow_diffusion.models.run_options import keep_freed_memory

    keep_freed_memory()  # does nothing on the "glibc" side: its MALLOC_ variable wins
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_config(read_json(family_dir("sd15") / "unet" / "config.json")).eval()
    x, context = torch.randn(2, 4, latent, latent), torch.randn(2, 77, 768)
    times = []
    with torch.no_grad():
        unet(x, 500, context)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            start = time.perf_counter()
            unet(x, 500, context)
            times.append(time.perf_counter() - start)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {"event": "unet", "step_s": round(statistics.median(times), 3),
              "faults_per_step": (usage.ru_minflt - faults) // len(times), "peak_mib": round(usage.ru_maxrss / 1024)}
    print(json.dumps(report))
    return report


def print_pairs(report: dict, works: tuple[str, ...], base: str, other: str) -> None:
    """The machine, then each work's medians of ``base`` and ``other`` side
    by side with their ratio, then any other entry of the work's report."""
    m = report["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores; torch {m['torch']} ({m['torch_threads']} threads), Python "
          f"{m['python']}; load average {report['load_before'][0]:.1f} before, {report['load_after'][0]:.1f} after")
    ratio_name = f"{other}/{base}"
    print(f"{'work':<7} {'figure':<16} {base:>10} {other:>10} {ratio_name:>13}")
    for work in works:
        if work not in report:
            continue
        first, second = report[work][base], report[work][other]
        for key in first:
            ratio = f"x{second[key] / first[key]:.2f}" if first[key] else "-"
            print(f"{work:<7} {key:<16} {first[key]:>10g} {second[key]:>10g} {ratio:>13}")
        for key, value in report[work].items():
            if key not in (base, other):
                print(f"{work:<7} {key}: {value}")


if __name__ == "__main__":
    main()
