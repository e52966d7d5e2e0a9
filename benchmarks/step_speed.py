"""Per-step time of sdflow's sampling loops against diffusers' pipeline, in one process.

Run by hand, alone on the machine (another torch process halves the figures):

    .venv/bin/python benchmarks/step_speed.py [--steps 20] [--rounds 7] [--size 64] [--threads 2]

On sdflow-tiny (the shipped model, 64x64, 20 steps, guidance 3, one image),
three ways of sampling the same prompts, interleaved round by round:

* ``comfyui``: the ``sample`` stage's ComfyUI euler / normal (sdflow's own
  implementation of ComfyUI's KSampler: noise table, denoiser, guidance);
* ``diffusers:euler``: the ``sample`` stage's diffusers loop;
* ``pipeline``: diffusers' ``StableDiffusionPipeline`` denoising the same
  prompt embeddings (``prompt_embeds``), latents out (no VAE decode).

It prints the median seconds per step of each and the ratios to the
pipeline (target: within 2%).  The model is loaded, the prompts encoded and
one warm-up run made before timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import diffusers
    import torch

    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, make_scheduler, sample
    from sdflow_diffusion.settings import DiffusionSettings
    from sdflow_diffusion.stages.sample import Sample

    if args.threads:
        torch.set_num_threads(args.threads)
    path = ROOT / "plugins" / "sdflow_diffusion" / "models" / "tiny" / "sdflow-tiny.safetensors"
    model, clip, vae = load_checkpoint(path, DiffusionSettings(device="cpu", dtype="fp32"))
    positive = encode_text(clip, "a small red triangle at the left on a blue background")
    negative = encode_text(clip, "")
    cfg, seed = 3.0, 42

    def ours(sampler: str):
        params = Sample(seed=seed, steps=args.steps, cfg=cfg, sampler=sampler, scheduler="normal")
        return lambda: sample(model, positive, negative, empty_latent(args.size, args.size, 1), params)

    pipe = diffusers.StableDiffusionPipeline(
        vae=vae.vae, text_encoder=clip.encoders[0], tokenizer=clip.tokenizers[0], unet=model.unet,
        scheduler=make_scheduler(model.family, "diffusers:euler", "normal"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def pipeline():
        generator = torch.Generator("cpu").manual_seed(seed)
        return pipe(prompt_embeds=positive.embeds, negative_prompt_embeds=negative.embeds,
                    height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=cfg,
                    generator=generator, output_type="latent").images

    runs = {"comfyui euler": ours("euler"), "diffusers:euler": ours("diffusers:euler"), "pipeline": pipeline}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for run in runs.values():  # warm-up
            run()
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["pipeline"])
    print(f"sdflow-tiny, {args.size}x{args.size}, {args.steps} steps, cfg {cfg}, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'':18} {'median ms/step':>15} {'min':>8} {'max':>8} {'ratio':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:18} {median * 1000:15.2f} {min(values) * 1000:8.2f} {max(values) * 1000:8.2f} "
              f"{median / base:7.3f}")


if __name__ == "__main__":
    main()
