"""Train a LoRA that teaches sdflow-tiny the four corners, on a CPU.

``python -m training.tiny.train_lora --out DIR [--steps N] [--rank R]
[--seed S] [--pictures N] [--corners N] [--init LORA]`` (``--init``:
continue from an earlier run's factors)

sdflow-tiny puts its shape at the left, right, top, bottom or centre; asked
for "the top left" it picks one of the two words.  This LoRA teaches the
corners (training/tiny/dataset.CORNERS), which its VAE can already encode
and decode (the scorer reads 99.6% of them back right after a round trip).

The shipped checkpoint is loaded with sdflow's own loader and frozen; every
Linear and Conv2d of the U-Net and the text encoder's attention
projections and MLP get a rank-R pair of factors (``down`` then ``up``,
``up`` starting at zero, so that step 0 is the base model).  The objective
is training/tiny/train.py's U-Net stage: v-prediction on the
zero-terminal-SNR schedule, uniform timesteps, latents drawn from the
VAE's posterior and scaled by the family's factor, 10% empty captions; each
batch is half corner pictures and half ordinary training pictures, so that
the base is kept.  The (triple, corner) pairs of :data:`HELD_OUT` are never
shown: the evaluation (training/tiny/evaluate_lora.py) draws them.  Seeded:
every step draws from a generator seeded with the seed and the step number.

At the end: ``DIR/sdflow-tiny-corners.safetensors`` in the kohya/A1111
layout (``lora_unet_<module>``, ``lora_te_<module>``, ``.lora_down.weight``,
``.lora_up.weight``, ``.alpha``), fp16, checked against
sdflow_diffusion.models.lora (every key names a module), and
``DIR/train_log.json``.

Tried first (2026-11-27) and dropped: a new colour (magenta) and a new
shape (a diamond).  The VAE was trained on six colours and three shapes:
it decodes a magenta picture's latent as a blue smudge and rounds a diamond
into a circle (35% read back as diamonds), so no U-Net LoRA can draw them
(magenta reached 4 of 20 with decoder-inverted latents).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.tiny import model as tiny_model
from training.tiny.dataset import Attributes
from training.tiny.train import log, step_generator, to_tensor, tokenize

CHECKPOINT = Path(__file__).resolve().parents[2] / "plugins/sdflow_diffusion/models/tiny/sdflow-tiny.safetensors"
BATCH = 64  # half corners, half ordinary
LR = 1e-3
WARMUP = 50
TEXT_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# Prompts never shown in training, three per corner, every shape, both
# sizes, triples the base model was trained on: the evaluation draws them.
HELD_OUT = tuple(Attributes(*fields) for fields in (
    ("circle", "red", "blue", "small", "top left"), ("square", "yellow", "black", "large", "top left"),
    ("triangle", "white", "green", "large", "top left"), ("square", "green", "red", "large", "top right"),
    ("triangle", "blue", "white", "small", "top right"), ("circle", "black", "yellow", "large", "top right"),
    ("triangle", "red", "black", "large", "bottom left"), ("circle", "white", "blue", "small", "bottom left"),
    ("square", "blue", "yellow", "small", "bottom left"), ("circle", "green", "white", "large", "bottom right"),
    ("square", "red", "white", "small", "bottom right"), ("triangle", "black", "red", "large", "bottom right"),
))


class LoraWrapped(torch.nn.Module):
    """A frozen Linear or Conv2d plus ``up(down(x)) * alpha / rank``; ``down``
    has the base's kernel, stride and padding, ``up`` is 1x1."""

    def __init__(self, base: torch.nn.Module, rank: int, alpha: float):
        super().__init__()
        self.base, self.rank, self.alpha = base, rank, alpha
        if isinstance(base, torch.nn.Linear):
            self.down = torch.nn.Linear(base.in_features, rank, bias=False)
            self.up = torch.nn.Linear(rank, base.out_features, bias=False)
        else:
            self.down = torch.nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                        bias=False)
            self.up = torch.nn.Conv2d(rank, base.out_channels, 1, bias=False)
        torch.nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        torch.nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * (self.alpha / self.rank)


def add_lora(root: torch.nn.Module, names: list[str], rank: int) -> dict[str, LoraWrapped]:
    """Wrap each named module of ``root`` (in place); name -> its wrapper."""
    wrapped = {}
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = root.get_submodule(parent) if parent else root
        wrapper = LoraWrapped(getattr(owner, child), rank, float(rank))
        setattr(owner, child, wrapper)
        wrapped[name] = wrapper
    return wrapped


