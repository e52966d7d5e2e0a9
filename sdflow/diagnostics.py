"""One error type with a span, and its compiler-style rendering.

Every problem sdflow finds in a recipe (a syntax error, an unknown stage, a
value out of range) becomes a :class:`Diagnostic`.  They are collected, sorted
by position and shown all at once::

    recipe.sdflow:7:34: E302 'clip' expects CLIP, but ckpt.model is MODEL
      |
    7 | positive = clip_text_encode(clip=ckpt.model, text=prompt)
      |                                  ^^^^^^^^^^
      = help: did you mean 'ckpt.clip'?
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass
from typing import Iterable, Literal, TextIO

from sdflow.ast import Span

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """A problem at a place in a recipe.

    ``code`` is stable (documented in docs/language.md); ``message`` says what
    is wrong; ``help`` says how to fix it, where a fix is known.
    """

    code: str
    message: str
    span: Span | None
    help: str | None = None
    severity: Severity = "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def sort_key(self) -> tuple:
        if self.span is None:
            return ("", 0, 0, self.code)
        return (self.span.file, self.span.line, self.span.column, self.code)


class DiagnosticError(Exception):
    """Raised when a recipe cannot go on to the next step; carries them all."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
        super().__init__("\n".join(f"{d.span}: {d.code} {d.message}" for d in self.diagnostics))


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A help line naming the closest choice, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def one_of(choices: Iterable[str], limit: int = 12) -> str:
    """``'a', 'b' or 'c'`` for a help line."""
    names = [f"'{c}'" for c in choices]
    if len(names) > limit:
        names = names[:limit] + [f"... ({len(names) - limit} more)"]
    if len(names) <= 1:
        return "".join(names) or "nothing"
    return ", ".join(names[:-1]) + " or " + names[-1]


class _Style:
    def __init__(self, colour: bool):
        self.colour = colour

    def __call__(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set."""
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def render(diagnostic: Diagnostic, sources: dict[str, str], colour: bool = False) -> str:
    """Format one diagnostic like a compiler: location, code, excerpt, help."""
    style = _Style(colour)
    span = diagnostic.span
    location = f"{span}: " if span else ""
    code = style(diagnostic.code, "1;31" if diagnostic.is_error else "1;33")
    out = [f"{style(location, '1')}{code} {diagnostic.message}"]
    if span is not None and span.file in sources:
        out.extend(_excerpt(span, sources[span.file], style, diagnostic.is_error))
    if diagnostic.help:
        gutter = " " * (len(str(span.line)) if span else 1)
        out.append(f"{gutter} = {style('help', '1;36')}: {diagnostic.help}")
    return "\n".join(out)


def _excerpt(span: Span, source: str, style: _Style, is_error: bool) -> list[str]:
    lines = source.split("\n")
    if not 1 <= span.line <= len(lines):
        return []
    # One character per column, so the caret lines up: tabs become spaces and
    # control characters a visible mark.
    text = "".join(c if c.isprintable() else ("\ufffd" if c != "\t" else " ") for c in lines[span.line - 1])
    width = len(str(span.line))
    gutter = " " * width
    start = max(span.column - 1, 0)
    if span.end_line == span.line:
        end = max(span.end_column - 1, start + 1)
    else:
        end = max(len(text.rstrip()), start + 1)
    carets = style("^" * (end - start), "1;31" if is_error else "1;33")
    bar = style("|", "1;34")
    return [
        f"{gutter} {bar}",
        f"{style(str(span.line), '1;34')} {bar} {text}",
        f"{gutter} {bar} {' ' * start}{carets}",
    ]


def print_diagnostics(
    diagnostics: Iterable[Diagnostic], sources: dict[str, str], stream: TextIO | None = None
) -> None:
    """Write every diagnostic, in order, then a one-line summary."""
    stream = stream or sys.stderr
    colour = use_colour(stream)
    diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
    for d in diagnostics:
        stream.write(render(d, sources, colour) + "\n\n")
    errors = sum(d.is_error for d in diagnostics)
    warnings = len(diagnostics) - errors
    if diagnostics:
        parts = []
        if errors:
            parts.append(f"{errors} error{'s' if errors != 1 else ''}")
        if warnings:
            parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
        stream.write(", ".join(parts) + "\n")
