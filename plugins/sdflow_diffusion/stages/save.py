"""save_image: PNG files that carry the recipe that made them."""

from __future__ import annotations

import unicodedata

from pydantic import Field, field_validator

from sdflow.plugin import ComfyNode, Params, Port, stage


MAX_STEM_BYTES = 200
"""A file name's limit is 255 bytes; the counter, '.png' and the temporary
file's marks take the rest."""


class SaveImage(Params):
    prefix: str = Field(
        "sdflow",
        min_length=1,
        pattern=r"^[^\x00]*$",
        description="file name prefix inside the output folder (may name subfolders); a counter follows",
    )

    @field_validator("prefix")
    @classmethod
    def _stays_inside(cls, prefix: str) -> str:
        parts = prefix.replace("\\", "/").split("/")
        if prefix.startswith(("/", "\\")) or ".." in parts or (len(prefix) > 1 and prefix[1] == ":"):
            raise ValueError("the prefix must stay inside the output folder: no leading '/', no '..'")
        if parts[-1] in ("", "."):
            raise ValueError("the prefix must end with a file name, such as \"portraits/cat\"")
        control = next((c for c in prefix if unicodedata.category(c) == "Cc"), None)
        if control is not None:
            raise ValueError(f"the prefix holds a control character (U+{ord(control):04X}); "
                             "file names take printable characters only")
        for part in parts[:-1]:
            if len(part.encode()) > 255:
                raise ValueError(f"the folder name \"{part[:20]}...\" is {len(part.encode())} bytes long; "
                                 "file systems take at most 255")
        if len(parts[-1].encode()) > MAX_STEM_BYTES:
            raise ValueError(f"the file name \"{parts[-1][:20]}...\" is {len(parts[-1].encode())} bytes long; "
                             f"at most {MAX_STEM_BYTES}, leaving room for the counter and '.png'")
        return prefix


@stage(params=SaveImage, inputs={"image": Port("IMAGE", "the images to save")}, output=True,
       comfyui=[
           ComfyNode("SaveImage", inputs="images>image", widgets="filename_prefix>prefix", title="Save Image"),
           ComfyNode("PreviewImage", inputs="images>image", title="Preview Image",
                     fixed={"prefix": "preview"},
                     note="sdflow has no previews: PreviewImage is a save_image with prefix \"preview\""),
       ])
def save_image(ctx, params: SaveImage, image) -> dict:
    """Write each image as a PNG into the output folder, never overwriting. ComfyUI: SaveImage.

    Each PNG carries the recipe and what the run resolved, and its own place in the batch and
    seed (``sdflow.image``: index, count, seed; the seed is the nearest sampler's, none without one).
    It also carries AUTOMATIC1111's ``parameters`` text, which viewers, galleries and model sites
    read: the prompt, the negative, and the main sampler's settings, model and LoRAs. Where every
    stage that made the images stands for a ComfyUI node, it carries ComfyUI's ``prompt`` and
    ``workflow`` too: dropped onto ComfyUI, the image opens its graph."""
    import json

    import diffusers
    import torch

    from sdflow_diffusion.images.a1111 import parameters
    from sdflow_diffusion.images.png import save_pngs
    from sdflow_diffusion.interchange.comfyui_export import png_chunks
    from sdflow_diffusion.numerics.decode import to_pil

    metadata = ctx.metadata(versions={"torch": torch.__version__, "diffusers": diffusers.__version__})
    metadata.update(png_chunks(ctx.lineage(run_order=True)))  # what ComfyUI reads
    pictures = to_pil(image)
    seeds = ctx.upstream_records().get("seeds")
    seeds = seeds if isinstance(seeds, list) and len(seeds) == len(pictures) else [None] * len(pictures)
    each = [{"sdflow.image": json.dumps({"index": i, "count": len(pictures), "seed": seed})}
            for i, seed in enumerate(seeds)]
    version = f"sdflow {json.loads(metadata['sdflow.versions'])['sdflow']}"
    lineage = ctx.lineage()
    for i, (fields, picture) in enumerate(zip(each, pictures)):
        text = parameters(lineage, i, picture.size, version)
        if text is not None:
            fields["parameters"] = text  # what A1111, galleries and model sites read
    for path in save_pngs(pictures, ctx.output_dir, params.prefix, metadata, each):
        ctx.file_written(path)
    return {}
