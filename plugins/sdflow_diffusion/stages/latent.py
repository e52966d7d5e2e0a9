"""The latent stages: a blank batch, resizing, cropping, compositing, batches and noise masks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sdflow.plugin import ComfyNode, Params, Port, stage


class EmptyLatent(Params):
    width: int = Field(512, ge=16, le=16384, multiple_of=8, description="image width in pixels")
    height: int = Field(512, ge=16, le=16384, multiple_of=8, description="image height in pixels")
    batch: int = Field(1, ge=1, le=4096, description="images drawn at once")


@stage(params=EmptyLatent, outputs={"latent": Port("LATENT", "an all-zero latent batch")},
       comfyui=ComfyNode("EmptyLatentImage", widgets="width height batch_size>batch", title="Empty Latent Image"))
def empty_latent(ctx, params: EmptyLatent) -> dict:
    """A blank latent batch to draw on, of the given image size. ComfyUI: EmptyLatentImage."""
    from sdflow_diffusion.numerics.sampling import empty_latent as make

    return {"latent": make(params.width, params.height, params.batch)}


_LATENT_IN = {"latent": Port("LATENT", "the latent batch")}
_PIXELS = {"ge": 0, "le": 16384, "multiple_of": 8}


class LatentUpscale(Params):
    method: Literal["nearest-exact", "bilinear", "area", "bicubic", "bislerp"] = Field(
        "nearest-exact", description="how new cells are made: torch's interpolation, or bislerp "
                                     "(spherical: keeps the latent's energy)")
    width: int = Field(0, **_PIXELS, description="new width in pixels; 0 follows height, keeping the aspect ratio")
    height: int = Field(0, **_PIXELS, description="new height in pixels; 0 follows width, keeping the aspect ratio")
    factor: float | None = Field(None, ge=0.01, le=8.0, description="scale both sides by this, instead of a size")
    crop: Literal["disabled", "center"] = Field(
        "disabled", description="center: cut what sticks out of the new aspect ratio before resizing")

    @model_validator(mode="after")
    def _one_size(self):
        if self.factor is not None:
            if self.width or self.height:
                raise ValueError("give width and height, or factor, not both")
            if self.crop != "disabled":
                raise ValueError("crop needs width and height: a factor keeps the aspect ratio")
        elif not (self.width or self.height):
            raise ValueError("give the new size: width and height (0 for one keeps the aspect ratio), or factor")
        return self

    @field_validator("width", "height")
    @classmethod
    def _a_side_or_none(cls, side: int) -> int:
        if 0 < side < 16:
            raise ValueError("must be 0 (follow the other side) or at least 16")
        return side


@stage(params=LatentUpscale, inputs=_LATENT_IN, outputs={"latent": Port("LATENT", "the resized latent")},
       comfyui=[
           ComfyNode("LatentUpscale", inputs="samples>latent",
                     widgets="upscale_method>method width height crop", title="Upscale Latent"),
           ComfyNode("LatentUpscaleBy", inputs="samples>latent",
                     widgets="upscale_method>method scale_by>factor", title="Upscale Latent By"),
       ])
def latent_upscale(ctx, params: LatentUpscale, latent) -> dict:
    """Resize a latent to a size in pixels or by a factor, for a second pass at a higher
    resolution (hires fix). ComfyUI: LatentUpscale, LatentUpscaleBy.

    A size of 0 for one side follows the other, keeping the aspect ratio.
    The noise mask is kept (the sampler stretches it to the new size); with
    ``crop="center"`` it is cut as the latent is."""
    from sdflow_diffusion.numerics.latents import upscale_by, upscale_to

    if params.factor is not None:
        return {"latent": upscale_by(latent, params.factor, params.method)}
    return {"latent": upscale_to(latent, params.width, params.height, params.method, params.crop)}


class LatentCrop(Params):
    width: int = Field(512, ge=16, le=16384, multiple_of=8, description="width of the piece in pixels")
    height: int = Field(512, ge=16, le=16384, multiple_of=8, description="height of the piece in pixels")
    x: int = Field(0, **_PIXELS, description="left edge of the piece in pixels")
    y: int = Field(0, **_PIXELS, description="top edge of the piece in pixels")


@stage(params=LatentCrop, inputs=_LATENT_IN, outputs={"latent": Port("LATENT", "the piece")},
       comfyui=ComfyNode("LatentCrop", inputs="samples>latent", widgets="width height x y", title="Crop Latent"))
def latent_crop(ctx, params: LatentCrop, latent) -> dict:
    """Cut a piece out of a latent. ComfyUI: LatentCrop.

    As ComfyUI, a piece that runs past the latent's edge is cut there, and
    its start moves back so that at least 64 pixels (or the whole width or
    height asked for, if less) are left.  The noise mask is cut with it."""
    from sdflow_diffusion.numerics.latents import crop

    return {"latent": crop(latent, params.x, params.y, params.width, params.height)}


class LatentComposite(Params):
    x: int = Field(0, **_PIXELS, description="where the source's left edge goes, in pixels")
    y: int = Field(0, **_PIXELS, description="where the source's top edge goes, in pixels")
    feather: int = Field(0, **_PIXELS, description="pixels over which the source fades in at its edges "
                                                   "inside the destination; 0: a hard edge")
    resize_source: bool = Field(False, description="stretch the source to the destination's size first")


@stage(
    params=LatentComposite,
    inputs={
        "destination": Port("LATENT", "the latent to paste onto"),
        "source": Port("LATENT", "the latent pasted"),
        "mask": Port("MASK", "where the source shows (1) over the destination (0), stretched over "
                             "the source", optional=True),
    },
    outputs={"latent": Port("LATENT", "the destination with the source on it")},
    comfyui=[
        ComfyNode("LatentComposite", inputs="samples_to>destination samples_from>source",
                  widgets="x y feather", title="Latent Composite"),
        ComfyNode("LatentCompositeMasked", inputs="destination source mask", widgets="x y resize_source"),
    ],
)
def latent_composite(ctx, params: LatentComposite, destination, source, mask=None) -> dict:
    """Paste one latent onto another at a place, through a mask or with feathered edges.
    ComfyUI: LatentCompositeMasked, LatentComposite.

    What falls outside the destination is dropped.  The source (and the
    mask) is repeated to the destination's batch.  The result keeps the
    destination's noise mask and batch indices."""
    from sdflow_diffusion.numerics.latents import composite

    return {"latent": composite(destination, source, params.x, params.y, params.feather,
                                params.resize_source, mask)}


