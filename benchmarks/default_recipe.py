"""The default recipe, whole process, on the CPU: how long does a newcomer wait?

Runs `sdflow run examples/txt2img.sdflow` (sdflow-tiny, 64x64, 20 Euler
steps) as a fresh process N times, alternating with a bare
`python -c "import torch"` (every run a new interpreter: imports,
checkpoint load and detection included; the file system cache is warm after
the first), and prints min, median and max wall time of each and the ratio
of the medians (issue 12's target: at most 2x import torch).  Then, with
``-X importtime``, where the recipe's imports go: the modules that cost the
most by themselves and the packages that pull them in.

    .venv/bin/python benchmarks/default_recipe.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a run of the default recipe imports to build its models, in the order the stages ask.
IMPORTS = ("import torch; from transformers import CLIPTextModel; "
           "from diffusers import UNet2DConditionModel, AutoencoderKL")
# Packages whose whole import a run pays for, to report as a group.
GROUPS = ("torch._dynamo", "diffusers.models.transformers", "diffusers.loaders", "diffusers.hooks", "peft",
          "scipy", "transformers.models", "safetensors", "PIL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs: dict[str, list[float]] = {"sdflow run": [], "import torch": []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.runs):
            for name, command in (("sdflow run", ["-m", "sdflow.cli", "run", "examples/txt2img.sdflow",
                                                  "--output", out]),
                                  ("import torch", ["-c", "import torch"])):
                start = time.perf_counter()
                subprocess.run([sys.executable, *command], cwd=ROOT, env=env, check=True, capture_output=True)
                runs[name].append(time.perf_counter() - start)
    print(f"{args.runs} fresh processes each, alternating, on the CPU ({os.cpu_count()} cores):")
    for name, times in runs.items():
        print(f"  {name:<13} min {min(times):.2f} s, median {statistics.median(times):.2f} s, max {max(times):.2f} s")
    ratio = statistics.median(runs["sdflow run"]) / statistics.median(runs["import torch"])
    print(f"  ratio of medians: {ratio:.2f}x import torch (target: at most 2x -> {'met' if ratio <= 2 else 'NOT met'})")
    _import_profile(env)


def _import_profile(env: dict) -> None:
    """One ``-X importtime`` run of the model classes' imports: the biggest
    self times, and what the groups in GROUPS cost in all."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", IMPORTS], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        own, total, name = line[len("import time:"):].split("|")
        rows.append((int(own), int(total), name.rstrip(), name.strip()))
    whole = sum(own for own, *_ in rows) / 1e6
    print(f"\n{IMPORTS}\n  {whole:.2f} s of imports in one process; by group (self times summed):")
    for group in ("torch", *GROUPS):
        spent = sum(own for own, _t, _n, name in rows
                    if name == group or name.startswith(group + ".")
                    and not (group == "torch" and name.startswith("torch._dynamo")))
        print(f"  {group:<32} {spent / 1e6:6.2f} s")
    print("  largest single modules (self):")
    for own, _total, _raw, name in sorted(rows, reverse=True)[:8]:
        print(f"    {name:<40} {own / 1e6:6.2f} s")


if __name__ == "__main__":
    main()
