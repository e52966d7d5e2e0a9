"""Conditioning: prompts combined, averaged, joined, placed in an area or a mask, limited in time.

ComfyUI's conditioning nodes.  A CONDITIONING is a list of entries (a
prompt's embedding and where and when it applies; see
:class:`sdflow_diffusion.handles.Conditioning`); the sampler mixes the
entries' predictions as ComfyUI does.  Pure bookkeeping, no model runs here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sdflow.plugin import ComfyNode, Params, Port, stage

_ONE = {"conditioning": Port("CONDITIONING", "the conditioning")}
_OUT = {"conditioning": Port("CONDITIONING", "the conditioning, changed")}
_TWO = {"conditioning_to": Port("CONDITIONING", "the conditioning changed"),
        "conditioning_from": Port("CONDITIONING", "the conditioning it takes from (its first entry)")}
_PIXELS = {"ge": 0, "le": 16384, "multiple_of": 8}


class ConditioningCombine(Params):
    pass


@stage(params=ConditioningCombine,
       inputs={"conditioning_1": Port("CONDITIONING", "the first"), "conditioning_2": Port("CONDITIONING", "the second")},
       outputs={"conditioning": Port("CONDITIONING", "both, as one list of entries")},
       comfyui=ComfyNode("ConditioningCombine", inputs="conditioning_1 conditioning_2",
                         title="Conditioning (Combine)"))
def conditioning_combine(ctx, params: ConditioningCombine, conditioning_1, conditioning_2) -> dict:
    """Combine two conditionings: the sampler asks the model about each and averages the
    predictions (weighted by their areas and masks). ComfyUI: ConditioningCombine."""
    from sdflow_diffusion.handles import Conditioning

    return {"conditioning": Conditioning.of([conditioning_1, conditioning_2])}


class ConditioningConcat(Params):
    pass


@stage(params=ConditioningConcat, inputs=_TWO, outputs=_OUT,
       comfyui=ComfyNode("ConditioningConcat", inputs="conditioning_to conditioning_from",
                         title="Conditioning (Concat)"))
def conditioning_concat(ctx, params: ConditioningConcat, conditioning_to, conditioning_from) -> dict:
    """Append one prompt's tokens to another's, so the model attends to both at once.
    ComfyUI: ConditioningConcat.

    Each entry of conditioning_to gets the tokens of conditioning_from's first entry after its own;
    its pooled embedding, area, mask and range stay."""
    from sdflow_diffusion.numerics.conditioning import concat

    _warn_first_only(ctx, conditioning_from)
    return {"conditioning": concat(conditioning_to, conditioning_from)}


class ConditioningAverage(Params):
    conditioning_to_strength: float = Field(1.0, ge=0.0, le=1.0,
                                            description="the share of conditioning_to (1: all of it)")


@stage(params=ConditioningAverage, inputs=_TWO, outputs=_OUT,
       comfyui=ComfyNode("ConditioningAverage", inputs="conditioning_to conditioning_from",
                         widgets="conditioning_to_strength"))
def conditioning_average(ctx, params: ConditioningAverage, conditioning_to, conditioning_from) -> dict:
    """Blend two prompts' embeddings: to x strength + from x (1 - strength). ComfyUI: ConditioningAverage.

    The first entry of conditioning_from is cut or zero-padded to each entry's length; pooled embeddings
    (SDXL) are blended the same way."""
    from sdflow_diffusion.numerics.conditioning import average

    _warn_first_only(ctx, conditioning_from)
    return {"conditioning": average(conditioning_to, conditioning_from, params.conditioning_to_strength)}


class ConditioningSetArea(Params):
    width: int = Field(64, **_PIXELS, description="the area's width in pixels")
    height: int = Field(64, **_PIXELS, description="the area's height in pixels")
    x: int = Field(0, **_PIXELS, description="its left edge in pixels")
    y: int = Field(0, **_PIXELS, description="its top edge in pixels")
    strength: float = Field(1.0, ge=0.0, le=10.0, description="its weight against the other entries")

    @model_validator(mode="after")
    def _not_empty(self):
        if self.width == 0 or self.height == 0:
            raise ValueError("the area is empty: give it a width and a height of at least 8")
        return self


@stage(params=ConditioningSetArea, inputs=_ONE, outputs=_OUT,
       comfyui=ComfyNode("ConditioningSetArea", inputs="conditioning", widgets="width height x y strength",
                         title="Conditioning (Set Area)"))
def conditioning_set_area(ctx, params: ConditioningSetArea, conditioning) -> dict:
    """Limit a prompt to a rectangle of the image, to place things: combine it with a prompt for the
    whole image. ComfyUI: ConditioningSetArea.

    The model is asked about the area alone; its prediction there is mixed with the other entries',
    fading in over up to 8 latent cells (64 pixels) from each edge inside the image. Sizes are in
    pixels, multiples of 8; an area past the image is cut at its edge."""
    from dataclasses import replace

    from sdflow_diffusion.handles import Conditioning

    area = (params.height // 8, params.width // 8, params.y // 8, params.x // 8)
    return {"conditioning": Conditioning.of(
        [replace(e, area=area, strength=params.strength, set_area_to_bounds=False) for e in conditioning.entries])}


class ConditioningSetMask(Params):
    strength: float = Field(1.0, ge=0.0, le=10.0, description="the mask's weight against the other entries")
    set_cond_area: Literal["default", "mask_bounds"] = Field(
        "default", description="mask_bounds: ask the model about the mask's bounding box only (faster, "
                               "and the prompt is drawn at that box's size)")


@stage(params=ConditioningSetMask, inputs={**_ONE, "mask": Port("MASK", "where the prompt applies")},
       outputs=_OUT,
       comfyui=ComfyNode("ConditioningSetMask", inputs="conditioning mask", widgets="strength set_cond_area",
                         title="Conditioning (Set Mask)", values={"set_cond_area": {"mask bounds": "mask_bounds"}}))
def conditioning_set_mask(ctx, params: ConditioningSetMask, conditioning, mask) -> dict:
    """Limit a prompt to a mask: its prediction counts where the mask is, weighted by it.
    ComfyUI: ConditioningSetMask.

    The mask is resized to the latent (bilinear) when sampling."""
    from dataclasses import replace

    from sdflow_diffusion.handles import Conditioning

    return {"conditioning": Conditioning.of(
        [replace(e, mask=mask, mask_strength=params.strength, set_area_to_bounds=params.set_cond_area != "default")
         for e in conditioning.entries])}


class ConditioningZeroOut(Params):
    pass


@stage(params=ConditioningZeroOut, inputs=_ONE, outputs=_OUT,
       comfyui=ComfyNode("ConditioningZeroOut", inputs="conditioning"))
def conditioning_zero_out(ctx, params: ConditioningZeroOut, conditioning) -> dict:
    """All zeros, of the same shape: an empty negative as SDXL Turbo and some workflows want it.
    ComfyUI: ConditioningZeroOut."""
    from dataclasses import replace

    import torch

    from sdflow_diffusion.handles import Conditioning

    return {"conditioning": Conditioning.of(
        [replace(e, embeds=torch.zeros_like(e.embeds), pooled=None if e.pooled is None else torch.zeros_like(e.pooled))
         for e in conditioning.entries])}


class ConditioningSetTimestepRange(Params):
    start: float = Field(0.0, ge=0.0, le=1.0, description="where in the schedule the prompt starts to apply (0: "
                                                           "the first step)")
    end: float = Field(1.0, ge=0.0, le=1.0, description="where it stops (1: the end)")


@stage(params=ConditioningSetTimestepRange, inputs=_ONE, outputs=_OUT,
       comfyui=ComfyNode("ConditioningSetTimestepRange", inputs="conditioning", widgets="start end"))
def conditioning_set_timestep_range(ctx, params: ConditioningSetTimestepRange, conditioning) -> dict:
    """Apply a prompt during part of the schedule only, e.g. the composition from one prompt and the
    detail from another. ComfyUI: ConditioningSetTimestepRange.

    Shares of the schedule, counted in the model's noise levels as ComfyUI counts them: a step applies
    the prompt when its noise level lies between those of start and end."""
    from dataclasses import replace

    from sdflow_diffusion.handles import Conditioning

    return {"conditioning": Conditioning.of(
        [replace(e, start=params.start, end=params.end) for e in conditioning.entries])}


def _warn_first_only(ctx, conditioning_from) -> None:
    if len(conditioning_from.entries) > 1:
        ctx.warn(f"conditioning_from has {len(conditioning_from.entries)} entries: only the first is used")
