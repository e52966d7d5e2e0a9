"""The default recipe, whole process, on the CPU: how long does a newcomer wait?

Runs `sdflow run examples/txt2img.sdflow` (sdflow-tiny, 64x64, 20 Euler
steps) as a fresh process N times (every run a new interpreter: imports,
checkpoint load and detection included; the file system cache is warm after
the first) and prints min, median and max wall time.  Target: median < 5 s.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    times = []
    with tempfile.TemporaryDirectory() as out:
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "sdflow.cli", "run", "examples/txt2img.sdflow", "--output", out],
                           cwd=ROOT, env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"sdflow run examples/txt2img.sdflow, {args.runs} fresh processes on the CPU:")
    print(f"min {min(times):.2f} s, median {median:.2f} s, max {max(times):.2f} s "
          f"(target: median under 5 s -> {'met' if median < 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
