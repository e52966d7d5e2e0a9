"""The CUDA path, proved and measured on a machine with a GPU (run by hand).

    python benchmarks/gpu.py [--steps 20] [--repeats 3] [--json FILE]
    python benchmarks/gpu.py --device cpu --tiny      # the smoke run CI makes

1. ``default recipe``: examples/txt2img.sdflow through ``sdflow run`` with
   ``--device auto`` (with --device cpu: ``cpu``), as a whole process: its seconds, and the device and
   dtype its PNG records (what ran, not "auto").
2. ``kinds``: a tiny model of every kind (SD 1.x, SD 2.x, SDXL, the SDXL
   refiner, a distilled SDXL whose U-Net config is read off its file), loaded
   from a single file in fp16 and bf16 (on the CPU: bf16 alone), against the
   CPU in fp32: the largest pixel difference (0-255).
3. ``examples``: the example recipes on sdflow-tiny (LoRA, img2img,
   inpainting, area prompts, hires fix...) in the device's default dtype
   against the CPU in fp32: the largest pixel difference, and whether the
   scorer reads the same attributes from both.
4. ``full size``: SD 1.5 at 512x512 and SDXL at 1024x1024 (random weights
   built from the shipped configs: nothing is downloaded), fp16, euler, cfg
   7.5, batch 1 and 4: seconds per batch through sdflow's numerics (encode,
   sample, decode) and through diffusers' pipeline on the same modules and
   scheduler, measured in alternation (medians of ``--repeats`` after a
   warm-up), their ratio, and each one's peak GPU memory.
5. ``first image``: the SD 1.5 weights written as one fp16 single file in
   the original layout, and ``sdflow run`` of the default recipe on it at
   512x512 as a fresh process: seconds from process start to the PNG.
6. ``options``: that file loaded with each of sdflow's run options, at
   512x512, fp16, batch 1: it/s (prompts encoded and sampled, medians of
   ``--repeats`` after a first image) and peak GPU memory of a whole image
   for the defaults, ``--channels-last``, ``--compile`` (the first image's
   seconds, which compile the U-Net, reported apart) and ``--lowvram``, each
   image's largest pixel difference to the defaults', and diffusers'
   pipeline's default it/s on the same modules (``--compile``'s target: 1.3
   times it); the VAE decoding a 1024x1024 latent with and without
   ``--vae-tiling`` (peak memory, seconds); and determinism: the default
   recipe twice, each a fresh process, with ``--deterministic`` (the same
   pixels?), and without it the same seed twice in this process.

``--tiny`` shrinks 4 and 5 to the tiny models at 64x64, 2 steps, one
repeat, 3 to two examples, and 6 to sdflow-tiny at 64x64 (its VAE at
128x128; ``--compile`` only where inductor finds a C++ compiler), so that
the script's every path runs on a CPU in about two minutes
(tests/test_gpu_benchmark.py runs it).  Prints one line
per figure as it goes and the whole report as JSON at the end (``--json``:
also written to FILE, after each section, so a run cut short keeps what it
measured).
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

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
KINDS = ("sd1", "sd2", "sdxl", "sdxl-refiner")
ALL_EXAMPLES = ("txt2img", "lora", "img2img", "inpaint", "outpaint", "hires_fix", "batch", "area",
                "prompt_weighting")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes: a smoke run")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--only", nargs="+", default=None, metavar="SECTION",
                        help="run these sections only (default_recipe kinds examples full_size first_image "
                             "options)")
    parser.add_argument("--sdxl-batches", type=int, nargs="+", default=[1, 4], metavar="N",
                        help="the SDXL batch sizes full_size measures (default 1 4)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.repeats = 2, 1

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU: pass --device cpu (with --tiny) for the smoke run")
    report: dict = {"device": args.device, "tiny": args.tiny, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    print(f"{report['gpu'] or 'CPU'}, torch {torch.__version__}", flush=True)
    sections = (("default_recipe", lambda: default_recipe(args.device)),
                ("kinds", lambda: every_kind(args.device)),
                ("examples", lambda: examples(args.device, ALL_EXAMPLES[:2] if args.tiny else ALL_EXAMPLES)),
                ("full_size", lambda: full_size(args.device, args.tiny, args.steps, args.repeats, args.sdxl_batches)),
                ("first_image", lambda: first_image(args.device, args.tiny, args.steps)),
                ("options", lambda: options(args.device, args.tiny, args.steps, args.repeats)))
    for name, run in sections:
        if args.only is not None and name not in args.only:
            continue
        started = time.perf_counter()
        try:
            report[name] = run()
        except Exception as err:  # a section that breaks is reported; the others still run
            import traceback

            traceback.print_exc()
            report[name] = {"error": f"{type(err).__name__}: {err}"}
        print(f"[{name}: {time.perf_counter() - started:.1f} s]", flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


def settings(device: str, dtype: str = "auto", **flags):
    """The diffusion plugin's settings; ``flags``: run options (compile=True...).
    The weights are loaded in the run's dtype (``--weight-dtype run``, what
    auto is on a GPU) on the CPU too: diffusers' pipeline, run on the same
    modules, reads its dtype off their parameters."""
    from sdflow_diffusion.settings import DiffusionSettings

    return DiffusionSettings(device=device, dtype=dtype, **{"weight_dtype": "run", **flags})


def default_recipe(device: str) -> dict:
    from sdflow.pngtext import read_png_text

    out = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sdflow.cli", "run", str(EXAMPLES / "txt2img.sdflow"),
                             "--device", "auto" if device == "cuda" else device, "--output", str(out)],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    (png,) = out.iterdir()
    ran = json.loads(read_png_text(png)["run"])
    print(f"default recipe: {seconds:.1f} s as a whole process, recorded {ran}", flush=True)
    return {"process_seconds": round(seconds, 2), "recorded": ran}


def every_kind(device: str) -> dict:
    import diffusers
    import torch

    from sdflow_diffusion.models.families import family_dir, read_json
    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.testing import save_single_file, tiny_components

    folder = Path(tempfile.mkdtemp())
    files = {kind: save_single_file(tiny_components(kind, seed=5), folder / f"{kind}.safetensors")
             for kind in KINDS}
    distilled = tiny_components("sdxl", seed=5)
    config = {**read_json(family_dir("sdxl-tiny") / "unet" / "config.json"), "layers_per_block": 2,
              "transformer_layers_per_block": [1, 2], "reverse_transformer_layers_per_block": [[2, 1, 3], [1, 1, 1]]}
    distilled["unet"] = diffusers.UNet2DConditionModel.from_config(config).eval()
    files["sdxl-distilled"] = save_single_file(distilled, folder / "distilled.safetensors")
    results = {}
    for name, path in files.items():
        reference = draw(load_checkpoint(path, settings("cpu", "fp32")))
        row = {}
        for dtype in ("fp16", "bf16") if device == "cuda" else ("bf16",):
            handles = load_checkpoint(path, settings(device, dtype))
            row[dtype] = {"max_pixel_difference": int((draw(handles) - reference).abs().max().item()),
                          "unet": str(handles[0].dtype), "vae": str(handles[2].dtype),
                          "device": str(handles[0].unet.device)}
        print(f"{name}: {row}", flush=True)
        results[name] = row
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def draw(handles):
    """The default workflow's numerics: 0-255 pixels of a 32x32 image."""
    import torch

    from sdflow_diffusion.handles import Latent
    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, sample
    from sdflow_diffusion.stages.sample import Sample

    model, clip, vae = handles
    latent = empty_latent(32, 32, 1)
    params = Sample(seed=3, steps=6, cfg=5.0)
    if model.family.kind == "sdxl-refiner":  # a refiner refines: start from a latent, denoise part way
        latent = Latent(torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(1)))
        params = Sample(seed=3, steps=6, cfg=5.0, denoise=0.5)
    denoised = sample(model, encode_text(clip, "a red circle"), encode_text(clip, "blurry"), latent, params)
    return (decode(vae, denoised) * 255).round()


