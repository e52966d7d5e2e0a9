"""Does sdflow draw ComfyUI's picture?  The default workflow, run by both.

Run by hand; it prints figures and asserts nothing.  For one checkpoint, one
prompt and one seed it runs ComfyUI's default text-to-image workflow and the
same recipe in sdflow, for every sampler x scheduler x step count asked for,
and prints the largest pixel difference of each pair of pictures (0-255)
with a summary: how many are within 1/255, the worst, and the exceptions
with the reason each side gave.

The two programs never share a process, and neither imports the other:

* ComfyUI runs headless in one subprocess for all cases, with the Python of
  an environment where it imports (``--comfy-python``), through the node
  classes of its ``nodes.py`` that the default workflow is made of, called
  as its executor calls them: ``CheckpointLoaderSimple`` (the checkpoint's
  folder registered as a ``checkpoints`` folder), ``CLIPTextEncode`` for the
  prompt and the negative, ``EmptyLatentImage``, ``KSampler`` (denoise 1)
  and ``VAEDecode``.  ComfyUI's own choices for a CPU are left as they are
  (``--cpu``: fp32 U-Net and VAE, text encoder weights kept in fp16 and run
  in fp32, sub-quadratic attention); the script records them.
* sdflow runs in another subprocess with this script's interpreter (its
  venv), through the functions its stages call (``load_checkpoint``,
  ``clip_text_encode``, ``empty_latent``, ``sample``, ``vae_decode``) with the
  model loaded once, on the CPU in fp32.  The first case is also run as a
  whole ``sdflow run`` of a recipe (``--no-cli-check`` skips it), and its PNG
  compared with the in-process picture, so the figures hold for the command.

Each worker writes float32 arrays (``.npy``) into a temporary folder: the
decoded picture ([height, width, 3] in [0, 1], before any rounding to bytes),
the sampled latent (in ComfyUI's LATENT space, the VAE's own, so sdflow's is
divided by the scaling factor as ComfyUI's ``process_latent_out`` divides
it), both prompts' conditioning, and the decoding of one fixed latent (the
same float32 numbers given to both VAEs), which tell apart where a difference
comes from: the text encoder, the sampling or the VAE.

"Pixels" is the largest difference of the float pictures times 255; a pair
is within 1/255 when it is at most 1.  "PNG" is the largest difference of
the bytes each program would save: sdflow rounds (``round(x * 255)``, as
diffusers does), ComfyUI's SaveImage truncates (``uint8(x * 255)``), so equal
pictures save up to 1 apart.  "latent" is the largest difference of the
sampled latents over the largest absolute value of ComfyUI's.

The checkpoint must be one ComfyUI can load: a single-file SD 1.x
``.safetensors`` in the original layout.  sdflow-tiny is not one (ComfyUI
detects a model by its U-Net's config, and sdflow-tiny's, 64 channels wide
with a 64-wide text encoder, matches none of its model classes), so
``--make-checkpoint FILE`` writes a full-size SD 1.5 (the shipped sd15
configs, about 1.07 billion parameters, fp16, 2.1 GB) with seeded random
weights, variance-preserving so that every activation and the pictures stay
finite and in range.  Its pictures are noise, but the comparison is about
the numerics, which are the same for any weights.  Example::

    .venv/bin/python benchmarks/comfy_parity.py --comfyui /work/comfyui \\
        --comfy-python /work/comfy-venv/bin/python \\
        --make-checkpoint /tmp/sd15-random.safetensors \\
        --samplers euler dpmpp_2m --schedulers normal karras --steps 4

(``--make-checkpoint`` reuses the file when it is already there and was
written with the same ``--make-seed`` and ``--make-dtype``.)  Pass
``--checkpoint FILE`` for a real SD 1.5 file instead.

Where a pair differs, the report says which part did (the conditioning of
either prompt, the VAE, the images of a batch after the first) and the known
reason.  ``--comfy-flag NAME`` sets one of ComfyUI's own switches in its
worker (``fp32_text_enc``: keep an fp32 checkpoint's text encoder in fp32,
as sdflow does); ``--batch N`` draws N images per case.  Figures and what
differs: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.abc
import importlib.machinery
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_SCHEDULERS = ("normal", "karras", "simple")
DEFAULT_STEPS = (4, 20)
DEFAULT_PROMPT = "a lighthouse on a rocky coast at dusk, oil painting"
DEFAULT_NEGATIVE = "blurry, watermark"
MAKE_SEED_KEY = "sdflow.comfy_parity.seed"
MAKE_DTYPE_KEY = "sdflow.comfy_parity.dtype"
WITHIN = 1.0  # pixels, 0-255


# --------------------------------------------------------------------------
# command line and orchestration (imports neither ComfyUI nor sdflow's torch side)


def _parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", type=Path, help="path of a ComfyUI checkout")
    p.add_argument("--comfy-python", default=sys.executable,
                   help="the Python of an environment where ComfyUI imports (default: this one)")
    p.add_argument("--sdflow-python", default=sys.executable,
                   help="the Python of sdflow's environment (default: this one)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="an SD 1.x single-file .safetensors (original layout)")
    src.add_argument("--make-checkpoint", type=Path, metavar="FILE",
                     help="write a full-size SD 1.5 with seeded random weights to FILE (2.1 GB in fp16; "
                          "kept if it is there with the same --make-seed and --make-dtype) and use it")
    p.add_argument("--make-seed", type=int, default=0, help="seed of --make-checkpoint's weights")
    p.add_argument("--make-dtype", choices=("fp16", "fp32"), default="fp16",
                   help="how --make-checkpoint stores the weights (fp32: 4 GB, like v1-5-pruned-emaonly)")
    p.add_argument("--samplers", nargs="+", default=None,
                   help="ComfyUI sampler names (default: every one sdflow has, sampler_table.COMFY_SAMPLERS)")
    p.add_argument("--schedulers", nargs="+", default=list(DEFAULT_SCHEDULERS))
    p.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS))
    p.add_argument("--size", type=int, default=64, help="width and height in pixels (a multiple of 8)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch", type=int, default=1, help="images per case (EmptyLatentImage's batch_size)")
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--negative", default=DEFAULT_NEGATIVE)
    p.add_argument("--comfy-flag", action="append", default=[], metavar="NAME",
                   help="set one of ComfyUI's command-line switches in its worker, by its args name "
                        "(fp32_text_enc, fp32_unet, use_split_cross_attention ...); repeatable")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads in each worker (default 1)")
    p.add_argument("--parallel", action="store_true",
                   help="run the two workers at once (each with --threads); default: one after the other")
    p.add_argument("--regions", action="store_true",
                   help="the prompt combined with an area prompt, a mask prompt and a prompt for the first half "
                        "of the schedule (ConditioningSetArea, ...SetMask, ...SetTimestepRange, ...Combine)")
    p.add_argument("--no-cli-check", action="store_true",
                   help="skip running the first case again as a whole `sdflow run`")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="write the workers' arrays and logs here and keep them (default: a temporary folder)")
    p.add_argument("--worker", choices=("comfy", "sdflow", "make"), help=argparse.SUPPRESS)
    p.add_argument("job", nargs="?", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None:
        if args.comfyui is None:
            p.error("--comfyui is required")
        if args.checkpoint is None and args.make_checkpoint is None:
            p.error("give --checkpoint FILE or --make-checkpoint FILE")
        if args.size % 8 or args.size < 16:
            p.error("--size must be a multiple of 8, at least 16")
    return args


def _env(threads: int) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start_worker(python: str, side: str, job_path: Path, threads: int, log: Path):
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, str(job_path)]
    out = open(log, "w", encoding="utf-8")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(threads), cwd=str(ROOT)), out


def _wait(proc, out, log: Path, side: str, echo: bool) -> int:
    """Wait for a worker, echoing its progress lines ('case ...') as they come."""
    pos = 0
    while True:
        rc = proc.poll()
        if echo:
            with open(log, encoding="utf-8", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            for line in chunk.splitlines():
                if line.startswith(("case ", "loaded ", "encoded ", "cli check", "wrote ", "made ")):
                    print(f"  [{side}] {line}", flush=True)
        if rc is not None:
            out.close()
            return rc
        time.sleep(1.0)


def _tail(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("      " + line for line in text[-lines:])


def _default_samplers() -> list[str]:
    sys.path.append(str(ROOT / "plugins"))  # torch-free; where sdflow is installed, found there first
    from sdflow_diffusion.numerics.sampler_table import COMFY_SAMPLERS

    return list(COMFY_SAMPLERS)


def _made_with(path: Path):
    """(seed, dtype) a --make-checkpoint file was written with (off its safetensors header), or None."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(n)).get("__metadata__", {})
        return int(meta[MAKE_SEED_KEY]), meta.get(MAKE_DTYPE_KEY, "fp16")
    except (OSError, ValueError, TypeError, KeyError):
        return None


