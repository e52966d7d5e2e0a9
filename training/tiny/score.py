"""Reading the five attributes back from a 64x64 picture, by pixels alone.

The evaluation of sdflow-tiny must not depend on another model's opinion:
this scorer is a few lines of arithmetic that anyone can check, exactly
right on the dataset's own pictures (tests/test_tiny_data.py) and tolerant of
noise, blur and a VAE's colour drift.

Background: the palette colour nearest the median of the border pixels.
Colour: the palette colour nearest the median of the pixels far from the
background (farther than half the palette's spacing).  Shape pixels: those
nearer that colour than the background's.  Their bounding box (the rows and
columns with at least two of them, so that a stray pixel does not move it)
gives the size (its larger side: 18 px small, 32 px large) and the position
(its centre against the image centre).  Shape: the outline, fitted to the
bounding box, that they match best.
"""

from __future__ import annotations

import numpy as np

from training.tiny.dataset import (
    ANCHOR_OFFSET,
    COLOURS,
    CORNERS,
    IMAGE_SIZE,
    PALETTE,
    RADIUS,
    Attributes,
)

UNKNOWN = "none"  # the guess when no shape is found
FIELDS = ("shape", "colour", "background", "size", "position")
SHAPE_THRESHOLD = 127.5  # half the smallest distance between two palette colours
LARGE_EXTENT = RADIUS["small"] + RADIUS["large"]  # between the two sides, 18 and 32 px
CENTER_RADIUS = ANCHOR_OFFSET / 2
MIN_SHAPE_PIXELS = 8
_ROWS, _COLUMNS = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5  # pixel centres


def score(image: np.ndarray, corners: bool = False) -> Attributes:
    """The attributes ``image`` ([64, 64, 3] uint8) shows; fields it cannot
    tell are :data:`UNKNOWN`.  ``corners``: also tell the :data:`CORNERS`
    (which the base model never draws) from the five positions."""
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected a [{IMAGE_SIZE}, {IMAGE_SIZE}, 3] image, got {list(pixels.shape)}")
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    backdrop = np.median(border, axis=0)
    background = _nearest(backdrop)
    inside = np.linalg.norm(pixels - backdrop, axis=-1) > SHAPE_THRESHOLD
    ys, xs = np.nonzero(inside)
    if len(xs) < MIN_SHAPE_PIXELS:
        return Attributes(UNKNOWN, UNKNOWN, background, UNKNOWN, UNKNOWN)
    ink = np.median(pixels[ys, xs], axis=0)
    colour = _nearest(ink)
    # Again, halfway between the two colours found: where the first cut lies
    # depends on how far apart they are, and would make a shape on a
    # contrasting background look bigger and rounder.
    coverage = (pixels - backdrop) @ (ink - backdrop) / max(float(np.sum((ink - backdrop) ** 2)), 1.0)
    inside = coverage > 0.5
    ys, xs = np.nonzero(inside)
    if len(xs) < MIN_SHAPE_PIXELS:
        return Attributes(UNKNOWN, colour, background, UNKNOWN, UNKNOWN)
    (x0, x1), (y0, y1) = _span(inside.sum(axis=0)), _span(inside.sum(axis=1))
    width, height = x1 - x0 + 1, y1 - y0 + 1
    centre = ((x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2)
    shape = _shape(np.clip(coverage, 0.0, 1.0), centre, (width / 2, height / 2))
    size = "large" if max(width, height) > LARGE_EXTENT else "small"
    return Attributes(shape, colour, background, size, _position(*centre, corners))


def judge(image: np.ndarray, expected: Attributes, corners: bool = False) -> dict[str, bool]:
    """For each attribute, whether ``image`` shows what ``expected`` says
    (``corners`` as for :func:`score`)."""
    found = score(image, corners)
    return {name: getattr(found, name) == getattr(expected, name) for name in FIELDS}


def _nearest(rgb: np.ndarray) -> str:
    return COLOURS[int(np.argmin(np.linalg.norm(PALETTE - rgb, axis=-1)))]


def _shape(coverage: np.ndarray, centre: tuple[float, float], half: tuple[float, float]) -> str:
    """The shape whose outline, fitted to the bounding box, differs from
    ``coverage`` in the fewest pixels.  Unlike the fill ratio of the box, it
    survives blur, which rounds a square's corners and cuts a triangle's tip."""
    u = (_COLUMNS - centre[0]) / half[0]
    v = (_ROWS - centre[1]) / half[1]
    outlines = {"circle": u * u + v * v <= 1,
                "square": (np.abs(u) <= 1) & (np.abs(v) <= 1),
                "triangle": (np.abs(v) <= 1) & (np.abs(u) <= (v + 1) / 2)}  # tip up
    errors = {name: float(np.abs(coverage - outline).sum()) for name, outline in outlines.items()}
    return min(errors, key=errors.get)


def _span(counts: np.ndarray) -> tuple[int, int]:
    """First and last index holding at least two shape pixels (one alone is
    noise; every shape's outermost row or column but a triangle's tip holds
    more), or all that hold any when none holds two."""
    lines = np.nonzero(counts >= 2)[0]
    lines = lines if len(lines) else np.nonzero(counts)[0]
    return int(lines[0]), int(lines[-1])


def _position(x: float, y: float, corners: bool = False) -> str:
    dx, dy = x - IMAGE_SIZE / 2, y - IMAGE_SIZE / 2
    if max(abs(dx), abs(dy)) < CENTER_RADIUS:
        return "center"
    if corners and min(abs(dx), abs(dy)) >= CENTER_RADIUS:  # off centre along both axes
        return CORNERS[2 * (dy > 0) + (dx > 0)]
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "bottom" if dy > 0 else "top"
