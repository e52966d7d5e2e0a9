"""A full-size SDXL single file on the CPU: peak memory against the weights' own size.

Run by hand; it prints one table and asserts nothing.  The issue's memory
rule for SDXL: a run's peak RSS close to the weights' size in the run's
dtype (the fp16 file is 6.9 GB; a bf16 run should need about that, an fp32
run about twice), because a single file is read tensor by tensor into models
built without weights, never through a second copy of the state dict.

An SDXL base with seeded random weights (every tensor a checkpoint of the
shipped ``sdxl-base`` family holds, from its shape table: 3.5 billion
parameters) is written once as an fp16 single file in the original layout
into ``$XDG_CACHE_HOME/sdflow/benchmarks`` (``~/.cache``) and reused.  Then,
for each ``--dtypes`` value, ``sdflow run`` of a small recipe on it (one
prompt, 64x64 pixels, one euler step: the work is tiny, so that the peak is
the loaded models' and a bf16 run finishes on a CPU without native bf16) as
a fresh process, alone: its peak RSS (``ru_maxrss`` from ``wait4``), its
load_checkpoint seconds and the whole process's.  The floor is a process
that only imports torch, diffusers and transformers.  SDXL's VAE stays fp32
in every dtype (its config's ``force_upcast``), as diffusers keeps it.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sdxl_memory.py [--dtypes bf16 fp32] [--json FILE]

Needs about 15 GiB of free memory for the fp32 run and 7 GB of disk.
Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from full_size import cache_folder, read_through  # a sibling script: benchmarks/ is on sys.path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAMILY = "sdxl-base"
SEED = 0
ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2}

RECIPE = """\
sdflow 1

# benchmarks/sdxl_memory.py: the models loaded, a minimal image drawn
param checkpoint = ""

