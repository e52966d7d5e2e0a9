"""The pixel arithmetic of the image and mask stages, in torch.

IMAGE values are float32 ``[batch, height, width, 3]`` in ``[0, 1]``, MASK
values float32 ``[batch, height, width]`` in ``[0, 1]`` (1 = repaint), both
on the CPU.  Every function returns a new tensor: values on ports are
shared and cached, never changed in place.  Where a function matches a
ComfyUI node, its docstring says which, and where it deliberately differs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_PIXELS = 64 * 1024 * 1024
"""The largest image (width x height) read or made: 64 megapixels, 768 MiB
as float32 RGB."""

METHODS = ("nearest", "bilinear", "bicubic", "area", "lanczos")
_TORCH_MODES = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic", "area": "area"}


# sizes ----------------------------------------------------------------------


def size_for(width: int, height: int, old_width: int, old_height: int) -> tuple[int, int]:
    """ComfyUI's ImageScale size: a side given as 0 keeps the aspect ratio."""
    if width == 0:
        width = max(1, round(old_width * height / old_height))
    elif height == 0:
        height = max(1, round(old_height * width / old_width))
    return width, height


def size_by_factor(factor: float, old_width: int, old_height: int) -> tuple[int, int]:
    """ComfyUI's ImageScaleBy size (at least one pixel a side)."""
    return max(1, round(old_width * factor)), max(1, round(old_height * factor))


def size_for_megapixels(megapixels: float, old_width: int, old_height: int) -> tuple[int, int]:
    """ComfyUI's ImageScaleToTotalPixels size: the aspect ratio kept, about
    ``megapixels`` x 1024 x 1024 pixels in all."""
    factor = math.sqrt(int(megapixels * 1024 * 1024) / (old_width * old_height))
    return size_by_factor(factor, old_width, old_height)


# resizing -------------------------------------------------------------------


