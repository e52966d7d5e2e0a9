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


Statement = Union[Header, Require, Param, Stage]


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