def main(argv=None) -> int:
    args = _parse_args(argv)
    if args.worker:
        return {"comfy": _comfy_worker, "sdflow": _sdflow_worker, "make": _make_worker}[args.worker](
            json.loads(Path(args.job).read_text(encoding="utf-8")))

    import numpy as np

    samplers = args.samplers or _default_samplers()
    cases = [(sa, sc, n) for sc in args.schedulers for n in args.steps for sa in samplers]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="comfy_parity_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    checkpoint = args.checkpoint
    if args.make_checkpoint is not None:
        checkpoint = args.make_checkpoint
        if checkpoint.exists() and _made_with(checkpoint) == (args.make_seed, args.make_dtype):
            print(f"using {checkpoint} (made earlier with seed {args.make_seed}, {args.make_dtype})")
        else:
            print(f"making {checkpoint}: SD 1.5 size, seeded random weights (seed {args.make_seed}), "
                  f"{args.make_dtype}")
            job = work / "make.json"
            job.write_text(json.dumps({"path": str(checkpoint), "seed": args.make_seed, "dtype": args.make_dtype,
                                       "threads": args.threads}))
            proc, out = _start_worker(args.sdflow_python, "make", job, args.threads, work / "make.log")
            if _wait(proc, out, work / "make.log", "make", True) != 0:
                print(f"making the checkpoint failed:\n{_tail(work / 'make.log')}")
                return 1
    if not checkpoint.is_file():
        print(f"no checkpoint at {checkpoint}")
        return 1

    rng = np.random.default_rng(args.seed)
    probe = rng.standard_normal((args.batch, 4, args.size // 8, args.size // 8)).astype(np.float32)
    np.save(work / "probe_latent.npy", probe)  # in the U-Net's space (scaled), as a sampled latent is
    common = {
        "checkpoint": str(checkpoint.resolve()), "prompt": args.prompt, "negative": args.negative,
        "seed": args.seed, "cfg": args.cfg, "size": args.size, "batch": args.batch, "threads": args.threads,
        "cases": cases, "probe": str(work / "probe_latent.npy"), "regions": args.regions,
    }
    jobs = {
        "comfy": dict(common, out=str(work / "comfy"), comfyui=str(args.comfyui.resolve()), flags=args.comfy_flag),
        "sdflow": dict(common, out=str(work / "sdflow"), cli_check=not args.no_cli_check,
                       sdflow_python=args.sdflow_python),
    }
    pythons = {"comfy": args.comfy_python, "sdflow": args.sdflow_python}
    print(f"{len(cases)} cases: {len(samplers)} samplers x {len(args.schedulers)} schedulers "
          f"x steps {' '.join(map(str, args.steps))}; {args.size}x{args.size}, batch {args.batch}, seed {args.seed}, "
          f"cfg {args.cfg}; "
          f"{args.threads} thread(s) per worker; arrays in {work}")
    rcs = {}
    order = ("comfy", "sdflow")
    running = {}
    for side in order:
        Path(jobs[side]["out"]).mkdir(parents=True, exist_ok=True)
        job = work / f"{side}.json"
        job.write_text(json.dumps(jobs[side]))
        print(f"{'starting' if args.parallel else 'running'} the {side} worker ({pythons[side]})", flush=True)
        running[side] = _start_worker(pythons[side], side, job, args.threads, work / f"{side}.log")
        if not args.parallel:
            rcs[side] = _wait(*running.pop(side), work / f"{side}.log", side, True)
    for side, (proc, out) in running.items():
        rcs[side] = _wait(proc, out, work / f"{side}.log", side, True)
    for side in order:
        if rcs[side] != 0:
            print(f"the {side} worker exited with {rcs[side]}; the end of its log:\n{_tail(work / f'{side}.log')}")

    _report(args, cases, work, checkpoint, time.time() - started)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _info(work: Path, side: str) -> dict:
    path = work / side / "info.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"cases": {}, "error": "the worker wrote nothing (see its log)"}


def _key(sampler: str, scheduler: str, steps: int) -> str:
    return f"{sampler}-{scheduler}-{steps}"


def _report(args, cases, work: Path, checkpoint: Path, seconds: float) -> None:
    import numpy as np

    info = {side: _info(work, side) for side in ("comfy", "sdflow")}
    load = lambda side, name: np.load(work / side / name)  # noqa: E731

    print()
    flags = "".join(f" --{f.replace('_', '-')}" for f in info["comfy"].get("flags", []))
    print(f"ComfyUI {info['comfy'].get('comfyui_commit')} (torch {info['comfy'].get('torch')}, "
          f"Python {info['comfy'].get('python')}){flags}: {info['comfy'].get('setup', '?')}")
    print(f"sdflow {info['sdflow'].get('sdflow')} (torch {info['sdflow'].get('torch')}, diffusers "
          f"{info['sdflow'].get('diffusers')}, Python {info['sdflow'].get('python')}): "
          f"{info['sdflow'].get('setup', '?')}")
    print(f"checkpoint {checkpoint} ({checkpoint.stat().st_size / 2**30:.2f} GiB); {platform.machine()}, "
          f"{os.cpu_count()} CPUs; {args.threads} thread(s) per worker")
    print(f"prompt {args.prompt!r}, negative {args.negative!r}")

    # Where a difference would come from: the prompts, the VAE.
    parts, causes = [], []
    for name in ("cond_positive", "cond_negative"):
        try:
            a, b = load("sdflow", f"{name}.npy"), load("comfy", f"{name}.npy")
            d = _maxdiff(a, b)
            parts.append(f"{name.replace('cond_', '')} conditioning {d:.3g} (of max |x| {np.abs(b).max():.3g})")
            if d > 1e-4 * float(np.abs(b).max()):
                causes.append(f"the {name.replace('cond_', '')} prompt's conditioning differs by {d:.3g}: ComfyUI "
                              "reads weights ((word:1.2), (word)) and embedding: names in a prompt, sdflow "
                              "takes the text as it is; and ComfyUI on the CPU keeps the text encoder's "
                              "weights in fp16 (an fp32 checkpoint: try --comfy-flag fp32_text_enc)")
        except (OSError, ValueError) as e:
            parts.append(f"{name}: {e}")
    try:
        d = _maxdiff(load("sdflow", "probe.npy"), load("comfy", "probe.npy")) * 255
        parts.append(f"VAE decode of one fixed latent {d:.4f} px")
        if d > WITHIN:
            causes.append(f"the VAEs decode one latent {d:.2f}/255 apart")
    except (OSError, ValueError) as e:
        parts.append(f"probe: {e}")
    print("components, largest absolute difference: " + "; ".join(parts))
    cli = info["sdflow"].get("cli_check")
    if cli:
        print(f"`sdflow run` of the recipe ({cli.get('case')}): "
              + (f"its PNG against the in-process picture rounded: max {cli['max_diff']} (0-255)"
                 if "max_diff" in cli else f"failed: {cli.get('error')}"))

    print()
    header = f"{'sampler':<20} {'scheduler':<9} {'steps':>5} | {'pixels':>8} {'PNG':>4} {'latent':>9} | {'comfy s':>7} {'sdflow s':>8}"
    print(header)
    print("-" * len(header))
    rows, exceptions = [], []
    for sampler, scheduler, steps in cases:
        key = _key(sampler, scheduler, steps)
        c, s = info["comfy"]["cases"].get(key), info["sdflow"]["cases"].get(key)
        problems = [f"{side}: {(r or {}).get('error', 'not run (the worker stopped)')}"
                    for side, r in (("ComfyUI", c), ("sdflow", s)) if not r or "error" in r]
        if problems:
            exceptions.append((key, "; ".join(problems)))
            print(f"{sampler:<20} {scheduler:<9} {steps:>5} | {'—':>8} {'—':>4} {'—':>9} | "
                  f"{(c or {}).get('seconds', float('nan')):7.2f} {(s or {}).get('seconds', float('nan')):8.2f}  "
                  f"error")
            continue
        a_img, b_img = load("sdflow", f"{key}.image.npy"), load("comfy", f"{key}.image.npy")
        a_lat, b_lat = load("sdflow", f"{key}.latent.npy"), load("comfy", f"{key}.latent.npy")
        if a_img.shape != b_img.shape or not (np.isfinite(a_img).all() and np.isfinite(b_img).all()):
            exceptions.append((key, f"shapes {a_img.shape} and {b_img.shape}, or not finite"))
            continue
        px = _maxdiff(a_img, b_img) * 255
        png = int(np.abs(np.round(a_img * 255).astype(np.int16)
                         - np.clip(b_img * 255, 0, 255).astype(np.uint8).astype(np.int16)).max())
        lat = _maxdiff(a_lat, b_lat) / max(float(np.abs(b_lat).max()), 1e-30)  # relative to the latent's size
        rows.append((key, px, png, lat))
        mark = "" if px <= WITHIN else "  > 1/255"
        if a_img.shape[0] > 1:
            mark += "  per image: " + ", ".join(f"{_maxdiff(x, y) * 255:.4f}" for x, y in zip(a_img, b_img))
        print(f"{sampler:<20} {scheduler:<9} {steps:>5} | {px:8.4f} {png:4d} {lat:9.2e} | "
              f"{c['seconds']:7.2f} {s['seconds']:8.2f}{mark}", flush=True)
        if px > WITHIN:
            why = list(causes)
            per_image = [_maxdiff(x, y) * 255 for x, y in zip(a_img, b_img)]
            if len(per_image) > 1 and max(per_image[1:]) > WITHIN:
                why.append(("image 0 matches, the others do not: " if per_image[0] <= WITHIN else "")
                           + "ComfyUI draws a batch's noise (the starting noise, and what ancestral and SDE "
                           "samplers add) for the whole batch from one generator or Brownian tree seeded with "
                           "the seed; sdflow draws image i's from its own, seeded seed + i")
            exceptions.append((key, f"pixels differ by {px:.2f}/255 (latent by {lat:.3g} of its largest value)"
                                    + ("; " + "; ".join(why) if why else "")))

    print()
    within = sum(1 for r in rows if r[1] <= WITHIN)
    print(f"within 1/255: {within} of {len(cases)} cases"
          + (f"; {len(cases) - len(rows)} did not run on both sides" if len(rows) < len(cases) else ""))
    if rows:
        worst = max(rows, key=lambda r: r[1])
        print(f"worst: {worst[0]}, {worst[1]:.4f}/255 (latent {worst[3]:.3g}); median of the cases "
              f"{float(np.median([r[1] for r in rows])):.4f}/255; largest latent difference "
              f"{max(r[3] for r in rows):.3g} (relative to the latent's largest value)")
        print(f"PNG bytes as each saves them (sdflow rounds, ComfyUI truncates): "
              f"at most {max(r[2] for r in rows)} apart")
    if exceptions:
        print("exceptions:")
        for key, why in exceptions:
            print(f"  {key}: {why}")
    else:
        print("exceptions: none")
    times = {side: sum(r.get("seconds", 0) for r in info[side]["cases"].values()) for side in ("comfy", "sdflow")}
    print(f"sampling + decoding time, all cases: ComfyUI {times['comfy']:.1f} s, sdflow {times['sdflow']:.1f} s; "
          f"whole run {seconds:.0f} s ({datetime.datetime.now().astimezone().isoformat(timespec='minutes')})")


def _maxdiff(a, b) -> float:
    import numpy as np

    if a.shape != b.shape:
        raise ValueError(f"shapes {a.shape} and {b.shape}")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# --------------------------------------------------------------------------
# workers


class _Recorder:
    """A worker's info.json, rewritten after each case so a crash keeps what was done."""

    def __init__(self, out: str, data: dict):
        self.path = Path(out) / "info.json"
        self.data = dict(data, cases={})
        self.save()

    def case(self, key: str, result: dict) -> None:
        self.data["cases"][key] = result
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1), encoding="utf-8")
        tmp.replace(self.path)


