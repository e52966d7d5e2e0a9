"""A sweep against separate runs, whole processes (run by hand, alone).

    python benchmarks/sweep_speed.py [--rounds 3] [--points 8] [--memory-points 64]

1. Time: ``sdflow run examples/txt2img.sdflow --sweep seed=1..N`` as one
   process against N separate ``sdflow run ... --set seed=i`` processes, in
   alternating rounds; the medians and their ratio (issue 11's target: at
   most 0.3).
2. Memory: the peak RSS of a sweep of ``--memory-points`` seeds against one
   run, each a fresh process (``os.wait4``'s ``ru_maxrss``); their ratio
   (target: at most 1.1).

Both on sdflow-tiny on the CPU, 20 steps; outputs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "examples" / "txt2img.sdflow")


def process(args: list[str], out: Path) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of one ``sdflow`` process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "sdflow.cli", *args, "--output", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    _pid, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"sdflow {' '.join(args)} failed: {child.stderr.read().decode()[-2000:]}")
    child.stderr.close()
    factor = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return seconds, usage.ru_maxrss * factor / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--memory-points", type=int, default=64)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    sweep, separate = [], []
    for round_ in range(args.rounds):
        sweep.append(process(["run", RECIPE, "--sweep", f"seed=1..{args.points}"], folder / f"s{round_}")[0])
        separate.append(sum(process(["run", RECIPE, "--set", f"seed={i}"], folder / f"r{round_}")[0]
                            for i in range(1, args.points + 1)))
        print(f"round {round_ + 1}: sweep {sweep[-1]:.1f} s, {args.points} runs {separate[-1]:.1f} s", flush=True)
    ratio = statistics.median(sweep) / statistics.median(separate)
    print(f"{args.points}-seed sweep: median {statistics.median(sweep):.1f} s; {args.points} separate runs: "
          f"median {statistics.median(separate):.1f} s; ratio {ratio:.2f} (target at most 0.3)")
    _, one = process(["run", RECIPE], folder / "one")
    seconds, many = process(["run", RECIPE, "--sweep", f"seed=1..{args.memory_points}"], folder / "many")
    print(f"peak RSS: one run {one:.0f} MiB; a {args.memory_points}-point sweep {many:.0f} MiB ({seconds:.1f} s); "
          f"ratio {many / one:.2f} (target at most 1.1)")


if __name__ == "__main__":
    main()