class LatentFromBatch(Params):
    batch_index: int = Field(0, ge=0, le=4095, description="the first image to take (0 is the first); "
                                                           "past the end: the last")
    length: int = Field(1, ge=1, le=4096, description="how many images to take (fewer if the batch ends)")


@stage(params=LatentFromBatch, inputs=_LATENT_IN, outputs={"latent": Port("LATENT", "the images taken")},
       comfyui=ComfyNode("LatentFromBatch", inputs="samples>latent", widgets="batch_index length",
                         title="Latent From Batch"))
def latent_from_batch(ctx, params: LatentFromBatch, latent) -> dict:
    """Take some images out of a latent batch. ComfyUI: LatentFromBatch.

    The images keep their place in the batch as their batch index: sampled
    again with the same seed, image i gets the noise it had as image i of the
    batch (seed + i), so one picture of a batch can be redone alone."""
    from sdflow_diffusion.numerics.latents import from_batch

    return {"latent": from_batch(latent, params.batch_index, params.length)}


class RepeatLatentBatch(Params):
    amount: int = Field(1, ge=1, le=64, description="how many copies of the batch")


@stage(params=RepeatLatentBatch, inputs=_LATENT_IN, outputs={"latent": Port("LATENT", "the copies, one batch")},
       comfyui=ComfyNode("RepeatLatentBatch", inputs="samples>latent", widgets="amount", title="Repeat Latent Batch"))
def repeat_latent_batch(ctx, params: RepeatLatentBatch, latent) -> dict:
    """Repeat a latent batch, for several variations of each image. ComfyUI: RepeatLatentBatch.

    The noise mask is repeated with it.  Each copy's batch indices follow
    the last copy's, so every copy is sampled with noise of its own."""
    from sdflow_diffusion.numerics.latents import repeat_batch

    return {"latent": repeat_batch(latent, params.amount)}


class LatentBatch(Params):
    pass


@stage(
    params=LatentBatch,
    inputs={"latent1": Port("LATENT", "the first images"), "latent2": Port("LATENT", "the images after them")},
    outputs={"latent": Port("LATENT", "one batch of both")},
    comfyui=ComfyNode("LatentBatch", inputs="samples1>latent1 samples2>latent2"),
)
def latent_batch(ctx, params: LatentBatch, latent1, latent2) -> dict:
    """Join two latent batches into one. ComfyUI: LatentBatch.

    latent2 of another size is resized to latent1's (bilinear, after a centre
    crop to its aspect ratio), as ComfyUI does.  As ComfyUI, each keeps its
    batch indices: latent2's first image is sampled with the noise of
    latent1's first.  Noise masks are joined, one per image (ComfyUI keeps
    latent1's only)."""
    from sdflow_diffusion.numerics.latents import join

    return {"latent": join(latent1, latent2)}


class SetLatentNoiseMask(Params):
    pass


@stage(
    params=SetLatentNoiseMask,
    inputs={"latent": Port("LATENT", "the latent to inpaint"),
            "mask": Port("MASK", "where to repaint: 1 repaints, 0 keeps")},
    outputs={"latent": Port("LATENT", "the latent with its noise mask")},
    comfyui=ComfyNode("SetLatentNoiseMask", inputs="samples>latent mask", title="Set Latent Noise Mask"),
)
def set_latent_noise_mask(ctx, params: SetLatentNoiseMask, latent, mask) -> dict:
    """Mark where the sampler may repaint a latent (inpainting). ComfyUI: SetLatentNoiseMask.

    The mask may be of any size: the sampler stretches it to the latent.
    Where it is 0 the latent is kept as it came in."""
    from sdflow_diffusion.numerics.latents import with_noise_mask

    return {"latent": with_noise_mask(latent, mask)}
