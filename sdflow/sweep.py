"""Sweeps from the command line: ``sdflow run R --sweep seed=1..8 --sweep cfg=5,7.5 [--zip]``.

Each ``--sweep NAME=VALUES`` is an axis: ``A..B`` (whole numbers, both
ends included, ``A..B..STEP`` to step) or values separated by commas,
each read as ``--set`` reads one.  The points are every combination of the
axes (the first axis varying fastest), or with ``--zip`` the axes side by
side (they must be as long).  Every point is checked before any runs; the
run goes through them with one executor, so each model loads once; each
point writes its own images, with their own metadata, and a labelled
contact sheet of every point's first image is written beside them (the
first axis across, the second down, a sheet per value of a third).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

MAX_POINTS = 256
"""More points than this are refused unless the user says ``--yes``."""


class SweepError(ValueError):
    """A sweep the command line cannot describe (the message says why)."""


@dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[str, ...]


def parse_axis(spec: str) -> Axis:
    """One ``--sweep NAME=VALUES``."""
    name, sep, values = spec.partition("=")
    name = name.strip()
    if not sep or not name or not values.strip():
        raise SweepError(f"--sweep {spec}: write --sweep name=1..8 or --sweep name=a,b,c")
    if ".." in values and "," not in values:
        parts = values.split("..")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise SweepError(f"--sweep {spec}: a range is whole numbers, A..B or A..B..STEP") from None
        if len(numbers) not in (2, 3) or (len(numbers) == 3 and numbers[2] <= 0):
            raise SweepError(f"--sweep {spec}: a range is A..B or A..B..STEP, with a positive STEP")
        start, end, step = numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else 1
        found = tuple(str(v) for v in (range(start, end + 1, step) if end >= start else range(start, end - 1, -step)))
    else:
        found = tuple(v.strip() for v in values.split(","))
    if not found or any(v == "" for v in found):
        raise SweepError(f"--sweep {spec}: an empty value")
    return Axis(name, found)


def points(axes: Sequence[Axis], zipped: bool) -> list[dict[str, str]]:
    """The overrides of each point, in run order."""
    names = [axis.name for axis in axes]
    if len(set(names)) != len(names):
        raise SweepError(f"--sweep names a param twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    if zipped:
        lengths = {axis.name: len(axis.values) for axis in axes}
        if len(set(lengths.values())) > 1:
            raise SweepError("--zip needs axes of one length: "
                             + ", ".join(f"{name} has {n}" for name, n in lengths.items()))
        return [dict(zip(names, values)) for values in zip(*(axis.values for axis in axes))]
    # The first axis varies fastest: a row of the contact sheet is consecutive points.
    combos = itertools.product(*(axis.values for axis in reversed(axes)))
    return [dict(zip(reversed(names), combo)) for combo in combos]


def label(point: dict[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in point.items())


def contact_sheets(axes: Sequence[Axis], runs: Iterable[tuple[dict[str, str], Path | None]],
                   zipped: bool) -> list[tuple[str, object]]:
    """The labelled contact sheets (title, PIL image) of the points' first
    images: the first axis across, the second down, one sheet per value of
    the third (a zipped sweep: one row, each cell labelled with its point)."""
    from PIL import Image, ImageDraw

    cells = {tuple(sorted(point.items())): path for point, path in runs}
    first = next((p for p in cells.values() if p is not None), None)
    if first is None:
        return []
    with Image.open(first) as probe:
        width, height = probe.size
    font_height, pad = 12, 4
    label_height = font_height + 2 * pad

    def cell(point):
        path = cells.get(tuple(sorted(point.items())))
        if path is None:
            return Image.new("RGB", (width, height), (128, 128, 128))
        with Image.open(path) as image:
            return image.convert("RGB")

    if zipped or len(axes) == 1:
        row = points(axes, zipped)
        sheet = Image.new("RGB", (width * len(row), height + label_height), "white")
        draw = ImageDraw.Draw(sheet)
        for i, point in enumerate(row):
            sheet.paste(cell(point), (i * width, label_height))
            draw.text((i * width + pad, pad), _fit(label(point), width), fill="black")
        return [("", sheet)]
    across, down, *rest = axes
    left = max(len(f"{down.name}={v}") for v in down.values) * 6 + 2 * pad
    sheets = []
    for fixed in itertools.product(*(axis.values for axis in rest)):
        extra = dict(zip((axis.name for axis in rest), fixed))
        sheet = Image.new("RGB", (left + width * len(across.values), label_height * (2 if extra else 1)
                                  + height * len(down.values)), "white")
        draw = ImageDraw.Draw(sheet)
        top = 0
        if extra:
            draw.text((pad, pad), label(extra), fill="black")
            top = label_height
        for i, value in enumerate(across.values):
            draw.text((left + i * width + pad, top + pad), _fit(f"{across.name}={value}", width), fill="black")
        for j, value in enumerate(down.values):
            y = top + label_height + j * height
            draw.text((pad, y + height // 2 - font_height // 2), f"{down.name}={value}", fill="black")
            for i, across_value in enumerate(across.values):
                sheet.paste(cell({across.name: across_value, down.name: value, **extra}), (left + i * width, y))
        sheets.append((label(extra), sheet))
    return sheets


def _fit(text: str, width: int) -> str:
    """``text`` cut to what Pillow's default font fits in ``width`` pixels (6 each)."""
    most = max(width // 6 - 1, 3)
    return text if len(text) <= most else text[: most - 1] + "…"


def write_sheet(sheet, folder: Path, metadata: dict[str, str]) -> Path:
    """Save a contact sheet as ``sweep_NNNNN_.png`` in ``folder`` under the
    next free number, never replacing a file, with ``metadata`` as text."""
    import os
    import tempfile

    from PIL.PngImagePlugin import PngInfo

    from sdflow.files import ordinary_mode

    folder.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    for key, text in metadata.items():
        info.add_itxt(key, text)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sweep.", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            sheet.save(out, format="PNG", pnginfo=info)
        os.chmod(tmp, ordinary_mode())
        taken = [int(p.name[6:11]) for p in folder.glob("sweep_[0-9][0-9][0-9][0-9][0-9]_.png")]
        number = max(taken, default=0) + 1
        while True:
            final = folder / f"sweep_{number:05d}_.png"
            try:
                os.link(tmp, final)  # fails, rather than replaces, where the name is taken
                return final
            except FileExistsError:
                number += 1
    finally:
        Path(tmp).unlink(missing_ok=True)