def _error(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    return f"{type(e).__name__}: {text[:300]}"


class _StandIn(types.ModuleType):
    """A module that is not installed: any attribute is a fresh empty class."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {})
        setattr(self, name, value)
        return value


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``root`` and its submodules as stand-ins; placed last on
    ``sys.meta_path``, so only where the real package is not installed."""

    def __init__(self, roots):
        self.roots = set(roots)

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _comfy_worker(job: dict) -> int:
    """ComfyUI's default workflow, node by node, for every case."""
    import logging

    # Only module-level imports of nodes.py's video types need PyAV; where it
    # is not installed, a stand-in lets nodes.py import (nothing here decodes video).
    sys.meta_path.append(_StandInFinder({"av"}))
    import comfy_reference  # this folder: ComfyUI's import with --cpu and the torchvision stand-in

    sys.path.insert(0, str(Path(job["comfyui"]).resolve()))
    from comfy.cli_args import args as comfy_args  # argparse only; set before anything reads it

    for flag in job.get("flags", []):
        if not isinstance(getattr(comfy_args, flag, None), bool):
            raise SystemExit(f"ComfyUI has no switch '{flag}'")
        setattr(comfy_args, flag, True)
    comfy_mods, tv_stand_in = comfy_reference._import_comfy(job["comfyui"])
    import numpy as np
    import torch

    torch.set_num_threads(job["threads"])
    logging.getLogger().setLevel(logging.WARNING)
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.modules.diffusionmodules.model as vae_model
    import comfy.model_management as mm
    import comfy.samplers
    import comfy.utils
    import folder_paths
    import nodes

    comfy.utils.PROGRESS_BAR_ENABLED = False
    out = Path(job["out"])
    av_stand_in = isinstance(sys.modules.get("av"), _StandIn)
    rec = _Recorder(job["out"], {
        "comfyui_commit": comfy_reference._commit_of(job["comfyui"], None), "comfyui_version": comfy_mods.version,
        "torch": torch.__version__, "python": platform.python_version(), "flags": job.get("flags", []),
        "stand_ins": [n for n, used in (("torchvision", tv_stand_in), ("av", av_stand_in)) if used],
    })
    t = time.perf_counter()
    ckpt = Path(job["checkpoint"])
    folder_paths.add_model_folder_path("checkpoints", str(ckpt.parent), is_default=True)
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt.name)
    vae_attention = getattr(vae_model, "vae_attention", None)
    setup = (f"{mm.get_torch_device()}, U-Net {model.model.get_dtype()}, text encoder weights "
             f"{sorted(str(d) for d in clip.cond_stage_model.dtypes)} (run in float32), VAE {vae.vae_dtype}; "
             f"attention {attention.optimized_attention.__name__}"
             + (f", VAE attention {vae_attention().__name__}" if callable(vae_attention) else ""))
    rec.data.update(setup=setup, load_seconds=time.perf_counter() - t)
    rec.save()
    print(f"loaded in {time.perf_counter() - t:.1f} s: {setup}", flush=True)

    with torch.inference_mode():
        positive = nodes.CLIPTextEncode().encode(clip, job["prompt"])[0]
        negative = nodes.CLIPTextEncode().encode(clip, job["negative"])[0]
        np.save(out / "cond_positive.npy", positive[0][0].float().cpu().numpy())
        np.save(out / "cond_negative.npy", negative[0][0].float().cpu().numpy())
        if job.get("regions"):
            positive = _comfy_regions(nodes, clip, positive, job["size"])
        latent = nodes.EmptyLatentImage().generate(job["size"], job["size"], job["batch"])[0]
        probe = torch.from_numpy(np.load(job["probe"]))
        scale = model.model.latent_format.scale_factor
        image = nodes.VAEDecode().decode(vae, {"samples": probe / scale})[0]
        np.save(out / "probe.npy", image.float().cpu().numpy())
        print("encoded the prompts and decoded the probe latent", flush=True)

        for sampler, scheduler, steps in job["cases"]:
            key = _key(sampler, scheduler, steps)
            t = time.perf_counter()
            try:
                # ComfyUI's KSampler quietly runs its first sampler or scheduler for a name it lacks.
                for what, name, known in (("sampler", sampler, comfy.samplers.KSampler.SAMPLERS),
                                          ("scheduler", scheduler, comfy.samplers.KSampler.SCHEDULERS)):
                    if name not in known:
                        raise ValueError(f"ComfyUI has no {what} '{name}' (its KSampler would run "
                                         f"'{known[0]}' instead)")
                samples = nodes.KSampler().sample(model, job["seed"], steps, job["cfg"], sampler, scheduler,
                                                  positive, negative, latent, denoise=1.0)[0]
                image = nodes.VAEDecode().decode(vae, samples)[0]
                np.save(out / f"{key}.latent.npy", samples["samples"].float().cpu().numpy())
                np.save(out / f"{key}.image.npy", image.float().cpu().numpy())
                result = {"seconds": time.perf_counter() - t}
            except Exception as e:  # recorded: the report says which case and why
                result = {"error": _error(e), "seconds": time.perf_counter() - t}
            rec.case(key, result)
            print(f"case {key}: " + (result.get("error") or f"{result['seconds']:.1f} s"), flush=True)
    return 0


