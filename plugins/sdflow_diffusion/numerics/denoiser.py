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
from dataclasses import dataclass, field, replace
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
    ``down_block_additional_residuals``).  The batch is ``len(areas)``
    chunks of the sampled batch, one per conditioning entry run; ``areas``
    says which part of the latent each chunk is ((height, width, y, x) in
    latent cells; None: all of it)."""

    sample: torch.Tensor
    timestep: torch.Tensor
    context: torch.Tensor
    added: dict[str, torch.Tensor] | None
    sigma: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)
    areas: list[tuple[int, int, int, int] | None] = field(default_factory=list)
    table: NoiseTable | None = None  # the model's noise levels (a share of the schedule -> a sigma)


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


@dataclass
class _Entry:
    """A conditioning entry made ready for one sampling run: its text
    conditions for the whole batch, where it applies (area, mask) and when
    (between two sigmas)."""

    context: torch.Tensor
    added: dict[str, torch.Tensor] | None
    area: tuple[int, int, int, int] | None
    strength: float
    mask: torch.Tensor | None
    sigma_start: float
    sigma_end: float
    control: tuple[Any, ...] = ()


@dataclass
class _Run:
    """One entry's share of a model call: its input, its weights."""

    x: torch.Tensor
    mult: torch.Tensor
    entry: _Entry
    area: tuple[int, int, int, int] | None
    index: int  # 0: the prompt, 1: the negative


