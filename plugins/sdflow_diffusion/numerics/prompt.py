"""A prompt's syntax: weights, BREAK, ``embedding:NAME``, and its 77-token chunks.

Two readings, as the two tools people write prompts for read them
(``convention``):

``"comfy"`` (ComfyUI's ``SDTokenizer.tokenize_with_weights``)
    ``(text)`` multiplies the weight by 1.1 at each level of nesting;
    ``(text:1.3)`` *sets* it to 1.3, whatever encloses it; ``\\(`` and
    ``\\)`` are literal parentheses.  ``[text]`` and ``BREAK`` are plain
    text.  A weight that is not a number, ``(text:abc)``, leaves the group
    at x1.1 with ``:abc`` kept as text; an unbalanced parenthesis is text.
    Each weighted run of text (and each embedding, and the text after one)
    is a *group*: a group of fewer than 8 tokens that would straddle the
    75-token cut moves whole to the next chunk (the chunk is padded); a
    longer one is split at the cut.

``"a1111"`` (AUTOMATIC1111's ``parse_prompt_attention`` and
``FrozenCLIPEmbedderWithCustomWords.tokenize_line``)
    ``(text)`` x1.1, ``[text]`` /1.1, ``(text:1.3)`` x1.3, all nesting by
    multiplication; ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are literal;
    an unclosed bracket weights the rest of the prompt; ``BREAK`` (upper
    case, a word of its own) starts a new chunk.  A chunk is cut at 75
    tokens, except that the tokens after the last comma move to the next
    chunk when that comma is within the last 20 (A1111's
    ``comma_padding_backtrack``); an embedding is never split.

Both find an embedding as ComfyUI does: ``embedding:NAME`` at the start of
a run of text or after a space or a line break, the name ending at the next
whitespace (trailing commas are not part of it).

Torch-free: :func:`parse_prompt` needs nothing, :func:`chunk_prompt` only a
tokenizer function.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Union

Convention = Literal["comfy", "a1111"]

CHUNK = 75  # prompt tokens per chunk, between the start and the end token
EMBEDDING = "embedding:"
COMFY_SPLIT_BELOW = 8  # ComfyUI's max_word_length: a shorter group is never split
A1111_COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default


@dataclass(frozen=True)
class Segment:
    """A run of prompt text with one weight, an embedding, or a BREAK.

    ``text``: the text to tokenize (escapes resolved), or the embedding's
    name; ``column``: where it starts in the prompt (1-based).
    """

    text: str
    weight: float
    column: int
    kind: Literal["text", "embedding", "break"] = "text"


@dataclass(frozen=True)
class Problem:
    """Something in the prompt that is probably not what its writer meant."""

    column: int
    message: str

    def __str__(self) -> str:
        return f"at column {self.column} of the prompt: {self.message}"


@dataclass(frozen=True)
class ParsedPrompt:
    segments: tuple[Segment, ...]
    problems: tuple[Problem, ...]

    @property
    def embeddings(self) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.kind == "embedding")


@dataclass(frozen=True)
class Vector:
    """The ``index``-th vector of embedding ``name``, in a chunk's place of a token."""

    name: str
    index: int


Token = Union[int, Vector]
Chunk = list[tuple[Token, float]]  # 77 (token, weight) pairs


@dataclass(frozen=True)
class SpecialTokens:
    start: int
    end: int
    pad: int
    comma: int | None = None  # A1111's backtracking looks for it


def parse_prompt(text: str, convention: Convention = "comfy") -> ParsedPrompt:
    """The prompt's segments, in order, and its problems."""
    problems: list[Problem] = []
    runs = _comfy_runs(text, problems) if convention == "comfy" else _a1111_runs(text, problems)
    segments: list[Segment] = []
    for run in runs:
        if run.kind == "break":
            segments.append(Segment("", run.weight, run.column, "break"))
        else:
            segments += _split_embeddings(run, problems)
    return ParsedPrompt(tuple(segments), tuple(sorted(problems, key=lambda p: p.column)))


