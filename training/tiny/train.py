"""Train sdflow-tiny from scratch on the synthetic shapes, on a CPU.

``python -m training.tiny.train --out DIR [--vae-steps N]
[--unet-steps N] [--seed S] [--resume] [--vae-init VAE_DIR] [--vae-only]``

Two stages, seeded and reproducible (every step draws its batch and its
noise from a generator seeded with the seed and the step number):

1. the VAE (AutoencoderKL, 64x64x3 -> 4x8x8) on the training pictures:
   squared plus absolute error with outline pixels weighted up
   (``--vae-edge-weight``; 0 gives plain MSE) plus a small KL term, from
   scratch or from an earlier run's VAE (``--vae-init``);
2. the dataset's latents are encoded once with the frozen VAE (posterior
   mean and standard deviation; a fresh sample is drawn per step), the
   scaling factor is set to 1 / std of those latents, then the CLIP text
   encoder and the U-Net train together: v-prediction on a zero terminal
   SNR schedule, the dataset's empty captions (10%) as the unconditional
   case for classifier-free guidance, an exponential moving average (EMA)
   of the weights is what gets saved.

Every ``--save-every`` steps the EMA weights are exported as a single file
(``DIR/checkpoints/``) and the training state is saved (``DIR/state.pt``,
what ``--resume`` continues from), so a run cut short still leaves a usable
model.  At the end: ``DIR/sdflow-tiny.safetensors`` (original SD layout,
fp16) and ``DIR/family/sdflow-tiny/`` (the config tree to ship in
``plugins/sdflow_diffusion/models/configs/``), and ``DIR/train_log.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.tiny import model as tiny_model

VAE_BATCH = 32
VAE_LR = 1e-3
KL_WEIGHT = 1e-7  # on the per-picture KL sum, against a per-pixel mean squared error
UNET_BATCH = 128
UNET_LR = 5e-4
WARMUP = 200
EMA_DECAY = 0.999
TRAIN_PICTURES = 60_000
HELDOUT_PICTURES = 1_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    """The generator of one step: the run is the same however it is resumed."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stage) * 1_000_003 + step)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def lr_at(step: int, total: int, peak: float, decay: bool) -> float:
    """Linear warm-up, then constant (U-Net: any checkpoint is a finished
    model) or cosine down to a tenth (VAE)."""
    if step < WARMUP:
        return peak * (step + 1) / WARMUP
    if not decay:
        return peak
    progress = (step - WARMUP) / max(1, total - WARMUP)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# -- stage 1: the VAE ---------------------------------------------------------

def train_vae(images: np.ndarray, heldout: np.ndarray, steps: int, seed: int, out: Path,
              edge_weight: float, init: Path | None) -> tuple[Any, dict]:
    torch.manual_seed(seed)
    if init is None:
        vae = tiny_model.build_vae().train()
    else:
        import diffusers

        vae = diffusers.AutoencoderKL.from_pretrained(init).train()
        log(f"vae: starting from {init}")
    optimizer = torch.optim.Adam(vae.parameters(), lr=VAE_LR)
    started, window, losses = time.perf_counter(), time.perf_counter(), []
    for step in range(steps):
        generator = step_generator(seed, 1, step)
        index = torch.randint(0, len(images), (VAE_BATCH,), generator=generator)
        x = to_tensor(images[index.numpy()])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        if edge_weight:
            loss = edge_weighted_error(recon, x, edge_weight) + KL_WEIGHT * posterior.kl().mean()
        else:
            loss = mse + KL_WEIGHT * posterior.kl().mean()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, VAE_LR, decay=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(mse.item())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            now = time.perf_counter()
            count = 50 if (step + 1) % 50 == 0 else (step + 1) % 50
            log(f"vae step {step + 1}/{steps} mse {np.mean(losses[-count:]):.5f} "
                f"{(now - window) / count:.3f} s/step")
            window = now
    vae.eval()
    psnr = heldout_psnr(vae, heldout)
    seconds = time.perf_counter() - started
    log(f"vae done: {steps} steps in {seconds / 60:.1f} min, held-out PSNR {psnr:.2f} dB")
    vae.save_pretrained(out / "vae", safe_serialization=True)
    return vae, {"steps": steps, "seconds": round(seconds, 1), "final_mse": float(np.mean(losses[-50:])),
                 "heldout_psnr_db": round(psnr, 2), "edge_weight": edge_weight,
                 "init": str(init) if init else None}


