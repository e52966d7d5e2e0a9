"""The synthetic pictures sdflow-tiny learns from: one shape on a plain background.

Every picture is fully described by five :class:`Attributes` (shape, colour,
background, size, position), so a model trained on them can be scored
exactly (:mod:`.score`).  Fifteen (shape, colour, background) triples are
never shown in training (:data:`HELD_OUT`): drawing them asks the model to
compose attributes it has only seen apart, which is what the evaluation
measures.  Each held-out triple shares its (shape, colour), (shape,
background) and (colour, background) pairs with no other held-out triple, so
every pair still appears in training with most of its partners.

Everything is deterministic in a seed and needs only Pillow and numpy.
Shapes are drawn once per (shape, size, position, jitter) at 4x and
box-averaged down to 64x64 (anti-aliased edges, the same every time), and
pictures are composed from those cached masks in bulk, so 60,000 take a few
seconds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "white", "black")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
# Positions the base model never sees, for LoRAs that teach them: the
# corners, off centre along both axes.
CORNERS = ("top left", "top right", "bottom left", "bottom right")
ALL_POSITIONS = POSITIONS + CORNERS

# Pure colours: every pair is at least 255 apart in RGB, so a nearest-colour
# guess survives heavy noise and a VAE's smudging.
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
       "yellow": (255, 255, 0), "white": (255, 255, 255), "black": (0, 0, 0)}
PALETTE = np.array([RGB[c] for c in COLOURS], dtype=np.float32)

IMAGE_SIZE = 64
RADIUS = {"small": 9, "large": 16}  # circle radius, half the side of a square or triangle
ANCHOR_OFFSET = 12  # shape centre's distance from the image centre, off centre
JITTER = 2  # the centre moves by up to this many pixels along each axis
JITTERS = (2 * JITTER + 1) ** 2  # jitter indices: every (dx, dy)
ANCHORS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1), "center": (0, 0),
           "top left": (-1, -1), "top right": (1, -1), "bottom left": (-1, 1), "bottom right": (1, 1)}
SUPERSAMPLE = 4

TRIPLES = tuple((s, c, b) for s in SHAPES for c in COLOURS for b in COLOURS if b != c)
HELD_OUT = (
    ("circle", "red", "green"), ("circle", "green", "red"), ("circle", "blue", "yellow"),
    ("circle", "yellow", "blue"), ("circle", "white", "black"),
    ("square", "red", "blue"), ("square", "green", "yellow"), ("square", "blue", "red"),
    ("square", "yellow", "green"), ("square", "black", "white"),
    ("triangle", "red", "yellow"), ("triangle", "green", "blue"), ("triangle", "blue", "green"),
    ("triangle", "yellow", "white"), ("triangle", "white", "red"),
)
TRAIN_TRIPLES = tuple(t for t in TRIPLES if t not in HELD_OUT)

SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_PHRASES = {
    "left": ("at the left", "on the left", "to the left"),
    "right": ("at the right", "on the right", "to the right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "center": ("in the center", "in the middle"),
    **{corner: (f"at the {corner}", f"in the {corner} corner") for corner in CORNERS},
}
BACKGROUND_PHRASES = (" on a {} background", " against a {} background", ", {} background",
                      " against a {} backdrop", " with a {} backdrop")
EMPTY_CAPTION_RATE = 0.1


@dataclass(frozen=True)
class Attributes:
    """What one picture shows; also what the scorer reads back."""
    shape: str
    colour: str
    background: str
    size: str
    position: str


def canonical_caption(attrs: Attributes) -> str:
    """The one standard wording, used as the evaluation prompt."""
    where = "in the center" if attrs.position == "center" else f"at the {attrs.position}"
    return f"a {attrs.size} {attrs.colour} {attrs.shape} {where} on a {attrs.background} background"


def caption(attrs: Attributes, rng: np.random.Generator) -> str:
    """A varied English caption: synonyms, optional article, size and
    position phrases sometimes dropped, the background sometimes first.
    Never empty (make_dataset blanks some captions itself)."""
    u = rng.random(7)  # one call: a Generator call costs more than the rest
    size = "" if u[2] < 0.2 else _pick(SIZE_WORDS[attrs.size], u[3]) + " "
    where = "" if u[4] < 0.2 else " " + _pick(POSITION_PHRASES[attrs.position], u[5])
    thing = f"{size}{attrs.colour} {attrs.shape}"
    if u[0] < 0.15:
        return f"{attrs.background} background with a {thing}{where}"
    article = "a " if u[1] < 0.75 else ""
    return article + thing + where + _pick(BACKGROUND_PHRASES, u[6]).format(attrs.background)


def render(attrs: Attributes, rng: np.random.Generator) -> np.ndarray:
    """One picture, [64, 64, 3] uint8; ``rng`` draws the jitter."""
    return render_batch([attrs], rng.integers(0, JITTERS, 1))[0]


def render_batch(attrs: list[Attributes], jitters: np.ndarray) -> np.ndarray:
    """Pictures [N, 64, 64, 3] uint8 of ``attrs``, each shape's centre moved
    by its jitter index (0 to JITTERS - 1, see :func:`shape_centre`).
    A position may be one of the :data:`CORNERS` too."""
    codes = np.array([(SHAPES.index(a.shape), SIZES.index(a.size), ALL_POSITIONS.index(a.position),
                       COLOURS.index(a.colour), COLOURS.index(a.background)) for a in attrs], dtype=np.int64)
    shapes, sizes, positions, colours, backgrounds = codes.reshape(-1, 5).T
    masks = ((shapes * len(SIZES) + sizes) * len(ALL_POSITIONS) + positions) * JITTERS + np.asarray(jitters)
    return _compose(masks, colours, backgrounds)


def make_dataset(count: int, seed: int = 0, split: str = "train"
                 ) -> tuple[np.ndarray, list[str], list[Attributes]]:
    """``count`` pictures [N, 64, 64, 3] uint8, their captions (10% empty,
    for classifier-free guidance) and attributes.  ``split`` "train" draws
    from the 75 training triples, "heldout" from the 15 held-out ones; sizes,
    positions and jitter uniformly.  The same arguments give the same bytes."""
    triples = {"train": TRAIN_TRIPLES, "heldout": HELD_OUT}.get(split)
    if triples is None:
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(triples), count)
    sizes = rng.integers(0, len(SIZES), count)
    positions = rng.integers(0, len(POSITIONS), count)
    jitters = rng.integers(0, JITTERS, count)
    empty = rng.random(count) < EMPTY_CAPTION_RATE
    attrs = [Attributes(*triples[w], SIZES[z], POSITIONS[p]) for w, z, p in zip(which, sizes, positions)]
    captions = ["" if e else caption(a, rng) for a, e in zip(attrs, empty)]
    return render_batch(attrs, jitters), captions, attrs


def heldout_attributes() -> list[Attributes]:
    """Every held-out triple at every size and position: 150, in a fixed order."""
    return [Attributes(*t, size, position)
            for t, size, position in itertools.product(HELD_OUT, SIZES, POSITIONS)]


def shape_centre(position: str, jitter: int) -> tuple[int, int]:
    """Pixel coordinates (x, y) of a shape's centre (the middle of its
    bounding box) for a position and jitter index; the same for both sizes."""
    ax, ay = ANCHORS[position]
    dx, dy = divmod(jitter, 2 * JITTER + 1)
    centre = IMAGE_SIZE // 2
    return centre + ax * ANCHOR_OFFSET + dx - JITTER, centre + ay * ANCHOR_OFFSET + dy - JITTER


def _pick(options: tuple[str, ...], u: float) -> str:
    return options[int(u * len(options))]


@lru_cache(maxsize=1)
def _mask_bank() -> np.ndarray:
    """[shapes*sizes*all positions*jitters, 64, 64] uint16 coverage levels, 0 to
    SUPERSAMPLE**2 (how many of a pixel's subpixels the shape covers)."""
    combos = itertools.product(SHAPES, SIZES, ALL_POSITIONS, range(JITTERS))
    return np.stack([_draw_mask(s, z, p, j) for s, z, p, j in combos])


def _draw_mask(shape: str, size: str, position: str, jitter: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    k, r = SUPERSAMPLE, RADIUS[size]
    cx, cy = shape_centre(position, jitter)
    canvas = Image.new("L", (IMAGE_SIZE * k, IMAGE_SIZE * k), 0)
    draw = ImageDraw.Draw(canvas)
    box = [(cx - r) * k, (cy - r) * k, (cx + r) * k - 1, (cy + r) * k - 1]
    if shape == "circle":
        draw.ellipse(box, fill=1)
    elif shape == "square":
        draw.rectangle(box, fill=1)
    else:  # pointing up, its bounding box the same as the square's
        draw.polygon([(cx * k, box[1]), (box[0], box[3]), (box[2], box[3])], fill=1)
    covered = np.asarray(canvas, dtype=np.uint16)
    return covered.reshape(IMAGE_SIZE, k, IMAGE_SIZE, k).sum(axis=(1, 3), dtype=np.uint16)


@lru_cache(maxsize=1)
def _colour_table() -> np.ndarray:
    """[background, colour, level] -> RGB uint8, flattened to [6*6*17, 3]:
    the blend of every colour pair at every coverage level, computed once so
    that composing a picture is one table look-up per pixel."""
    levels = np.arange(SUPERSAMPLE ** 2 + 1, dtype=np.float32) / SUPERSAMPLE ** 2
    fg = PALETTE[None, :, None, :]
    bg = PALETTE[:, None, None, :]
    blend = bg + levels[None, None, :, None] * (fg - bg)
    return np.rint(blend).astype(np.uint8).reshape(-1, 3)


def _compose(bank_indices: np.ndarray, colours: np.ndarray, backgrounds: np.ndarray,
             chunk: int = 4096) -> np.ndarray:
    bank, table = _mask_bank(), _colour_table()
    levels = SUPERSAMPLE ** 2 + 1
    offsets = ((backgrounds * len(COLOURS) + colours) * levels).astype(np.uint16)
    out = np.empty((len(bank_indices), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for start in range(0, len(bank_indices), chunk):
        part = slice(start, start + chunk)
        rows = bank[bank_indices[part]] + offsets[part, None, None]
        np.take(table, rows, axis=0, out=out[part])
    return out