# --regions: three more prompts, each given a part of the image or of the schedule.
REGION_PROMPTS = ("a red circle", "a blue square", "oil painting, thick brush strokes")


def _region_mask(size: int):
    """The mask prompt's mask: the right half, full strength, [1, size, size]."""
    import torch

    mask = torch.zeros((1, size, size))
    mask[:, :, size // 2:] = 1.0
    return mask


def _comfy_regions(nodes, clip, positive, size: int):
    """``positive`` combined with: an area (half the width, three quarters of
    the height, 8 px in, strength 1.5), the right-half mask (strength 0.8),
    and a prompt for the first half of the schedule."""
    def encode(text):
        return nodes.CLIPTextEncode().encode(clip, text)[0]

    area = nodes.ConditioningSetArea().append(encode(REGION_PROMPTS[0]), size // 2, size * 3 // 4, 8, 8, 1.5)[0]
    masked = nodes.ConditioningSetMask().append(encode(REGION_PROMPTS[1]), _region_mask(size), "default", 0.8)[0]
    early = nodes.ConditioningSetTimestepRange().set_range(encode(REGION_PROMPTS[2]), 0.0, 0.5)[0]
    combine = nodes.ConditioningCombine().combine
    return combine(combine(positive, area)[0], combine(masked, early)[0])[0]


def _sdflow_regions(clip, positive, size: int):
    """The same through the functions of sdflow's conditioning stages."""
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.stages import conditioning as stages

    def one(result):
        return result["conditioning"]

    area = one(stages.conditioning_set_area(None, stages.ConditioningSetArea(
        width=size // 2, height=size * 3 // 4, x=8, y=8, strength=1.5), encode_text(clip, REGION_PROMPTS[0])))
    masked = one(stages.conditioning_set_mask(None, stages.ConditioningSetMask(strength=0.8),
                                              encode_text(clip, REGION_PROMPTS[1]), _region_mask(size)))
    early = one(stages.conditioning_set_timestep_range(None, stages.ConditioningSetTimestepRange(start=0.0, end=0.5),
                                                       encode_text(clip, REGION_PROMPTS[2])))
    combine = stages.conditioning_combine
    none = stages.ConditioningCombine()
    return one(combine(None, none, one(combine(None, none, positive, area)),
                       one(combine(None, none, masked, early))))


def _sdflow_worker(job: dict) -> int:
    """The same workflow through the functions sdflow's stages call."""
    import numpy as np
    import torch

    torch.set_num_threads(job["threads"])
    import diffusers

    import sdflow
    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, sample
    from sdflow_diffusion.handles import Latent
    from sdflow_diffusion.settings import DiffusionSettings
    from sdflow_diffusion.stages.sample import Sample

    out = Path(job["out"])
    rec = _Recorder(job["out"], {
        "sdflow": getattr(sdflow, "__version__", "?"), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "python": platform.python_version(),
    })
    t = time.perf_counter()
    model, clip, vae = load_checkpoint(Path(job["checkpoint"]), DiffusionSettings(device="cpu", dtype="fp32"))
    attn = type(model.unet.attn_processors[next(iter(model.unet.attn_processors))]).__name__
    setup = (f"{model.device}, U-Net {model.dtype}, text encoder {clip.dtype}, VAE {vae.dtype}; family "
             f"{model.family.name}, {model.family.prediction_type}; attention {attn}")
    rec.data.update(setup=setup, load_seconds=time.perf_counter() - t)
    rec.save()
    print(f"loaded in {time.perf_counter() - t:.1f} s: {setup}", flush=True)
    factor = torch.tensor(model.family.vae_scaling_factor, dtype=torch.float32)

    positive = encode_text(clip, job["prompt"])
    negative = encode_text(clip, job["negative"])
    np.save(out / "cond_positive.npy", positive.embeds.float().cpu().numpy())
    np.save(out / "cond_negative.npy", negative.embeds.float().cpu().numpy())
    if job.get("regions"):
        positive = _sdflow_regions(clip, positive, job["size"])
    probe = Latent(torch.from_numpy(np.load(job["probe"])))
    np.save(out / "probe.npy", decode(vae, probe).numpy())
    print("encoded the prompts and decoded the probe latent", flush=True)

    images = {}
    for sampler, scheduler, steps in job["cases"]:
        key = _key(sampler, scheduler, steps)
        t = time.perf_counter()
        try:
            params = Sample(seed=job["seed"], steps=steps, cfg=job["cfg"], sampler=sampler,
                            scheduler=scheduler, denoise=1.0)
            latent = sample(model, positive, negative, empty_latent(job["size"], job["size"], job["batch"]), params)
            image = decode(vae, latent)
            # ComfyUI's LATENT is the VAE's own space: process_latent_out divides by the scale factor.
            np.save(out / f"{key}.latent.npy", (latent.samples / factor).numpy())
            np.save(out / f"{key}.image.npy", image.numpy())
            images[key] = image.numpy()
            result = {"seconds": time.perf_counter() - t}
        except Exception as e:
            result = {"error": _error(e), "seconds": time.perf_counter() - t}
        rec.case(key, result)
        print(f"case {key}: " + (result.get("error") or f"{result['seconds']:.1f} s"), flush=True)

    if job.get("cli_check") and images and job["batch"] == 1 and not job.get("regions"):
        del model, clip, vae  # the command loads its own
        rec.data["cli_check"] = _cli_check(job, next(iter(images)), images[next(iter(images))])
        rec.save()
        print(f"cli check: {rec.data['cli_check']}", flush=True)
    return 0


RECIPE = """\
sdflow 1

# ComfyUI's default workflow (comfy_parity.py); every value comes with --set.
param checkpoint = ""
param prompt = ""
param negative_prompt = ""
param size = 64
param seed = 0
param steps = 20
param cfg = 7.5
param sampler = "euler"
param scheduler = "normal"

ckpt = load_checkpoint(name=checkpoint)
positive = clip_text_encode(clip=ckpt.clip, text=prompt)
negative = clip_text_encode(clip=ckpt.clip, text=negative_prompt)
latent = empty_latent(width=size, height=size, batch=1)
denoised = sample(
    model=ckpt.model,
    positive=positive,
    negative=negative,
    latent=latent,
    seed=seed,
    steps=steps,
    cfg=cfg,
    sampler=sampler,
    scheduler=scheduler,
    denoise=1.0,
)
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="parity")
"""


def _cli_check(job: dict, key: str, image) -> dict:
    """Run one case as a whole `sdflow run` and compare its PNG with the in-process picture, rounded."""
    import numpy as np
    from PIL import Image

    sampler, scheduler, steps = key.rsplit("-", 2)
    folder = Path(job["out"]) / "cli"
    folder.mkdir(exist_ok=True)
    recipe = folder / "parity.sdflow"
    recipe.write_text(RECIPE, encoding="utf-8")
    sets = {"checkpoint": job["checkpoint"], "prompt": job["prompt"], "negative_prompt": job["negative"],
            "size": job["size"], "seed": job["seed"], "steps": steps, "cfg": job["cfg"],
            "sampler": sampler, "scheduler": scheduler}
    cmd = [job["sdflow_python"], "-m", "sdflow.cli", "run", str(recipe), "--output", str(folder / "output"),
           "--device", "cpu", "--dtype", "fp32"]
    for name, value in sets.items():
        cmd += ["--set", f"{name}={value}"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(job["threads"]))
    if proc.returncode != 0:
        return {"case": key, "error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-500:]}"}
    pngs = sorted((folder / "output").glob("parity_*.png"))
    if not pngs:
        return {"case": key, "error": "no PNG written"}
    saved = np.asarray(Image.open(pngs[-1]).convert("RGB")).astype(np.int16)
    ours = np.round(image[0] * 255).astype(np.int16)
    return {"case": key, "max_diff": int(np.abs(saved - ours).max()), "seconds": time.perf_counter() - t}


def _make_worker(job: dict) -> int:
    """A full-size SD 1.5 single file with seeded random weights (fp16 or fp32)."""
    import math

    import torch

    torch.set_num_threads(job["threads"])
    from safetensors.torch import save_file

    from sdflow_diffusion.models.families import build_components, family_dir
    from sdflow_diffusion.models.ldm_layout import to_original

    t = time.perf_counter()
    components = build_components(family_dir("sd15"), "sd1", meta=True)
    encoder = components["text_encoder"]
    components["text_encoder"] = type(encoder)(encoder.config)  # real: its position ids are a buffer
    components["unet"] = components["unet"].to_empty(device="cpu")
    components["vae"] = components["vae"].to_empty(device="cpu")
    generator = torch.Generator().manual_seed(job["seed"])
    count = 0
    with torch.no_grad():
        for name in ("text_encoder", "unet", "vae"):
            for key, param in sorted(components[name].named_parameters()):
                if param.ndim >= 2:  # variance-preserving: std 1/sqrt(fan-in)
                    param.normal_(0.0, 1.0 / math.sqrt(param[0].numel()), generator=generator)
                elif key.endswith("weight"):  # a norm's scale
                    param.normal_(1.0, 0.05, generator=generator)
                else:
                    param.normal_(0.0, 0.02, generator=generator)
                count += param.numel()
            components[name].eval()
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[job["dtype"]]
    state = {k: v.detach().to(dtype).contiguous() for k, v in to_original(components, "sd1").items()}
    path = Path(job["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    save_file(state, str(tmp), metadata={
        MAKE_SEED_KEY: str(job["seed"]), MAKE_DTYPE_KEY: job["dtype"],
        "sdflow.comfy_parity.what": "SD 1.5 architecture (sdflow's sd15 configs), seeded random weights, "
                                    "for benchmarks/comfy_parity.py only: it draws noise",
    })
    tmp.replace(path)
    print(f"made {path}: {count / 1e9:.3f} billion parameters, {path.stat().st_size / 2**30:.2f} GiB, "
          f"in {time.perf_counter() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