def examples(device: str, names: tuple[str, ...]) -> dict:
    """Each example on ``device`` in its default dtype (bf16 on the CPU)
    against the CPU in fp32."""
    import numpy as np
    from PIL import Image

    from sdflow.registry import default_registry
    from sdflow.testing import Executor, run_recipe
    from training.tiny.score import score

    registry = default_registry()
    runs = {"reference": ({"diffusion": settings("cpu", "fp32")}, Executor()),
            "device": ({"diffusion": settings(device, "auto" if device == "cuda" else "bf16")}, Executor())}
    results = {}
    for name in names:
        text = (EXAMPLES / f"{name}.sdflow").read_text()
        images = {}
        try:
            for label, (chosen, executor) in runs.items():
                out = Path(tempfile.mkdtemp())
                result = run_recipe(text, registry, out, settings=chosen, executor=executor, recipe_dir=EXAMPLES)
                images[label] = [np.asarray(Image.open(p).convert("RGB")).astype(int) for p in result.files]
        except Exception as err:
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"example {name}: {results[name]}", flush=True)
            continue
        pairs = list(zip(images["reference"], images["device"], strict=True))
        same = all(a.shape != (64, 64, 3) or score(a.astype(np.uint8), corners=True)
                   == score(b.astype(np.uint8), corners=True) for a, b in pairs)
        results[name] = {"images": len(pairs), "max_pixel_difference": max(int(np.abs(a - b).max()) for a, b in pairs),
                         "same_scores": same}
        print(f"example {name}: {results[name]}", flush=True)
    return results


