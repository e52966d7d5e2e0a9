"""The U-Net as a denoiser over sigmas, with classifier-free guidance as ComfyUI applies it.

k-diffusion's view of a discrete-time model, which ComfyUI's samplers take:
a function ``denoise(x, sigma)`` that returns the model's estimate of the
clean latent, where ``x`` is the clean latent plus noise of standard
deviation ``sigma``.  For a model trained on timesteps (every Stable
Diffusion) that means, per call:

1. scale the input to unit variance, ``x / sqrt(sigma^2 + 1)``;
2. give the U-Net the training timestep nearest to ``sigma``
   (:meth:`NoiseTable.timestep`, as a float);
3. turn its output into a clean-latent estimate: ``x - sigma * eps`` for an
   epsilon model, ``x / (sigma^2 + 1) - sigma * v / sqrt(sigma^2 + 1)`` for
   a v-prediction one.

Guidance mixes the clean-latent estimates (not the noise estimates, which
differ from them in the last bits): ``uncond + (cond - uncond) * cfg``; at
``cfg`` 1 the negative prompt is not run at all.  The prompt and the
negative go through the U-Net as one batch, ``[negative..., positive...]``.

Everything later stages add to a model call (a noise mask, ControlNet
residuals, area conditioning, model patches) goes through the
:class:`DenoiserHook` of this one class, so every sampler gets it without
a change to any sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from sdflow.plugin import StageError
from sdflow_diffusion.handles import Conditioning, ModelHandle
from sdflow_diffusion.numerics.schedules import NoiseTable

AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5  # the SDXL refiner's, as diffusers sets them


@dataclass
class UNetCall:
    """One U-Net evaluation, as a hook may change it before it runs: the
    scaled input, the timesteps, the text context, SDXL's added conditions
    and any further keyword arguments of diffusers' U-Net (e.g. ControlNet's
    ``down_block_additional_residuals``)."""

    sample: torch.Tensor
    timestep: torch.Tensor
    context: torch.Tensor
    added: dict[str, torch.Tensor] | None
    sigma: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class DenoiserHook:
    """What a stage may add to every model call of a sampling run.  Each
    method does nothing here: a hook overrides the ones it needs."""

    def before_denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The noisy latent the model is asked about, changed (e.g. the kept
        region of an inpainting put back at this noise level); return it."""
        return x

    def before_unet(self, call: UNetCall) -> None:
        """Change the U-Net call in place (inputs, context, residuals)."""

    def after_denoise(self, denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The guided clean-latent estimate, changed (e.g. masked); return it."""
        return denoised


class Denoiser:
    """``denoise(x, sigma)``: the guided clean-latent estimate of a model for
    a batch ``x`` at noise level ``sigma`` (a 0-dim CPU tensor).

    ``context`` and ``added`` are the U-Net's text conditions for the whole
    guided batch (``[negative, positive]`` when ``guided``, else the
    positive alone), as :func:`unet_conditions` builds them.
    """

    def __init__(self, model: ModelHandle, table: NoiseTable, context: torch.Tensor,
                 added: dict[str, torch.Tensor] | None, cfg: float, guided: bool,
                 hooks: tuple[DenoiserHook, ...] = ()) -> None:
        self.model, self.table = model, table
        self.context, self.added = context, added
        self.cfg, self.guided = cfg, guided
        self.hooks = hooks
        self.v_prediction = model.family.prediction_type == "v_prediction"

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        for hook in self.hooks:
            x = hook.before_denoise(x, sigma)
        scaled = x / (sigma**2 + 1.0) ** 0.5
        batch = x.shape[0] * (2 if self.guided else 1)
        timestep = self.table.timestep(sigma).float().expand(batch).to(x.device)
        call = UNetCall(
            sample=(torch.cat([scaled, scaled]) if self.guided else scaled).to(self.model.dtype),
            timestep=timestep, context=self.context, added=self.added, sigma=sigma,
        )
        for hook in self.hooks:
            hook.before_unet(call)
        output = self.model.unet(call.sample, call.timestep, encoder_hidden_states=call.context,
                                 added_cond_kwargs=call.added, return_dict=False, **call.extra)[0].float()
        inputs = torch.cat([x, x]) if self.guided else x
        denoised = self._clean(output, inputs, sigma)
        if self.guided:
            uncond, cond = denoised.chunk(2)
            denoised = uncond + (cond - uncond) * self.cfg
        for hook in self.hooks:
            denoised = hook.after_denoise(denoised, x, sigma)
        return denoised

    def _clean(self, output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The clean-latent estimate from the U-Net's output (sigma_data 1)."""
        if self.v_prediction:
            return x * 1.0 / (sigma**2 + 1.0) - output * sigma * 1.0 / (sigma**2 + 1.0) ** 0.5
        return x - output * sigma


def start_noise(table: NoiseTable, sigmas: torch.Tensor, noise: torch.Tensor,
                latent: torch.Tensor) -> torch.Tensor:
    """The sampler's starting point: the latent plus the noise at the first
    sigma.  A schedule that starts at the top of the table (txt2img) scales
    the noise by sqrt(1 + sigma^2), as ComfyUI does, so the start has the
    variance the model was trained on; one that starts lower (img2img) by
    sigma."""
    first = sigmas[0]
    top = float(table.sigma_max)
    at_top = math.isclose(top, float(first), rel_tol=1e-5) or float(first) > top
    scale = torch.sqrt(1.0 + first**2.0) if at_top else first
    return noise * scale.to(noise.device) + latent


def image_seeds(seed: int, batch: int, batch_index: list[int] | None = None) -> list[int]:
    """Each image's seed: image i of a batch has ``seed + i``, or ``seed +
    batch_index[i]`` when the latent says which image of a larger batch it
    was (latent_from_batch, repeat_latent_batch), so a picked image keeps
    its noise."""
    offsets = list(batch_index) if batch_index is not None and len(batch_index) == batch else range(batch)
    return [(seed + i) % 2**64 for i in offsets]


def initial_noise(shape, seed: int, batch_index: list[int] | None = None
                  ) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Standard normal noise drawn on the CPU, image i from its seed
    (:func:`image_seeds`), and the generators, which go on to serve the
    sampler's own noise."""
    generators = [torch.Generator("cpu").manual_seed(s) for s in image_seeds(seed, shape[0], batch_index)]
    noise = [torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(noise), generators


def unet_conditions(model: ModelHandle, positive: Conditioning, negative: Conditioning, shape,
                  guided: bool) -> tuple[torch.Tensor, dict | None]:
    """The U-Net's cross-attention context for the batch, [negative..., positive...]
    when guided, and SDXL's added conditions (pooled text, size and crop)."""
    batch = shape[0]
    pos, neg = positive.embeds, negative.embeds
    expected = model.unet.config.cross_attention_dim
    if {pos.shape[-1], neg.shape[-1]} != {expected}:
        raise StageError(f"the prompts were encoded for another model: {pos.shape[-1]} and "
                         f"{neg.shape[-1]} features, this U-Net takes {expected}",
                         "encode the prompts with the same checkpoint's clip")
    if guided:
        pos, neg = _common_length(pos, neg)
    parts = [neg, pos] if guided else [pos]
    context = torch.cat([p.to(model.device, model.dtype).expand(batch, -1, -1) for p in parts])
    added_conditions = model.family.architecture.added_conditions
    if added_conditions is None:
        return context, None
    pooled = [negative.pooled, positive.pooled] if guided else [positive.pooled]
    if any(p is None for p in pooled):
        raise StageError(f"{model.family.architecture.description} needs prompts encoded by its own CLIP "
                         "(with a pooled embedding)",
                         "encode the prompts with the same checkpoint's clip")
    text_embeds = torch.cat([p.to(model.device, model.dtype).expand(batch, -1) for p in pooled])
    # SDXL's micro-conditioning: original size = target size = the image size, crop (0, 0);
    # the refiner's has an aesthetic score where the target size was (diffusers'
    # defaults: 6 for the prompt, 2.5 for the negative).
    factor = model.family.vae_scale_factor
    height, width = shape[-2] * factor, shape[-1] * factor
    if added_conditions == "text_time_aesthetic":
        scores = [NEGATIVE_AESTHETIC_SCORE, AESTHETIC_SCORE] if guided else [AESTHETIC_SCORE]
        rows = [[height, width, 0, 0, score] for score in scores for _ in range(batch)]
    else:
        rows = [[height, width, 0, 0, height, width]] * len(text_embeds)
    time_ids = torch.tensor(rows, dtype=model.dtype, device=model.device)
    return context, {"text_embeds": text_embeds, "time_ids": time_ids}


def _common_length(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths (in 77-token windows) repeated to their least
    common multiple, as ComfyUI does, so both fit one batch.  Repeating a whole
    prompt k times leaves cross-attention's output as it was: every key and
    value appears k times, so the softmax average is the same."""
    if a.shape[1] == b.shape[1]:
        return a, b
    length = math.lcm(a.shape[1], b.shape[1])
    return a.repeat(1, length // a.shape[1], 1), b.repeat(1, length // b.shape[1], 1)
