"""How well does sdflow-tiny draw what it is asked for?  Run by hand; prints
figures and asserts nothing.

For every held-out attribute combination (15 (shape, colour, background)
triples never seen in training, x 2 sizes x 5 positions = 150; or, with
``--split train``, 150 combinations it was trained on), the prompt is the
canonical caption ("a small red triangle at the left on a blue background"),
image i is drawn with seed i through sdflow's own stages, and the pixel
scorer (training.tiny.score) reads the attributes back.  Prints the
accuracy per attribute, of all five at once (target >= 97%), per triple,
and the time per image; writes a labelled grid, wrong pictures framed in
red with what the scorer saw under them.

    .venv/bin/python benchmarks/tiny_eval.py [--checkpoint PATH] [--steps 20] [--cfg 3.0]
        [--split heldout|train] [--limit N] [--grid benchmarks/tiny_eval_grid.png] [--device auto]
        [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # training/ is not installed: import training.tiny from the checkout
DEFAULT_CHECKPOINT = ROOT / "plugins/sdflow_diffusion/models/tiny/sdflow-tiny.safetensors"
DEFAULT_GRID = ROOT / "benchmarks/tiny_eval_grid.png"
TARGET = 0.97
TRAIN_SAMPLE_SEED = 2024


def combinations(split: str) -> list:
    """The attribute combinations to draw, in a fixed order."""
    from training.tiny.dataset import heldout_attributes, make_dataset

    if split == "heldout":
        return heldout_attributes()
    _, _, attrs = make_dataset(len(heldout_attributes()), seed=TRAIN_SAMPLE_SEED, split="train")
    return attrs


def report(attrs: list, verdicts: list[dict[str, bool]], seconds: float) -> None:
    from training.tiny.score import FIELDS

    n = len(verdicts)
    print(f"{n} images in {seconds:.1f} s: {seconds / n:.3f} s per image (checkpoint load not counted)")
    for name in FIELDS:
        print(f"  {name:<11} {np.mean([v[name] for v in verdicts]):7.1%}")
    everything = np.mean([all(v.values()) for v in verdicts])
    met = "met" if everything >= TARGET else "NOT met"
    print(f"  {'all five':<11} {everything:7.1%}   (target >= {TARGET:.0%}: {met})")
    by_triple = defaultdict(list)
    for a, v in zip(attrs, verdicts):
        by_triple[(a.shape, a.colour, a.background)].append(all(v.values()))
    print("per (shape, colour, background), all five right:")
    for triple, oks in sorted(by_triple.items()):
        print(f"  {' '.join(triple):<28} {sum(oks):3d}/{len(oks)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--negative", default="", help="negative prompt (default: empty)")
    parser.add_argument("--split", choices=("heldout", "train"), default="heldout")
    parser.add_argument("--limit", type=int, default=None, help="only the first N combinations")
    parser.add_argument("--grid", type=Path, default=DEFAULT_GRID)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch; 1 when a training run shares the CPU (two processes "
                             "each using every core slow each other down a hundredfold)")
    args = parser.parse_args(argv)

    from sdflow_diffusion.models.load import load_checkpoint
    from training.tiny.dataset import canonical_caption
    from training.tiny.evaluate import draw_prompts, grid, short_label
    from training.tiny.score import FIELDS, score

    from sdflow_diffusion.settings import DiffusionSettings

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.checkpoint.exists():
        sys.exit(f"no checkpoint at {args.checkpoint} (train one, or pass --checkpoint)")
    attrs = combinations(args.split)[:args.limit]
    prompts = [canonical_caption(a) for a in attrs]
    print(f"{args.checkpoint}: {len(attrs)} {args.split} combinations, "
          f"{args.steps} euler steps, cfg {args.cfg}, negative {args.negative!r}")
    handles = load_checkpoint(args.checkpoint, DiffusionSettings(device=args.device))
    start = time.perf_counter()
    images = draw_prompts(handles, prompts, list(range(len(prompts))), args.steps, args.cfg, args.negative)
    seconds = time.perf_counter() - start
    found = [score(np.asarray(image)) for image in images]
    verdicts = [{name: getattr(f, name) == getattr(a, name) for name in FIELDS} for f, a in zip(found, attrs)]
    report(attrs, verdicts, seconds)
    wrong = [not all(v.values()) for v in verdicts]
    labels = [short_label(a) + (f"\nsaw {short_label(f)}" if bad else "")
              for a, f, bad in zip(attrs, found, wrong)]
    sheet = grid(images, labels, wrong)
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.grid)
    print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