def chunk_prompt(parsed: ParsedPrompt, tokenize: Callable[[str], list[int]], vectors: Mapping[str, int],
                 special: SpecialTokens, convention: Convention = "comfy") -> list[Chunk]:
    """The prompt as chunks of 77 ``(token, weight)``: start, 75 tokens, end,
    padding.  ``tokenize``: text -> token ids without start and end;
    ``vectors``: how many vectors each embedding has."""
    groups: list[list[tuple[Token, float]] | None] = []  # None: a BREAK
    for segment in parsed.segments:
        if segment.kind == "break":
            groups.append(None)
        elif segment.kind == "embedding":
            groups.append([(Vector(segment.text, i), segment.weight) for i in range(vectors[segment.text])])
        else:
            groups.append([(token, segment.weight) for token in tokenize(segment.text)])
    if convention == "comfy":
        return _comfy_chunks([g for g in groups if g is not None], special)
    return _a1111_chunks(groups, special)


# ComfyUI's reading --------------------------------------------------------

_ESCAPED = {"(": "\ue000", ")": "\ue001"}  # stand-ins no parser sees as parentheses
_UNESCAPED = {v: k for k, v in _ESCAPED.items()}


@dataclass(frozen=True)
class _Run:
    text: str
    weight: float
    columns: tuple[int, ...]  # of each character of text
    kind: Literal["text", "break"] = "text"

    @property
    def column(self) -> int:
        return self.columns[0] if self.columns else 1


def _comfy_runs(text: str, problems: list[Problem]) -> list[_Run]:
    # \( and \) become stand-ins, each at the column of its backslash.
    chars, columns, i = [], [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 2] in ("(", ")"):
            chars.append(_ESCAPED[text[i + 1]])
            columns.append(i + 1)
            i += 2
        else:
            chars.append(text[i])
            columns.append(i + 1)
            i += 1
    s = "".join(chars)
    runs: list[_Run] = []

    def weigh(start: int, end: int, weight: float) -> None:
        for a, b in _comfy_groups(s, start, end, columns, problems):
            if b - a >= 2 and s[a] == "(" and s[b - 1] == ")":
                inner_end, inner_weight = b - 1, weight * 1.1
                colon = s.rfind(":", a + 1, b - 1)
                if colon > a + 1:
                    try:
                        inner_weight, inner_end = float(s[colon + 1:b - 1]), colon
                        if not math.isfinite(inner_weight):
                            problems.append(Problem(columns[colon], f"the weight {s[colon + 1:b - 1].strip()} "
                                                    "is not a finite number"))
                    except ValueError:
                        if not any(c in s[colon + 1:b - 1] for c in "()"):
                            problems.append(_not_a_weight(s[colon + 1:b - 1], columns[colon]))
                weigh(a + 1, inner_end, inner_weight)
            else:
                piece = s[a:b]
                for stand_in, char in _UNESCAPED.items():
                    piece = piece.replace(stand_in, char)
                runs.append(_Run(piece, weight, tuple(columns[a:b])))

    weigh(0, len(s), 1.0)
    return runs


def _comfy_groups(s: str, start: int, end: int, columns: list[int],
                  problems: list[Problem]) -> list[tuple[int, int]]:
    """``s[start:end]`` cut into text and top-level ``(...)`` groups, as
    ComfyUI's ``parse_parentheses`` cuts it (a ``)`` with no ``(`` makes the
    depth negative, and everything up to where it comes back is text)."""
    pieces, piece_start, depth, stray = [], start, 0, None
    for i in range(start, end):
        if s[i] == "(":
            if depth == 0:
                if i > piece_start:
                    pieces.append((piece_start, i))
                piece_start = i
            depth += 1
        elif s[i] == ")":
            depth -= 1
            if depth == 0:
                pieces.append((piece_start, i + 1))
                piece_start = i + 1
            elif depth < 0 and stray is None:
                stray = i
    if piece_start < end:
        pieces.append((piece_start, end))
    if stray is not None:
        problems.append(Problem(columns[stray], "')' closes nothing: it is read as text, and so may be "
                                "the parentheses that follow"))
    elif depth > 0 and s[end - 1] != ")":  # else it is a group, and its inside says which '(' is open
        problems.append(Problem(columns[piece_start], "'(' is never closed: it is read as text"))
    return pieces


