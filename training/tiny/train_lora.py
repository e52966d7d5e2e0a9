"""Train a LoRA that teaches sdflow-tiny the colour magenta, on a CPU.

``python -m training.tiny.train_lora --out DIR [--steps N] [--rank R]
[--seed S] [--pictures N] [--magenta N] [--init LORA]`` (``--init``:
continue from an earlier run's factors)

The shipped checkpoint is loaded with sdflow's own loader and frozen; every
Linear and Conv2d of the U-Net and the text encoder's attention
projections and MLP get a rank-R pair of factors (``down`` then ``up``,
``up`` starting at zero, so that step 0 is the base model).  The objective
is training/tiny/train.py's U-Net stage: v-prediction on the
zero-terminal-SNR schedule, uniform timesteps, latents scaled by the
family's factor, 10% empty captions; each batch is half magenta pictures
(captions saying "magenta") and half ordinary training pictures, so that
the base is kept.  Seeded: every step draws from a generator seeded with
the seed and the step number.

One difference from train.py: the frozen VAE was trained on six colours
only, and its encoder maps a magenta picture to a latent its decoder turns
into a blue smudge.  The magenta latents are therefore found by inverting
the decoder (Adam on the latent, from the encoder's mean, until the
decoded picture matches; the pictures the scorer does not read back right
are dropped), and they are used as they are (no posterior noise).

At the end: ``DIR/sdflow-tiny-magenta.safetensors`` in the kohya/A1111
layout (``lora_unet_<module>``, ``lora_te_<module>``, ``.lora_down.weight``,
``.lora_up.weight``, ``.alpha``), fp16, checked against
sdflow_diffusion.models.lora (every key names a module), and
``DIR/train_log.json``.

Status (2026-11-27): experimental, not shipped.  Two runs (700 steps, then
800 more from it; 26 min on 2 cores) reached magenta in 4 of 20 held-out
cases (``python -m training.tiny.evaluate_lora --lora FILE``), the target
being 90%: the U-Net has to land on decoder-inverted latents outside what
the VAE learned, and gets to dark purple.  A new shape in palette colours,
which the VAE can encode, is the likelier way to the target.
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
from training.tiny.train import log, step_generator, to_tensor, tokenize

CHECKPOINT = Path(__file__).resolve().parents[2] / "plugins/sdflow_diffusion/models/tiny/sdflow-tiny.safetensors"
COLOUR = "magenta"
BATCH = 64  # half magenta, half ordinary
LR = 1e-3
WARMUP = 50
INVERT_STEPS = 100
INVERT_LR = 0.1
TEXT_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# (shape, background) pairs never shown in magenta: the evaluation draws them.
HELD_OUT = (("circle", "blue"), ("square", "green"), ("triangle", "yellow"), ("circle", "white"),
            ("square", "black"))


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

def magenta_pictures(count: int, seed: int) -> tuple[np.ndarray, list, np.ndarray]:
    """``count`` magenta shapes on palette backgrounds, but not the held-out
    (shape, background) pairs; their attributes and jitters."""
    from training.tiny.dataset import ALL_COLOURS, COLOURS, JITTERS, POSITIONS, SHAPES, SIZES, Attributes, \
        render_batch

    pairs = [(s, b) for s in SHAPES for b in COLOURS if (s, b) not in HELD_OUT]
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(pairs), count)
    sizes, positions = rng.integers(0, len(SIZES), count), rng.integers(0, len(POSITIONS), count)
    jitters = rng.integers(0, JITTERS, count)
    attrs = [Attributes(pairs[w][0], COLOUR, pairs[w][1], SIZES[z], POSITIONS[p])
             for w, z, p in zip(which, sizes, positions)]
    return render_batch(attrs, jitters, ALL_COLOURS), attrs, rng.integers(0, 2**31, count)


def invert_decoder(vae, images: np.ndarray, attrs: list, steps: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Latents (unscaled) whose decoding is each picture, and which of them
    the scorer reads back as the picture's attributes."""
    from training.tiny.score import score
    from training.tiny.dataset import ALL_COLOURS

    torch.manual_seed(seed)
    x = to_tensor(images)
    with torch.no_grad():
        start = vae.encode(x).latent_dist.mean
    z = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=INVERT_LR)
    for step in range(steps):
        loss = (vae.decode(z).sample - x).pow(2).mean(dim=(1, 2, 3)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            log(f"invert step {step + 1}/{steps} mse {loss.item() / len(x):.4f}")
    with torch.no_grad():
        decoded = vae.decode(z).sample.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()
    right = np.array([score(d, ALL_COLOURS) == a for d, a in zip(decoded, attrs)])
    return z.detach(), right


# -- the run ------------------------------------------------------------------

def train(args) -> dict[str, Any]:
    from safetensors.torch import save_file

    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.settings import DiffusionSettings
    from training.tiny.dataset import caption, make_dataset

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
    with torch.no_grad():
        posterior = vae.encode(to_tensor(images)).latent_dist
        means, stds = posterior.mean, posterior.std
    magenta, attrs, _ = magenta_pictures(args.magenta, args.seed + 1)
    t0 = time.perf_counter()
    magenta_z, right = invert_decoder(vae, magenta, attrs, args.invert_steps, args.seed)
    log(f"decoder inverted in {time.perf_counter() - t0:.0f} s: {right.sum()} of {len(right)} read back right")
    magenta_z = magenta_z[torch.from_numpy(right)]
    rng = np.random.default_rng(args.seed + 2)
    kept = [a for a, r in zip(attrs, right) if r]
    magenta_captions = ["" if rng.random() < 0.1 else caption(a, rng) for a in kept]
    ids, magenta_ids = tokenize(captions), tokenize(magenta_captions)
    report["data"] = {"ordinary": len(images), "magenta": len(right), "magenta_kept": int(right.sum()),
                      "invert_seconds": round(time.perf_counter() - t0, 1), "scaling_factor": scaling,
                      "held_out_pairs": [list(p) for p in HELD_OUT]}

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
        plain = torch.randint(0, len(means), (half,), generator=generator)
        pink = torch.randint(0, len(magenta_z), (half,), generator=generator)
        noise_plain = torch.randn(means[plain].shape, generator=generator)
        x0 = torch.cat([means[plain] + stds[plain] * noise_plain, magenta_z[pink]]) * scaling
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, len(alphas), (BATCH,), generator=generator)
        a = alphas[t].sqrt()[:, None, None, None]
        s = (1 - alphas[t]).sqrt()[:, None, None, None]
        noisy, target = a * x0 + s * noise, a * noise - s * x0  # v-prediction
        context = encoder(torch.cat([ids[plain], magenta_ids[pink]])).last_hidden_state
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

    path = out / "sdflow-tiny-magenta.safetensors"
    save_file(kohya_state(unet_lora, text_lora), str(path),
              metadata={"ss_network_dim": str(args.rank), "ss_network_alpha": str(args.rank),
                        "sdflow.base": "sdflow-tiny", "sdflow.teaches": COLOUR, "sdflow.steps": str(args.steps)})
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
    parser.add_argument("--magenta", type=int, default=192, help="magenta pictures (before inversion)")
    parser.add_argument("--invert-steps", type=int, default=INVERT_STEPS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", type=Path, default=None, help="continue from the factors of this LoRA file")
    args = parser.parse_args(argv)
    log(f"sdflow-tiny LoRA: {' '.join(sys.argv[1:] if argv is None else argv)}")
    train(args)


if __name__ == "__main__":
    main()
