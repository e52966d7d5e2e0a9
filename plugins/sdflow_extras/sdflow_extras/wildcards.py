"""The template language of ``wildcard_encode``, in pure Python.

The syntax is that of the "dynamic prompts" wildcards people know from
AUTOMATIC1111 and ComfyUI::

    a {red|green|blue} __animals/cats__ on a {small|{very |}large} rug

* ``{a|b|c}`` picks one option; options may hold braces and wildcards
  themselves, and may be empty (``{very |}``).
* ``__name__`` is a random line of ``name.txt`` (``__animals/cats__``:
  ``animals/cats.txt``) from the first wildcard folder that has it.  Blank
  lines and lines starting with ``#`` are skipped; a line is a template too.
* ``\\{`` ``\\|`` ``\\}`` ``\\_`` ``\\\\`` stand for the character itself;
  ``|`` outside braces, and ``__`` that does not frame a name, are text.

Every problem is found before anything is picked, whatever the seed: a
brace left open, a wildcard file that is missing, wildcard files that name
each other in a cycle, or nest deeper than :data:`MAX_DEPTH`.  So a
template either fails for every seed, or works for every seed.

The same template, seed and wildcard files give the same text on every
machine and Python version: the picks come from :class:`random.Random`
seeded with the integer seed, in the order the template is read.
"""

from __future__ import annotations

import difflib
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence, Union

MAX_DEPTH = 20  # wildcard files inside wildcard files
MAX_BRACES = 100  # braces inside braces, in one template or line
ESCAPABLE = "{|}_\\"
_WILDCARD = re.compile(r"__([A-Za-z0-9][\w.\-/]*?)__")


class TemplateError(Exception):
    """A template or wildcard file that cannot be expanded; ``help`` says
    how to fix it.  For a wildcard file not found, ``missing`` is its name
    and ``near`` the names that look like it."""

    def __init__(self, message: str, help: str | None = None, missing: str | None = None,
                 near: Sequence[str] = ()):
        super().__init__(message)
        self.message, self.help, self.missing, self.near = message, help, missing, tuple(near)


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Choice:
    """``{a|b|c}``: one of ``options`` (each a sequence of nodes)."""

    options: tuple[tuple[Node, ...], ...]


@dataclass(frozen=True)
class Wildcard:
    """``__name__``: a line of ``name.txt``; ``column`` is where it starts."""

    name: str
    column: int


Node = Union[Text, Choice, Wildcard]
Template = tuple[Node, ...]


@dataclass
class _Open:
    """A ``{`` not yet closed while parsing."""

    column: int
    options: list[list[Node]]
    parent: list[Node]


def parse(text: str, where: str = "the template", column_offset: int = 0) -> Template:
    """The syntax tree of ``text``; raises :class:`TemplateError` naming
    ``where`` (if given) and the 1-based column of a brace left open or
    unmatched."""
    at = f"{where}: " if where else ""
    root: list[Node] = []
    current, stack, chars = root, [], []

    def flush() -> None:
        if chars:
            current.append(Text("".join(chars)))
            chars.clear()

    i = 0
    while i < len(text):
        c, column = text[i], column_offset + i + 1
        if c == "\\" and text[i + 1:i + 2] and text[i + 1] in ESCAPABLE:
            chars.append(text[i + 1])
            i += 2
            continue
        if c == "_" and (match := _WILDCARD.match(text, i)):
            flush()
            current.append(Wildcard(_checked_name(match.group(1), at, column), column))
            i = match.end()
            continue
        if c == "{":
            if len(stack) == MAX_BRACES:
                raise TemplateError(f"{at}braces nested deeper than {MAX_BRACES} at column {column}")
            flush()
            stack.append(_Open(column, [], current))
            current = []
        elif c == "|" and stack:
            flush()
            stack[-1].options.append(current)
            current = []
        elif c == "}":
            if not stack:
                raise TemplateError(f"{at}unmatched '}}' at column {column}",
                                    "remove it, or write '\\}' for a literal brace")
            flush()
            opened = stack.pop()
            opened.options.append(current)
            opened.parent.append(Choice(tuple(tuple(option) for option in opened.options)))
            current = opened.parent
        else:
            chars.append(c)
        i += 1
    if stack:
        raise TemplateError(f"{at}unbalanced '{{' at column {stack[-1].column}: no '}}' closes it",
                            "close it with '}', or write '\\{' for a literal brace")
    flush()
    return tuple(root)


def _checked_name(name: str, at: str, column: int) -> str:
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise TemplateError(f"{at}wildcard '__{name}__' at column {column} must name a file "
                            "inside the wildcard folders", "use names such as __colors__ or __animals/cats__")
    return name


def wildcards_in(template: Template) -> Iterator[Wildcard]:
    """Every wildcard a template names, in reading order (in every option)."""
    stack = [iter(template)]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
        elif isinstance(node, Wildcard):
            yield node
        elif isinstance(node, Choice):
            stack.extend(iter(option) for option in reversed(node.options))


@dataclass(frozen=True)
class Expansion:
    """A template expanded: the text, and each wildcard file that it
    depends on (every file reachable from the template, picked or not)."""

    text: str
    files: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Line:
    """A line of a wildcard file: its number in the file, and its template."""

    number: int
    template: Template