def full_size_handles(kind: str, device: str, tiny: bool):
    """(components, handles) of SD 1.5 (kind "sd1") or SDXL (kind "sdxl")
    with small random weights, fp16 on CUDA (fp32 on the CPU); the tiny
    models of the kind with ``tiny``."""
    import torch

    from sdflow_diffusion.handles import ClipHandle, ModelHandle, VaeHandle
    from sdflow_diffusion.models.families import build_components, family_dir, family_handle
    from sdflow_diffusion.testing import TINY_FAMILY, tiny_components

    dev = torch.device(device)
    dtype = torch.float16 if device == "cuda" else torch.float32
    name = TINY_FAMILY[kind] if tiny else {"sd1": "sd15", "sdxl": "sdxl-base"}[kind]
    if tiny:
        components = tiny_components(kind, seed=1)
    else:
        with dev:  # built where they run: random initialisation on the GPU takes seconds
            components = build_components(family_dir(name), kind)
        generator = torch.Generator(dev).manual_seed(0)
        with torch.no_grad():
            for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
                for key, param in components[part].named_parameters() if part in components else ():
                    if key.endswith("weight") and param.ndim == 1:  # norms at 1, the rest small: no overflow
                        param.fill_(1.0)
                    else:
                        param.normal_(0.0, 0.02, generator=generator)
    vae_dtype = torch.float32 if kind == "sdxl" else dtype  # as load_checkpoint keeps SDXL's VAE
    for part in ("unet", "text_encoder", "text_encoder_2", "vae"):
        if part in components:
            components[part] = components[part].to(dev, vae_dtype if part == "vae" else dtype).eval()
    family = family_handle(name)
    encoders = tuple(components[n] for n in ("text_encoder", "text_encoder_2") if n in components)
    tokenizers = tuple(components[n] for n in ("tokenizer", "tokenizer_2") if n in components)
    return components, (ModelHandle(components["unet"], family, dev, dtype),
                        ClipHandle(tokenizers, encoders, family, dev, dtype),
                        VaeHandle(components["vae"], family, dev, vae_dtype))


def full_size(device: str, tiny: bool, steps: int, repeats: int, sdxl_batches: list[int] = (1, 4)) -> dict:
    import torch

    cuda = device == "cuda"
    results = {}
    for kind, size in (("sd1", 512), ("sdxl", 1024)):
        try:
            results.update(_full_size_kind(kind, 64 if tiny else size, device, tiny, steps, repeats,
                                           sdxl_batches if kind == "sdxl" else (1, 4)))
        except Exception as err:  # one kind that breaks is reported; the other's rows stay
            results[kind] = {"error": f"{type(err).__name__}: {err}"}
            print(f"{kind}: {results[kind]}", flush=True)
        if cuda:
            torch.cuda.empty_cache()
    return results


