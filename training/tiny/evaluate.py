"""Drawing prompts with a checkpoint through sdflow's own stages, and a
labelled grid of the results.

The evaluation renders through the functions that ``sdflow run``'s stages
call (load_checkpoint, encode_text, empty_latent, sample, decode, to_pil),
so its accuracy is what a user of a recipe with the same settings gets.  Used by
``benchmarks/tiny_eval.py`` and by tests, which run it on a random tiny
checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from training.tiny.dataset import IMAGE_SIZE, Attributes

SHORT = {"small": "sm", "large": "lg", "circle": "circ", "square": "sq", "triangle": "tri",
         "left": "L", "right": "R", "top": "T", "bottom": "B", "center": "C",
         "top left": "TL", "top right": "TR", "bottom left": "BL", "bottom right": "BR"}


def render_prompts(checkpoint_path: Path, prompts: list[str], seeds: list[int], steps: int = 20,
                   cfg: float = 3.0, negative: str = "", settings=None) -> list:
    """One 64x64 ``PIL.Image`` per (prompt, seed), the checkpoint loaded once.

    ``settings``: the diffusion plugin's settings (device, dtype); the
    default runs on the GPU when there is one.
    """
    from sdflow_diffusion.models.load import load_checkpoint

    handles = load_checkpoint(Path(checkpoint_path), settings)
    return draw_prompts(handles, prompts, seeds, steps, cfg, negative)


def draw_prompts(handles: tuple, prompts: list[str], seeds: list[int], steps: int = 20, cfg: float = 3.0,
                 negative: str = "", sampler: str = "euler", scheduler: str = "normal") -> list:
    """:func:`render_prompts` with the (model, clip, vae) handles already
    loaded.  ``negative`` defaults to the empty prompt, which sdflow-tiny
    learnt as its unconditional caption."""
    from sdflow_diffusion.numerics.decode import decode, to_pil
    from sdflow_diffusion.numerics.encode import encode_text
    from sdflow_diffusion.numerics.sampling import empty_latent, sample
    from sdflow_diffusion.stages.sample import Sample

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    model, clip, vae = handles
    uncond = encode_text(clip, negative)
    images = []
    for prompt, seed in zip(prompts, seeds):
        params = Sample(seed=seed, steps=steps, cfg=cfg, sampler=sampler, scheduler=scheduler)
        latent = sample(model, encode_text(clip, prompt), uncond, empty_latent(IMAGE_SIZE, IMAGE_SIZE, 1), params)
        images += to_pil(decode(vae, latent))
    return images


def short_label(attrs: Attributes) -> str:
    """A grid cell's caption: "sm red tri L / blue"."""
    short = {field: SHORT.get(getattr(attrs, field), getattr(attrs, field))  # the scorer's "none" stays
             for field in ("size", "shape", "position")}
    return f"{short['size']} {attrs.colour} {short['shape']} {short['position']} / {attrs.background}"


def grid(images: list, labels: list[str], wrong: list[bool], columns: int = 10, scale: int = 2):
    """One ``PIL.Image``: each picture enlarged ``scale`` times with its
    label (one or two lines) under it, framed in red where ``wrong``."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    side, pad, line_h = IMAGE_SIZE * scale, 4, 13
    widest = max([font.getlength(line) for label in labels for line in label.split("\n")], default=0)
    cell_w, cell_h = max(side, int(widest) + 2) + 2 * pad, side + 2 * line_h + 3 * pad
    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (160, 160, 160))
    draw = ImageDraw.Draw(sheet)
    for i, (image, label, bad) in enumerate(zip(images, labels, wrong)):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h
        if bad:
            draw.rectangle([x + 1, y + 1, x + cell_w - 2, y + cell_h - 2], outline=(220, 0, 0), width=pad - 1)
        sheet.paste(image.convert("RGB").resize((side, side), Image.NEAREST), (x + pad, y + pad))
        draw.multiline_text((x + pad, y + side + 2 * pad), label, fill=(0, 0, 0), font=font, spacing=2)
    return sheet
