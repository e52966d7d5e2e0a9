"""The CUDA path, proved and measured on a machine with a GPU (run by hand).

    python benchmarks/gpu.py [--steps 20] [--repeats 5]

1. The default recipe through ``sdflow run`` with ``--device auto``: the PNG
   must record the device and dtype that ran (cuda, fp16), not "auto".
2. Every kind of model (tiny SD 1.x, SD 2.x, SDXL, the SDXL refiner, and a
   distilled SDXL whose U-Net config is read off its file), loaded from a
   single file on CUDA in fp16 and in bf16, against the CPU in fp32: the
   largest pixel difference (0-255), and SDXL's VAE kept in fp32 under fp16.
3. A full-size SD 1.5 (random weights built from the shipped config, so
   nothing is downloaded) at 512x512, euler, cfg 7.5, fp16: seconds per
   image through sdflow's numerics (encode, sample, decode) and through
   diffusers' StableDiffusionPipeline on the same modules and scheduler,
   medians of ``--repeats`` after a warm-up, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU: this benchmark proves and measures the CUDA path")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["default_recipe"] = default_recipe()
    report["kinds"] = every_kind()
    report["sd15_512"] = full_size(args.steps, args.repeats)
    print(json.dumps(report, indent=2))


def default_recipe() -> dict:
    from sdflow.pngtext import read_png_text

    out = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sdflow.cli", "run", str(ROOT / "examples" / "txt2img.sdflow"),
                             "--output", str(out)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        return {"error": result.stderr}
    (png,) = out.iterdir()
    run = json.loads(read_png_text(png)["run"])
    print(f"default recipe: {seconds:.1f} s as a whole process, recorded {run}", flush=True)
    return {"process_seconds": round(seconds, 2), "recorded": run}


def every_kind() -> dict:
    import diffusers
    import torch

    from sdflow_diffusion.models.families import family_dir, read_json
    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.settings import DiffusionSettings
    from sdflow_diffusion.testing import save_single_file, tiny_components

    folder = Path(tempfile.mkdtemp())
    files = {}
    for kind in ("sd1", "sd2", "sdxl", "sdxl-refiner"):
        files[kind] = save_single_file(tiny_components(kind, seed=5), folder / f"{kind}.safetensors")
    distilled = tiny_components("sdxl", seed=5)
    config = {**read_json(family_dir("sdxl-tiny") / "unet" / "config.json"), "layers_per_block": 2,
              "transformer_layers_per_block": [1, 2], "reverse_transformer_layers_per_block": [[2, 1, 3], [1, 1, 1]]}
    distilled["unet"] = diffusers.UNet2DConditionModel.from_config(config).eval()
    files["sdxl-distilled"] = save_single_file(distilled, folder / "distilled.safetensors")
    results = {}
    for name, path in files.items():
        reference = draw(load_checkpoint(path, DiffusionSettings(device="cpu", dtype="fp32")))
        row = {}
        for dtype in ("fp16", "bf16"):
            handles = load_checkpoint(path, DiffusionSettings(device="cuda", dtype=dtype))
            image = draw(handles)
            row[dtype] = {"max_pixel_difference": int((image - reference).abs().max().item()),
                          "unet": str(handles[0].dtype), "vae": str(handles[2].dtype),
                          "device": str(handles[0].unet.device)}
        print(f"{name}: {row}", flush=True)
        results[name] = row
        torch.cuda.empty_cache()
    return results


def draw(handles):
    """The default workflow's numerics: 0-255 pixels of a 32x32 image."""
    from sdflow_diffusion.handles import Latent
    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, sample
    from sdflow_diffusion.stages.sample import Sample

    model, clip, vae = handles
    latent = empty_latent(32, 32, 1)
    params = Sample(seed=3, steps=6, cfg=5.0)
    if model.family.kind == "sdxl-refiner":  # a refiner refines: start from a latent, denoise part way
        import torch

        latent = Latent(torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(1)))
        params = Sample(seed=3, steps=6, cfg=5.0, denoise=0.5)
    denoised = sample(model, encode_text(clip, "a red circle"), encode_text(clip, "blurry"), latent, params)
    return (decode(vae, denoised) * 255).round()


def full_size(steps: int, repeats: int) -> dict:
    import diffusers
    import torch

    from sdflow_diffusion.handles import ClipHandle, ModelHandle, VaeHandle
    from sdflow_diffusion.models.families import build_components, family_dir, family_handle
    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, make_scheduler, sample
    from sdflow_diffusion.stages.sample import Sample

    device, dtype = torch.device("cuda"), torch.float16
    components = build_components(family_dir("sd15"), "sd1", meta=True)
    # The text encoder is built for real: its position ids are a buffer that
    # to_empty would leave uninitialised.
    encoder = components["text_encoder"]
    components["text_encoder"] = type(encoder)(encoder.config).to(device).eval()
    generator = torch.Generator(device).manual_seed(0)
    for name in ("unet", "vae", "text_encoder"):
        module = components[name] if name == "text_encoder" else components[name].to_empty(device=device)
        with torch.no_grad():
            for key, param in module.named_parameters():  # small random weights: no download
                if key.endswith("weight") and param.ndim == 1:
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, 0.02, generator=generator)
        components[name] = module.to(dtype).eval()
    family = family_handle("sd15")
    model = ModelHandle(components["unet"], family, device, dtype)
    clip = ClipHandle((components["tokenizer"],), (components["text_encoder"],), family, device, dtype)
    vae = VaeHandle(components["vae"], family, device, dtype)
    params = Sample(seed=1, steps=steps, cfg=7.5)
    prompt, negative = "a lighthouse at dusk", "blurry"

    def ours():
        latent = sample(model, encode_text(clip, prompt), encode_text(clip, negative), empty_latent(512, 512, 1),
                        params)
        return decode(vae, latent)

    pipe = diffusers.StableDiffusionPipeline(
        vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
        unet=components["unet"], scheduler=make_scheduler(family, "euler", "normal"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def theirs():
        return pipe(prompt, negative_prompt=negative, height=512, width=512, num_inference_steps=steps,
                    guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(1), output_type="np").images

    timings = {}
    for label, run in (("sdflow", ours), ("diffusers", theirs), ("sdflow again", ours), ("diffusers again", theirs)):
        run()  # warm-up
        seconds = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        timings[label] = round(statistics.median(seconds), 4)
        print(f"SD 1.5 512x512 {steps} steps fp16, {label}: median {timings[label]:.3f} s", flush=True)
    sdflow = min(timings["sdflow"], timings["sdflow again"])
    plain = min(timings["diffusers"], timings["diffusers again"])
    timings["ratio_sdflow_over_diffusers"] = round(sdflow / plain, 3)
    timings["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(f"ratio sdflow / diffusers: {timings['ratio_sdflow_over_diffusers']}", flush=True)
    return timings


if __name__ == "__main__":
    main()