def _full_size_kind(kind: str, size: int, device: str, tiny: bool, steps: int, repeats: int,
                    batches) -> dict:
    import copy

    import diffusers
    import torch

    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, make_scheduler, sample
    from sdflow_diffusion.stages.sample import Sample

    cuda = device == "cuda"
    prompt, negative = "a lighthouse at dusk", "blurry"
    results = {}
    components, (model, clip, vae) = full_size_handles(kind, device, tiny)
    parts = {**components, "scheduler": make_scheduler(model.family, "euler", "normal")}
    if kind == "sdxl":
        # diffusers keeps SDXL's VAE in fp16 and upcasts it for each decode; sdflow holds it in fp32.
        if cuda:
            parts["vae"] = copy.deepcopy(components["vae"]).to(torch.float16)
        pipe = diffusers.StableDiffusionXLPipeline(**{k: parts[k] for k in (
            "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "scheduler")})
    else:
        pipe = diffusers.StableDiffusionPipeline(**{k: parts[k] for k in (
            "vae", "text_encoder", "tokenizer", "unet", "scheduler")}, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    label = f"{'SD 1.5' if kind == 'sd1' else 'SDXL'} {size}x{size}"
    for batch in batches:
        params = Sample(seed=1, steps=steps, cfg=7.5)

        def ours():
            latent = sample(model, encode_text(clip, prompt), encode_text(clip, negative),
                            empty_latent(size, size, batch), params)
            return decode(vae, latent)

        def theirs():
            return pipe(prompt, negative_prompt=negative, height=size, width=size, num_inference_steps=steps,
                        guidance_scale=7.5, num_images_per_prompt=batch,
                        generator=[torch.Generator("cpu").manual_seed(1 + i) for i in range(batch)],
                        output_type="np").images

        # SDXL's batch of 4 at 1024 px (about 11 s a run on an H200) once a time through, to keep the
        # whole script under 8 minutes on an H100; each figure is then the better of two runs.
        times = 1 if kind == "sdxl" and batch > 1 and not tiny else repeats
        row = measure({"sdflow": ours, "diffusers": theirs}, times, cuda)
        row["ratio_sdflow_over_diffusers"] = round(row["sdflow"]["seconds"] / row["diffusers"]["seconds"], 3)
        results[f"{label} batch {batch}"] = row
        print(f"{label} batch {batch}, {steps} steps: {row}", flush=True)
    return results


def measure(runs: dict, repeats: int, cuda: bool) -> dict:
    """Median seconds of each run after a warm-up (the first time through
    only), the runs alternating (twice through, best median kept), and each
    one's peak GPU memory."""
    import torch

    seconds: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, float] = {}
    for time_through in range(2):
        for name, run in runs.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            if time_through == 0:
                run()  # warm-up
            seconds[name].append(statistics.median(_timed(run, cuda) for _ in range(repeats)))
            if cuda:
                peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    return {name: {"seconds": round(min(seconds[name]), 4), "medians": [round(s, 4) for s in seconds[name]],
                   **({"peak_gib": round(peaks[name], 2)} if cuda else {})} for name in runs}


_SD15_FILES: dict[tuple[str, bool], Path] = {}


def sd15_file(device: str, tiny: bool) -> Path:
    """SD 1.5 (the tiny SD 1.x with ``tiny``) as one fp16 file in the
    original layout, under ``FOLDER/checkpoints/``: written once a run."""
    import torch

    from sdflow_diffusion.models.ldm_layout import to_original
    from safetensors.torch import save_file

    if (device, tiny) not in _SD15_FILES:
        components, _ = full_size_handles("sd1", device, tiny)
        path = Path(tempfile.mkdtemp()) / "checkpoints" / "sd15-random.safetensors"
        path.parent.mkdir(parents=True)
        state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in to_original(components).items()}
        del components
        save_file(state, str(path))
        _SD15_FILES[device, tiny] = path
    return _SD15_FILES[device, tiny]


def first_image(device: str, tiny: bool, steps: int) -> dict:
    """SD 1.5 as one fp16 file in the original layout, then the default
    recipe on it as a fresh process, twice (once with --tiny)."""
    path = sd15_file(device, tiny)
    folder = path.parent.parent
    size = 64 if tiny else 512
    row: dict = {"file_gib": round(path.stat().st_size / 2**30, 2)}
    for attempt in ("first",) if tiny else ("first", "second"):
        out = folder / f"out-{attempt}"
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "sdflow.cli", "run", str(EXAMPLES / "txt2img.sdflow"),
                                 "--device", device, "--models-dir", str(folder), "--output", str(out),
                                 "--set", f"checkpoint={path.name}", "--set", f"size={size}",
                                 "--set", f"steps={steps}", "--set", "cfg=7.5"],
                                capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if result.returncode != 0:
            return {**row, "error": result.stderr[-2000:]}
        row[f"{attempt}_process_seconds"] = round(time.perf_counter() - start, 2)
    print(f"first image, SD 1.5 single file at {size}x{size}: {row}", flush=True)
    return row


SHIPPED = ROOT / "plugins" / "sdflow_diffusion" / "models" / "tiny" / "sdflow-tiny.safetensors"
PROMPT, NEGATIVE = "a small red triangle at the left on a blue background", "blurry"


def options(device: str, tiny: bool, steps: int, repeats: int) -> dict:
    """Each run option of sdflow on SD 1.5 at 512x512, fp16, batch 1 (with
    ``tiny``: sdflow-tiny at 64x64 on the CPU): see the module's docs."""
    import gc

    import torch

    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.models.run_options import compiler_problem

    cuda = device == "cuda"
    path = SHIPPED if tiny else sd15_file(device, tiny)
    size = 64 if tiny else 512
    chosen = {"defaults": {}, "channels_last": {"channels_last": True}, "compile": {"compile": True},
              "lowvram": {"lowvram": True}}
    problem = compiler_problem(torch.device(device))
    results: dict = {"size": size, "steps": steps, "file": path.name}
    if problem is not None:
        del chosen["compile"]
        results["compile"] = {"skipped": problem}
    reference = None
    for name, flags in chosen.items():
        try:
            handles = load_checkpoint(path, settings(device, "auto", **flags))
            row, image = _option_row(handles, size, steps, repeats, cuda, twice=reference is None)
            if reference is None:
                reference = image
                results["diffusers_defaults"] = _pipeline_row(handles, size, steps, repeats, cuda)
                results["vae_tiling"] = _tiling_row(handles[2], 128 if tiny else 1024, cuda)
            row["max_pixel_difference_to_defaults"] = int((image - reference).abs().max())
        except Exception as err:  # one option that breaks is reported; the others still run
            row = {"error": f"{type(err).__name__}: {err}"}
        results[name] = row
        print(f"options, {name}: {row}", flush=True)
        handles = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if "its" in results.get("compile", {}) and "its" in results["diffusers_defaults"]:
        results["compile_over_diffusers_defaults"] = round(results["compile"]["its"]
                                                           / results["diffusers_defaults"]["its"], 3)
    results["determinism"] = _determinism(device, tiny, path, size, steps, results.get("defaults", {}))
    print(f"options: diffusers {results['diffusers_defaults']}, VAE tiling {results['vae_tiling']}, "
          f"determinism {results['determinism']}", flush=True)
    return results


def _timed(run, cuda: bool) -> float:
    import torch

    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _option_row(handles, size: int, steps: int, repeats: int, cuda: bool, twice: bool = False):
    """A loaded model's first image (with --compile: the compilation),
    then its it/s (prompts encoded and sampled, median of ``repeats``) and
    the peak GPU memory of a whole image; and that image (0-255).
    ``twice``: a second whole image, and whether its pixels are the first's."""
    import torch

    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, sample
    from sdflow_diffusion.stages.sample import Sample

    model, clip, vae = handles
    params = Sample(seed=1, steps=steps, cfg=7.5)

    def latent():
        return sample(model, encode_text(clip, PROMPT), encode_text(clip, NEGATIVE), empty_latent(size, size, 1),
                      params)

    first = _timed(latent, cuda)
    seconds = statistics.median(_timed(latent, cuda) for _ in range(repeats))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    image = (decode(vae, latent()) * 255).round()
    row = {"first_image_seconds": round(first, 3), "seconds": round(seconds, 4), "its": round(steps / seconds, 2)}
    if cuda:
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    row["first_image_extra_seconds"] = round(first - seconds, 3)  # --compile: compiling the U-Net
    if twice:
        row["same_pixels_in_process"] = bool(torch.equal(image, (decode(vae, latent()) * 255).round()))
    return row, image


def _pipeline_row(handles, size: int, steps: int, repeats: int, cuda: bool) -> dict:
    """diffusers' pipeline on the same modules and scheduler, as it comes:
    its it/s over the same work (prompts encoded, latents sampled)."""
    import diffusers
    import torch

    from sdflow_diffusion.numerics.sampling import make_scheduler

    model, clip, vae = handles
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae.vae, text_encoder=clip.encoders[0], tokenizer=clip.tokenizers[0], unet=model.unet,
        scheduler=make_scheduler(model.family, "euler", "normal"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def latent():
        pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps,
             guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(1), output_type="latent")

    _timed(latent, cuda)
    seconds = statistics.median(_timed(latent, cuda) for _ in range(repeats))
    return {"seconds": round(seconds, 4), "its": round(steps / seconds, 2)}


def _tiling_row(vae, size: int, cuda: bool) -> dict:
    """The VAE decoding one ``size`` x ``size`` latent whole and in tiles
    (diffusers' tiling, what --vae-tiling switches on): peak GPU memory,
    seconds, and the largest pixel difference between the two."""
    import torch

    from sdflow_diffusion.handles import Latent
    from sdflow_diffusion.numerics.decode import decode

    latent = Latent(torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(2)))
    row, images = {"size": size, "tile": vae.vae.tile_sample_min_size}, {}
    for tiled in (False, True):
        if tiled:
            vae.vae.enable_tiling()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        label = "tiled" if tiled else "whole"
        start = time.perf_counter()
        try:
            images[label] = (decode(vae, latent) * 255).round()
        except torch.cuda.OutOfMemoryError:
            row[label] = "out of memory"
            continue
        finally:
            vae.vae.disable_tiling()
        row[f"{label}_seconds"] = round(time.perf_counter() - start, 3)
        if cuda:
            row[f"{label}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if len(images) == 2:
        row["max_pixel_difference"] = int((images["whole"] - images["tiled"]).abs().max())
    return row


def _determinism(device: str, tiny: bool, path: Path, size: int, steps: int, defaults: dict) -> dict:
    """The default recipe on ``path`` twice with --deterministic, each a
    fresh process (CUBLAS_WORKSPACE_CONFIG is read when cuBLAS starts):
    whether the two PNGs have the same pixels.  Without it: whether the
    defaults' repeated images in this process had (``defaults``)."""
    import numpy as np
    from PIL import Image

    folder = Path(tempfile.mkdtemp())
    images = []
    for attempt in range(2):
        out = folder / f"out-{attempt}"
        command = [sys.executable, "-m", "sdflow.cli", "run", str(EXAMPLES / "txt2img.sdflow"), "--device", device,
                   "--deterministic", "--output", str(out), "--set", f"size={size}", "--set", f"steps={steps}"]
        if path != SHIPPED:
            command += ["--models-dir", str(path.parent.parent), "--set", f"checkpoint={path.name}"]
        env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}  # sdflow sets it
        result = subprocess.run(command, capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"})
        if result.returncode != 0:
            return {"error": result.stderr[-2000:]}
        (png,) = out.iterdir()
        images.append(np.asarray(Image.open(png).convert("RGB")).astype(int))
    return {"deterministic_same_pixels": bool((images[0] == images[1]).all()),
            "deterministic_max_pixel_difference": int(np.abs(images[0] - images[1]).max()),
            "without_same_pixels_in_process": defaults.get("same_pixels_in_process")}


if __name__ == "__main__":
    main()
