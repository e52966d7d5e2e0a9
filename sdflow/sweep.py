"""Sweeps: a recipe's ``sweep`` lines, and ``sdflow run R --sweep seed=1..8``.

An axis is one ``sweep`` line of the recipe (its names move together, value
by value) or one ``--sweep NAME=VALUES``: ``A..B`` (whole numbers, both ends
included, ``A..B..STEP`` to step) or values separated by commas, each read
as ``--set`` reads one.  With ``--zip`` the command line's axes are one, their
values paired.  A ``--sweep NAME`` replaces the recipe's values of NAME (NAME
leaves its line, and a line left empty goes) and adds its axis after the
recipe's; ``--set NAME`` fixes NAME, taking it off its line in the same way.
The points are every combination of the axes, the first varying fastest.

The recipe is checked as written, then every point with its values as
``--set`` values; a point's problem is shown at the value in the ``sweep``
line that caused it.  The run goes through the points with one executor, so
each model loads once; each point writes its own images, with their own
metadata, and a labelled contact sheet of every point's first image is
written beside them (the first axis across, the second down, a sheet per
value of a third).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from sdflow import ast
from sdflow.diagnostics import Diagnostic, did_you_mean, one_of

MAX_POINTS = 256
"""More points than this are refused unless the user says ``--yes``."""


class SweepError(ValueError):
    """A sweep the command line cannot describe (the message says why)."""


class _RangeTexts(Sequence[str]):
    """The numbers of a range as ``--set`` text, made one at a time (a
    range may be far longer than anyone would run)."""

    def __init__(self, numbers: range, count: int) -> None:
        self.numbers, self.count = numbers, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [str(n) for n in self.numbers[index]]
        return str(self.numbers[index])


@dataclass(frozen=True)
class Axis:
    """One axis: the params it moves together and, for each, its values as
    ``--set`` text (all of one length), and where each value is written in
    the recipe: one span for a range, one per item of a list, None for an
    axis from the command line."""

    names: tuple[str, ...]
    values: tuple[Sequence[str], ...]
    spans: tuple[ast.Span | tuple[ast.Span, ...] | None, ...]

    @property
    def size(self) -> int:
        """How many values each name has (``len`` fails past ``sys.maxsize``)."""
        values = self.values[0]
        return values.count if isinstance(values, _RangeTexts) else len(values)

    def at(self, index: int) -> dict[str, str]:
        return {name: values[index] for name, values in zip(self.names, self.values)}

    def where(self, name: str, index: int) -> ast.Span | None:
        spans = self.spans[self.names.index(name)]
        return spans if spans is None or isinstance(spans, ast.Span) else spans[index]

    def only(self, names: Iterable[str]) -> Axis | None:
        """This axis with only ``names`` of its own (None if none is left)."""
        wanted = set(names)
        keep = [i for i, name in enumerate(self.names) if name in wanted]
        if not keep:
            return None
        return Axis(tuple(self.names[i] for i in keep), tuple(self.values[i] for i in keep),
                    tuple(self.spans[i] for i in keep))

    def caption(self, index: int) -> str:
        """Step ``index``'s label on a contact sheet, where a cell is narrow:
        a value of words less the words that all of this axis's values of
        it begin and end with (``…red…`` for a prompt of three colours)."""
        parts = []
        for name, values in zip(self.names, self.values):
            telling = _telling(values, index)
            parts.append(telling if telling != values[index] else f"{name}={telling}")
        return ", ".join(parts)

    def record(self) -> dict[str, list[str]]:
        return {name: list(values) for name, values in zip(self.names, self.values)}


@dataclass(frozen=True)
class Point:
    """One point: its number (from 1), each swept param's value as
    ``--set`` text, and where the recipe writes the values it wrote."""

    number: int
    values: dict[str, str]
    spans: dict[str, ast.Span] = field(default_factory=dict)
    short: str = ""  # its label with long values cut to what tells them apart (``prompt=…red…``)

    @property
    def label(self) -> str:
        return label(self.values)


def label(point: Mapping[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in point.items())


def _telling(values: Sequence[str], index: int) -> str:
    """``values[index]`` less the words every value begins and ends with."""
    return _cut(values[index], *_shared_words(values))


@functools.lru_cache(maxsize=64)
def _shared_words_of(values: tuple[str, ...]) -> tuple[int, int]:
    words = [v.split(" ") for v in values]
    shortest = min(len(w) for w in words)
    head = 0
    while head < shortest and len({w[head] for w in words}) == 1:
        head += 1
    tail = 0
    while tail < shortest - head and len({w[-1 - tail] for w in words}) == 1:
        tail += 1
    return head, tail


def _shared_words(values: Sequence[str]) -> tuple[int, int]:
    """How many words all ``values`` begin with, and end with (none for a
    range, a single value, or values that are not all of several words)."""
    if not isinstance(values, tuple) or not 2 <= len(values) <= 1000 or not all(" " in v for v in values):
        return 0, 0
    return _shared_words_of(values)


def _cut(value: str, head: int, tail: int) -> str:
    if not head and not tail:
        return value
    words = value.split(" ")
    middle = " ".join(words[head : len(words) - tail])
    if not middle:  # a value that is all shared words: itself
        return value
    return ("…" if head else "") + middle + ("…" if tail else "")


# axes ----------------------------------------------------------------------------


def parse_axis(spec: str) -> Axis:
    """One ``--sweep NAME=VALUES``."""
    name, sep, values = spec.partition("=")
    name = name.strip()
    if not sep or not name or not values.strip():
        raise SweepError(f"--sweep {spec}: write --sweep name=1..8 or --sweep name=a,b,c")
    found: Sequence[str]
    if ".." in values and "," not in values:
        parts = values.split("..")
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise SweepError(f"--sweep {spec}: a range is whole numbers, A..B or A..B..STEP") from None
        if len(numbers) not in (2, 3) or (len(numbers) == 3 and numbers[2] <= 0):
            raise SweepError(f"--sweep {spec}: a range is A..B or A..B..STEP, with a positive STEP")
        found = _range_texts(ast.Range(numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None, _NOWHERE))
    else:
        found = tuple(v.strip() for v in values.split(","))
        if any(v == "" for v in found):
            raise SweepError(f"--sweep {spec}: an empty value")
    return Axis((name,), (found,), (None,))


_NOWHERE = ast.Span("<command line>", 1, 1, 1, 1)


def _range_texts(values: ast.Range) -> _RangeTexts:
    return _RangeTexts(values.values, values.count)


def recipe_axes(recipe: ast.Recipe) -> list[Axis]:
    """The recipe's ``sweep`` lines as axes, in order (for a recipe that checked)."""
    axes = []
    for statement in recipe.statements:
        if isinstance(statement, ast.Sweep):
            columns, spans = [], []
            for entry in statement.entries:
                if isinstance(entry.values, ast.Range):
                    columns.append(_range_texts(entry.values))
                    spans.append(entry.values.span)
                else:
                    columns.append(tuple(override_text(item) for item in entry.values.items))
                    spans.append(tuple(item.span for item in entry.values.items))
            axes.append(Axis(tuple(e.name for e in statement.entries), tuple(columns), tuple(spans)))
    return axes


