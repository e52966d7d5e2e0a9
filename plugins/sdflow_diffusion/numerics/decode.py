"""From latents to pixels (VAEDecode), and from pixels to PIL images for saving.

Both follow diffusers' pipelines step for step (divide by the scaling
factor, decode, ``x / 2 + 0.5`` clamped to [0, 1], then ``round(x * 255)``
to bytes), so a PNG sdflow writes has the bits of the pipeline's PIL image.
"""

from __future__ import annotations

import torch

from sdflow_diffusion.handles import Latent, VaeHandle
from sdflow_diffusion.models.run_options import on_device
from sdflow_diffusion.numerics.space import check_space


@torch.no_grad()
def decode(vae: VaeHandle, latent: Latent) -> torch.Tensor:
    """IMAGE [batch, height, width, 3], float32 on the CPU, in [0, 1].

    The batch is decoded in one call, as the pipelines do (convolution
    kernels round differently for different batch sizes, so this is what
    keeps a batch bit-identical to theirs).  If the GPU runs out of memory,
    the batch is decoded again one image at a time (``--vae-tiling``: each
    image larger than the VAE's own size in tiles, by diffusers' tiling).
    """
    family = vae.family
    check_space(latent, family, "the VAE")
    z = latent.samples.to(vae.device, torch.float32) / family.vae_scaling_factor
    if family.vae_shift_factor is not None:
        z = z + family.vae_shift_factor
    z = z.to(vae.dtype)
    with on_device(vae.device, vae.vae):  # on the device only now with --lowvram
        try:
            pixels = _decode(vae, z)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            pixels = torch.cat([_decode(vae, one) for one in z.split(1)])
    return pixels.permute(0, 2, 3, 1).contiguous()


def _decode(vae: VaeHandle, z: torch.Tensor) -> torch.Tensor:
    pixels = vae.vae.decode(z, return_dict=False)[0]
    return (pixels / 2 + 0.5).clamp(0, 1).float().cpu()


def to_pil(image: torch.Tensor) -> list:
    """One RGB ``PIL.Image`` per image of an IMAGE batch, rounded to bytes
    exactly as diffusers' ``numpy_to_pil`` rounds (half to even)."""
    from PIL import Image

    pixels = (image.detach().cpu().float().numpy() * 255).round().astype("uint8")
    return [Image.fromarray(one) for one in pixels]
