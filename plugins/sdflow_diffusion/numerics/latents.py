"""The latent stages' arithmetic: resize, crop, composite, and batches.

Each function takes :class:`Latent` values and returns a new one; nothing
is changed in place (a value on a port may be cached and shared).  Sizes
come in pixels, as the stages take them, and become latent cells here.
The numbers are ComfyUI's (nodes.py, nodes_mask.py, nodes_latent.py);
where sdflow differs, the function says so.

A noise mask may be of any size: the sampler resizes it to the latent
bilinearly.  Where a stage moves the latent's cells (a crop, a centre crop,
a join), the mask is first put at the latent's size, as the sampler would
see it, and moved with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdflow.plugin import StageError
from sdflow_diffusion.handles import Latent
from sdflow_diffusion.numerics.batch import repeat_to_batch
from sdflow_diffusion.numerics.inpaint import latent_mask
from sdflow_diffusion.numerics.sampling import LATENT_FACTOR

MIN_SIDE = 16  # pixels: the smallest latent side a resize makes, as empty_latent's


# Resizing -------------------------------------------------------------------


def upscale_to(latent: Latent, width: int, height: int, method: str, crop: str) -> Latent:
    """``latent`` resized to ``width`` x ``height`` pixels; 0 for one side
    keeps the aspect ratio (ComfyUI's LatentUpscale).  ``crop="center"``
    first cuts what sticks out of the new aspect ratio, the noise mask too."""
    rows, columns = latent.samples.shape[-2:]
    if width == 0:
        width = max(MIN_SIDE, round(columns * height / rows))
    elif height == 0:
        height = max(MIN_SIDE, round(rows * width / columns))
    size = (width // LATENT_FACTOR, height // LATENT_FACTOR)
    mask = latent.noise_mask
    if mask is not None and crop == "center":
        mask = centre_crop(latent_mask(mask, (_mask_batch(mask), 1, rows, columns)), *size)
    return Latent(resize(latent.samples, *size, method, crop), mask, dict(latent.extra))


def upscale_by(latent: Latent, factor: float, method: str) -> Latent:
    """``latent`` with both sides times ``factor``, rounded to whole cells
    (ComfyUI's LatentUpscaleBy); the noise mask is kept, the sampler resizes it."""
    rows, columns = latent.samples.shape[-2:]
    size = [max(MIN_SIDE // LATENT_FACTOR, round(side * factor)) for side in (columns, rows)]
    return Latent(resize(latent.samples, *size, method, "disabled"), latent.noise_mask, dict(latent.extra))


def resize(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """``samples`` ``[B, C, h, w]`` resized to ``width`` x ``height`` cells by
    ``method`` (a torch interpolation mode, or "bislerp"), after a centre
    crop to the new aspect ratio if ``crop`` is "center" (ComfyUI's
    ``common_upscale``)."""
    if crop == "center":
        samples = centre_crop(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    return F.interpolate(samples, size=(height, width), mode=method)


def centre_crop(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The middle of ``samples`` with the aspect ratio of ``width`` x
    ``height``: the longer side loses the same number of cells at each end."""
    rows, columns = samples.shape[-2:]
    old, new = columns / rows, width / height
    left = round((columns - columns * (new / old)) / 2) if old > new else 0
    top = round((rows - rows * (old / new)) / 2) if old < new else 0
    return samples[..., top:rows - top, left:columns - left]


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``samples`` resized to ``width`` x ``height`` cells by spherical
    interpolation, across then down (ComfyUI's "bislerp").

    Each new cell lies between two old ones, where bilinear resizing would
    put it.  Its channel vector turns from the one to the other along the
    great circle (slerp of the directions) and its length goes linearly
    between theirs, so the latent's energy is not averaged away as a plain
    blend does.  Two near-parallel vectors give the first; two near-opposite
    ones the plain blend."""
    out = _slerp_across(samples.float(), width)
    out = _slerp_across(out.transpose(-1, -2), height).transpose(-1, -2)
    return out.contiguous().to(samples.dtype)


def _slerp_across(samples: torch.Tensor, length: int) -> torch.Tensor:
    """``samples`` ``[B, C, h, w]`` resized along the last dim to ``length``,
    each new cell slerped between its two neighbours."""
    old = samples.shape[-1]
    # Where each new cell falls among the old ones: the positions bilinear
    # resizing samples at (half-cell centres, held at the ends).
    where = F.interpolate(torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1),
                          size=(1, length), mode="bilinear").flatten()
    first = where.to(torch.int64)
    second = (first + 1).clamp(max=old - 1)
    return _slerp(samples[..., first], samples[..., second], where - first)


def _slerp(start: torch.Tensor, end: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of the channel vectors (dim 1), ``share`` of
    the way from ``start`` to ``end``: the directions slerped, the lengths
    blended linearly; a zero vector has no direction (it counts as 0)."""
    start_norm = start.norm(dim=1, keepdim=True)
    end_norm = end.norm(dim=1, keepdim=True)
    start_dir = torch.where(start_norm == 0, 0.0, start / start_norm)
    end_dir = torch.where(end_norm == 0, 0.0, end / end_norm)
    cosine = (start_dir * end_dir).sum(1, keepdim=True)
    angle = torch.acos(cosine)
    sine = torch.sin(angle)
    turned = (torch.sin((1.0 - share) * angle) / sine) * start_dir + (torch.sin(share * angle) / sine) * end_dir
    out = turned * (start_norm * (1.0 - share) + end_norm * share)
    # Near-parallel ends give the first end, near-opposite ones the straight
    # blend: there the slerp's sine is (near) zero.
    out = torch.where(cosine < 1e-5 - 1, start * (1.0 - share) + end * share, out)
    return torch.where(cosine > 1 - 1e-5, start, out)


# Cropping and compositing -----------------------------------------------------


def crop(latent: Latent, x: int, y: int, width: int, height: int) -> Latent:
    """The ``width`` x ``height`` pixels of ``latent`` from (``x``, ``y``),
    cut at the latent's edges (ComfyUI's LatentCrop).

    As ComfyUI, the start is moved back so that at least 8 cells (64 px) of
    the latent lie right of and below it, or the whole crop where it is
    smaller.  The noise mask is cut out with it."""
    rows, columns = latent.samples.shape[-2:]
    width, height = width // LATENT_FACTOR, height // LATENT_FACTOR
    left = max(0, min(x // LATENT_FACTOR, columns - min(8, width)))
    top = max(0, min(y // LATENT_FACTOR, rows - min(8, height)))
    window = (..., slice(top, top + height), slice(left, left + width))
    mask = latent.noise_mask
    if mask is not None:
        mask = latent_mask(mask, (_mask_batch(mask), 1, rows, columns))[window]
    return Latent(latent.samples[window].clone(), mask, dict(latent.extra))


def composite(destination: Latent, source: Latent, x: int, y: int, feather: int = 0,
              resize_source: bool = False, mask: torch.Tensor | None = None) -> Latent:
    """``source`` pasted onto ``destination`` with its top left corner at
    (``x``, ``y``) pixels; what falls outside the destination is dropped
    (ComfyUI's LatentComposite and LatentCompositeMasked).

    ``mask`` (MASK, any size) is stretched over the source: 1 takes the
    source, 0 keeps the destination.  ``feather`` (pixels) fades the
    source's edges that lie inside the destination over that many pixels,
    linearly.  Given both, they multiply (ComfyUI has no node with both).
    ``resize_source`` stretches the source to the destination's size
    first.  The source and the mask are repeated to the destination's
    batch; the result keeps the destination's noise mask."""
    target, samples = destination.samples, source.samples
    if samples.shape[1] != target.shape[1]:
        raise StageError(f"the source has {samples.shape[1]} channels, the destination {target.shape[1]}",
                         "composite latents of one model family")
    rows, columns = target.shape[-2:]
    if resize_source:
        samples = F.interpolate(samples, size=(rows, columns), mode="bilinear")
    samples = repeat_to_batch(samples, target.shape[0])
    left, top = min(x // LATENT_FACTOR, columns), min(y // LATENT_FACTOR, rows)
    visible = samples[..., :rows - top, :columns - left]
    height, width = visible.shape[-2:]
    weight = None
    if mask is not None:
        stretched = F.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(),
                                  size=tuple(samples.shape[-2:]), mode="bilinear")
        weight = repeat_to_batch(stretched, samples.shape[0])[..., :height, :width]
    if feather:
        edges = (top > 0, top + height < rows, left > 0, left + width < columns)
        ramp = feather_ramp(height, width, feather // LATENT_FACTOR, *edges)
        weight = ramp if weight is None else weight * ramp
    out = target.clone()
    window = (..., slice(top, top + height), slice(left, left + width))
    out[window] = visible if weight is None else visible * weight + out[window] * (1.0 - weight)
    return Latent(out, destination.noise_mask, dict(destination.extra))


def feather_ramp(height: int, width: int, cells: int, top: bool, bottom: bool, left: bool, right: bool
                 ) -> torch.Tensor:
    """The weight ``[1, 1, height, width]`` of a source feathered over
    ``cells`` at the edges asked for: the t-th cell in from an edge weighs
    (t + 1) / cells, and where edges meet the weights multiply.

    The factors are applied in ComfyUI's order (cell by cell inwards; top,
    bottom, left, right), so the float32 products are its own.  A ramp
    longer than the source stops at its far side, where ComfyUI's indexing
    wraps round."""
    weight = torch.ones(height, width)
    for t in range(cells):
        factor = (1.0 / cells) * (t + 1)
        if top and t < height:
            weight[t] *= factor
        if bottom and t < height:
            weight[height - 1 - t] *= factor
        if left and t < width:
            weight[:, t] *= factor
        if right and t < width:
            weight[:, width - 1 - t] *= factor
    return weight[None, None]


# Batches ----------------------------------------------------------------------


def from_batch(latent: Latent, index: int, length: int) -> Latent:
    """``length`` images of ``latent`` from ``index``, both held within the
    batch (ComfyUI's LatentFromBatch).  The images keep their batch index,
    so each is sampled with the noise it had in the batch.  A noise mask of
    one image stays; one per image is cut as the latents are."""
    batch = latent.samples.shape[0]
    index = min(batch - 1, index)
    length = min(batch - index, length)
    picked = slice(index, index + length)
    mask = latent.noise_mask
    if mask is not None and mask.shape[0] > 1:
        mask = repeat_to_batch(mask, max(batch, mask.shape[0]))[picked].clone()
    extra = dict(latent.extra, batch_index=batch_indices(latent)[picked])
    return Latent(latent.samples[picked].clone(), mask, extra)


def repeat_batch(latent: Latent, amount: int) -> Latent:
    """``latent``'s batch ``amount`` times over (ComfyUI's RepeatLatentBatch).

    Each copy's batch indices are shifted past the last one's (by the span
    of the indices), so every copy is sampled with new noise; a latent with
    no indices has that already (image i gets seed + i)."""
    samples = latent.samples
    batch = samples.shape[0]
    mask = latent.noise_mask
    if mask is not None and mask.shape[0] > 1:
        # ComfyUI computes the mask at the batch's length and then repeats
        # the original; sdflow repeats the batch's masks, one per image.
        mask = repeat_to_batch(mask, max(batch, mask.shape[0])).repeat(amount, 1, 1, 1)
    extra = dict(latent.extra)
    indices = extra.get("batch_index")
    if indices is not None:
        span = max(indices) - min(indices) + 1
        extra["batch_index"] = [i + copy * span for copy in range(amount) for i in indices]
    return Latent(samples.repeat(amount, 1, 1, 1), mask, extra)


def join(first: Latent, second: Latent) -> Latent:
    """``second``'s images after ``first``'s (ComfyUI's LatentBatch).

    A ``second`` of another size is resized to ``first``'s: bilinear, after
    a centre crop to its aspect ratio, as ComfyUI does.  The batch indices
    are each latent's own, one after the other (ComfyUI's: the second's
    images get the noise of the first's first images).  ComfyUI keeps only
    the first's noise mask; sdflow joins the masks, each at its latent's
    place (a latent without one is repainted whole: a mask of ones)."""
    a, b = first.samples, second.samples
    if a.shape[1] != b.shape[1]:
        raise StageError(f"latent1 has {a.shape[1]} channels, latent2 {b.shape[1]}",
                         "join latents of one model family")
    rows, columns = a.shape[-2:]
    if b.shape[-2:] != a.shape[-2:]:
        b = resize(b, columns, rows, "bilinear", "center")
    mask = None
    if first.noise_mask is not None or second.noise_mask is not None:
        second_mask = _image_masks(second)
        if second_mask.shape[-2:] != a.shape[-2:]:
            second_mask = resize(second_mask, columns, rows, "bilinear", "center")
        mask = torch.cat([_image_masks(first), second_mask])
    extra = dict(first.extra, batch_index=batch_indices(first) + batch_indices(second))
    return Latent(torch.cat([a, b]), mask, extra)


def with_noise_mask(latent: Latent, mask: torch.Tensor) -> Latent:
    """``latent`` with ``mask`` (MASK ``[B, H, W]``, any size) as its noise
    mask ``[B, 1, H, W]`` (ComfyUI's SetLatentNoiseMask)."""
    return Latent(latent.samples, mask.reshape(-1, 1, *mask.shape[-2:]), dict(latent.extra))


def batch_indices(latent: Latent) -> list[int]:
    """Which seed offset each image of ``latent`` is sampled with: its
    ``batch_index``, or 0, 1, ... (what the sampler reads)."""
    indices = latent.extra.get("batch_index")
    batch = latent.samples.shape[0]
    return list(indices) if indices is not None and len(indices) == batch else list(range(batch))


def _image_masks(latent: Latent) -> torch.Tensor:
    """``latent``'s noise mask at its size, one per image; all ones (repaint
    everything, what no mask means) when it has none."""
    batch, _channels, rows, columns = latent.samples.shape
    if latent.noise_mask is None:
        return torch.ones(batch, 1, rows, columns)
    return latent_mask(latent.noise_mask, (batch, 1, rows, columns))


def _mask_batch(mask: torch.Tensor) -> int:
    return mask.reshape(-1, 1, *mask.shape[-2:]).shape[0]