def _not_a_weight(text: str, colon: int, why: str = "") -> Problem:
    """``(word:text)`` where text is not a number (``colon``: the column of the ':')."""
    if not text.strip():
        return Problem(colon, "':' is followed by no weight: the group is weighted 1.1 and keeps ':' as text")
    return Problem(colon + 1 + len(text) - len(text.lstrip()),
                   f"'{text.strip()}' is not a weight{why}: the group is weighted 1.1 and keeps it as text")


# AUTOMATIC1111's reading --------------------------------------------------

_A1111_TOKENS = re.compile(r"""
    \\[()\[\]\\]            # an escaped bracket or backslash: the character
  | \\                      # a lone backslash: nothing
  | [(\[]                   # opens a group
  | :([+-]?[.\d]+)\)        # closes a round group with a weight
  | [)\]]                   # closes a group
  | [^\\()\[\]:]+           # text
  | :                       # a colon that is text
""", re.X)
_A1111_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def _a1111_runs(text: str, problems: list[Problem]) -> list[_Run]:
    res: list[list] = []  # [text, weight, columns]
    rounds: list[tuple[int, int]] = []  # (index into res, column) of each open bracket
    squares: list[tuple[int, int]] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    tokens = list(_A1111_TOKENS.finditer(text))
    for n, m in enumerate(tokens):
        token, column = m.group(0), m.start() + 1
        if token.startswith("\\"):
            res.append([token[1:], 1.0, (column + 1,) if len(token) > 1 else ()])
        elif token == "(":
            rounds.append((len(res), column))
        elif token == "[":
            squares.append((len(res), column))
        elif m.group(1) is not None and rounds:
            try:
                weight = float(m.group(1))
            except ValueError:  # "." or "1.2.3": A1111 itself fails on these
                problems.append(_not_a_weight(m.group(1), column))
                res.append([token[:-1], 1.0, tuple(range(column, column + len(token) - 1))])
                weight = 1.1
            multiply(rounds.pop()[0], weight)
        elif token == ")" and rounds:
            multiply(rounds.pop()[0], 1.1)
        elif token == "]" and squares:
            multiply(squares.pop()[0], 1 / 1.1)
        else:
            if token in (")", "]") or m.group(1) is not None:
                problems.append(Problem(column + len(token) - 1, f"'{token[-1]}' closes nothing: it is read as text"))
            elif token == ":" and rounds and _a1111_bad_weight(tokens, n):
                problems.append(_not_a_weight(tokens[n + 1].group(0), column, " (A1111 reads digits and '.', "
                                              "no spaces)"))
            res += _a1111_breaks(token, column)
    for _, column in rounds:
        problems.append(Problem(column, "'(' is never closed: the rest of the prompt is weighted 1.1"))
    for _, column in squares:
        problems.append(Problem(column, "'[' is never closed: the rest of the prompt is weighted 1/1.1"))
    for start, _ in rounds:
        multiply(start, 1.1)
    for start, _ in squares:
        multiply(start, 1 / 1.1)
    if not res:
        res = [["", 1.0, ()]]
    merged = [res[0]]
    for item in res[1:]:  # A1111 joins neighbours of equal weight
        if item[1] == merged[-1][1]:
            merged[-1] = [merged[-1][0] + item[0], item[1], merged[-1][2] + item[2]]
        else:
            merged.append(item)
    return [_Run(t, w, c, "break" if t == "BREAK" and w == -1 else "text") for t, w, c in merged]


def _a1111_bad_weight(tokens: list, n: int) -> bool:
    """Whether the ``:`` at ``tokens[n]`` meant a weight: text, then ``)``."""
    return n + 2 < len(tokens) and tokens[n + 2].group(0) == ")" and tokens[n + 1].group(0)[0] not in "()[]:\\"


