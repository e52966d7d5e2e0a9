"""The pixel arithmetic of the post-processing stages, in torch.

Images are what sdflow's IMAGE port carries: float32 tensors
``[batch, height, width, 3]`` in ``[0, 1]`` on the CPU.  Imported only by
the stages' run functions, so declaring the stages never imports torch.
Every function returns its input itself when its settings change nothing,
so a neutral setting is the identity bit for bit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, the weights Pillow's ImageEnhance uses for grey.
LUMA = (0.299, 0.587, 0.114)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image`` blurred with a Gaussian of ``sigma`` pixels; the border
    pixels are repeated outwards, so any sigma suits any image size."""
    half = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(image.dtype)
    pixels = image.movedim(-1, 1)  # [B, C, H, W] for conv2d
    channels = pixels.shape[1]
    across = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    down = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    pixels = F.conv2d(F.pad(pixels, (half, half, 0, 0), mode="replicate"), across, groups=channels)
    pixels = F.conv2d(F.pad(pixels, (0, 0, half, half), mode="replicate"), down, groups=channels)
    return pixels.movedim(1, -1).contiguous()


def unsharp_mask(image: torch.Tensor, radius: float, amount: float) -> torch.Tensor:
    """``image`` plus ``amount`` times its detail (itself minus a blur of
    ``radius`` pixels): edges get steeper, flat areas stay as they were."""
    if amount == 0:
        return image
    return (image + amount * (image - gaussian_blur(image, radius))).clamp(0, 1)


def adjust_colour(image: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """Pillow's ImageEnhance in float, in its order: brightness scales the
    pixels; contrast moves them from each image's mean grey, saturation
    from each pixel's own grey (factor 0: all grey, 1: unchanged)."""
    if brightness == contrast == saturation == 1:
        return image
    out = image
    luma = torch.tensor(LUMA, dtype=image.dtype)
    if brightness != 1:
        out = out * brightness
    if contrast != 1:
        mean = (out @ luma).mean(dim=(1, 2)).view(-1, 1, 1, 1)
        out = mean + contrast * (out - mean)
    if saturation != 1:
        grey = (out @ luma).unsqueeze(-1)
        out = grey + saturation * (out - grey)
    return out.clamp(0, 1)


def add_grain(image: torch.Tensor, strength: float, seed: int, monochrome: bool) -> torch.Tensor:
    """``image`` plus Gaussian noise of standard deviation ``strength``,
    drawn on the CPU from ``seed`` (the same grain on every device); one
    value per pixel for all three channels when ``monochrome``."""
    if strength == 0:
        return image
    generator = torch.Generator("cpu").manual_seed(seed)
    shape = (*image.shape[:-1], 1) if monochrome else tuple(image.shape)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(image.device, image.dtype)
    return (image + strength * noise).clamp(0, 1)


def grid(image: torch.Tensor, columns: int, gap: int, background: float) -> torch.Tensor:
    """Every image of the batch tiled, row by row, into one image
    ``[1, H', W', 3]``; ``columns`` 0 is the near-square ``ceil(sqrt(n))``;
    ``gap`` pixels of ``background`` grey lie between neighbours."""
    count, height, width, channels = image.shape
    columns = min(columns or math.ceil(math.sqrt(count)), count)
    rows = math.ceil(count / columns)
    out = torch.full((1, rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, channels),
                     background, dtype=image.dtype, device=image.device)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        out[0, top:top + height, left:left + width] = image[index]
    return out
