"""Measure the corners LoRA: held-out prompts drawn with it at strength 1 and 0, scored by pixels.

``python -m training.tiny.evaluate_lora --lora FILE [--seeds N] [--grid PNG]``

Two sets of prompts, each at several seeds, drawn through the functions
sdflow's stages call (training/tiny/evaluate.py) with the LoRA applied by
sdflow's own load_lora code, and read back by the scorer with the corners
among the positions it tells:

- ``corners``: train_lora.HELD_OUT, shapes in the corners never shown in
  training.  The LoRA should draw them; the base model cannot.
- ``ordinary``: ten of the base model's training prompts at its five
  positions.  The LoRA should leave them as they were.

Prints each attribute's accuracy per set and strength, as JSON.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.tiny.dataset import Attributes, canonical_caption
from training.tiny.score import FIELDS, score
from training.tiny.train_lora import CHECKPOINT, HELD_OUT

ORDINARY = tuple(Attributes(*fields) for fields in (
    ("triangle", "red", "blue", "small", "left"), ("circle", "yellow", "black", "large", "right"),
    ("square", "white", "green", "large", "top"), ("circle", "green", "blue", "small", "bottom"),
    ("triangle", "blue", "white", "large", "center"), ("square", "black", "yellow", "small", "left"),
    ("circle", "red", "white", "large", "top"), ("triangle", "green", "black", "small", "right"),
    ("square", "yellow", "red", "large", "bottom"), ("circle", "blue", "green", "small", "center"),
))
SETS = {"corners": HELD_OUT, "ordinary": ORDINARY}


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


def accuracy(images: list, expected: list[Attributes]) -> dict:
    """Each attribute's share of right answers, "all" (every attribute
    right), and the positions read, over ``images`` drawn for ``expected``."""
    found = [score(np.asarray(image), corners=True) for image in images]
    right = [{name: getattr(f, name) == getattr(e, name) for name in FIELDS} for f, e in zip(found, expected)]
    return {**{name: float(np.mean([r[name] for r in right])) for name in FIELDS},
            "all": float(np.mean([all(r.values()) for r in right])),
            "positions_read": dict(sorted({p: sum(f.position == p for f in found)
                                           for p in {f.position for f in found}}.items()))}


def evaluate(path: Path, seeds: int, grid_path: Path | None = None) -> dict:
    from sdflow_diffusion.models.load import load_checkpoint
    from sdflow_diffusion.settings import DiffusionSettings
    from training.tiny.evaluate import draw_prompts, grid, short_label

    base = load_checkpoint(CHECKPOINT, DiffusionSettings(device="cpu"), "auto")
    report, pictures, labels, wrong = {"seeds": seeds}, [], [], []
    for name, prompts in SETS.items():
        expected = [a for a in prompts for _ in range(seeds)]
        seed_list = [seed for _ in prompts for seed in range(seeds)]
        for strength in (1.0, 0.0):
            images = draw_prompts(with_lora(base, path, strength), [canonical_caption(a) for a in expected],
                                  seed_list)
            report[f"{name}, strength {strength:g}"] = accuracy(images, expected)
            if name == "corners":
                found = [score(np.asarray(image), corners=True) for image in images]
                pictures += images
                labels += [f"s={strength:g} " + short_label(f) for f in found]
                wrong += [f != e for f, e in zip(found, expected)]
    if grid_path is not None:
        grid(pictures, labels, wrong, columns=seeds * 2).save(grid_path)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.tiny.evaluate_lora",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--lora", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--grid", type=Path, default=None, help="save a labelled grid of the corner pictures here")
    args = parser.parse_args(argv)
    print(json.dumps(evaluate(args.lora, args.seeds, args.grid), indent=2))


if __name__ == "__main__":
    main()
