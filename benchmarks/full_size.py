"""A full-size SD 1.5 single file on the CPU: sdflow, ComfyUI and diffusers side by side.

Run by hand; it prints one table and asserts nothing.  Each tool runs the
same work as a whole, fresh process, in alternating rounds (default 3, the
order rotated each round), on the same file: ComfyUI's default workflow at
256x256, 4 steps of euler with the normal schedule, cfg 8, then a second
image in the same process (seed + 1), so that both the cold start and the
warm image are measured:

* ComfyUI, headless, in-process with its own Python (``--comfy-python``):
  the nodes of its default workflow called as its executor calls them
  (CheckpointLoaderSimple, CLIPTextEncode x2, EmptyLatentImage, KSampler,
  VAEDecode, SaveImage), with ``--cpu``, as benchmarks/comfy_parity.py runs
  it;
* diffusers' ``StableDiffusionPipeline.from_single_file`` with the shipped
  SD 1.5 config folder (offline; the tokenizer is sdflow's offline one),
  Euler, fp32;
* ``sdflow run`` of the equivalent recipe with ``--sweep seed=S,S+1``: one
  process, the model loaded once, two images.

For each: process start to the first PNG on disk (the parent notes when
each child says it wrote one), the second image (first PNG to second), the
whole process, and its peak RSS (``ru_maxrss`` of the child, from
``wait4``).  On a shared machine the times mean little while other
processes run: before each process the script waits (``--wait-quiet``, at
most that many seconds) until the CPUs have been idle for two seconds, and
for each process it notes the share of the CPUs that other processes took
while it ran (``/proc/stat`` less the child's own CPU time), printed beside
the medians: above a few percent, the times are not the tools' own.  The table gives medians, ratios against ComfyUI, peak RSS
against the weights' own size in fp32 (SD 1.5's U-Net, VAE and text
encoder: 1.07 billion parameters, 3.97 GiB), and the floor: the peak RSS of
a process that only imports torch, diffusers and transformers.

Without ``--checkpoint``, an SD 1.5 with seeded random weights is written
once (``benchmarks/comfy_parity.py``'s maker, fp16 by default, 2.1 GB) into
``$XDG_CACHE_HOME/sdflow/benchmarks`` (``~/.cache``) and reused.  Example::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/full_size.py \\
        --comfyui /work/comfyui --comfy-python /work/comfy-venv/bin/python

Takes about 3 minutes a round on two cores (the three tools' processes take
40-60 s each).  Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPT = "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"  # ComfyUI's default workflow
NEGATIVE = "text, watermark"
TOOLS = ("comfyui", "diffusers", "sdflow")

RECIPE = """\
sdflow 1

# ComfyUI's default workflow (benchmarks/full_size.py)
param checkpoint = ""
param seed = 0
param size = 256
param steps = 4
param cfg = 8.0

