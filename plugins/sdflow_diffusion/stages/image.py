"""Images in: load_image, and the pixel-side stages of img2img and outpainting.

An IMAGE is float32 ``[batch, height, width, 3]`` in ``[0, 1]``, a MASK
float32 ``[batch, height, width]`` (1 = repaint); the arithmetic is in
:mod:`sdflow_diffusion.numerics.pixels`, the reading in
:mod:`sdflow_diffusion.images.read`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sdflow.plugin import ComfyNode, Params, Port, StageError, stage

MAX_SIDE = 16384  # ComfyUI's MAX_RESOLUTION
IMAGE_IN = {"image": Port("IMAGE", "the images")}


class LoadImage(Params):
    name: str = Field(
        min_length=1, pattern=r"^[^\x00]*$",
        description="image file: a name looked up in the --inputs folders, the recipe's folder and its "
                    "inputs/ folder; a path outside them only when given with --set",
    )


@stage(
    params=LoadImage,
    outputs={"image": Port("IMAGE", "the image, as a batch of one"),
             "mask": Port("MASK", "1 - alpha: the transparent pixels are 1, to repaint; all 0 without alpha")},
             comfyui=ComfyNode("LoadImage", widgets="image>name -upload", title="Load Image"))
def load_image(ctx, params: LoadImage) -> dict:
    """Load an image file, upright, with a mask from its transparency. ComfyUI: LoadImage.

    PNG, JPEG, WebP, or whatever else Pillow reads, turned as its EXIF
    orientation says.  Every mode becomes RGB: 16-bit grey is divided by
    65535 (not rounded to 8 bits as ComfyUI does), 32-bit integer grey is
    read as 16-bit values and float grey clipped to [0, 1]; grey (L, 1) is
    repeated in three channels, a palette image goes through its colours,
    CMYK through Pillow's formula (no colour profile).  Pillow reads 16-bit
    colour PNGs at 8 bits.  The mask is 1 - alpha (a palette's transparent
    colour, LA's and RGBA's alpha), of the image's size; all zeros without
    alpha (ComfyUI gives a 64 x 64 mask then).  Of an animated file (GIF,
    WebP, APNG) only the first frame is read, with a warning: ComfyUI loads
    every frame as a batch.  Images over 64 megapixels are refused."""
    import torch

    from sdflow_diffusion.images.read import read_input

    picture = read_input(ctx, params.name)
    mask = torch.zeros(picture.rgb.shape[:3]) if picture.alpha is None else 1.0 - picture.alpha
    return {"image": picture.rgb, "mask": mask}


@load_image.identifies
def _image_file(ctx, params: LoadImage) -> None:
    from sdflow_diffusion.images.read import identify_input

    identify_input(ctx, params.name)


class ImageScale(Params):
    width: int = Field(0, ge=0, le=MAX_SIDE, description="new width in pixels; 0: from height, keeping the "
                                                        "aspect ratio")
    height: int = Field(0, ge=0, le=MAX_SIDE, description="new height in pixels; 0: from width, keeping the "
                                                          "aspect ratio")
    factor: float | None = Field(None, ge=0.01, le=8.0, description="scale both sides by this instead "
                                                                    "(ComfyUI: ImageScaleBy)")
    megapixels: float | None = Field(None, ge=0.01, le=64.0,
                                     description="scale to about this many megapixels (of 1024 x 1024), "
                                                 "keeping the aspect ratio (ComfyUI: ImageScaleToTotalPixels)")
    method: Literal["nearest", "bilinear", "bicubic", "area", "lanczos"] = Field(
        "nearest", description="how pixels are resampled: ComfyUI's methods (nearest is its nearest-exact)")
    crop: Literal["disabled", "center"] = Field(
        "disabled", description="center: cut the middle of the new aspect ratio out first, instead of stretching")

    @model_validator(mode="after")
    def _one_way(self):
        ways = [way for way, given in (("width/height", bool(self.width or self.height)),
                                       ("factor", self.factor is not None),
                                       ("megapixels", self.megapixels is not None)) if given]
        if not ways:
            raise ValueError("give the new size: width and/or height, or factor, or megapixels")
        if len(ways) > 1:
            raise ValueError(f"give the new size one way only, not {ways[0]} and {ways[1]} together")
        return self


NEAREST = {"method": {"nearest-exact": "nearest"}}
"""ComfyUI's "nearest-exact" is sdflow's "nearest"."""


@stage(params=ImageScale, inputs=IMAGE_IN, outputs={"image": Port("IMAGE", "the images, resized")},
       comfyui=[
           ComfyNode("ImageScale", inputs="image", widgets="upscale_method>method width height crop",
                     title="Upscale Image", values=NEAREST),
           ComfyNode("ImageScaleBy", inputs="image", widgets="upscale_method>method scale_by>factor",
                     title="Upscale Image By", values=NEAREST),
           ComfyNode("ImageScaleToTotalPixels", inputs="image", widgets="upscale_method>method megapixels",
                     title="Scale Image to Total Pixels", values=NEAREST),
       ])
def image_scale(ctx, params: ImageScale, image) -> dict:
    """Resize images to a size, by a factor, or to a number of megapixels. ComfyUI: ImageScale,
    ImageScaleBy and ImageScaleToTotalPixels.

    Exactly one way is given: ``width`` and ``height`` (one of them 0 keeps
    the aspect ratio), ``factor``, or ``megapixels``; sizes are rounded as
    ComfyUI rounds them.  Bilinear and bicubic are torch's, as ComfyUI's;
    Lanczos is Pillow's, computed in float where ComfyUI rounds to 8 bits
    first; bicubic and Lanczos results are clamped to [0, 1]."""
    from sdflow_diffusion.numerics import pixels

    _, height, width, _ = image.shape
    if params.factor is not None:
        size = pixels.size_by_factor(params.factor, width, height)
    elif params.megapixels is not None:
        size = pixels.size_for_megapixels(params.megapixels, width, height)
    else:
        size = pixels.size_for(params.width, params.height, width, height)
    _check_result(*size, f"scaling {width}x{height} images")
    return {"image": pixels.scale(image, *size, params.method, params.crop)}


class ImageCrop(Params):
    width: int = Field(512, ge=1, le=MAX_SIDE, description="width of the part kept")
    height: int = Field(512, ge=1, le=MAX_SIDE, description="height of the part kept")
    x: int = Field(0, ge=0, le=MAX_SIDE, description="its left edge")
    y: int = Field(0, ge=0, le=MAX_SIDE, description="its top edge")


@stage(params=ImageCrop, inputs=IMAGE_IN, outputs={"image": Port("IMAGE", "the part kept")},
       comfyui=ComfyNode("ImageCrop", inputs="image", widgets="width height x y", title="Image Crop"))
def image_crop(ctx, params: ImageCrop, image) -> dict:
    """Keep a rectangle of each image. ComfyUI: ImageCrop.

    As ComfyUI does, a corner past the image is moved to its last row or
    column, and a rectangle that reaches past the image is cut at its edge:
    the result may be smaller than asked."""
    _, height, width, _ = image.shape
    x, y = min(params.x, width - 1), min(params.y, height - 1)
    return {"image": image[:, y:y + params.height, x:x + params.width].clone()}


class ImagePadForOutpaint(Params):
    left: int = Field(0, ge=0, le=MAX_SIDE, description="pixels added on the left")
    top: int = Field(0, ge=0, le=MAX_SIDE, description="pixels added at the top")
    right: int = Field(0, ge=0, le=MAX_SIDE, description="pixels added on the right")
    bottom: int = Field(0, ge=0, le=MAX_SIDE, description="pixels added at the bottom")
    feathering: int = Field(40, ge=0, le=MAX_SIDE, description="how far into the image the mask fades from 1 "
                                                               "to 0 along the padded sides")


@stage(
    params=ImagePadForOutpaint,
    inputs=IMAGE_IN,
    outputs={"image": Port("IMAGE", "the images on a larger, 0.5 grey canvas"),
             "mask": Port("MASK", "1 on the new area, fading into the image; batch of one")},
             comfyui=ComfyNode("ImagePadForOutpaint", inputs="image", widgets="left top right bottom feathering",
                               title="Pad Image for Outpainting"))
def image_pad_for_outpaint(ctx, params: ImagePadForOutpaint, image) -> dict:
    """Grow the canvas for outpainting, with the mask of what to draw. ComfyUI: ImagePadForOutpaint.

    The new area is 0.5 grey.  The mask is 1 there and, inside the image,
    ``((feathering - d) / feathering)^2`` within ``feathering`` pixels of a
    padded side (d counted from 0 on the top and left rows, from 1 on the
    bottom and right ones), 0 beyond: ComfyUI's numbers.  No ramp unless
    twice the feathering is less than both sides of the image."""
    from sdflow_diffusion.numerics import pixels

    _, height, width, _ = image.shape
    _check_result(width + params.left + params.right, height + params.top + params.bottom,
                  f"padding {width}x{height} images")
    padded, mask = pixels.pad_for_outpaint(image, params.left, params.top, params.right, params.bottom,
                                           params.feathering)
    return {"image": padded, "mask": mask}


class ImageFromBatch(Params):
    batch_index: int = Field(0, ge=0, le=4095, description="the first image taken, counting from 0")
    length: int = Field(1, ge=1, le=4096, description="how many images are taken")


@stage(params=ImageFromBatch, inputs=IMAGE_IN, outputs={"image": Port("IMAGE", "the images taken")},
       comfyui=ComfyNode("ImageFromBatch", inputs="image", widgets="batch_index length"))
def image_from_batch(ctx, params: ImageFromBatch, image) -> dict:
    """Take some images of a batch. ComfyUI: ImageFromBatch.

    As ComfyUI does, an index past the batch takes its last image, and a
    length past its end takes what there is."""
    index = min(params.batch_index, len(image) - 1)
    seeds = ctx.upstream_records().get("seeds")
    if isinstance(seeds, list) and len(seeds) == len(image):  # the images taken keep their seeds
        ctx.record(seeds=seeds[index:index + params.length])
    return {"image": image[index:index + params.length].clone()}


class ImageBatch(Params):
    pass


@stage(
    params=ImageBatch,
    inputs={"image1": Port("IMAGE", "the first images"), "image2": Port("IMAGE", "the images put after them")},
    outputs={"image": Port("IMAGE", "one batch of both")},
    comfyui=ComfyNode("ImageBatch", inputs="image1 image2", title="Batch Images"),
)
def image_batch(ctx, params: ImageBatch, image1, image2) -> dict:
    """Put two batches of images into one. ComfyUI: ImageBatch.

    Images of another size in ``image2`` are resized to the size of
    ``image1``, as ComfyUI does: bilinear, their middle cut out first when
    the aspect ratio differs."""
    import torch

    from sdflow_diffusion.numerics import pixels

    if image2.shape[1:] != image1.shape[1:]:
        image2 = pixels.scale(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
    return {"image": torch.cat([image1, image2])}


class MaskToImage(Params):
    pass


@stage(params=MaskToImage, inputs={"mask": Port("MASK", "the masks")},
       outputs={"image": Port("IMAGE", "the masks as grey images")},
       comfyui=ComfyNode("MaskToImage", inputs="mask", title="Convert Mask to Image"))
def mask_to_image(ctx, params: MaskToImage, mask) -> dict:
    """Show masks as grey images: 1 is white. ComfyUI: MaskToImage."""
    return {"image": mask.reshape(-1, *mask.shape[-2:], 1).expand(-1, -1, -1, 3).contiguous()}


def _check_result(width: int, height: int, doing: str) -> None:
    from sdflow_diffusion.numerics import pixels

    if width * height > pixels.MAX_PIXELS:
        raise StageError(f"{doing} would make {width}x{height} images, over the "
                         f"{pixels.MAX_PIXELS / 2**20:g} megapixels sdflow handles",
                         help="ask for a smaller size")