def scale(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """``image`` ([B, H, W, C]) resized to ``width`` x ``height``, as
    ComfyUI's ``common_upscale`` does: with ``crop="center"`` the middle of
    the image, of the new aspect ratio, is cut out first.

    ``nearest`` is torch's "nearest-exact"; bilinear and bicubic are
    torch's, without corner alignment or antialiasing, as in ComfyUI; area
    averages.  ``lanczos`` is Pillow's, as in ComfyUI, but on each channel
    in float (mode "F"), where ComfyUI rounds to 8 bits first.  Bicubic and
    Lanczos overshoot at sharp edges: the result is clamped to [0, 1], which
    ComfyUI leaves to the saver."""
    pixels = image.movedim(-1, 1)
    if crop == "center":
        pixels = center_crop(pixels, width / height)
    if method == "lanczos":
        out = _lanczos(pixels, width, height)
    else:
        out = F.interpolate(pixels, size=(height, width), mode=_TORCH_MODES[method])
    if method in ("bicubic", "lanczos"):
        out = out.clamp(0, 1)
    return out.movedim(1, -1).contiguous()


def center_crop(pixels: torch.Tensor, aspect: float) -> torch.Tensor:
    """The middle of ``pixels`` ([B, C, H, W]) with the aspect ratio
    ``aspect`` (width / height), as ComfyUI's crop "center" computes it."""
    height, width = pixels.shape[-2:]
    old = width / height
    x = round((width - width * (aspect / old)) / 2) if old > aspect else 0
    y = round((height - height * (old / aspect)) / 2) if old < aspect else 0
    return pixels[..., y:height - y, x:width - x]


def _lanczos(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's Lanczos on each channel in float, across then down, as
    Pillow resizes; the values are clipped to [0, 1] after each pass, as
    Pillow's 8-bit images are (else the two differ by up to a tenth at
    sharp edges)."""
    import numpy as np
    from PIL import Image

    planes = pixels.detach().cpu().float().numpy()
    out = np.empty((*planes.shape[:2], height, width), dtype=np.float32)
    for index in np.ndindex(*planes.shape[:2]):
        plane = planes[index]
        for size in ((width, plane.shape[0]), (width, height)):
            if plane.shape[::-1] != size:
                resized = Image.fromarray(np.ascontiguousarray(plane)).resize(size, Image.Resampling.LANCZOS)
                plane = np.clip(np.asarray(resized), 0, 1)
        out[index] = plane
    return torch.from_numpy(out)


# outpainting ----------------------------------------------------------------


def pad_for_outpaint(image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                     feathering: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's ImagePadForOutpaint, to the bit: the image on a 0.5 grey
    canvas grown by the four margins, and a mask [1, H', W'] of 1 on the
    new area and, inside the old, ``((feathering - d) / feathering)^2``
    within ``feathering`` pixels of a padded side (d: the distance to the
    nearest such side, counted from 0 at the top and left rows and from 1 at
    the bottom and right ones, as ComfyUI counts).  No ramp when
    ``2 * feathering`` is not below both sides of the image."""
    count, height, width, channels = image.shape
    canvas = torch.full((count, height + top + bottom, width + left + right, channels), 0.5, dtype=torch.float32)
    canvas[:, top:top + height, left:left + width] = image
    mask = torch.ones((1, height + top + bottom, width + left + right), dtype=torch.float32)
    inner = torch.zeros((height, width), dtype=torch.float64)
    if 0 < feathering and 2 * feathering < height and 2 * feathering < width:
        rows = torch.arange(height, dtype=torch.float64)[:, None]
        columns = torch.arange(width, dtype=torch.float64)[None, :]
        # An unpadded side is never near: ComfyUI's stand-in, the image's
        # size, is at least 2 * feathering, so infinity gives the same mask.
        never = torch.tensor(math.inf, dtype=torch.float64)
        sides = (rows if top else never, height - rows if bottom else never,
                 columns if left else never, width - columns if right else never)
        distance = torch.stack(torch.broadcast_tensors(*sides)).amin(0)
        ramp = (feathering - distance) / feathering
        inner = torch.where(distance < feathering, ramp * ramp, 0.0)
    mask[0, top:top + height, left:left + width] = inner.float()
    return canvas, mask


# masks ----------------------------------------------------------------------


def grow(mask: torch.Tensor, pixels: int, tapered_corners: bool, check_interrupt=None) -> torch.Tensor:
    """ComfyUI's GrowMask: ``pixels`` rounds of a grey dilation (a negative
    count: erosion) by a 3 x 3 square, or by a plus sign with
    ``tapered_corners``; pixels outside the mask take no part.  Rounds of
    the square make one square of side 2n + 1, done at once."""
    if pixels == 0:
        return mask.clone()
    sign = 1.0 if pixels > 0 else -1.0  # erosion is the dilation of the negated mask
    x = sign * mask[:, None]
    if not tapered_corners:
        size = 2 * abs(pixels) + 1
        return sign * F.max_pool2d(x, size, stride=1, padding=abs(pixels))[:, 0]
    for _ in range(abs(pixels)):
        x = torch.maximum(F.max_pool2d(x, (3, 1), stride=1, padding=(1, 0)),
                          F.max_pool2d(x, (1, 3), stride=1, padding=(0, 1)))
        if check_interrupt is not None:
            check_interrupt()
    return sign * x[:, 0]


def gaussian_blur(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """``mask`` ([B, H, W]) blurred by a Gaussian of standard deviation
    ``sigma`` pixels, reaching 3 sigma; the border pixels are repeated
    outwards, so a mask that touches the edge stays full there."""
    if sigma == 0:
        return mask.clone()
    half = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).float()
    x = mask[:, None]
    x = F.conv2d(F.pad(x, (half, half, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, half, half), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[:, 0].clamp(0, 1)


def feather_edges(mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
    """ComfyUI's FeatherMask: each side's ``n`` outermost rows or columns
    faded linearly, the outermost multiplied by 1/n, the next by 2/n, ...,
    the n-th by 1.  ComfyUI does so at the left and the top; at the right
    and the bottom it is one pixel off (the last column gets 2/n, and the
    first column is also multiplied by 1/n): here all four sides are alike."""
    height, width = mask.shape[-2:]
    across = torch.ones(width, dtype=torch.float32)
    down = torch.ones(height, dtype=torch.float32)
    for weights, start, end in ((across, left, right), (down, top, bottom)):
        size = len(weights)
        for count, flip in ((min(start, size), False), (min(end, size), True)):
            if count:
                ramp = torch.arange(1, count + 1, dtype=torch.float32) / count
                if flip:
                    weights[size - count:] *= ramp.flip(0)
                else:
                    weights[:count] *= ramp
    return mask * down[:, None] * across[None, :]


OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, operation: str) -> torch.Tensor:
    """ComfyUI's MaskComposite: ``source`` combined into ``destination``
    with its top left corner at (x, y); what falls outside is cut off, and
    the whole result clamped to [0, 1].  "and", "or", "xor" round both
    masks to 0 or 1 first.  Batches: equal, or one of them 1."""
    count = max(len(destination), len(source))
    out = destination.expand(count, -1, -1).clone()
    height, width = out.shape[-2:]
    bottom, right = min(y + source.shape[-2], height), min(x + source.shape[-1], width)
    if bottom > y and right > x:
        here = out[:, y:bottom, x:right]
        there = source[:, :bottom - y, :right - x].expand_as(here)
        if operation == "multiply":
            here = here * there
        elif operation == "add":
            here = here + there
        elif operation == "subtract":
            here = here - there
        else:
            logic = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}[operation]
            here = logic(here.round().bool(), there.round().bool()).float()
        out[:, y:bottom, x:right] = here
    return out.clamp(0, 1)


def rectangle(width: int, height: int, x: int, y: int, rect_width: int, rect_height: int,
              value: float) -> torch.Tensor:
    """A mask [1, height, width] of ``value`` inside the rectangle (cut to
    the mask) and 0 outside."""
    mask = torch.zeros((1, height, width), dtype=torch.float32)
    mask[:, y:y + rect_height, x:x + rect_width] = value
    return mask