class WildcardFolders:
    """Wildcard files looked up by name in folders, in order: the first
    folder that has ``name.txt`` wins.  Each file is read and parsed once."""

    def __init__(self, folders: Sequence[Path]):
        self.folders = [Path(folder) for folder in folders]
        self._lines: dict[str, list[Line]] = {}
        self._paths: dict[str, Path] = {}

    def find(self, name: str) -> Path | None:
        return next((folder / f"{name}.txt" for folder in self.folders
                     if (folder / f"{name}.txt").is_file()), None)

    def names(self) -> list[str]:
        """Every wildcard name the folders hold (``animals/cats`` for
        ``animals/cats.txt``)."""
        found = {path.relative_to(folder).with_suffix("").as_posix()
                 for folder in self.folders if folder.is_dir() for path in folder.rglob("*.txt")}
        return sorted(found)

    def lines(self, name: str, origin: str = "") -> list[Line]:
        """The lines of ``name.txt`` to pick from, parsed; ``origin`` says
        who asked (for the error when no folder has it)."""
        if name not in self._lines:
            path = self.find(name)
            if path is None:
                raise self._unknown(name, origin)
            self._paths[name] = path
            self._lines[name] = _read(path, name)
        return self._lines[name]

    def path(self, name: str) -> Path:
        return self._paths[name]

    def _unknown(self, name: str, origin: str) -> TemplateError:
        if not self.folders:
            return TemplateError(f"unknown wildcard '__{name}__'{origin}: there are no wildcard folders",
                                 f"put {name}.txt in a wildcard folder", missing=name)
        searched = ", ".join(str(f) + ("" if f.is_dir() else " (missing)") for f in self.folders)
        known = self.names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if not close:  # __cat__ for animals/cats.txt: compare the last parts
            last = {n: n.rpartition("/")[2] for n in known}
            near = difflib.get_close_matches(name.rpartition("/")[2], set(last.values()), n=3, cutoff=0.6)
            close = [n for n in known if last[n] in near][:3]
        if close:
            help = "did you mean " + " or ".join(f"'__{c}__'" for c in close) + "?"
        elif known:
            help = "the wildcards there: " + ", ".join(f"__{n}__" for n in known[:20])
        else:
            help = f"put {name}.txt in one of those folders"
        return TemplateError(f"unknown wildcard '__{name}__'{origin}: no {name}.txt in {searched}", help,
                             missing=name, near=close)


def _read(path: Path, name: str) -> list[Line]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise TemplateError(f"wildcard file {path} is not UTF-8 text ({err.reason} at byte {err.start})",
                            "save it as UTF-8") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            lead = len(line) - len(line.lstrip())
            lines.append(Line(number, parse(stripped, f"{name}.txt line {number}", column_offset=lead)))
    if not lines:
        raise TemplateError(f"wildcard file {path} has no lines to pick from",
                            "blank lines and lines starting with '#' are skipped")
    return lines


def expand(template: str, seed: int, folders: Sequence[Path] = ()) -> Expansion:
    """``template`` with every choice and wildcard picked from ``seed``.

    Raises :class:`TemplateError` for any problem in the template or the
    wildcard files it reaches, whichever options the seed would pick.
    """
    tree = parse(template)
    library = WildcardFolders(folders)
    names = _Checker(library).check(tree)
    return Expansion(_pick(tree, random.Random(seed), library), {name: library.path(name) for name in names})


def _pick(template: Template, rng: random.Random, library: WildcardFolders) -> str:
    """The text of ``template``, picking in reading order (with a stack,
    not recursion: braces in wildcards in braces stay within Python's limit)."""
    parts: list[str] = []
    stack = [iter(template)]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
        elif isinstance(node, Text):
            parts.append(node.text)
        elif isinstance(node, Choice):
            stack.append(iter(node.options[rng.randrange(len(node.options))]))
        else:
            lines = library.lines(node.name)
            stack.append(iter(lines[rng.randrange(len(lines))].template))
    return "".join(parts)


class _Checker:
    """Reads every wildcard file a template can reach, refusing unknown
    files, cycles and nesting deeper than :data:`MAX_DEPTH`."""

    def __init__(self, library: WildcardFolders):
        self.library = library
        self.longest: dict[str, tuple[str, ...]] = {}  # a checked file -> its deepest chain

    def check(self, tree: Template) -> list[str]:
        """The wildcard files ``tree`` reaches, in the order first met."""
        self._visit(tree, (), "")
        return list(self.longest)

    def _visit(self, tree: Template, chain: tuple[str, ...], where: str) -> tuple[str, ...]:
        deepest: tuple[str, ...] = ()
        for wildcard in wildcards_in(tree):
            name = wildcard.name
            if name in chain:
                loop = chain[chain.index(name):] + (name,)
                raise TemplateError("wildcard files name each other in a cycle: "
                                    + " -> ".join(f"__{n}__" for n in loop),
                                    f"remove __{name}__ from {chain[-1]}.txt")
            if name not in self.longest:
                self.longest[name] = ()  # in order of discovery; filled in below
                lines = self.library.lines(name, f" ({where or 'the template'}, column {wildcard.column})")
                below = max((self._visit(line.template, chain + (name,), f"{name}.txt line {line.number}")
                             for line in lines), key=len)
                self.longest[name] = (name,) + below
            path = self.longest[name]
            if len(chain) + len(path) > MAX_DEPTH:
                shown = (chain + path)[:MAX_DEPTH + 1]
                raise TemplateError(f"wildcard files nest deeper than {MAX_DEPTH}: "
                                    + " -> ".join(f"__{n}__" for n in shown) + " ...",
                                    f"a wildcard file may name others, but not more than {MAX_DEPTH} deep")
            deepest = path if len(path) > len(deepest) else deepest
        return deepest