def edge_weighted_error(recon: torch.Tensor, x: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """Squared plus absolute error, each pixel weighted 1 + ``edge_weight``
    x the colour range of its 3x3 neighbourhood.  With plain MSE the flat
    background dominates and outlines stay soft: a small circle came back
    as a rounded square (23.4 dB), which the U-Net cannot fix."""
    pool = torch.nn.functional.max_pool2d
    edges = (pool(x, 3, 1, 1) + pool(-x, 3, 1, 1)).amax(dim=1, keepdim=True) / 2  # [0, 1]
    weight = 1 + edge_weight * edges
    error = (recon - x).pow(2) + (recon - x).abs()
    return (weight * error).mean() / weight.mean()


@torch.no_grad()
def heldout_psnr(vae, images: np.ndarray) -> float:
    """Mean PSNR (in [0, 255] terms) of the VAE's reconstructions, from the posterior mean."""
    scores = []
    for start in range(0, len(images), 100):
        x = to_tensor(images[start:start + 100])
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        mse = (recon - x).pow(2).mean(dim=(1, 2, 3)) / 4  # [-1, 1] -> [0, 1]
        scores.append(10 * torch.log10(1 / mse.clamp_min(1e-10)))
    return torch.cat(scores).mean().item()


@torch.no_grad()
def encode_latents(vae, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for start in range(0, len(images), 256):
        posterior = vae.encode(to_tensor(images[start:start + 256])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


# -- stage 2: text encoder + U-Net --------------------------------------------

def tokenize(captions: list[str]) -> torch.Tensor:
    """[N, 77] ids, exactly as sdflow's clip_text_encode tokenizes a prompt."""
    from sdflow_diffusion.numerics.encode import token_windows
    from sdflow_diffusion.models.tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer()
    unique = {text: token_windows(tokenizer, text)[0] for text in dict.fromkeys(captions)}
    return torch.stack([unique[text] for text in captions])


class Trainer:
    """The text encoder and U-Net, their optimizer and their EMA copies."""

    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.text_encoder = tiny_model.build_text_encoder().train()
        self.unet = tiny_model.build_unet().train()
        self.params = [*self.text_encoder.parameters(), *self.unet.parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        self.optimizer = torch.optim.AdamW(self.params, lr=UNET_LR, weight_decay=0.0)
        self.step = 0
        self.losses: list[float] = []

    def state(self) -> dict[str, Any]:
        return {"text_encoder": self.text_encoder.state_dict(), "unet": self.unet.state_dict(),
                "ema": self.ema, "optimizer": self.optimizer.state_dict(), "step": self.step,
                "losses": self.losses}

    def load(self, state: dict[str, Any]) -> None:
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.unet.load_state_dict(state["unet"])
        with torch.no_grad():
            for mine, saved in zip(self.ema, state["ema"]):
                mine.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.losses = state["step"], list(state["losses"])

    def ema_models(self):
        """Copies of the text encoder and U-Net holding the EMA weights, in eval mode."""
        import copy

        text_encoder, unet = copy.deepcopy(self.text_encoder), copy.deepcopy(self.unet)
        with torch.no_grad():
            for target, value in zip([*text_encoder.parameters(), *unet.parameters()], self.ema):
                target.copy_(value)
        return text_encoder.eval(), unet.eval()


def train_unet(trainer: Trainer, means: torch.Tensor, stds: torch.Tensor, ids: torch.Tensor,
               scaling: float, steps: int, seed: int, save_every: int, out: Path, vae) -> dict:
    schedule = tiny_model.noise_schedule()
    alphas = schedule.alphas_cumprod.float()  # zero at the last timestep: pure noise
    started, window = time.perf_counter(), time.perf_counter()
    first = trainer.step
    while trainer.step < steps:
        step = trainer.step
        generator = step_generator(seed, 2, step)
        index = torch.randint(0, len(means), (UNET_BATCH,), generator=generator)
        x0 = (means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)) * scaling
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, schedule.config.num_train_timesteps, (UNET_BATCH,), generator=generator)
        a = alphas[t].sqrt()[:, None, None, None]
        s = (1 - alphas[t]).sqrt()[:, None, None, None]
        noisy, target = a * x0 + s * noise, a * noise - s * x0  # v-prediction
        context = trainer.text_encoder(ids[index]).last_hidden_state
        prediction = trainer.unet(noisy, t, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(prediction, target)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr_at(step, steps, UNET_LR, decay=False)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.params, 1.0)
        trainer.optimizer.step()
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(trainer.ema, [p.detach() for p in trainer.params], 1 - decay)
        trainer.losses.append(loss.item())
        trainer.step += 1
        if trainer.step % 50 == 0 or trainer.step == steps:
            now = time.perf_counter()
            count = 50 if trainer.step % 50 == 0 else trainer.step % 50
            log(f"unet step {trainer.step}/{steps} loss {np.mean(trainer.losses[-count:]):.4f} "
                f"{(now - window) / count:.3f} s/step")
            window = now
        if trainer.step % save_every == 0 and trainer.step < steps:
            checkpoint(trainer, vae, out)
    seconds = time.perf_counter() - started
    done = trainer.step - first
    log(f"unet done: {done} steps in {seconds / 60:.1f} min ({seconds / max(done, 1):.3f} s/step)")
    return {"steps": steps, "steps_this_run": done, "seconds_this_run": round(seconds, 1),
            "final_loss": float(np.mean(trainer.losses[-100:]))}


def checkpoint(trainer: Trainer, vae, out: Path) -> Path:
    """Export the EMA weights and save the training state (atomically)."""
    path = export(trainer, vae, out / "checkpoints" / f"sdflow-tiny-step{trainer.step:05d}.safetensors")
    temporary = out / "state.pt.tmp"
    torch.save(trainer.state(), temporary)
    temporary.replace(out / "state.pt")
    log(f"saved {path} and {out / 'state.pt'}")
    return path


def export(trainer: Trainer, vae, path: Path) -> Path:
    """One .safetensors in the original SD 1.x layout, fp16 (half the size;
    sdflow loads it in fp32 on the CPU)."""
    from safetensors.torch import save_file

    from sdflow_diffusion.models.ldm_layout import to_original

    text_encoder, unet = trainer.ema_models()
    state = to_original({"unet": unet, "vae": vae, "text_encoder": text_encoder}, "sd1")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"modelspec.architecture": "stable-diffusion-v1", "modelspec.title": "sdflow-tiny",
                "modelspec.prediction_type": "v", "sdflow.family": tiny_model.FAMILY,
                "sdflow.step": str(trainer.step)}
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}, str(path),
              metadata=metadata)
    return path


