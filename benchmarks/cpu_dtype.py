"""bf16 against fp32 on the CPU: seconds and the image's difference.

Run by hand; it prints one table and asserts nothing.  Two pieces of work,
each as ``sdflow run --device cpu --dtype fp32|bf16`` in a fresh process,
in alternating rounds (the dtype that goes first alternates; sdflow-tiny 3,
SD 1.5 1, whose bf16 process takes about 20 minutes on a CPU without native
bf16):

* the default recipe, examples/txt2img.sdflow on sdflow-tiny (64x64, 20
  euler steps, cfg 3);
* the same recipe on a full-size SD 1.5 single file at 256x256, 4 steps,
  cfg 7.5: ``--checkpoint`` where given, else the seeded random SD 1.5
  that benchmarks/full_size.py keeps (fp16, 2.1 GB, in
  ``$XDG_CACHE_HOME/sdflow/benchmarks``; written once by
  benchmarks/comfy_parity.py's maker, as full_size.py writes it).

For each: the whole process's seconds, the sample stage's and the
checkpoint load's (from ``--json`` events), medians over the rounds; the
process's peak RSS (``--profile``); the largest pixel difference (0-255)
between the fp32 and bf16 PNGs, and for sdflow-tiny whether the scorer
(training/tiny/score.py) reads the same attributes from both.  The table
names the CPU and whether it has the instructions that make bf16 fast
(AVX512-BF16, AMX-BF16); without them torch computes bf16 through fp32,
converting at every operation.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cpu_dtype.py [--rounds 3] [--sd15-rounds 1] [--checkpoint FILE]
        [--json FILE]

Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from full_size import built_checkpoint  # a sibling script: benchmarks/ is on sys.path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RECIPE = ROOT / "examples" / "txt2img.sdflow"
DTYPES = ("fp32", "bf16")
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of sdflow-tiny (default 3)")
    parser.add_argument("--sd15-rounds", type=int, default=1,
                        help="rounds of SD 1.5 (default 1: bf16 there takes 20 minutes on a CPU without native bf16)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--only", choices=("tiny", "sd15"), default=None)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an SD 1.5 single file (default: full_size.py's, written if missing)")
    args = parser.parse_args(argv)
    report: dict = {"machine": machine(), "load_before": os.getloadavg()}
    works = {"tiny": ("sdflow-tiny, 64x64, 20 steps", [], None),
             "sd15": ("SD 1.5 (random weights), 256x256, 4 steps", ["--set", "size=256", "--set", "steps=4",
                                                                  "--set", "cfg=7.5"], "sd15")}
    for name, (label, options, model) in works.items():
        if args.only not in (None, name):
            continue
        extra = list(options)
        if model:
            checkpoint = args.checkpoint or sd15_checkpoint()
            extra += ["--set", f"checkpoint={checkpoint}"]  # a path works as it is
            label += f" ({checkpoint})"
        report[name] = measure(label, extra, args.sd15_rounds if model else args.rounds, tiny=model is None)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    report["load_after"] = os.getloadavg()
    print_table(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def machine() -> dict:
    import torch

    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in FLAGS},
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


def sd15_checkpoint() -> Path:
    """The random SD 1.5 that benchmarks/full_size.py keeps (written if missing)."""
    path = built_checkpoint("fp16")
    if path is None:
        raise SystemExit("writing the SD 1.5 checkpoint failed")
    return path


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run_once(dtype: str, extra: list[str], out: Path) -> dict:
    """One ``sdflow run`` process: its seconds, its stages' seconds, its
    peak RSS, and the PNG it wrote."""
    command = [sys.executable, "-m", "sdflow.cli", "run", str(RECIPE), "--device", "cpu", "--dtype", dtype,
               "--output", str(out), "--json", "--profile", *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=ROOT)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"sdflow run --dtype {dtype} failed:\n{result.stderr[-3000:]}")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    stages = {e["type"]: e for e in events if e["event"] == "stage_done"}
    (png,) = [Path(e["path"]) for e in events if e["event"] == "file_written"]
    return {"process_seconds": seconds, "load_seconds": stages["load_checkpoint"]["seconds"],
            "sample_seconds": stages["sample"]["seconds"],
            "peak_rss_mib": max((e.get("peak_rss_mib") or 0) for e in stages.values()), "png": png}


def measure(label: str, extra: list[str], rounds: int, tiny: bool) -> dict:
    import numpy as np
    from PIL import Image

    print(f"{label}: {rounds} rounds, fp32 and bf16 alternating", flush=True)
    runs: dict[str, list[dict]] = {dtype: [] for dtype in DTYPES}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(rounds):
            for dtype in DTYPES if round_ % 2 == 0 else DTYPES[::-1]:
                run = run_once(dtype, extra, Path(folder) / f"{dtype}-{round_}")
                with Image.open(run.pop("png")) as image:
                    run["pixels"] = np.asarray(image.convert("RGB")).astype(int)
                runs[dtype].append(run)
                print(f"  round {round_ + 1} {dtype}: process {run['process_seconds']:.1f} s, sample "
                      f"{run['sample_seconds']:.2f} s, load {run['load_seconds']:.2f} s", flush=True)
    row: dict = {"label": label}
    for dtype in DTYPES:
        row[dtype] = {key: round(statistics.median(r[key] for r in runs[dtype]), 3)
                      for key in ("process_seconds", "load_seconds", "sample_seconds", "peak_rss_mib")}
        row[dtype]["same_pixels_every_round"] = all(np.array_equal(r["pixels"], runs[dtype][0]["pixels"])
                                                    for r in runs[dtype])
    a, b = runs["fp32"][0]["pixels"], runs["bf16"][0]["pixels"]
    row["max_pixel_difference"] = int(np.abs(a - b).max())
    row["mean_pixel_difference"] = round(float(np.abs(a - b).mean()), 2)
    for key in ("process_seconds", "sample_seconds"):
        row[f"bf16_over_fp32_{key}"] = round(row["bf16"][key] / row["fp32"][key], 2)
    if tiny:
        sys.path.insert(0, str(ROOT))
        from training.tiny.score import score

        row["same_scores"] = score(a.astype(np.uint8)) == score(b.astype(np.uint8))
    return row


def print_table(report: dict) -> None:
    m = report["machine"]
    flags = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in m["flags"].items())
    print(f"\n{m['cpu']}, {m['cores']} cores ({flags}); torch {m['torch']} ({m['torch_threads']} threads), "
          f"Python {m['python']}; load average {report['load_before'][0]:.1f} before, "
          f"{report['load_after'][0]:.1f} after")
    print(f"{'work':<44} {'dtype':<5} {'process s':>9} {'sample s':>9} {'load s':>7} {'peak MiB':>9}")
    for name in ("tiny", "sd15"):
        if name not in report:
            continue
        row = report[name]
        for dtype in DTYPES:
            r = row[dtype]
            print(f"{row['label'][:44]:<44} {dtype:<5} {r['process_seconds']:>9.2f} {r['sample_seconds']:>9.3f} "
                  f"{r['load_seconds']:>7.2f} {r['peak_rss_mib']:>9.0f}")
        scores = f", scorer reads the same: {row['same_scores']}" if "same_scores" in row else ""
        print(f"  bf16/fp32: process x{row['bf16_over_fp32_process_seconds']}, sample "
              f"x{row['bf16_over_fp32_sample_seconds']}; largest pixel difference {row['max_pixel_difference']} "
              f"(mean {row['mean_pixel_difference']}){scores}")


if __name__ == "__main__":
    main()