def lora_targets(unet: torch.nn.Module, encoder: torch.nn.Module) -> tuple[list[str], list[str]]:
    """Every Linear and Conv2d of the U-Net; the text encoder's attention and MLP Linears."""
    layers = (torch.nn.Linear, torch.nn.Conv2d)
    unet_names = [n for n, m in unet.named_modules() if n and isinstance(m, layers)]
    text_names = [n for n, m in encoder.named_modules()
                  if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in TEXT_MODULES]
    return unet_names, text_names


def kohya_state(unet_lora: dict[str, LoraWrapped], text_lora: dict[str, LoraWrapped]) -> dict[str, torch.Tensor]:
    """The factors under kohya's names, fp16: ``lora_unet_`` + the diffusers
    module path, ``lora_te_`` + transformers' (under ``text_model.``), dots as ``_``."""
    state = {}
    for prefix, wrapped in (("lora_unet_", unet_lora), ("lora_te_", text_lora)):
        for name, wrapper in wrapped.items():
            if prefix == "lora_te_" and not name.startswith("text_model."):
                name = "text_model." + name  # transformers 5 no longer nests the layers in text_model
            key = prefix + name.replace(".", "_")
            state[key + ".lora_down.weight"] = wrapper.down.weight.detach().to(torch.float16).contiguous()
            state[key + ".lora_up.weight"] = wrapper.up.weight.detach().to(torch.float16).contiguous()
            state[key + ".alpha"] = torch.tensor(wrapper.alpha, dtype=torch.float16)
    return state


# -- the data -----------------------------------------------------------------

def corner_pictures(count: int, seed: int) -> tuple[np.ndarray, list]:
    """``count`` shapes of the training triples in the corners, but not
    the :data:`HELD_OUT` (triple, corner) pairs; their attributes."""
    from training.tiny.dataset import CORNERS, JITTERS, SIZES, TRAIN_TRIPLES, Attributes, render_batch

    held = {(a.shape, a.colour, a.background, a.position) for a in HELD_OUT}
    cases = [(*t, c) for t in TRAIN_TRIPLES for c in CORNERS if (*t, c) not in held]
    rng = np.random.default_rng(seed)
    which, sizes = rng.integers(0, len(cases), count), rng.integers(0, len(SIZES), count)
    attrs = [Attributes(*cases[w][:3], SIZES[z], cases[w][3]) for w, z in zip(which, sizes)]
    return render_batch(attrs, rng.integers(0, JITTERS, count)), attrs


# -- the run ------------------------------------------------------------------

