"""Masks for inpainting: loaded, taken from an image, made, and shaped.

A MASK is float32 ``[batch, height, width]`` in ``[0, 1]``, 1 where to
repaint (ComfyUI's meaning); the arithmetic is in
:mod:`sdflow_diffusion.numerics.pixels`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sdflow.plugin import ComfyNode, Params, Port, StageError, stage

MAX_SIDE = 16384  # ComfyUI's MAX_RESOLUTION
MASK_IN = {"mask": Port("MASK", "the masks")}


class LoadMask(Params):
    name: str = Field(
        min_length=1, pattern=r"^[^\x00]*$",
        description="image file, looked up as load_image looks it up",
    )
    channel: Literal["alpha", "red", "green", "blue"] = Field(
        "alpha", description="the channel that is the mask: alpha is inverted (transparent = 1), "
                             "a colour taken as it is")


@stage(params=LoadMask, outputs={"mask": Port("MASK", "the mask, as a batch of one")},
       comfyui=ComfyNode("LoadImageMask", widgets="image>name channel -upload", title="Load Image (as Mask)"))
def load_mask(ctx, params: LoadMask) -> dict:
    """Load one channel of an image file as a mask. ComfyUI: LoadImageMask.

    The file is found and read as load_image reads it.  ``alpha`` gives
    1 - alpha, as ComfyUI does: the transparent pixels are the ones to
    repaint; an image without alpha gives all zeros.  ``red``, ``green`` and
    ``blue`` are taken as they are (grey images have the same three)."""
    from sdflow_diffusion.images.read import read_input

    picture = read_input(ctx, params.name)
    if params.channel == "alpha":
        alpha = picture.alpha
        return {"mask": picture.rgb.new_zeros(picture.rgb.shape[:3]) if alpha is None else 1.0 - alpha}
    return {"mask": picture.rgb[..., CHANNELS.index(params.channel)].contiguous()}


@load_mask.identifies
def _mask_file(ctx, params: LoadMask) -> None:
    from sdflow_diffusion.images.read import identify_input

    identify_input(ctx, params.name)


CHANNELS = ("red", "green", "blue")


class ImageToMask(Params):
    channel: Literal["red", "green", "blue"] = Field("red", description="the channel that becomes the mask")


@stage(params=ImageToMask, inputs={"image": Port("IMAGE", "the images")},
       outputs={"mask": Port("MASK", "one channel of them")},
       comfyui=ComfyNode("ImageToMask", inputs="image", widgets="channel", title="Convert Image to Mask"))
def image_to_mask(ctx, params: ImageToMask, image) -> dict:
    """Take one colour channel of images as masks. ComfyUI: ImageToMask."""
    return {"mask": image[..., CHANNELS.index(params.channel)].contiguous()}


class InvertMask(Params):
    pass


@stage(params=InvertMask, inputs=MASK_IN, outputs={"mask": Port("MASK", "1 - mask")},
       comfyui=ComfyNode("InvertMask", inputs="mask"))
def invert_mask(ctx, params: InvertMask, mask) -> dict:
    """Swap what is repainted and what is kept: 1 - mask. ComfyUI: InvertMask."""
    return {"mask": 1.0 - mask}


class ThresholdMask(Params):
    value: float = Field(0.5, ge=0.0, le=1.0, description="above this a pixel becomes 1, else 0")


@stage(params=ThresholdMask, inputs=MASK_IN, outputs={"mask": Port("MASK", "masks of 0 and 1")},
       comfyui=ComfyNode("ThresholdMask", inputs="mask", widgets="value"))
def threshold_mask(ctx, params: ThresholdMask, mask) -> dict:
    """Make masks hard: 1 where above value, else 0. ComfyUI: ThresholdMask."""
    return {"mask": (mask > params.value).float()}


class GrowMask(Params):
    pixels: int = Field(0, ge=-4096, le=4096, description="how far the mask grows; negative shrinks it")
    tapered_corners: bool = Field(True, description="grow by a plus sign each pixel, rounding corners off; "
                                                    "false: by a square, keeping them square")


@stage(params=GrowMask, inputs=MASK_IN, outputs={"mask": Port("MASK", "the masks, grown or shrunk")},
       comfyui=ComfyNode("GrowMask", inputs="mask", widgets="expand>pixels tapered_corners"))
def grow_mask(ctx, params: GrowMask, mask) -> dict:
    """Grow or shrink masks by some pixels. ComfyUI: GrowMask.

    Each pixel of growth is ComfyUI's grey dilation by a 3 x 3 footprint (a
    plus sign with ``tapered_corners``, a square without); shrinking is
    erosion.  Soft masks grow as their highest neighbours, shrink as their
    lowest.  Pixels outside the mask count for nothing."""
    from sdflow_diffusion.numerics.pixels import grow

    return {"mask": grow(_as_batch(mask), params.pixels, params.tapered_corners, ctx.check_interrupt)}


class FeatherMask(Params):
    radius: float = Field(4.0, ge=0.0, le=256.0, description="the blur's standard deviation in pixels, as "
                                                            "Pillow's GaussianBlur radius: 0 changes nothing")


@stage(params=FeatherMask, inputs=MASK_IN, outputs={"mask": Port("MASK", "the masks, soft-edged")})
def feather_mask(ctx, params: FeatherMask, mask) -> dict:
    """Soften the edges of masks with a Gaussian blur. ComfyUI: none (its FeatherMask fades each side
    of the mask linearly: that is feather_mask_edges).

    Edge pixels are repeated outwards, so a mask that reaches the border
    stays 1 there.  Grow the mask first (grow_mask) for the soft edge to
    lie outside what must be repainted."""
    from sdflow_diffusion.numerics.pixels import gaussian_blur

    return {"mask": gaussian_blur(_as_batch(mask), params.radius)}


class FeatherMaskEdges(Params):
    left: int = Field(0, ge=0, le=MAX_SIDE, description="columns faded on the left")
    top: int = Field(0, ge=0, le=MAX_SIDE, description="rows faded at the top")
    right: int = Field(0, ge=0, le=MAX_SIDE, description="columns faded on the right")
    bottom: int = Field(0, ge=0, le=MAX_SIDE, description="rows faded at the bottom")


@stage(params=FeatherMaskEdges, inputs=MASK_IN, outputs={"mask": Port("MASK", "the masks, faded at their sides")},
       comfyui=ComfyNode("FeatherMask", inputs="mask", widgets="left top right bottom"))
def feather_mask_edges(ctx, params: FeatherMaskEdges, mask) -> dict:
    """Fade masks linearly towards their sides. ComfyUI: FeatherMask.

    The n outermost rows or columns of a side are multiplied by 1/n (the
    outermost), 2/n, ..., 1.  ComfyUI does exactly this on the left and at
    the top; on the right and at the bottom it is one pixel off (and also
    dims the first column or row): here every side is alike."""
    from sdflow_diffusion.numerics.pixels import feather_edges

    return {"mask": feather_edges(_as_batch(mask), params.left, params.top, params.right, params.bottom)}


class MaskComposite(Params):
    x: int = Field(0, ge=0, le=MAX_SIDE, description="where the source's left edge goes on the destination")
    y: int = Field(0, ge=0, le=MAX_SIDE, description="where the source's top edge goes on the destination")
    operation: Literal["multiply", "add", "subtract", "and", "or", "xor"] = Field(
        "multiply", description="how a source pixel combines with the destination pixel under it")


@stage(
    params=MaskComposite,
    inputs={"destination": Port("MASK", "the masks combined into"), "source": Port("MASK", "the masks placed on them")},
    outputs={"mask": Port("MASK", "the combined masks, of the destination's size")},
    comfyui=ComfyNode("MaskComposite", inputs="destination source", widgets="x y operation"),
)
def mask_composite(ctx, params: MaskComposite, destination, source) -> dict:
    """Combine a mask into another at a position. ComfyUI: MaskComposite.

    Where the source covers the destination the two combine (and, or, xor
    round both to 0 or 1 first); the rest of the destination stays, the
    part of the source past its edge is cut off, and the result is clamped
    to [0, 1].  A batch of one is used for every mask of the other batch."""
    from sdflow_diffusion.numerics.pixels import composite

    destination, source = _as_batch(destination), _as_batch(source)
    if len(destination) != len(source) and 1 not in (len(destination), len(source)):
        raise StageError(f"the destination is a batch of {len(destination)} masks and the source of "
                         f"{len(source)}: they must be equal, or one of them 1",
                         help="take matching parts of the batches (or a single mask) first")
    return {"mask": composite(destination, source, params.x, params.y, params.operation)}


class SolidMask(Params):
    value: float = Field(1.0, ge=0.0, le=1.0, description="every pixel's value")
    width: int = Field(512, ge=1, le=MAX_SIDE, description="width in pixels")
    height: int = Field(512, ge=1, le=MAX_SIDE, description="height in pixels")


@stage(params=SolidMask, outputs={"mask": Port("MASK", "one mask of one value")},
       comfyui=ComfyNode("SolidMask", widgets="value width height"))
def solid_mask(ctx, params: SolidMask) -> dict:
    """A mask of one value everywhere. ComfyUI: SolidMask."""
    import torch

    return {"mask": torch.full((1, params.height, params.width), params.value, dtype=torch.float32)}


class MaskFromRect(Params):
    width: int = Field(512, ge=1, le=MAX_SIDE, description="the mask's width in pixels")
    height: int = Field(512, ge=1, le=MAX_SIDE, description="the mask's height in pixels")
    x: int = Field(0, ge=0, le=MAX_SIDE, description="the rectangle's left edge")
    y: int = Field(0, ge=0, le=MAX_SIDE, description="the rectangle's top edge")
    rect_width: int = Field(256, ge=1, le=MAX_SIDE, description="the rectangle's width")
    rect_height: int = Field(256, ge=1, le=MAX_SIDE, description="the rectangle's height")
    value: float = Field(1.0, ge=0.0, le=1.0, description="the value inside the rectangle (0 outside)")


@stage(params=MaskFromRect, outputs={"mask": Port("MASK", "one mask: the rectangle")})
def mask_from_rect(ctx, params: MaskFromRect) -> dict:
    """A mask of a rectangle: value inside, 0 outside. ComfyUI: SolidMask twice and MaskComposite, in one.

    A rectangle that reaches past the mask is cut at its edge."""
    from sdflow_diffusion.numerics.pixels import rectangle

    return {"mask": rectangle(params.width, params.height, params.x, params.y, params.rect_width,
                              params.rect_height, params.value)}


def _as_batch(mask):
    """``mask`` as [batch, height, width], as ComfyUI reshapes a mask given
    as [height, width]."""
    return mask.reshape(-1, *mask.shape[-2:])