ckpt = load_checkpoint(name=checkpoint)
positive = clip_text_encode(clip=ckpt.clip, text="{prompt}")
negative = clip_text_encode(clip=ckpt.clip, text="{negative}")
latent = empty_latent(width=size, height=size, batch=1)
denoised = sample(model=ckpt.model, positive=positive, negative=negative, latent=latent,
                  seed=seed, steps=steps, cfg=cfg, sampler="euler", scheduler="normal", denoise=1.0)
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="full_size")
"""


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="an SD 1.5 single file to use (default: build one, cached)")
    p.add_argument("--make-dtype", choices=("fp16", "fp32"), default="fp16",
                   help="how the built file stores its weights (fp32: 4.3 GB)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument("--comfyui", type=Path, default=Path("/work/comfyui"), help="a ComfyUI checkout")
    p.add_argument("--comfy-python", default="/work/comfy-venv/bin/python",
                   help="the Python of an environment where ComfyUI imports")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="sdflow's and diffusers' --dtype")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cfg", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--wait-quiet", type=float, default=300, metavar="SECONDS",
                   help="before each process, wait at most this long for idle CPUs (0: do not wait)")
    p.add_argument("--keep", type=Path, help="keep the images and logs in this folder")
    p.add_argument("--json", type=Path, help="also write every measurement to this file")
    p.add_argument("--worker", choices=("comfyui", "diffusers", "floor"), help=argparse.SUPPRESS)
    p.add_argument("job", nargs="?", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- the parent: build or find the file, run the rounds, print the table ------------------------

def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.worker:
        return {"comfyui": _comfy_worker, "diffusers": _diffusers_worker, "floor": _floor_worker}[args.worker](
            json.loads(Path(args.job).read_text(encoding="utf-8")))
    checkpoint = args.checkpoint or built_checkpoint(args.make_dtype)
    if checkpoint is None:
        return 1
    checkpoint = checkpoint.resolve()
    work = args.keep or Path(tempfile.mkdtemp(prefix="full_size_"))
    work.mkdir(parents=True, exist_ok=True)
    read_through(checkpoint)  # every tool starts with the file in the page cache
    load_before = os.getloadavg()
    started = time.time()
    runs: dict[str, list[dict]] = {tool: [] for tool in args.tools}
    for index in range(args.rounds):
        order = args.tools[index % len(args.tools):] + args.tools[:index % len(args.tools)]
        for tool in order:
            waited = _wait_quiet(args.wait_quiet)
            result = _run_tool(tool, args, checkpoint, work / f"round{index + 1}" / tool)
            runs[tool].append(result)
            print(f"round {index + 1} {tool}: " + (result.get("error") or
                  f"first image {result['first']:.1f} s, second {result['second']:.1f} s, "
                  f"process {result['process']:.1f} s, peak RSS {result['rss_mib']:.0f} MiB, "
                  f"others took {result['others']:.0%} of the CPUs") + f" (waited {waited:.0f} s for quiet)",
                  flush=True)
    floor = _measure([sys.executable, __file__, "--worker", "floor", _job(work, "floor", {})], work / "floor.log",
                     images=0)
    report = _report(args, checkpoint, runs, floor, load_before, time.time() - started)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "floor": floor, "report": report}, indent=1), encoding="utf-8")
    return 0


def cache_folder() -> Path:
    """Where the benchmarks keep the large files they write once
    (``$XDG_CACHE_HOME/sdflow/benchmarks``, by default under ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sdflow" / "benchmarks"


def built_checkpoint(dtype: str) -> Path | None:
    """The seeded random SD 1.5 in the cache folder, written by
    comfy_parity.py's maker the first time (cpu_dtype.py uses it too)."""
    cache = cache_folder()
    path = cache / f"sd15-random-{dtype}.safetensors"
    if _made_with(path) == (0, dtype):
        return path
    print(f"writing {path} (SD 1.5 architecture, seeded random weights, {dtype}; once)", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        job = Path(folder) / "make.json"
        job.write_text(json.dumps({"path": str(path), "seed": 0, "dtype": dtype, "threads": os.cpu_count() or 1}))
        done = subprocess.run([sys.executable, str(HERE / "comfy_parity.py"), "--worker", "make", str(job)],
                              env=_env(), cwd=ROOT)
    if done.returncode != 0 or _made_with(path) != (0, dtype):
        print("writing the checkpoint failed")
        return None
    return path


def _made_with(path: Path):
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read(int.from_bytes(f.read(8), "little"))).get("__metadata__", {})
        return int(meta["sdflow.comfy_parity.seed"]), meta.get("sdflow.comfy_parity.dtype", "fp16")
    except (OSError, ValueError, KeyError):
        return None


def _cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    fields = [int(n) for n in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def _wait_quiet(limit: float, window: float = 2.0, busy: float = 0.05) -> float:
    """Wait until the CPUs were at most ``busy`` busy for ``window``
    seconds, or ``limit`` seconds have passed; the seconds waited."""
    start = time.time()
    while time.time() - start < limit:
        before = _cpu_seconds()
        time.sleep(window)
        after = _cpu_seconds()
        if (after[0] - before[0]) <= busy * (after[1] - before[1]):
            break
    return time.time() - start


def read_through(path: Path) -> None:
    """Read the whole file once, so that a measured process finds it in the page cache."""
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)  # each tool as a user runs it: torch's own thread count
    return env


def _job(work: Path, name: str, data: dict) -> str:
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def _run_tool(tool: str, args, checkpoint: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    common = {"checkpoint": str(checkpoint), "out": str(out), "size": args.size, "steps": args.steps,
              "cfg": args.cfg, "seed": args.seed, "dtype": args.dtype}
    if tool == "comfyui":
        command = [args.comfy_python, __file__, "--worker", "comfyui",
                   _job(out, "job", dict(common, comfyui=str(args.comfyui.resolve())))]
    elif tool == "diffusers":
        command = [sys.executable, __file__, "--worker", "diffusers", _job(out, "job", common)]
    else:
        recipe = out / "full_size.sdflow"
        recipe.write_text(RECIPE.format(prompt=PROMPT, negative=NEGATIVE), encoding="utf-8")
        sdflow = Path(sys.executable).with_name("sdflow")
        command = [str(sdflow)] if sdflow.exists() else [sys.executable, "-m", "sdflow.cli"]
        command += ["run", str(recipe), "--json", "--output", str(out), "--device", "cpu", "--dtype", args.dtype,
                    "--set", f"checkpoint={checkpoint}", "--set", f"size={args.size}",
                    "--set", f"steps={args.steps}", "--set", f"cfg={args.cfg}",
                    "--sweep", f"seed={args.seed},{args.seed + 1}"]
    return _measure(command, out / "log.txt")


def _measure(command: list[str], log: Path, images: int = 2) -> dict:
    """Run ``command``; note when it reports each PNG (a line ``IMAGE
    path``, or sdflow's ``file_written`` event; ``images`` are expected),
    its wall time and its peak RSS."""
    expected = images
    start, cpu = time.time(), _cpu_seconds()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(log, "w"), env=_env(), cwd=ROOT,
                             text=True, bufsize=1)
    images, lines = [], []
    for line in child.stdout:
        lines.append(line)
        path = _image_of(line)
        if path and path.endswith(".png") and "contact" not in Path(path).name:
            images.append(time.time() - start)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.time() - start
    busy, total = (b - a for a, b in zip(cpu, _cpu_seconds()))
    others = max(0.0, busy - usage.ru_utime - usage.ru_stime) / max(total, 1e-9)
    result = {"process": seconds, "rss_mib": usage.ru_maxrss / 1024, "images": images, "others": others}
    if os.waitstatus_to_exitcode(status) != 0 or len(images) < expected:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
        return {**result, "error": f"exit {os.waitstatus_to_exitcode(status)}: " + " | ".join(tail)}
    if len(images) >= 2:
        result.update(first=images[0], second=images[1] - images[0])
    for line in lines:
        if line.startswith("INFO "):
            result["info"] = json.loads(line[5:])
    return result


def _image_of(line: str) -> str | None:
    if line.startswith("IMAGE "):
        return line[6:].strip()
    if line.startswith("{"):
        try:
            event = json.loads(line)
        except ValueError:
            return None
        if event.get("event") == "file_written":
            return event.get("path")
    return None


def _report(args, checkpoint: Path, runs: dict, floor: dict, load_before, seconds: float) -> dict:
    def median(tool, key):
        values = [r[key] for r in runs[tool] if key in r]
        return statistics.median(values) if values else float("nan")

    weights = _weights_gib()
    rows = {tool: {key: median(tool, key) for key in ("first", "second", "process", "rss_mib", "others")}
            for tool in runs}
    base = rows.get("comfyui")
    info = {tool: next((r["info"] for r in runs[tool] if "info" in r), {}) for tool in runs}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load_after = os.getloadavg()
    print()
    print(f"{datetime.datetime.now().astimezone().isoformat(timespec='minutes')}; {cpu}, {os.cpu_count()} CPUs, "
          f"{memory:.0f} GiB; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"(the rounds took {seconds / 60:.0f} min)")
    print(f"checkpoint {checkpoint} ({checkpoint.stat().st_size / 2**30:.2f} GiB); {args.size}x{args.size}, "
          f"{args.steps} steps euler normal, cfg {args.cfg}; sdflow and diffusers --dtype {args.dtype}")
    for tool in runs:
        print(f"  {tool}: {_sdflow_versions() if tool == 'sdflow' else info[tool].get('versions', '?')}")
    print(f"median of {args.rounds} rounds, whole process, CPU")
    header = f"{'':<11}{'first image':>13}{'second image':>14}{'process':>9}{'peak RSS':>11}{'RSS/weights':>13}"
    print(header + ("" if base is None else f"{'first/ComfyUI':>15}{'RSS/ComfyUI':>13}") + f"{'others':>8}")
    for tool, row in rows.items():
        line = (f"{tool:<11}{row['first']:>11.1f} s{row['second']:>12.1f} s{row['process']:>7.1f} s"
                f"{row['rss_mib']:>7.0f} MiB{row['rss_mib'] / 1024 / weights:>12.2f}x")
        if base is not None:
            line += f"{row['first'] / base['first']:>14.2f}x{row['rss_mib'] / base['rss_mib']:>12.2f}x"
        print(line + f"{row['others']:>8.0%}")
    if "sdflow" in rows and "diffusers" in rows:
        print(f"sdflow's second image {rows['sdflow']['second'] / rows['diffusers']['second']:.3f}x diffusers'")
    print("others: the median share of the CPUs other processes took while the tool ran")
    print(f"weights in fp32: {weights:.2f} GiB; floor (a process that imports torch, diffusers and "
          f"transformers): {floor.get('rss_mib', float('nan')):.0f} MiB peak RSS")
    return {"rows": rows, "floor_mib": floor.get("rss_mib"), "load": [load_before, load_after]}


def _weights_gib() -> float:
    """SD 1.5's U-Net, VAE and text encoder in fp32 (its shape table)."""
    import math

    from sdflow_diffusion.models.families import expected_shapes

    return sum(math.prod(shape) for shape in expected_shapes("sd15").values()) * 4 / 2**30


def _sdflow_versions() -> str:
    done = subprocess.run([sys.executable, "-c", "import sdflow, torch, diffusers, transformers; print("
                           "f'sdflow {sdflow.__version__}, torch {torch.__version__}, diffusers "
                           "{diffusers.__version__}, transformers {transformers.__version__}')"],
                          capture_output=True, text=True, env=_env())
    return done.stdout.strip()


# -- the workers ---------------------------------------------------------------------------------

def _info(data: dict) -> None:
    print("INFO " + json.dumps(data), flush=True)


def _floor_worker(job: dict) -> int:
    import diffusers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401
    return 0


def _diffusers_worker(job: dict) -> int:
    import torch
    import diffusers
    import transformers
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from diffusers.utils import logging

    from sdflow_diffusion.models.families import family_dir
    from sdflow_diffusion.models.tokenizer import clip_tokenizer

    logging.set_verbosity_error()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[job["dtype"]]
    pipe = StableDiffusionPipeline.from_single_file(
        job["checkpoint"], config=str(family_dir("sd15")), local_files_only=True, tokenizer=clip_tokenizer(),
        safety_checker=None, requires_safety_checker=False, torch_dtype=dtype)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    _info({"versions": f"diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
                       f"torch {torch.__version__}"})
    for index in range(2):
        image = pipe(PROMPT, negative_prompt=NEGATIVE, height=job["size"], width=job["size"],
                     num_inference_steps=job["steps"], guidance_scale=job["cfg"],
                     generator=torch.Generator("cpu").manual_seed(job["seed"] + index)).images[0]
        path = Path(job["out"]) / f"diffusers_{index + 1:05d}_.png"
        image.save(path)
        print(f"IMAGE {path}", flush=True)
    return 0


def _comfy_worker(job: dict) -> int:
    """ComfyUI's default workflow, its nodes called as its executor calls
    them (see benchmarks/comfy_parity.py), twice: seed and seed + 1."""
    import logging

    sys.path.insert(0, str(HERE))
    import comfy_parity
    import comfy_reference

    sys.meta_path.append(comfy_parity._StandInFinder({"av"}))  # nodes.py's video types import PyAV
    comfy_mods, _ = comfy_reference._import_comfy(job["comfyui"])  # --cpu, as comfy_parity runs it
    sys.path.insert(0, str(Path(job["comfyui"]).resolve()))
    import torch

    logging.getLogger().setLevel(logging.WARNING)
    import comfy.utils
    import folder_paths
    import nodes

    comfy.utils.PROGRESS_BAR_ENABLED = False
    checkpoint = Path(job["checkpoint"])
    folder_paths.add_model_folder_path("checkpoints", str(checkpoint.parent), is_default=True)
    folder_paths.set_output_directory(job["out"])
    _info({"versions": f"ComfyUI {comfy_mods.version} "
                       f"({comfy_reference._commit_of(job['comfyui'], None) or '?'}), torch {torch.__version__}"})
    with torch.inference_mode():
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(checkpoint.name)
        positive = nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
        negative = nodes.CLIPTextEncode().encode(clip, NEGATIVE)[0]
        latent = nodes.EmptyLatentImage().generate(job["size"], job["size"], 1)[0]
        for index in range(2):
            samples = nodes.KSampler().sample(model, job["seed"] + index, job["steps"], job["cfg"], "euler", "normal",
                                              positive, negative, latent, denoise=1.0)[0]
            image = nodes.VAEDecode().decode(vae, samples)[0]
            saved = nodes.SaveImage().save_images(image, filename_prefix="comfyui")
            for entry in saved["ui"]["images"]:
                print(f"IMAGE {Path(job['out']) / entry['subfolder'] / entry['filename']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
