"""The syntax tree of a recipe: small frozen dataclasses, each with its span.

Nothing of Lark leaks past :mod:`sdflow.parse`; everything after it (the
checker, the formatter, the CLI) works on these classes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Union


class Span(NamedTuple):
    """Where a node stands in its file: 1-based lines and columns.

    ``end_column`` is exclusive, so ``end_column - column`` is the width of a
    one-line span.  A named tuple rather than a dataclass: a large recipe
    makes hundreds of thousands, and a tuple is made several times faster.
    """

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def to(self, other: Span) -> Span:
        """The span from the start of this one to the end of ``other``."""
        return Span(self.file, self.line, self.column, other.end_line, other.end_column)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Literal:
    """A number, boolean or string, with the text it was written as."""

    value: int | float | bool | str
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class ListValue:
    items: tuple[Value, ...]
    span: Span
    trailing_comma: bool = False


@dataclass(frozen=True, slots=True)
class Ref:
    """``name`` or ``name.port``: a param, a stage's result, or one of its ports."""

    name: str
    port: str | None
    span: Span
    name_span: Span
    port_span: Span | None = None

    def __str__(self) -> str:
        return self.name if self.port is None else f"{self.name}.{self.port}"


Value = Union[Literal, ListValue, Ref]


@dataclass(frozen=True, slots=True)
class Arg:
    """``name=value`` inside a stage call."""

    name: str
    value: Value
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class Header:
    """``sdflow 1``: the language version the recipe was written for."""

    keyword: str
    version: int
    span: Span
    keyword_span: Span
    version_span: Span


@dataclass(frozen=True, slots=True)
class Require:
    """``require plugin "specifier"``: a plugin the recipe needs, and the
    versions of it that will do (a PEP 440 specifier; none: any)."""

    plugin: str
    specifier: str | None
    span: Span
    plugin_span: Span
    specifier_span: Span | None


@dataclass(frozen=True, slots=True)
class Param:
    """``param name = value``: a value the command line may override."""

    name: str
    default: Value
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class Stage:
    """``name = stage_type(arg=value, ...)``, or an unnamed output stage."""

    name: str | None
    stage_type: str
    args: tuple[Arg, ...]
    span: Span
    name_span: Span | None
    type_span: Span
    trailing_comma: bool = False


@dataclass(frozen=True, slots=True)
class Range:
    """``A..B`` or ``A..B..STEP``: whole numbers from A to B, both included,
    counting down when B < A; ``step`` is None where none is written."""

    start: int
    end: int
    step: int | None
    span: Span

    @property
    def values(self) -> range:
        """The numbers, as a ``range`` (never a list: a range may be long).
        Empty when the step is not positive (an error the checker reports)."""
        step = 1 if self.step is None else self.step
        if step <= 0:
            return range(0)
        return range(self.start, self.end + 1, step) if self.end >= self.start \
            else range(self.start, self.end - 1, -step)

    @property
    def count(self) -> int:
        """How many numbers: ``len(values)``, which fails past ``sys.maxsize``."""
        step = 1 if self.step is None else self.step
        return 0 if step <= 0 else abs(self.end - self.start) // step + 1


@dataclass(frozen=True, slots=True)
class SweepValues:
    """``name = 1..8`` or ``name = [a, b]``: one param's values in a sweep."""

    name: str
    values: Range | ListValue
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class Sweep:
    """``sweep name = values, ...``: one axis of the recipe's sweep.  The
    names of one line move together (their values are paired one by one);
    separate lines combine, the first varying fastest."""

    entries: tuple[SweepValues, ...]
    span: Span
    keyword_span: Span


Statement = Union[Header, Require, Param, Sweep, Stage]


@dataclass(frozen=True, slots=True)
class Comment:
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Recipe:
    """A parsed recipe: its statements in source order, and its comments.

    ``broken_names`` are names that statements which failed to parse would
    have defined; the checker treats them as known so that one syntax error
    does not cascade into "unknown name" errors further down.
    """

    file: str
    source: str
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...] = ()
    broken_names: frozenset[str] = field(default_factory=frozenset)

    @property
    def lines(self) -> list[str]:
        return self.source.split("\n")