def train(args) -> dict[str, Any]:
    from safetensors.torch import save_file

    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.settings import DiffusionSettings
    from training.tiny.dataset import canonical_caption, caption, make_dataset

    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    started = time.perf_counter()
    model, clip, vae_handle = load_checkpoint(CHECKPOINT, DiffusionSettings(device="cpu"), "auto")
    unet, encoder, vae = model.unet, clip.encoders[0], vae_handle.vae
    for part in (unet, encoder, vae):
        part.requires_grad_(False).eval()
    scaling = float(vae.config.scaling_factor)

    images, captions, _ = make_dataset(args.pictures, seed=args.seed, split="train")
    corners, attrs = corner_pictures(args.corners, args.seed + 1)
    with torch.no_grad():  # in chunks: the VAE's activations for 10,000 pictures at once are gigabytes
        posteriors = [vae.encode(to_tensor(chunk)).latent_dist
                      for chunk in np.array_split(np.concatenate([images, corners]), 10)]
        means, stds = torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])
    rng = np.random.default_rng(args.seed + 2)
    corner_captions = ["" if rng.random() < 0.1 else caption(a, rng) for a in attrs]
    ids = tokenize(captions + corner_captions)
    report["data"] = {"ordinary": len(images), "corners": len(corners), "scaling_factor": scaling,
                      "held_out": [canonical_caption(a) for a in HELD_OUT]}

    torch.manual_seed(args.seed)
    unet_names, text_names = lora_targets(unet, encoder)
    unet_lora, text_lora = add_lora(unet, unet_names, args.rank), add_lora(encoder, text_names, args.rank)
    if args.init is not None:
        load_factors(args.init, unet_lora, text_lora)
        log(f"LoRA factors from {args.init}")
    params = [p for w in (*unet_lora.values(), *text_lora.values()) for p in (w.down.weight, w.up.weight)]
    report["parameters"] = sum(p.numel() for p in params)
    log(f"LoRA rank {args.rank}: {len(unet_lora)} U-Net and {len(text_lora)} text encoder modules, "
        f"{report['parameters']:,} parameters")
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    alphas = tiny_model.noise_schedule().alphas_cumprod.float()
    half, losses, window = BATCH // 2, [], time.perf_counter()
    t0 = time.perf_counter()
    for step in range(args.steps):
        generator = step_generator(args.seed, 4, step)
        plain = torch.randint(0, len(images), (half,), generator=generator)
        corner = torch.randint(len(images), len(means), (half,), generator=generator)
        pick = torch.cat([plain, corner])
        x0 = (means[pick] + stds[pick] * torch.randn(means[pick].shape, generator=generator)) * scaling
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, len(alphas), (BATCH,), generator=generator)
        a = alphas[t].sqrt()[:, None, None, None]
        s = (1 - alphas[t]).sqrt()[:, None, None, None]
        noisy, target = a * x0 + s * noise, a * noise - s * x0  # v-prediction
        context = encoder(ids[pick]).last_hidden_state
        loss = torch.nn.functional.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, target)
        for group in optimizer.param_groups:
            group["lr"] = LR * min(1.0, (step + 1) / WARMUP)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            now = time.perf_counter()
            count = 50 if (step + 1) % 50 == 0 else (step + 1) % 50
            log(f"lora step {step + 1}/{args.steps} loss {np.mean(losses[-count:]):.4f} "
                f"{(now - window) / count:.3f} s/step")
            window = now
    report["train"] = {"steps": args.steps, "seconds": round(time.perf_counter() - t0, 1),
                       "final_loss": float(np.mean(losses[-50:]))}

    path = out / "sdflow-tiny-corners.safetensors"
    save_file(kohya_state(unet_lora, text_lora), str(path),
              metadata={"ss_network_dim": str(args.rank), "ss_network_alpha": str(args.rank),
                        "sdflow.base": "sdflow-tiny", "sdflow.teaches": "corners", "sdflow.steps": str(args.steps)})
    report["file"] = {"path": str(path), "bytes": path.stat().st_size, "keys_checked": check_keys(path)}
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "train_log.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"done in {report['total_seconds'] / 60:.1f} min: {path} ({report['file']['bytes'] / 1e6:.2f} MB)")
    return report


def load_factors(path: Path, unet_lora: dict[str, LoraWrapped], text_lora: dict[str, LoraWrapped]) -> None:
    """Start from the factors of an earlier run's file (the same rank and modules)."""
    from safetensors.torch import load_file

    saved = load_file(str(path))
    with torch.no_grad():
        for key, value in kohya_state(unet_lora, text_lora).items():
            if not key.endswith(".alpha"):
                wrapper = (unet_lora if key.startswith("lora_unet_") else text_lora)
                module = _wrapper_of(key, wrapper)
                getattr(module, "down" if ".lora_down." in key else "up").weight.copy_(saved[key].float())


def _wrapper_of(key: str, wrapped: dict[str, LoraWrapped]) -> LoraWrapped:
    flat = key.split(".", 1)[0].split("_", 2)[-1]  # lora_unet_<name> / lora_te_<name>
    for name, wrapper in wrapped.items():
        full = name if key.startswith("lora_unet_") or name.startswith("text_model.") else "text_model." + name
        if full.replace(".", "_") == flat:
            return wrapper
    raise KeyError(key)


def check_keys(path: Path) -> int:
    """Apply the file with sdflow's own LoRA code to a freshly loaded base
    and fail unless every group names a module; the number of groups."""
    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.models.lora import lora_patch, read_lora
    from sdflow_diffusion.settings import DiffusionSettings

    model, clip, _ = load_checkpoint(CHECKPOINT, DiffusionSettings(device="cpu"), "auto")
    layout, tensors = read_lora(path, False, path.name)
    warnings: list[str] = []
    patches = [lora_patch(layout, tensors, path.name, handle, 1.0, warnings.append) for handle in (model, clip)]
    applied = sum(len(p.changes) for p in patches)
    if warnings or layout.unknown or applied != len(layout.groups):
        raise RuntimeError(f"{path}: {applied} of {len(layout.groups)} groups applied; {warnings}")
    return applied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.tiny.train_lora",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the LoRA and its log")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pictures", type=int, default=6000, help="ordinary training pictures")
    parser.add_argument("--corners", type=int, default=4000, help="pictures of shapes in the corners")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", type=Path, default=None, help="continue from the factors of this LoRA file")
    args = parser.parse_args(argv)
    log(f"sdflow-tiny LoRA: {' '.join(sys.argv[1:] if argv is None else argv)}")
    train(args)


if __name__ == "__main__":
    main()
