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
from collections import Counter
import os
import sys
from dataclasses import dataclass
from typing import Iterable, Literal, TextIO

from sdflow.ast import Span
from sdflow.text import display_width, visible

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


class Suggestions:
    """Near misses among the names of one recipe, in bounded time.

    Comparing every unknown name with every known one grows as the product
    of the two: a recipe of mistakes could take minutes.  Here the names
    are indexed by their three-letter pieces; a word is compared only with
    the few hundred names that share the most of its rarer pieces (those of
    a length that could match when it shares none), each distinct word is
    looked up once, and after ``budget`` distinct words no more lookups are
    made: only the first diagnostics are printed anyway.
    """

    def __init__(self, names: Iterable[str], budget: int = 100, pool: int = 200, common: int = 2000) -> None:
        self.names = list(dict.fromkeys(names))
        self.budget, self.pool, self.common = budget, pool, common
        self.memo: dict[str, str | None] = {}
        self.pieces: dict[str, list[int]] | None = None

    @staticmethod
    def _pieces(word: str) -> set[str]:
        padded = f"^{word}$"
        return {padded[i : i + 3] for i in range(len(padded) - 2)}

    def __call__(self, word: str) -> str | None:
        if word in self.memo:
            return self.memo[word]
        if len(self.memo) >= self.budget:
            return None
        if self.pieces is None:
            self.pieces = {}
            for i, name in enumerate(self.names):
                for piece in self._pieces(name):
                    self.pieces.setdefault(piece, []).append(i)
        shared: Counter[int] = Counter()
        for piece in self._pieces(word):
            found = self.pieces.get(piece, ())
            if len(found) <= self.common:  # a piece most names have says little
                shared.update(found)
        pool = [self.names[i] for i, _ in shared.most_common(self.pool)]
        if len(pool) < self.pool:
            # ratio = 2*matches/(n+m) >= 0.6 needs m within [3n/7, 7n/3]
            n = len(word)
            pool += [m for m in self.names[: self.pool * 10] if 3 * n <= 7 * len(m) and 3 * len(m) <= 7 * n]
        self.memo[word] = hint = did_you_mean(word, pool[: self.pool * 2])
        return hint


def one_of(choices: Iterable[str], limit: int = 12, total: int | None = None) -> str:
    """``'a', 'b' or 'c'`` for a help line; ``total`` counts the choices when
    only the first few are given."""
    names = [f"'{c}'" for c in choices]
    total = len(names) if total is None else total
    if total > limit:
        names = names[:limit] + [f"... ({total - limit} more)"]
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


MAX_SHOWN = 50
"""At most this many diagnostics are printed by default, then a count of the rest."""

_LONG = 400  # a message or help longer than this is shortened in the middle
_EXCERPT = 100  # columns of a long line shown around the caret


def render(diagnostic: Diagnostic, sources: dict[str, str], colour: bool = False) -> str:
    """Format one diagnostic like a compiler: location, code, excerpt, help."""
    return _render(diagnostic, _Lines(sources), colour)


class _Lines:
    """The lines of each source, split once however many diagnostics show them."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources
        self.split: dict[str, list[str]] = {}

    def line(self, file: str, number: int) -> str | None:
        if file not in self.sources:
            return None
        lines = self.split.get(file)
        if lines is None:
            lines = self.split[file] = self.sources[file].split("\n")
        return lines[number - 1] if 1 <= number <= len(lines) else None


def _render(diagnostic: Diagnostic, lines: _Lines, colour: bool) -> str:
    style = _Style(colour)
    span = diagnostic.span
    location = f"{visible(str(span))}: " if span else ""
    code = style(diagnostic.code, "1;31" if diagnostic.is_error else "1;33")
    out = [f"{style(location, '1')}{code} {_shown(diagnostic.message)}"]
    text = lines.line(span.file, span.line) if span is not None else None
    if text is not None:
        out.extend(_excerpt(span, text, style, diagnostic.is_error))
    if diagnostic.help:
        gutter = " " * (len(str(span.line)) if span else 1)
        out.append(f"{gutter} = {style('help', '1;36')}: {_shown(diagnostic.help)}")
    return "\n".join(out)


def _shown(text: str) -> str:
    """Text for one line of a diagnostic: controls escaped, shortened if huge."""
    if len(text) > _LONG:
        text = f"{text[: _LONG // 2]} ... {text[-_LONG // 2 :]}"
    return visible(text)


def _excerpt(span: Span, line: str, style: _Style, is_error: bool) -> list[str]:
    start = max(span.column - 1, 0)
    if span.end_line == span.line:
        end = max(span.end_column - 1, start + 1)
    else:
        end = max(len(line.rstrip()), start + 1)
    # A long line is cut to a window around the caret.
    first = max(0, start - _EXCERPT // 2) if len(line) > _EXCERPT else 0
    last = min(len(line), max(first + _EXCERPT, min(end, start + _EXCERPT)))
    before, shown, after = line[:first], line[first:last], line[last:]
    # One mark per character that does not show (a tab, a control character,
    # an invisible one), so nothing can move the cursor and the caret lines up.
    text = "".join(c if c.isprintable() else ("\ufffd" if c != "\t" else " ") for c in shown)
    lead = "... " if before else ""
    pad = len(lead) + display_width(text[: start - first])
    width = max(display_width(text[start - first : end - first]), 1)
    gutter = " " * len(str(span.line))
    carets = style("^" * width, "1;31" if is_error else "1;33")
    bar = style("|", "1;34")
    return [
        f"{gutter} {bar}",
        f"{style(str(span.line), '1;34')} {bar} {lead}{text}{' ...' if after else ''}",
        f"{gutter} {bar} {' ' * pad}{carets}",
    ]


def print_diagnostics(
    diagnostics: Iterable[Diagnostic],
    sources: dict[str, str],
    stream: TextIO | None = None,
    limit: int | None = MAX_SHOWN,
) -> None:
    """Write the diagnostics in order (at most ``limit``, None for all), then a
    one-line summary that counts them all."""
    stream = stream or sys.stderr
    colour = use_colour(stream)
    diagnostics = sorted(diagnostics, key=Diagnostic.sort_key)
    lines = _Lines(sources)
    shown = diagnostics
    if limit and len(diagnostics) > limit:  # errors first: a warning never hides one
        shown = sorted(sorted(diagnostics, key=lambda d: not d.is_error)[:limit], key=Diagnostic.sort_key)
    for d in shown:
        stream.write(_render(d, lines, colour) + "\n\n")
    errors = sum(d.is_error for d in diagnostics)
    warnings = len(diagnostics) - errors
    if diagnostics:
        parts = []
        if errors:
            parts.append(f"{errors} error{'s' if errors != 1 else ''}")
        if warnings:
            parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
        summary = ", ".join(parts)
        if len(shown) < len(diagnostics):
            summary += f" ({len(shown)} shown; --max-diagnostics 0 shows all)"
        stream.write(summary + "\n")
