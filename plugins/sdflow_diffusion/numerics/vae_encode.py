"""From pixels to latents (VAEEncode, VAEEncodeForInpaint).

As ComfyUI does it: the image is cropped to a multiple of the VAE's factor
(centred), mapped to [-1, 1], encoded, and the mean of the VAE's latent
distribution is taken (no sampling: the same image always gives the same
latent).  The result is in the U-Net's space, like every LATENT in sdflow:
``(mean - shift) * scaling_factor``, the inverse of what
:func:`sdflow_diffusion.numerics.decode.decode` undoes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdflow.plugin import StageError
from sdflow_diffusion.handles import Latent, VaeHandle
from sdflow_diffusion.models.run_options import on_device
from sdflow_diffusion.numerics.space import tagged

GREY = 0.5  # what vae_encode_for_inpaint paints the masked pixels (ComfyUI's)


def crop_to_factor(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """``pixels`` ([B, H, W, ...]) cut to a multiple of ``factor`` in height
    and width, centred, as ComfyUI's VAE does."""
    height, width = pixels.shape[1], pixels.shape[2]
    top, left = (height % factor) // 2, (width % factor) // 2
    return pixels[:, top:top + height // factor * factor, left:left + width // factor * factor]


@torch.no_grad()
def encode(vae: VaeHandle, image: torch.Tensor) -> Latent:
    """LATENT of an IMAGE batch ([B, H, W, 3] in [0, 1])."""
    factor = vae.family.vae_scale_factor
    pixels = crop_to_factor(image, factor)
    if pixels.shape[1] == 0 or pixels.shape[2] == 0:
        raise StageError(f"the image is {image.shape[2]}x{image.shape[1]} pixels: smaller than one latent cell "
                         f"({factor}x{factor})", "scale it up first (image_scale)")
    x = (pixels[..., :3].movedim(-1, 1) * 2.0 - 1.0).to(vae.device, vae.dtype)
    try:
        with on_device(vae.device, vae.vae):  # on the device only now with --lowvram
            mean = vae.vae.encode(x, return_dict=False)[0].mode()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise StageError(f"the VAE ran out of GPU memory encoding {image.shape[0]} image(s) of "
                         f"{pixels.shape[2]}x{pixels.shape[1]}",
                         "encode fewer or smaller images (image_from_batch, image_scale), or pass "
                         "--vae-tiling") from None
    z = mean.float()
    family = vae.family
    if family.vae_shift_factor is not None:
        z = z - family.vae_shift_factor
    return Latent(samples=(z * family.vae_scaling_factor).cpu(), extra=tagged({}, family))


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """A [B, 1, H, W] 0/1 mask grown by a ``pixels`` wide square, as
    VAEEncodeForInpaint does before it keeps the mask: each pixel is 1 when
    any pixel of the ``pixels`` x ``pixels`` square around it is (the
    square's centre is its lower-right middle for an even size)."""
    if pixels == 0:
        return mask
    before = math.ceil((pixels - 1) / 2)
    padded = F.pad(mask, (before, pixels - 1 - before, before, pixels - 1 - before))
    return F.max_pool2d(padded, pixels, stride=1)


@torch.no_grad()
def encode_for_inpaint(vae: VaeHandle, image: torch.Tensor, mask: torch.Tensor, grow_mask_by: int) -> Latent:
    """VAEEncodeForInpaint: the masked pixels (the mask rounded to 1) painted grey,
    the image encoded, and the mask, grown by ``grow_mask_by`` pixels, kept
    as the latent's noise mask (only that region is resampled)."""
    factor = vae.family.vae_scale_factor
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    mask = F.interpolate(mask, size=(image.shape[1], image.shape[2]), mode="bilinear")
    if mask.shape[0] not in (1, image.shape[0]):
        raise StageError(f"the mask has {mask.shape[0]} images and the image batch {image.shape[0]}",
                         "give one mask for all, or one per image")
    image = crop_to_factor(image, factor)
    hard = crop_to_factor(mask.movedim(1, -1), factor).movedim(-1, 1).round()  # [B, 1, H, W]
    greyed = (image[..., :3] - GREY) * (1.0 - hard).movedim(1, -1) + GREY
    latent = encode(vae, greyed)
    return Latent(samples=latent.samples, noise_mask=grow(hard, grow_mask_by), extra=latent.extra)
