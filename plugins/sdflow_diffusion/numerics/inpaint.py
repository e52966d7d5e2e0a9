"""Inpainting in the sampler: a latent's noise mask, and an inpainting U-Net's extra channels.

Both are :class:`DenoiserHook` objects, so every ComfyUI sampler honours them
without a change to any sampler.  What they do is what ComfyUI does:

* **Noise mask** (set by vae_encode_for_inpaint or set_latent_noise_mask; 1
  where to repaint).  Resized to the latent bilinearly, as ComfyUI does.
  Before each model call the kept region (mask 0) is put back as the input
  latent plus the starting noise at the current sigma; after it, the clean
  estimate there is the input latent itself.  So the last step, which lands
  on the clean estimate, leaves the kept region exactly as it came in.
  ComfyUI's ``ddim`` uses fresh noise (seed + 1) for the kept region.
* **Inpainting checkpoint** (a U-Net with 9 input channels): after the 4
  latent channels come the mask (resized bilinearly, rounded to 0 or 1) and
  the latent of the masked image (the input latent: vae_encode_for_inpaint
  greys the masked pixels before encoding).  Without a noise mask the mask
  is all ones and the image SD's VAE's encoding of grey, ComfyUI's
  constants.

The diffusers engine (``diffusers:<name>`` samplers) does what diffusers'
``StableDiffusionInpaintPipeline`` does instead: :func:`diffusers_mask`
(nearest, binarised) and, for an ordinary U-Net, :func:`keep_region` after
every scheduler step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdflow_diffusion.handles import Latent, ModelHandle
from sdflow_diffusion.numerics.batch import repeat_to_batch
from sdflow_diffusion.numerics.denoiser import DenoiserHook, UNetCall, image_seeds

# SD's VAE's latent of a grey (0.5) image, in the U-Net's space: ComfyUI's
# "blank" masked image for an inpainting U-Net sampled without a mask.
BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def latent_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A noise mask (``[B or 1, 1, H, W]`` or ``[B, H, W]``, any size) as a
    ``shape`` tensor: resized bilinearly, repeated over channels and batch
    (ComfyUI's ``reshape_mask``)."""
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    mask = F.interpolate(mask, size=tuple(shape[-2:]), mode="bilinear")
    return repeat_to_batch(mask.expand(-1, shape[1], -1, -1), shape[0])


def diffusers_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A noise mask as diffusers' inpaint pipeline makes it: binarised at
    0.5, then resized to the latent by nearest neighbour."""
    mask = (mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float() >= 0.5).float()
    mask = F.interpolate(mask, size=tuple(shape[-2:]))
    return repeat_to_batch(mask, shape[0])


class NoiseMask(DenoiserHook):
    """ComfyUI's KSamplerX0Inpaint: only the masked region is resampled."""

    def __init__(self, mask: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor) -> None:
        self.mask, self.latent, self.noise = mask, latent, noise

    def before_denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        kept = self.noise * sigma.to(x.device) + self.latent
        return x * self.mask + kept * (1.0 - self.mask)

    def after_denoise(self, denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoised * self.mask + self.latent * (1.0 - self.mask)


class InpaintChannels(DenoiserHook):
    """The mask and the masked image's latent beside an inpainting U-Net's input."""

    def __init__(self, extra: torch.Tensor) -> None:
        self.extra = extra  # [batch, 5, h, w]: mask, then the masked image's latent

    def before_unet(self, call: UNetCall) -> None:
        # One chunk per conditioning entry in the call (the guided batch:
        # negative, prompt), each over its area of the latent.
        chunks = [self.extra if area is None else self.extra[..., area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
                  for area in call.areas or [None] * (call.sample.shape[0] // self.extra.shape[0])]
        extra = torch.cat(chunks).to(call.sample.device, call.sample.dtype)
        call.sample = torch.cat([call.sample, extra], dim=1)


def inpaint_channels(model: ModelHandle, latent: Latent, start: torch.Tensor, diffusers: bool = False
                     ) -> torch.Tensor | None:
    """What an inpainting U-Net takes beside the latent (``[batch, 5, h, w]``),
    or None for an ordinary U-Net."""
    if model.family.variant != "inpainting":
        return None
    shape = start.shape
    if latent.noise_mask is None:
        mask = torch.ones((shape[0], 1, *shape[2:]), device=start.device)
        blank = torch.tensor(BLANK_INPAINT_LATENT, device=start.device).reshape(1, 4, 1, 1)
        image = blank.expand(shape[0], -1, *shape[2:])
    else:
        if diffusers:
            mask = diffusers_mask(latent.noise_mask, shape)
        else:
            mask = latent_mask(latent.noise_mask, (shape[0], 1, *shape[2:])).round()
        image = start
    return torch.cat([mask.to(start.device), image], dim=1)


def sampler_hooks(model: ModelHandle, latent: Latent, start: torch.Tensor, noise: torch.Tensor, seed: int,
                  fresh_noise: bool = False) -> tuple[DenoiserHook, ...]:
    """The hooks a ComfyUI sampler runs with for ``latent``: its noise mask,
    an inpainting U-Net's channels.  ``fresh_noise``: the kept region is
    noised from seed + 1 instead of the starting noise (ComfyUI's ddim)."""
    from sdflow_diffusion.numerics.denoiser import noise_from_seeds

    hooks: list[DenoiserHook] = []
    channels = inpaint_channels(model, latent, start)
    if channels is not None:
        hooks.append(InpaintChannels(channels))
    if latent.noise_mask is not None:
        if fresh_noise:
            seeds = image_seeds(seed, start.shape[0], latent.extra.get("batch_index"))
            noise = noise_from_seeds(start.shape, [s + 1 for s in seeds])[0].to(start.device)
        hooks.append(NoiseMask(latent_mask(latent.noise_mask, start.shape).to(start.device), start, noise))
    return tuple(hooks)


def keep_region(x: torch.Tensor, mask: torch.Tensor, latent: torch.Tensor, noise: torch.Tensor,
                scheduler, next_timestep: torch.Tensor | None) -> torch.Tensor:
    """diffusers' inpaint pipeline after a step (ordinary U-Net): the kept
    region is the input latent noised to the next timestep (clean after
    the last)."""
    kept = latent if next_timestep is None else scheduler.add_noise(latent, noise, next_timestep.reshape(1))
    return (1 - mask) * kept + mask * x
