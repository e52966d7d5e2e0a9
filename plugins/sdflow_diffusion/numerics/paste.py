"""Pasting one batch of pictures onto another through a mask (ComfyUI's composite)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdflow_diffusion.numerics.batch import repeat_to_batch


def paste(destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
          mask: torch.Tensor | None = None, resize_source: bool = False) -> torch.Tensor:
    """``source`` ([B, C, h, w]) over ``destination`` ([B, C, H, W]) with its
    top-left corner at (``x``, ``y``): ``mask`` (any [.., h', w'], stretched
    bilinearly over the source; none: all ones) says how much of the source
    shows.  What falls outside the destination is dropped; the source and
    mask are repeated to the destination's batch.  A new tensor."""
    if resize_source:
        source = F.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    batch = destination.shape[0]
    source = repeat_to_batch(source, batch)
    if mask is None:
        mask = torch.ones_like(source[:, :1])
    else:
        mask = F.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(), size=source.shape[-2:], mode="bilinear")
        mask = repeat_to_batch(mask, batch)
    out = destination.clone()
    # The overlap of the source, placed at (x, y), with the destination.
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + source.shape[-2], destination.shape[-2]), min(x + source.shape[-1], destination.shape[-1])
    if bottom <= top or right <= left:
        return out
    part = (slice(top - y, bottom - y), slice(left - x, right - x))
    shown = mask[..., part[0], part[1]]
    out[..., top:bottom, left:right] = source[..., part[0], part[1]] * shown + \
        destination[..., top:bottom, left:right] * (1.0 - shown)
    return out
