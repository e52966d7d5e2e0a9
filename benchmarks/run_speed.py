"""How much does sdflow cost over diffusers?  A benchmark run by hand.

(a) Whole process, side by side: `sdflow run` of a txt2img recipe against a
    plain Python script doing the same with diffusers' StableDiffusionPipeline
    (same tiny model, size, steps, seed), each run N times, alternating.
    Prints the medians of wall time and of peak RSS, and their ratios
    (targets: time <= 1.02, RSS <= 1.05).
(b) A recipe that renders several images from one checkpoint: how many times
    the checkpoint was loaded and each prompt encoded (from --json events).

    .venv/bin/python benchmarks/run_speed.py [--runs 7] [--steps 20] [--size 64]
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

RECIPE = """\
sdflow 1

ckpt = load_checkpoint(name="{model}")
positive = clip_text_encode(clip=ckpt.clip, text="a red circle on a blue background")
negative = clip_text_encode(clip=ckpt.clip, text="blurry")
latent = empty_latent(width={size}, height={size}, batch=1)
denoised = sample(model=ckpt.model, positive=positive, negative=negative, latent=latent,
                  seed=42, steps={steps}, cfg=7.5, sampler="euler", scheduler="normal")
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="bench")
"""

PLAIN = """\
import sys
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from diffusers.utils import logging
logging.disable_progress_bar()
folder, out, size, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                               requires_safety_checker=False)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
image = pipe("a red circle on a blue background", negative_prompt="blurry", height=size, width=size,
             num_inference_steps=steps, guidance_scale=7.5,
             generator=torch.Generator("cpu").manual_seed(42)).images[0]
image.save(out)
"""

SEVERAL = """\
sdflow 1

ckpt = load_checkpoint(name="{model}")
latent = empty_latent(width={size}, height={size}, batch=1)
{blocks}
"""

BLOCK = """\
p{i} = clip_text_encode(clip=ckpt.clip, text="{prompt}")
n{i} = clip_text_encode(clip=ckpt.clip, text="blurry")
d{i} = sample(model=ckpt.model, positive=p{i}, negative=n{i}, latent=latent, seed={i}, steps=2)
i{i} = vae_decode(vae=ckpt.vae, latent=d{i})
save_image(image=i{i}, prefix="several")
"""


def measure(command: list[str], env: dict) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{command} failed:\n{child.stderr.read().decode()}")
    child.stderr.close()
    return seconds, usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    from sdflow_diffusion.testing import tiny_checkpoint

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tiny_checkpoint(tmp / "models", "sd1", layout="diffusers")
        recipe = tmp / "bench.sdflow"
        recipe.write_text(RECIPE.format(model=folder, size=args.size, steps=args.steps))
        plain = tmp / "plain.py"
        plain.write_text(PLAIN)
        sdflow_cmd = [sys.executable, "-m", "sdflow.cli", "run", str(recipe), "--output", str(tmp / "out")]
        plain_cmd = [sys.executable, str(plain), str(folder), str(tmp / "plain.png"), str(args.size),
                     str(args.steps)]
        measure(sdflow_cmd, env), measure(plain_cmd, env)  # warm the file cache
        rows = {"sdflow run": [], "diffusers script": []}
        for _ in range(args.runs):
            rows["sdflow run"].append(measure(sdflow_cmd, env))
            rows["diffusers script"].append(measure(plain_cmd, env))

        print(f"(a) whole process, tiny SD 1.x (diffusers folder), {args.size}x{args.size}, "
              f"{args.steps} euler steps, {args.runs} runs each, alternating")
        print(f"{'':<18}{'median s':>10}{'min s':>9}{'max s':>9}{'peak RSS MiB':>15}")
        medians = {}
        for name, samples in rows.items():
            times = [s for s, _ in samples]
            rss = statistics.median(r for _, r in samples) / 1024
            medians[name] = (statistics.median(times), rss)
            print(f"{name:<18}{medians[name][0]:>10.3f}{min(times):>9.3f}{max(times):>9.3f}{rss:>15.1f}")
        time_ratio = medians["sdflow run"][0] / medians["diffusers script"][0]
        rss_ratio = medians["sdflow run"][1] / medians["diffusers script"][1]
        print(f"ratio sdflow/diffusers: time {time_ratio:.3f} (target <= 1.02), "
              f"peak RSS {rss_ratio:.3f} (target <= 1.05)")

        prompts = ["a red circle", "a blue square", "a red circle", "a green triangle"]
        blocks = "\n".join(BLOCK.format(i=i, prompt=p) for i, p in enumerate(prompts))
        several = tmp / "several.sdflow"
        several.write_text(SEVERAL.format(model=folder, size=args.size, blocks=blocks))
        done = subprocess.run([sys.executable, "-m", "sdflow.cli", "run", str(several), "--json",
                               "--output", str(tmp / "out")], env=env, capture_output=True, text=True)
        events = [json.loads(line) for line in done.stdout.splitlines()]
        ran = [e["type"] for e in events if e["event"] == "stage_started"]
        images = [e for e in events if e["event"] == "file_written"]
        print(f"\n(b) {len(images)} images from one checkpoint, {len(prompts)} positive prompts "
              f"({len(set(prompts))} distinct) and {len(prompts)} identical negatives:")
        print(f"checkpoint loads: {ran.count('load_checkpoint')}; "
              f"prompt encodings: {ran.count('clip_text_encode')} "
              f"(distinct texts: {len(set(prompts) | {'blurry'})}); samplings: {ran.count('sample')}")


if __name__ == "__main__":
    main()