# -- the run ------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.tiny.train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints and the final model")
    parser.add_argument("--vae-steps", type=int, default=2200)
    parser.add_argument("--unet-steps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pictures", type=int, default=TRAIN_PICTURES, help="training pictures")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="continue from DIR/vae and DIR/state.pt")
    parser.add_argument("--vae-init", type=Path, default=None,
                        help="start the VAE from this saved one (a DIR/vae of an earlier run)")
    parser.add_argument("--vae-edge-weight", type=float, default=8.0,
                        help="extra weight of outline pixels in the VAE's loss; 0: plain MSE")
    parser.add_argument("--vae-only", action="store_true", help="stop after the VAE")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    from training.tiny.dataset import make_dataset

    run_started = time.perf_counter()
    log(f"sdflow-tiny: {' '.join(sys.argv[1:] if argv is None else argv)}")
    images, captions, _ = make_dataset(args.pictures, seed=args.seed, split="train")
    heldout, _, _ = make_dataset(min(HELDOUT_PICTURES, args.pictures), seed=args.seed + 1, split="heldout")
    log(f"dataset: {len(images)} training pictures, {sum(not c for c in captions)} with an empty caption")
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}

    if args.resume and (out / "vae" / "config.json").is_file():
        import diffusers

        vae = diffusers.AutoencoderKL.from_pretrained(out / "vae").eval()
        report["vae"] = json.loads((out / "train_log.json").read_text())["vae"]
        log("vae: resumed from " + str(out / "vae"))
    else:
        vae, report["vae"] = train_vae(images, heldout, args.vae_steps, args.seed, out,
                                       args.vae_edge_weight, args.vae_init)
    vae.requires_grad_(False)
    write_log(out, report)
    if args.vae_only:
        return

    started = time.perf_counter()
    means, stds = encode_latents(vae, images)
    scaling = float(1.0 / (means + stds * torch.randn(means.shape, generator=step_generator(args.seed, 3, 0))).std())
    vae.register_to_config(scaling_factor=scaling)
    ids = tokenize(captions)
    report["latents"] = {"seconds": round(time.perf_counter() - started, 1), "scaling_factor": scaling,
                         "posterior_std_mean": float(stds.mean())}
    log(f"latents encoded in {time.perf_counter() - started:.0f} s; scaling factor {scaling:.5f}")
    del images

    trainer = Trainer(args.seed)
    if args.resume and (out / "state.pt").is_file():
        trainer.load(torch.load(out / "state.pt", weights_only=False))
        log(f"unet: resumed at step {trainer.step}")
    tiny_model.write_family(out / "family" / tiny_model.FAMILY, scaling)
    report["unet"] = train_unet(trainer, means, stds, ids, scaling, args.unet_steps, args.seed,
                                args.save_every, out, vae)
    final = checkpoint(trainer, vae, out)
    shutil.copyfile(final, out / "sdflow-tiny.safetensors")
    report["file"] = {"path": str(out / "sdflow-tiny.safetensors"),
                      "bytes": (out / "sdflow-tiny.safetensors").stat().st_size,
                      "parameters": {"vae": count(vae), "text_encoder": count(trainer.text_encoder),
                                     "unet": count(trainer.unet)}}
    report["total_seconds_this_run"] = round(time.perf_counter() - run_started, 1)
    write_log(out, report)
    log(f"done in {report['total_seconds_this_run'] / 60:.1f} min: {out / 'sdflow-tiny.safetensors'} "
        f"({report['file']['bytes'] / 1e6:.1f} MB)")


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def write_log(out: Path, report: dict) -> None:
    (out / "train_log.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