class Denoiser:
    """``denoise(x, sigma)``: the guided clean-latent estimate of a model for
    a batch ``x`` at noise level ``sigma`` (a 0-dim CPU tensor).

    Each prompt may hold several conditioning entries (combined prompts,
    area and mask prompts, timestep ranges).  Per model call, as ComfyUI's
    ``calc_cond_batch``: each entry that applies at this sigma asks the
    U-Net about its area of the latent, entries of the same shapes in one
    batch (negative before prompt); the predictions are summed weighted by
    each entry's area (its edges faded over up to 8 cells), mask and
    strength, and divided by the summed weights.  One entry over the whole
    latent gives the model's prediction unchanged.
    """

    def __init__(self, model: ModelHandle, table: NoiseTable, positive: Conditioning, negative: Conditioning,
                 shape: torch.Size, cfg: float, guided: bool, hooks: tuple[DenoiserHook, ...] = ()) -> None:
        self.model, self.table = model, table
        self.cfg, self.guided = cfg, guided
        self.hooks = hooks
        self.v_prediction = model.family.prediction_type == "v_prediction"
        # Both prompts' entries are paired even when the negative is not run:
        # an area of the negative gives the prompt a counterpart, as in ComfyUI.
        entries = [[_entry(model, table, e, shape, i) for e in c.entries] for i, c in enumerate((positive, negative))]
        _pair_areas(entries)
        self.entries = entries if guided else entries[:1]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        for hook in self.hooks:
            x = hook.before_denoise(x, sigma)
        predictions = self._predict(x, sigma)
        denoised = predictions[0]
        if self.guided:
            denoised = predictions[1] + (predictions[0] - predictions[1]) * self.cfg
        for hook in self.hooks:
            denoised = hook.after_denoise(denoised, x, sigma)
        return denoised

    def _predict(self, x: torch.Tensor, sigma: torch.Tensor) -> list[torch.Tensor]:
        """Each prompt's clean-latent estimate (ComfyUI's calc_cond_batch)."""
        outputs = [torch.zeros_like(x) for _ in self.entries]
        counts = [torch.ones_like(x) * 1e-37 for _ in self.entries]
        runs = [run for index, entries in enumerate(self.entries) for entry in entries
                if (run := _run(entry, x, float(sigma), index)) is not None]
        while runs:
            first = runs[0]
            together = [k for k in range(len(runs)) if _batchable(runs[k], first)][::-1]
            batch = [runs.pop(k) for k in together]
            for run, output in zip(batch, self._unet(batch, sigma).chunk(len(batch))):
                out, count = outputs[run.index], counts[run.index]
                if run.area is not None:
                    height, width, y, x0 = run.area
                    out, count = out[..., y:y + height, x0:x0 + width], count[..., y:y + height, x0:x0 + width]
                out += output * run.mult
                count += run.mult
        return [out / count for out, count in zip(outputs, counts)]

    def _unet(self, batch: list[_Run], sigma: torch.Tensor) -> torch.Tensor:
        """The clean-latent estimates for the runs of ``batch``, in one U-Net call."""
        x = torch.cat([run.x for run in batch])
        contexts = _common_length([run.entry.context for run in batch])
        added = None
        if batch[0].entry.added is not None:
            added = {k: torch.cat([run.entry.added[k] for run in batch]) for k in batch[0].entry.added}
        timestep = self.table.timestep(sigma).float().expand(x.shape[0]).to(x.device)
        scaled = x / (sigma**2 + 1.0) ** 0.5
        call = UNetCall(sample=scaled.to(self.model.dtype), timestep=timestep, context=torch.cat(contexts),
                        added=added, sigma=sigma, areas=[run.area for run in batch], table=self.table)
        add_control(call, batch[0].entry.control)  # on the latent alone, before a hook adds channels
        for hook in self.hooks:
            hook.before_unet(call)
        output = self.model.unet(call.sample, call.timestep, encoder_hidden_states=call.context,
                                 added_cond_kwargs=call.added, return_dict=False, **call.extra)[0].float()
        return self._clean(output, x, sigma)

    def _clean(self, output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The clean-latent estimate from the U-Net's output (sigma_data 1)."""
        if self.v_prediction:
            return x * 1.0 / (sigma**2 + 1.0) - output * sigma * 1.0 / (sigma**2 + 1.0) ** 0.5
        return x - output * sigma


def add_control(call: UNetCall, controls: tuple[Any, ...]) -> None:
    """The residuals of the ControlNets guiding the call's entries (the
    same ones for every run of a batch), summed, as the U-Net's extra
    arguments.  A ControlNet outside its share of the schedule gives None."""
    down, mid = None, None
    for control in controls:
        residuals = control.residuals(call)
        if residuals is None:
            continue
        more_down, more_mid = residuals
        down = list(more_down) if down is None else [a + b for a, b in zip(down, more_down)]
        mid = more_mid if mid is None else mid + more_mid
    if down is not None:
        call.extra["down_block_additional_residuals"] = tuple(down)
        call.extra["mid_block_additional_residual"] = mid


def _entry(model: ModelHandle, table: NoiseTable, cond: Conditioning, shape: torch.Size, index: int) -> _Entry:
    """``cond`` (one entry) ready for a run over latents of ``shape``:
    ComfyUI's ``resolve_areas_and_cond_masks`` and start/end sigmas."""
    import torch.nn.functional as F

    context, added = _text_conditions(model, cond, shape, index)
    mask, area = None, cond.area
    if cond.mask is not None:
        mask = cond.mask.float().to(model.device)
        mask = mask.reshape(-1, *mask.shape[-2:])
        if tuple(mask.shape[-2:]) != tuple(shape[-2:]):
            mask = F.interpolate(mask.unsqueeze(1), size=tuple(shape[-2:]), mode="bilinear").squeeze(1)
        if cond.set_area_to_bounds:
            area = _bounds(mask)
        mask = mask * cond.mask_strength
    return _Entry(context, added, area, cond.strength, mask,
                  percent_to_sigma(table, cond.start), percent_to_sigma(table, cond.end), cond.control)


def _pair_areas(prompts: list[list[_Entry]]) -> None:
    """Give every area entry of one prompt a counterpart of the same area in
    the other (ComfyUI's ``create_cond_with_same_area_if_none``), so that
    guidance compares like with like there.  The counterpart is the area
    entry (its strength, mask, timestep range and ControlNets too) with the
    text of the other prompt's smallest entry that contains the area (an
    entry without an area contains all); none is added where that entry
    has the very same area.  Entries added to the negative are visited in
    their turn, as ComfyUI visits them."""
    for index, entries in enumerate(prompts):
        for entry in entries:  # a list that grows while the other one is visited
            if entry.area is None:
                continue
            for other in (p for i, p in enumerate(prompts) if i != index):
                smallest = None
                for candidate in other:
                    if candidate.area is None:
                        smallest = candidate if smallest is None else smallest
                    elif _area_inside(entry.area, candidate.area) and (
                            smallest is None or smallest.area is None
                            or smallest.area[0] * smallest.area[1] > candidate.area[0] * candidate.area[1]):
                        smallest = candidate
                if smallest is not None and smallest.area != entry.area:
                    other.append(replace(entry, context=smallest.context, added=smallest.added))


def _area_inside(area: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    """Whether ``area`` (height, width, y, x) lies within ``outer``."""
    height, width, y, x = area
    outer_height, outer_width, outer_y, outer_x = outer
    return y >= outer_y and x >= outer_x and y + height <= outer_y + outer_height and x + width <= outer_x + outer_width


def percent_to_sigma(table: NoiseTable, percent: float) -> float:
    """The sigma at a share of the schedule (0: the start), as ComfyUI's
    ``percent_to_sigma`` gives it for a discrete-time model."""
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    return float(table.sigma(torch.tensor((1.0 - percent) * 999.0)))


def _bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """The area (height, width, y, x) of a mask's nonzero cells over its
    batch ((8, 8, 0, 0) when it has none, as ComfyUI)."""
    rows, columns = torch.nonzero(mask.abs().amax(dim=0), as_tuple=True)
    if len(rows) == 0:
        return (8, 8, 0, 0)
    y, x = int(rows.min()), int(columns.min())
    return (int(rows.max()) - y + 1, int(columns.max()) - x + 1, y, x)


def _run(entry: _Entry, x: torch.Tensor, sigma: float, index: int) -> _Run | None:
    """The entry's share of this model call, or None when it does not apply
    at ``sigma`` (ComfyUI's ``get_area_and_mult``)."""
    if sigma > entry.sigma_start or sigma < entry.sigma_end:
        return None
    area, part = entry.area, x
    if area is not None:
        height, width = min(x.shape[2] - area[2], area[0]), min(x.shape[3] - area[3], area[1])
        area = (height, width, area[2], area[3])
        part = x[..., area[2]:area[2] + height, area[3]:area[3] + width]
    if entry.mask is not None:
        mask = entry.mask[:part.shape[0]]
        if area is not None:
            mask = mask[..., area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
        mult = mask.unsqueeze(1).repeat(part.shape[0] // mask.shape[0], part.shape[1], 1, 1) * entry.strength
    else:
        mult = torch.ones_like(part) * entry.strength
        if area is not None:
            _fade_edges(mult, area, x.shape)
    return _Run(part, mult, entry, area, index)


def _fade_edges(mult: torch.Tensor, area: tuple[int, int, int, int], shape: torch.Size) -> None:
    """ComfyUI's "fuzz": an area's weight rises over up to 8 cells from each
    edge that lies inside the latent, so area prompts blend in."""
    for axis, (size, offset) in enumerate(((area[0], area[2]), (area[1], area[3]))):
        dim = axis + 2
        fade = min(8, mult.shape[dim] // 4)
        for t in range(fade):
            if offset != 0:
                mult.narrow(dim, t, 1).mul_((1.0 / fade) * (t + 1))
            if size + offset < shape[dim]:
                mult.narrow(dim, size - 1 - t, 1).mul_((1.0 / fade) * (t + 1))


def _batchable(a: _Run, b: _Run) -> bool:
    """Whether two runs go through the U-Net in one batch (ComfyUI's
    ``can_concat_cond``): the same input shape, added conditions of the same
    shapes, contexts whose lengths repeat to a common one at most 4 times
    the shorter."""
    if a.x.shape != b.x.shape:
        return False
    if len(a.entry.control) != len(b.entry.control) or any(
            x is not y for x, y in zip(a.entry.control, b.entry.control)):
        return False  # one model call, one set of ControlNets
    ca, cb = a.entry.context.shape, b.entry.context.shape
    if ca != cb and (ca[0] != cb[0] or ca[2] != cb[2] or math.lcm(ca[1], cb[1]) // min(ca[1], cb[1]) > 4):
        return False
    added_a, added_b = a.entry.added, b.entry.added
    if (added_a is None) != (added_b is None):
        return False
    return added_a is None or all(added_a[k].shape == added_b[k].shape for k in added_a)


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
    return noise_from_seeds(shape, image_seeds(seed, shape[0], batch_index))


def noise_from_seeds(shape, seeds: list[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Standard normal noise of ``shape``, image i drawn on the CPU from
    ``seeds[i]``, and the generators."""
    generators = [torch.Generator("cpu").manual_seed(s % 2**64) for s in seeds]
    noise = [torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(noise), generators


def unet_conditions(model: ModelHandle, positive: Conditioning, negative: Conditioning, shape,
                    guided: bool) -> tuple[torch.Tensor, dict | None]:
    """The U-Net's cross-attention context for the batch, [negative..., positive...]
    when guided, and SDXL's added conditions (pooled text, size and crop):
    the diffusers loop's, one entry per prompt."""
    parts = [(negative, 1), (positive, 0)] if guided else [(positive, 0)]
    built = [_text_conditions(model, cond, shape, index) for cond, index in parts]
    context = torch.cat(_common_length([context for context, _ in built]))
    if built[0][1] is None:
        return context, None
    return context, {k: torch.cat([added[k] for _, added in built]) for k in built[0][1]}


def _text_conditions(model: ModelHandle, cond: Conditioning, shape, index: int
                     ) -> tuple[torch.Tensor, dict | None]:
    """One entry's cross-attention context for a batch of ``shape``, and
    SDXL's added conditions (pooled text, size and crop; the refiner's
    aesthetic score, 6 for the prompt and 2.5 for the negative, ``index``
    1, as diffusers sets them)."""
    batch = shape[0]
    expected = model.unet.config.cross_attention_dim
    if cond.embeds.shape[-1] != expected:
        raise StageError(f"the prompts were encoded for another model: {cond.embeds.shape[-1]} features, "
                         f"this U-Net takes {expected}",
                         "encode the prompts with the same checkpoint's clip")
    context = cond.embeds.to(model.device, model.dtype).expand(batch, -1, -1)
    added_conditions = model.family.architecture.added_conditions
    if added_conditions is None:
        return context, None
    if cond.pooled is None:
        raise StageError(f"{model.family.architecture.description} needs prompts encoded by its own CLIP "
                         "(with a pooled embedding)",
                         "encode the prompts with the same checkpoint's clip")
    text_embeds = cond.pooled.to(model.device, model.dtype).expand(batch, -1)
    # SDXL's micro-conditioning: unless the prompt says (clip_text_encode_sdxl),
    # original size = target size = the image size, crop (0, 0).
    factor = model.family.vae_scale_factor
    image = (shape[-2] * factor, shape[-1] * factor)
    original, target = cond.original_size or image, cond.target_size or image
    if added_conditions == "text_time_aesthetic":
        score = cond.aesthetic_score
        if score is None:
            score = NEGATIVE_AESTHETIC_SCORE if index else AESTHETIC_SCORE
        row = [*original, *cond.crop, score]
    else:
        row = [*original, *cond.crop, *target]
    time_ids = torch.tensor([row] * batch, dtype=model.dtype, device=model.device)
    return context, {"text_embeds": text_embeds, "time_ids": time_ids}


def _common_length(contexts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Prompts of different lengths (in 77-token windows) repeated to their least
    common multiple, as ComfyUI does, so all fit one batch.  Repeating a whole
    prompt k times leaves cross-attention's output as it was: every key and
    value appears k times, so the softmax average is the same."""
    length = math.lcm(*(c.shape[1] for c in contexts))
    return [c if c.shape[1] == length else c.repeat(1, length // c.shape[1], 1) for c in contexts]
