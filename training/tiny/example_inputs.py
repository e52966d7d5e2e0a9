"""The pictures the example recipes start from, drawn by the data set's own code.

``python -m training.tiny.example_inputs DIR`` writes them (the shipped copies
are in ``examples/inputs/``; ``tests/test_images_in.py`` checks that they are
what this draws).  Each is a data set picture with its shape exactly on its
anchor (no jitter), so what a recipe changes is easy to see and to score.
"""

from __future__ import annotations

import sys
from pathlib import Path

from training.tiny.dataset import JITTER, Attributes, render_batch

NO_JITTER = JITTER * (2 * JITTER + 1) + JITTER  # the jitter index of a centre moved by (0, 0)

EXAMPLE_INPUTS = {
    "red_circle.png": Attributes("circle", "red", "white", "large", "center"),
    "red_square_left.png": Attributes("square", "red", "white", "small", "left"),
}


def write_example_inputs(folder: Path) -> list[Path]:
    """Write every example input as a PNG into ``folder``; their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pictures = render_batch(list(EXAMPLE_INPUTS.values()), [NO_JITTER] * len(EXAMPLE_INPUTS))
    paths = []
    for name, picture in zip(EXAMPLE_INPUTS, pictures):
        Image.fromarray(picture).save(folder / name, optimize=True)
        paths.append(folder / name)
    return paths


if __name__ == "__main__":
    for written in write_example_inputs(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/inputs")):
        print(written)
