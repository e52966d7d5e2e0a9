"""Image post-processing: sharpen, colour, film grain, and a grid of a batch.

Each takes and gives IMAGE values (float32 ``[batch, height, width, 3]`` in
``[0, 1]``); the arithmetic is in :mod:`sdflow_extras.imaging`.
"""

from __future__ import annotations

from pydantic import Field

from sdflow.plugin import Params, Port, stage

IMAGES_IN = {"image": Port("IMAGE", "the images")}


class ImageSharpen(Params):
    radius: float = Field(1.0, gt=0, le=64, description="the blur's standard deviation in pixels: "
                                                          "how wide an edge counts as detail")
    amount: float = Field(1.0, ge=0, le=10, description="how much detail is added back: 0 changes nothing")


@stage(params=ImageSharpen, inputs=IMAGES_IN, outputs={"image": Port("IMAGE", "the images, sharpened")})
def image_sharpen(ctx, params: ImageSharpen, image) -> dict:
    """Sharpen images with an unsharp mask. ComfyUI: ImageSharpen.

    Each pixel gets ``amount`` times its difference from a Gaussian blur of
    ``radius`` pixels (ComfyUI's sigma and alpha).
    """
    from sdflow_extras.imaging import unsharp_mask

    return {"image": unsharp_mask(image, params.radius, params.amount)}


class ImageColorAdjust(Params):
    brightness: float = Field(1.0, ge=0, le=8, description="multiplies every pixel: 1 unchanged, 0 black")
    contrast: float = Field(1.0, ge=0, le=8, description="spread around the image's mean grey: "
                                                         "1 unchanged, 0 flat grey")
    saturation: float = Field(1.0, ge=0, le=8, description="colour against each pixel's grey: "
                                                           "1 unchanged, 0 black and white")


@stage(params=ImageColorAdjust, inputs=IMAGES_IN, outputs={"image": Port("IMAGE", "the images, adjusted")})
def image_color_adjust(ctx, params: ImageColorAdjust, image) -> dict:
    """Adjust brightness, contrast and saturation. ComfyUI: none in its core nodes.

    Works as Pillow's ImageEnhance does, in float; custom node packs offer
    the same (WAS Node Suite's Image Filter Adjustments).  The defaults
    (all 1.0) return the images unchanged, bit for bit.
    """
    from sdflow_extras.imaging import adjust_colour

    return {"image": adjust_colour(image, params.brightness, params.contrast, params.saturation)}


class FilmGrain(Params):
    strength: float = Field(0.05, ge=0, le=1, description="the noise's standard deviation, "
                                                          "in units of full brightness")
    seed: int = Field(0, ge=0, le=2**64 - 1, description="the grain's pattern: the same seed, the same grain")
    monochrome: bool = Field(True, description="one value per pixel for all three channels, "
                                               "as film grain looks; false: coloured noise")


@stage(params=FilmGrain, inputs=IMAGES_IN, outputs={"image": Port("IMAGE", "the images, with grain")})
def film_grain(ctx, params: FilmGrain, image) -> dict:
    """Add seeded Gaussian film grain to images. ComfyUI: ImageAddNoise.

    The noise is drawn on the CPU from the seed, so the same seed gives the
    same grain on any machine; the result is clamped to [0, 1].
    """
    from sdflow_extras.imaging import add_grain

    return {"image": add_grain(image, params.strength, params.seed, params.monochrome)}


class ImageGrid(Params):
    columns: int = Field(0, ge=0, le=4096, description="images per row; 0 for as near a square as "
                                                       "the batch allows")
    gap: int = Field(0, ge=0, le=4096, description="pixels between neighbouring images")
    background: float = Field(1.0, ge=0, le=1, description="the gaps' grey level: 0 black, 1 white")


@stage(params=ImageGrid, inputs=IMAGES_IN, outputs={"image": Port("IMAGE", "one image: the grid")})
def image_grid(ctx, params: ImageGrid, image) -> dict:
    """Tile every image of a batch into one image. ComfyUI: "Image Grid" from custom node packs.

    The images go row by row, ``gap`` pixels apart.  With 3 images and
    ``columns=2``: two rows, the second with one image and ``background``
    beside it.  More columns than images: one row.
    """
    from sdflow_extras.imaging import grid

    return {"image": grid(image, params.columns, params.gap, params.background)}
