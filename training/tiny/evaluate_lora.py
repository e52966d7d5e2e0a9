"""Measure the magenta LoRA: held-out prompts drawn with it at strength 1 and 0, scored by pixels.

``python -m training.tiny.evaluate_lora [--lora FILE] [--seeds N] [--grid PNG]``

Five prompts, each a (shape, background) pair never shown in magenta in
training (train_lora.HELD_OUT), at several seeds, drawn through the
functions sdflow's stages call (training/tiny/evaluate.py) with the LoRA
applied by sdflow's own load_lora code; the scorer chooses among the six
palette colours and magenta.  Prints the accuracy of each attribute, at
strength 1 and at strength 0, as JSON.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.tiny.dataset import ALL_COLOURS, Attributes, canonical_caption
from training.tiny.score import FIELDS, judge
from training.tiny.train_lora import CHECKPOINT

PROMPTS = (Attributes("circle", "magenta", "blue", "small", "left"),
           Attributes("square", "magenta", "green", "large", "right"),
           Attributes("triangle", "magenta", "yellow", "large", "top"),
           Attributes("circle", "magenta", "white", "large", "center"),
           Attributes("square", "magenta", "black", "small", "bottom"))


def with_lora(handles: tuple, path: Path, strength: float) -> tuple:
    """(model, clip, vae) with the LoRA at ``path`` applied to both at ``strength``."""
    from sdflow_diffusion.models.lora import lora_patch, read_lora

    if strength == 0:
        return handles
    model, clip, vae = handles
    layout, tensors = read_lora(path, False, path.name)
    patched = [replace(h, patches=(*h.patches, lora_patch(layout, tensors, path.name, h, strength, print)))
               for h in (model, clip)]
    return (*patched, vae)


def evaluate(path: Path, seeds: int, grid_path: Path | None = None) -> dict:
    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.settings import DiffusionSettings
    from training.tiny.evaluate import draw_prompts, grid, short_label
    from training.tiny.score import score

    base = load_checkpoint(CHECKPOINT, DiffusionSettings(device="cpu"), "auto")
    prompts = [canonical_caption(a) for a in PROMPTS for _ in range(seeds)]
    expected = [a for a in PROMPTS for _ in range(seeds)]
    seed_list = [seed for _ in PROMPTS for seed in range(seeds)]
    report, pictures, labels, wrong = {}, [], [], []
    for strength in (1.0, 0.0):
        images = draw_prompts(with_lora(base, path, strength), prompts, seed_list)
        verdicts = [judge(np.asarray(im), a, ALL_COLOURS) for im, a in zip(images, expected)]
        found = [score(np.asarray(im), ALL_COLOURS) for im in images]
        report[f"strength {strength:g}"] = {
            **{field: float(np.mean([v[field] for v in verdicts])) for field in FIELDS},
            "all": float(np.mean([all(v.values()) for v in verdicts])),
            "colours_read": {c: sum(f.colour == c for f in found) for c in dict.fromkeys(f.colour for f in found)}}
        pictures += images
        labels += [f"s={strength:g} " + short_label(f) for f in found]
        wrong += [not all(v.values()) for v in verdicts]
    if grid_path is not None:
        grid(pictures, labels, wrong, columns=seeds * 2).save(grid_path)
    return {"prompts": [canonical_caption(a) for a in PROMPTS], "seeds": seeds, **report}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.tiny.evaluate_lora",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--grid", type=Path, default=None, help="save a labelled grid of the pictures here")
    args = parser.parse_args(argv)
    print(json.dumps(evaluate(args.lora, args.seeds, args.grid), indent=2))


if __name__ == "__main__":
    main()