def override_text(value: ast.Value) -> str:
    """A sweep's value as ``--set`` text that reads back as the same value:
    a number as written, a string as it is, a list as JSON."""
    if isinstance(value, ast.Literal):
        if isinstance(value.value, bool):
            return "true" if value.value else "false"
        if isinstance(value.value, str):
            return value.value
        return value.text.lstrip("+")
    return json.dumps(_plain(value))


def _plain(value: ast.Value) -> Any:
    if isinstance(value, ast.ListValue):
        return [_plain(item) for item in value.items]
    return value.value if isinstance(value, ast.Literal) else str(value)


def declares_sweep(recipe: ast.Recipe) -> bool:
    return any(isinstance(s, ast.Sweep) for s in recipe.statements)


def plan(recipe: ast.Recipe, command: Sequence[Axis], zipped: bool, fixed: Iterable[str]) -> list[Axis]:
    """The axes of a run: the recipe's, less the names the command line
    sweeps itself or fixes (``--set``), then the command line's (one, when
    ``zipped``).  Raises :class:`SweepError` for a command line that names
    no param of the recipe, a name twice, or zipped axes of unequal length."""
    declared = [s.name for s in recipe.statements if isinstance(s, ast.Param)]
    names = [name for axis in command for name in axis.names]
    for name in names:
        if name not in declared:
            hint = did_you_mean(name, declared) or (f"the recipe's params are {one_of(declared)}" if declared
                                                  else "the recipe declares no params")
            raise SweepError(f"--sweep {name}=...: the recipe has no param '{name}'; {hint}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SweepError(f"--sweep names a param twice: {', '.join(twice)}")
    if zipped and len(command) > 1:
        lengths = {axis.names[0]: axis.size for axis in command}
        if len(set(lengths.values())) > 1:
            raise SweepError("--zip needs axes of one length: "
                             + ", ".join(f"{name} has {n:,}" for name, n in lengths.items()))
        command = [Axis(tuple(names), tuple(a.values[0] for a in command), tuple(None for _ in command))]
    taken = set(names) | set(fixed)
    kept = [axis.only(n for n in axis.names if n not in taken) for axis in recipe_axes(recipe)]
    return [axis for axis in kept if axis is not None] + list(command)


def count(axes: Sequence[Axis]) -> int:
    return math.prod(axis.size for axis in axes)


def points(axes: Sequence[Axis]) -> Iterator[Point]:
    """Every combination of the axes' values, the first axis varying
    fastest: a row of the contact sheet is consecutive points."""
    for number, combo in enumerate(_odometer([axis.size for axis in axes]), start=1):
        values: dict[str, str] = {}
        spans: dict[str, ast.Span] = {}
        short = []
        for axis, index in zip(axes, combo):
            for name, column in zip(axis.names, axis.values):
                values[name] = column[index]
                short.append(f"{name}={_telling(column, index)}")
                span = axis.where(name, index)
                if span is not None:
                    spans[name] = span
        yield Point(number, values, spans, ", ".join(short))


def _odometer(sizes: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Every combination of indices below ``sizes``, the first turning
    fastest (``itertools.product`` would first list each range whole)."""
    if any(size <= 0 for size in sizes):
        return
    indices = [0] * len(sizes)
    while True:
        yield tuple(indices)
        for place, size in enumerate(sizes):
            indices[place] += 1
            if indices[place] < size:
                break
            indices[place] = 0
        else:
            return


def too_many(recipe: ast.Recipe, axes: Sequence[Axis], total: int) -> Diagnostic:
    """More points than :data:`MAX_POINTS`, said at the recipe's first ``sweep`` line."""
    first = next(s for s in recipe.statements if isinstance(s, ast.Sweep))
    sizes = " x ".join(f"{axis.size:,}" for axis in axes)
    return Diagnostic("E265", f"the sweep has {total:,} points ({sizes}), more than {MAX_POINTS}",
                      first.keyword_span, "add --yes to run them all, or sweep fewer values")


# checking the points ---------------------------------------------------------------


@dataclass
class CheckedSweep:
    """Every point checked: its graph (None where it has errors), the
    problems the recipe's values caused (at those values, each once with
    how many points share it), and the points whose problems come from a
    command line value (shown at their own place, under the point's name)."""

    points: list[Point]
    graphs: list[Any]
    diagnostics: list[Diagnostic]
    elsewhere: list[tuple[Point, list[Diagnostic]]]

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics) and not any(
            d.is_error for _, found in self.elsewhere for d in found)


def check_points(recipe: ast.Recipe, registry, base: Mapping[str, str], base_found: Iterable[Diagnostic],
                 planned: Iterable[Point], total: int) -> CheckedSweep:
    """Check each point: the recipe with ``base`` (the ``--set`` values) and
    the point's values, each read exactly as a ``--set`` value is.  What a
    point finds that the recipe as written (``base_found``) does not is the
    point's problem.  Raises :class:`sdflow.graph.UsageError` for a command
    line value that is not of its param's type."""
    from sdflow.graph import UsageError, check

    seen = set(base_found)
    refs = _swept_refs(recipe)
    result = CheckedSweep([], [], [], [])
    anchored: dict[tuple, list] = {}  # one problem at one value: [its diagnostic, how many more points]
    for point in planned:
        try:
            graph, found = check(recipe, registry, {**base, **point.values})
        except UsageError as err:
            raise UsageError(f"sweep point {point.number} of {total} ({point.label}): {err}") from None
        result.points.append(point)
        result.graphs.append(graph)
        own = []
        for d in found:
            if d in seen:
                continue
            at = _cause(d, point, refs)
            if at is None:
                own.append(d)
                continue
            key = (d.code, d.message, d.severity, at)
            if key in anchored:
                anchored[key][1] += 1
            else:
                anchored[key] = [_at_value(d, point, at), 0]
        if own:
            result.elsewhere.append((point, own))
    for diagnostic, more in anchored.values():
        if more:
            also = f"{more} more point{'s' if more > 1 else ''} of the sweep fail{'s' if more == 1 else ''} the same way"
            diagnostic = Diagnostic(diagnostic.code, diagnostic.message, diagnostic.span,
                                    f"{diagnostic.help}; {also}" if diagnostic.help else also, diagnostic.severity)
        result.diagnostics.append(diagnostic)
    result.diagnostics.sort(key=Diagnostic.sort_key)
    return result


def _swept_refs(recipe: ast.Recipe) -> list[ast.Ref]:
    """Every reference in the recipe's stage arguments (where a param's value is used)."""
    found: list[ast.Ref] = []

    def walk(value):
        if isinstance(value, ast.Ref):
            found.append(value)
        elif isinstance(value, ast.ListValue):
            for item in value.items:
                walk(item)

    for statement in recipe.statements:
        if isinstance(statement, ast.Stage):
            for arg in statement.args:
                walk(arg.value)
    return found


def _cause(d: Diagnostic, point: Point, refs: list[ast.Ref]) -> ast.Span | None:
    """Where the recipe writes the value that caused ``d`` at ``point``:
    the value of the swept param used where ``d`` stands (the first of the
    point's recipe values when no one param is used there), or None when
    the value came from the command line."""
    used = [r.name for r in refs if d.span is not None and r.name in point.values and _overlaps(r.span, d.span)]
    names = list(dict.fromkeys(used)) or list(point.values)
    written = [name for name in names if name in point.spans]
    if not written or (used and len(written) < len(names)):
        return None  # a command-line value is (also) to blame: shown where it is used
    return point.spans[written[0]]


def _overlaps(a: ast.Span, b: ast.Span) -> bool:
    return (a.file == b.file and (a.line, a.column) < (b.end_line, b.end_column)
            and (b.line, b.column) < (a.end_line, a.end_column))


def _at_value(d: Diagnostic, point: Point, at: ast.Span) -> Diagnostic:
    """``d`` moved to the sweep's value ``at``, naming the point and where the value is used."""
    used = f"used at line {d.span.line}, column {d.span.column}" if d.span is not None \
        and (d.span.line, d.span.column) != (at.line, at.column) else None
    hint = d.help
    if hint and hint.startswith("the value comes from param '"):  # the sweep's line says so
        hint = hint.partition("; ")[2]
    hint = "; ".join(h for h in (hint, used) if h)
    return Diagnostic(d.code, f"sweep point {point.number} ({point.label}): {d.message}", at, hint or None,
                      d.severity)


# progress ---------------------------------------------------------------------------


class SweepProgress:
    """The sweep's line above the current point's stage and step line:
    which point, its values, how many are done, the time so far and about
    how much is left: the points to go times the mean of those done after
    the first (which loaded the models)."""

    def __init__(self, events, total: int, clock=time.perf_counter) -> None:
        self.events, self.total, self.clock = events, total, clock
        self.start = self.last = clock()
        self.seconds: list[float] = []  # each point's, done so far

    def point(self, point: Point) -> None:
        self.events.emit("sweep_point", index=point.number, count=self.total, point=point.values)
        self.events.heading(self.line(point.number, point.short or point.label, self.clock() - self.start))

    def point_done(self) -> None:
        now = self.clock()
        self.seconds.append(now - self.last)
        self.last = now

    def finish(self) -> None:
        done, seconds = len(self.seconds), self.clock() - self.start
        self.events.heading(f"sweep: {done} point{'s' * (done != 1)} in {_duration(seconds)}")
        self.events.heading(None)

    def line(self, number: int, values: str, seconds: float) -> str:
        width, done = 16, len(self.seconds)
        filled = width * done // self.total if self.total else width
        typical = self.seconds[1:] or self.seconds
        left = f", about {_duration(sum(typical) / len(typical) * (self.total - done))} left" if typical else ""
        return (f"sweep: point {number}/{self.total}  {'#' * filled}{'.' * (width - filled)}"
                f"  {_duration(seconds)}{left}  ({values})")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


# the contact sheet --------------------------------------------------------------------


def contact_sheets(axes: Sequence[Axis], runs: Iterable[tuple[Mapping[str, str], Path | None]]) -> list[tuple[str, object]]:
    """The labelled contact sheets (title, PIL image) of the points' first
    images: the first axis across, the second down, one sheet per value of
    the third and later ones (one axis: one row, each cell labelled with
    its point)."""
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

    if len(axes) == 1:
        (row,) = axes
        sheet = Image.new("RGB", (width * row.size, height + label_height), "white")
        draw = ImageDraw.Draw(sheet)
        for i in range(row.size):
            sheet.paste(cell(row.at(i)), (i * width, label_height))
            draw.text((i * width + pad, pad), _fit(row.caption(i), width), fill="black")
        return [("", sheet)]
    across, down, *rest = axes
    left = max(len(down.caption(j)) for j in range(down.size)) * 6 + 2 * pad
    sheets = []
    for fixed in _odometer([axis.size for axis in rest]):
        extra: dict[str, str] = {}
        for axis, index in zip(rest, fixed):
            extra.update(axis.at(index))
        sheet = Image.new("RGB", (left + width * across.size, label_height * (2 if extra else 1)
                                  + height * down.size), "white")
        draw = ImageDraw.Draw(sheet)
        top = 0
        if extra:
            draw.text((pad, pad), label(extra), fill="black")
            top = label_height
        for i in range(across.size):
            draw.text((left + i * width + pad, top + pad), _fit(across.caption(i), width), fill="black")
        for j in range(down.size):
            y = top + label_height + j * height
            draw.text((pad, y + height // 2 - font_height // 2), down.caption(j), fill="black")
            for i in range(across.size):
                sheet.paste(cell({**across.at(i), **down.at(j), **extra}), (left + i * width, y))
        sheets.append((label(extra), sheet))
    return sheets


def sheet_record(axes: Sequence[Axis], firsts: Iterable[tuple[Mapping[str, str], Path | None]]) -> str:
    """The ``sweep`` field of a contact sheet: each axis (its names and
    their values) and each point's values and first image."""
    return json.dumps({"axes": [axis.record() for axis in axes],
                       "points": [{"point": dict(p), "file": str(f) if f else None} for p, f in firsts]})


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