ckpt = load_checkpoint(name=checkpoint)
positive = clip_text_encode(clip=ckpt.clip, text="a lighthouse on a cliff at dusk")
negative = clip_text_encode(clip=ckpt.clip, text="")
latent = empty_latent(width=64, height=64, batch=1)
denoised = sample(model=ckpt.model, positive=positive, negative=negative, latent=latent,
                  seed=1, steps=1, cfg=5.0, sampler="euler", scheduler="normal", denoise=1.0)
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="sdxl_memory")
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", choices=tuple(ITEMSIZE), default=["bf16", "fp32"])
    parser.add_argument("--checkpoint", type=Path, help="an SDXL base single file to use (default: build one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # the worker that writes the file
    args = parser.parse_args(argv)
    if args.make:
        return _make(args.make)
    checkpoint = (args.checkpoint or _built_checkpoint()).resolve()
    file_gb = checkpoint.stat().st_size / 1e9
    parts = _parameters()
    report = {"machine": f"{_cpu()}, {os.cpu_count()} cores, {_memory_gib():.0f} GiB", "versions": _versions(), "checkpoint": str(checkpoint),
              "file_gb": round(file_gb, 2), "parameters": parts, "runs": {}}
    with tempfile.TemporaryDirectory() as folder:
        recipe = Path(folder) / "sdxl_memory.sdflow"
        recipe.write_text(RECIPE, encoding="utf-8")
        report["floor"] = _measure([sys.executable, "-c", "import torch, diffusers, transformers; "
                                    "from diffusers import UNet2DConditionModel, AutoencoderKL; "
                                    "from transformers import CLIPTextModel, CLIPTextModelWithProjection"])
        for dtype in args.dtypes:
            read_through(checkpoint)  # every run starts with the file in the page cache
            command = [sys.executable, "-m", "sdflow.cli", "run", str(recipe), "--json", "--device", "cpu",
                       "--dtype", dtype, "--output", str(Path(folder) / dtype), "--set", f"checkpoint={checkpoint}"]
            run = _measure(command)
            run["weights_gib"] = round(_weights_gib(parts, dtype), 2)
            run["rss_over_weights"] = round(run["rss_gib"] / run["weights_gib"], 3)
            report["runs"][dtype] = run
            print(f"{dtype}: peak RSS {run['rss_gib']:.2f} GiB ({run['rss_over_weights']:.2f}x the weights' "
                  f"{run['weights_gib']:.2f} GiB), load {run.get('load_seconds', 0):.1f} s, process "
                  f"{run['seconds']:.1f} s", flush=True)
    _print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


def _parameters() -> dict[str, int]:
    """The family's parameters by part (U-Net, VAE, text encoders), from its shape table."""
    sys.path.insert(0, str(ROOT / "plugins"))
    from sdflow_diffusion.models.families import expected_shapes

    parts = {"unet": 0, "vae": 0, "text_encoders": 0}
    for key, shape in expected_shapes(FAMILY).items():
        part = "unet" if key.startswith("model.") else "vae" if key.startswith("first_stage_model.") \
            else "text_encoders"
        parts[part] += math.prod(shape)
    return parts


def _weights_gib(parts: dict[str, int], dtype: str) -> float:
    """The weights' own size in a run of ``dtype``: the VAE in fp32 always."""
    return ((parts["unet"] + parts["text_encoders"]) * ITEMSIZE[dtype] + parts["vae"] * 4) / 2**30


def _built_checkpoint() -> Path:
    cache = cache_folder()
    path = cache / f"sdxl-random-fp16-seed{SEED}.safetensors"
    if not path.is_file():
        print(f"writing {path} (SDXL base architecture, seeded random weights, fp16; once)", flush=True)
        cache.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--make", str(path)], check=True, env=_env(), cwd=ROOT)
        print(f"made it in {time.perf_counter() - start:.0f} s ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
    return path


def _make(path: Path) -> int:
    """Write every tensor of the family, seeded: norms' weights 1, the rest
    N(0, 0.02) (no overflow in fp16), one tensor at a time in fp32 before
    it is stored in fp16; the file appears whole or not at all."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "plugins"))
    from sdflow_diffusion.models.families import expected_shapes

    generator = torch.Generator().manual_seed(SEED)
    state = {}
    for key, shape in sorted(expected_shapes(FAMILY).items()):
        if key.endswith("weight") and len(shape) == 1:
            state[key] = torch.ones(shape, dtype=torch.float16)
        else:
            state[key] = torch.empty(shape).normal_(0.0, 0.02, generator=generator).half()
    partial = path.with_name(path.name + ".partial")
    save_file(state, str(partial), metadata={"sdflow.benchmark": "sdxl_memory", "seed": str(SEED)})
    os.replace(partial, path)
    return 0


def _measure(command: list[str]) -> dict:
    """One process alone: seconds, peak RSS (``ru_maxrss`` of that child,
    from ``wait4``), and the load_checkpoint stage's seconds where it is an
    sdflow run (its ``--json`` events)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=_env(), cwd=ROOT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0), err.seek(0)
        lines, errors = out.read().splitlines(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{errors[-3000:]}")
    result = {"seconds": round(seconds, 2), "rss_gib": round(usage.ru_maxrss * 1024 / 2**30, 3)}
    for line in lines:
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "stage_done" and event.get("type") == "load_checkpoint":
                result["load_seconds"] = event["seconds"]
    return result


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _cpu() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _versions() -> str:
    done = subprocess.run([sys.executable, "-c", "import torch, diffusers, transformers; print(f'torch "
                           "{torch.__version__}, diffusers {diffusers.__version__}, transformers "
                           "{transformers.__version__}')"], capture_output=True, text=True, env=_env())
    return done.stdout.strip()


def _print_table(report: dict) -> None:
    parts = report["parameters"]
    total = sum(parts.values())
    print(f"\nSDXL base, random weights, one fp16 single file of {report['file_gb']:.2f} GB "
          f"({total / 1e9:.2f} billion parameters: U-Net {parts['unet'] / 1e9:.2f}, text encoders "
          f"{parts['text_encoders'] / 1e9:.2f}, VAE {parts['vae'] / 1e9:.3f}); {report['machine']}; "
          f"{report['versions']}")
    print(f"{'run':<28} {'peak RSS GiB':>12} {'weights GiB':>11} {'RSS/weights':>11} {'load s':>7} {'process s':>9}")
    floor = report["floor"]
    print(f"{'imports only (the floor)':<28} {floor['rss_gib']:>12.2f} {'':>11} {'':>11} {'':>7} "
          f"{floor['seconds']:>9.1f}")
    for dtype, run in report["runs"].items():
        print(f"{'sdflow run --dtype ' + dtype:<28} {run['rss_gib']:>12.2f} {run['weights_gib']:>11.2f} "
              f"{run['rss_over_weights']:>11.2f} {run.get('load_seconds', 0):>7.1f} {run['seconds']:>9.1f}")


if __name__ == "__main__":
    sys.exit(main())