def _a1111_breaks(token: str, column: int) -> list[list]:
    """Plain text, with each BREAK as A1111 marks it (weight -1)."""
    items, at = [], 0
    for m in _A1111_BREAK.finditer(token):
        items.append([token[at:m.start()], 1.0, tuple(range(column + at, column + m.start()))])
        items.append(["BREAK", -1, tuple(range(column + m.start(), column + m.end()))])
        at = m.end()
    items.append([token[at:], 1.0, tuple(range(column + at, column + len(token)))])
    return items


# embeddings ---------------------------------------------------------------

_EMBEDDING_SPLIT = re.compile(rf"[ \n](?={EMBEDDING})")


def _split_embeddings(run: _Run, problems: list[Problem]) -> list[Segment]:
    """A run of text cut where ComfyUI cuts it: before each ``embedding:``
    that starts it or follows a space or line break (that character is
    dropped); an embedding's name ends at whitespace, and what follows it
    is a segment of its own."""
    cuts = [m.start() for m in _EMBEDDING_SPLIT.finditer(run.text)]
    segments = []
    for begin, end in zip([0] + [c + 1 for c in cuts], cuts + [len(run.text)]):
        piece = run.text[begin:end]
        column = run.columns[begin] if begin < len(run.columns) else run.column
        if not piece.startswith(EMBEDDING):
            if piece:
                segments.append(Segment(piece, run.weight, column))
            continue
        words = piece[len(EMBEDDING):].strip("\n").split()
        if not words:
            problems.append(Problem(column, f"'{EMBEDDING}' names no embedding: it is read as text"))
            segments.append(Segment(piece, run.weight, column))
            continue
        name, rest = words[0], " ".join(words[1:])
        if name.strip(",") not in (name, ""):  # "embedding:name," : the comma is text
            name, rest = name.strip(","), f"{name[len(name.strip(',')):]} {rest}"
        segments.append(Segment(name, run.weight, column, "embedding"))
        if rest:
            segments.append(Segment(rest, run.weight, column + len(EMBEDDING) + len(name)))
    return segments


# chunks -------------------------------------------------------------------

def _comfy_chunks(groups: list[list[tuple[Token, float]]], special: SpecialTokens) -> list[Chunk]:
    last = CHUNK + 1  # the start token and 75: the end token comes after
    chunk: Chunk = [(special.start, 1.0)]
    chunks = [chunk]
    for group in groups:
        splittable = len(group) >= COMFY_SPLIT_BELOW
        while group:
            if len(chunk) + len(group) <= last:
                chunk += group
                break
            room = last - len(chunk)
            if splittable:
                chunk += group[:room]
                group = group[room:]
                chunk.append((special.end, 1.0))
            else:
                chunk += [(special.end, 1.0)] + [(special.pad, 1.0)] * room
            chunk = [(special.start, 1.0)]
            chunks.append(chunk)
    chunk.append((special.end, 1.0))
    chunk += [(special.pad, 1.0)] * (CHUNK + 2 - len(chunk))
    return chunks


def _a1111_chunks(groups: list[list[tuple[Token, float]] | None], special: SpecialTokens) -> list[Chunk]:
    chunks: list[Chunk] = []
    current: Chunk = []
    last_comma = -1

    def close() -> None:
        nonlocal current, last_comma
        chunks.append([(special.start, 1.0), *current, (special.end, 1.0)]
                      + [(special.pad, 1.0)] * (CHUNK - len(current)))
        current, last_comma = [], -1

    def make_room(token: Token) -> None:
        """Before a token: note a comma, or carry the words after a recent
        one over to the next chunk, or close a full chunk."""
        nonlocal current, last_comma
        if token == special.comma:
            last_comma = len(current)
        elif len(current) == CHUNK and last_comma != -1 and CHUNK - last_comma <= A1111_COMMA_BACKTRACK:
            carried = current[last_comma + 1:]
            current = current[:last_comma + 1]
            close()
            current = carried
        if len(current) == CHUNK:
            close()

    for group in groups:
        if group is None:
            close()
            continue
        if group and isinstance(group[0][0], Vector) and len(group) <= CHUNK:
            make_room(group[0][0])
            if len(current) + len(group) > CHUNK:
                close()
            current += group
            continue
        for token, weight in group:
            make_room(token)
            current.append((token, weight))
    if current or not chunks:
        close()
    return chunks
