"""image_composite: one image pasted onto another, through a mask."""

from __future__ import annotations

from pydantic import Field

from sdflow.plugin import ComfyNode, Params, Port, stage


class ImageComposite(Params):
    x: int = Field(0, ge=-16384, le=16384, description="where the source's left edge goes, in pixels")
    y: int = Field(0, ge=-16384, le=16384, description="where the source's top edge goes, in pixels")
    resize_source: bool = Field(False, description="stretch the source to the destination's size first")


@stage(
    params=ImageComposite,
    inputs={
        "destination": Port("IMAGE", "the images pasted onto"),
        "source": Port("IMAGE", "the images pasted"),
        "mask": Port("MASK", "how much of the source shows (1) over the destination (0), stretched over "
                             "the source; none: all of it", optional=True),
    },
    outputs={"image": Port("IMAGE", "the destination with the source on it")},
    comfyui=ComfyNode("ImageCompositeMasked", inputs="destination source mask", widgets="x y resize_source"),
)
def image_composite(ctx, params: ImageComposite, destination, source, mask=None) -> dict:
    """Paste images onto others at a place, through a mask. ComfyUI: ImageCompositeMasked.

    After inpainting, paste the repainted image over the original through the inpainting mask:
    every pixel outside it is then the original's, exactly.  What falls outside the destination is dropped; the source and mask are repeated to the
    destination's batch."""
    from sdflow_diffusion.numerics.paste import paste

    pasted = paste(destination.movedim(-1, 1), source.movedim(-1, 1), params.x, params.y, mask,
                   params.resize_source)
    return {"image": pasted.movedim(1, -1).contiguous()}
