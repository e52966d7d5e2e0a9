"""Property tests: whatever text comes in, only sdflow's own diagnostics come out.

Four kinds of input are fed to the parser, the checker and the formatter:
random text, random soups of the language's own tokens, small mutations of
the example recipes (the typos a person makes), and well-formed recipes in
every layout the grammar allows.  For all of them no
exception may escape, every diagnostic has a code and a span inside the text,
and a recipe that parses formats to text that is stable under a second
formatting and parses back to the same statements and comments.
"""

from __future__ import annotations

import dataclasses
import re
from functools import lru_cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdflow import ast
from sdflow.diagnostics import render
from sdflow.format import format_recipe
from sdflow.graph import check_source
from sdflow.parse import parse
from sdflow.registry import default_registry

FILE = "fuzz.sdflow"
EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.sdflow"))
CODE = re.compile(r"[EW]\d{3}")

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@lru_cache(maxsize=1)
def registry():
    return default_registry()


# what goes in ----------------------------------------------------------------

NAMES = ["ckpt", "latent", "image", "prompt", "seed", "x", "_a1", "sample", "empty_latent",
         "save_image", "load_checkpoint", "clip_text_encode", "vae_decode", "clip", "model",
         "vae", "width", "true", "false", "sdflow", "param"]
PIECES = [
    *NAMES, "=", "(", ")", ",", "[", "]", ".", "0", "42", "-7", "+3", "7.5", ".5", "1e3",
    "99999999999999999999999", '"text"', '""', '"a\\"b"', '"unclosed', '"""', '"""long\ntext"""',
    "'single'", "# a comment", "#", "\n", "\n", "\n", " ", "\t", "param", "sdflow 1", "\r\n",
    ":", "{", "}", "é", "\\", "\x00",
]

tokens = st.sampled_from(PIECES)
token_soups = st.lists(tokens, max_size=40).map(
    lambda pieces: "".join(p if p in "()[],.=\n" else f" {p} " for p in pieces)
)
language_text = st.text(
    alphabet=st.sampled_from(list('abcxyz_019 =(),[].+-"#\n\t\\\'é:')), max_size=120
)
any_text = st.one_of(st.text(max_size=200), language_text)


@st.composite
def mutated_examples(draw) -> str:
    """An example recipe with one to three small edits, as a typo would make."""
    text = EXAMPLES[draw(st.integers(0, len(EXAMPLES) - 1))].read_text(encoding="utf-8")
    for _ in range(draw(st.integers(1, 3))):
        text = draw(st.sampled_from(MUTATIONS))(draw, text)
    return text


def _position(draw, text: str) -> int:
    return draw(st.integers(0, max(len(text) - 1, 0)))


def _delete_char(draw, text):
    i = _position(draw, text)
    return text[:i] + text[i + 1 :]


def _duplicate_char(draw, text):
    i = _position(draw, text)
    return text[:i] + text[i : i + 1] + text[i:]


def _swap_chars(draw, text):
    i = _position(draw, text)
    return text[:i] + text[i + 1 : i + 2] + text[i : i + 1] + text[i + 2 :]


def _insert_token(draw, text):
    i = _position(draw, text)
    return text[:i] + draw(tokens) + text[i:]


def _lines_edit(edit):
    def mutate(draw, text):
        lines = text.split("\n")
        i = draw(st.integers(0, len(lines) - 1))
        j = draw(st.integers(0, len(lines) - 1))
        return "\n".join(edit(lines, i, j))

    return mutate


MUTATIONS = [
    _delete_char,
    _duplicate_char,
    _swap_chars,
    _insert_token,
    _lines_edit(lambda lines, i, j: lines[:i] + lines[i + 1 :]),
    _lines_edit(lambda lines, i, j: lines[:i] + [lines[i]] + lines[i:]),
    _lines_edit(lambda lines, i, j: [lines[j] if k == i else lines[i] if k == j else line
                                     for k, line in enumerate(lines)]),
]


# Well-formed recipes in every layout the grammar allows: any spacing, line
# breaks and comments inside brackets, trailing commas, long strings.
KEYWORDS = {"param", "true", "false"}
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True).filter(
    lambda n: n not in KEYWORDS
)
comments = st.sampled_from(["#", "# note", "#  spaced  ", "# ( [ = , ) ]", '# "quoted"'])
gaps = st.one_of(
    st.sampled_from(["", " ", "\n", "\n    ", "\n\n  "]),
    comments.map(lambda c: f"  {c}\n    "),
)
ints = st.integers(-(10**25), 10**25).map(str) | st.sampled_from(["+1", "-0", "007"])
floats = st.sampled_from(["7.5", "-0.25", ".5", "3.", "1e3", "2.5E-3", "+1.0", "1e999"])
plain = st.text(st.characters(blacklist_characters='"\\\n\r', blacklist_categories=["Cs"]), max_size=12)
strings = st.one_of(
    plain.map(lambda t: f'"{t}"'),
    st.sampled_from(['"a\\"b"', '"tab\\tnew\\nline"', '"back\\\\slash"', '"\\q"']),
    st.text(st.characters(blacklist_characters='"\r', blacklist_categories=["Cs"]), max_size=30).map(
        lambda t: f'"""{t}"""'
    ),
)
refs = st.builds(lambda n, p: n if p is None else f"{n}.{p}", names, st.none() | names)
literals = st.one_of(ints, floats, strings, st.sampled_from(["true", "false"]), refs)


@st.composite
def values(draw, depth=0):
    if depth >= 2 or draw(st.integers(0, 4)):
        return draw(literals)
    items = draw(st.lists(values(depth + 1), max_size=3))
    return _bracketed(draw, "[", items, "]")


def _bracketed(draw, open_, items, close):
    text = open_ + draw(gaps)
    for i, item in enumerate(items):
        text += item + draw(gaps)
        if i < len(items) - 1 or draw(st.booleans()):
            text += "," + draw(gaps)
    return text + close


@st.composite
def statements(draw):
    kind = draw(st.sampled_from(["header", "param", "stage", "stage", "output"]))
    if kind == "header":
        return f"sdflow {draw(st.integers(0, 3))}"
    if kind == "param":
        return f"param {draw(names)} = {draw(values())}"
    args = [f"{draw(names)}{draw(gaps)}={draw(gaps)}{draw(values())}"
            for _ in range(draw(st.integers(0, 4)))]
    call = draw(names) + _bracketed(draw, "(", args, ")")
    return call if kind == "output" else f"{draw(names)} = {call}"


@st.composite
def well_formed_recipes(draw) -> str:
    text = draw(st.sampled_from(["", "# leading\n", "\n\n"]))
    for statement in draw(st.lists(statements(), max_size=6)):
        text += statement + draw(st.sampled_from(["\n", "\n\n", "  # trailing\n", "\n# own line\n"]))
    return text


# what must come out ----------------------------------------------------------


def assert_only_diagnostics(source: str, diagnostics) -> None:
    """Every diagnostic is sdflow's own, with a span inside the text."""
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for d in diagnostics:
        assert CODE.fullmatch(d.code), d
        assert d.severity in ("error", "warning"), d
        assert d.message, d
        span = d.span
        assert span is not None and span.file == FILE, d
        assert 1 <= span.line <= span.end_line <= len(lines), d
        assert 1 <= span.column <= len(lines[span.line - 1]) + 1, d
        assert 1 <= span.end_column <= len(lines[span.end_line - 1]) + 2, d
        if span.end_line == span.line:
            assert span.column <= span.end_column, d


LAYOUT = {"span", "name_span", "type_span", "keyword_span", "version_span", "port_span",
          "trailing_comma"}


def normalised(node):
    """A node as plain data, less its layout: positions, trailing commas, and
    the spelling of a literal (``+1`` is ``1``)."""
    if isinstance(node, tuple):
        return tuple(normalised(n) for n in node)
    if isinstance(node, ast.Literal):
        return ("Literal", type(node.value).__name__, node.value)
    if dataclasses.is_dataclass(node):
        return (type(node).__name__,) + tuple(
            normalised(getattr(node, f.name)) for f in dataclasses.fields(node) if f.name not in LAYOUT
        )
    return node


def check_and_format(source: str) -> None:
    """Parse, check and (when it parsed) format: only diagnostics come out."""
    recipe, syntax = parse(source, FILE)
    assert_only_diagnostics(source, syntax)
    _recipe, graph, diagnostics = check_source(source, FILE, registry())
    assert_only_diagnostics(source, diagnostics)
    assert set(syntax) <= set(diagnostics)
    assert (graph is None) == (bool(syntax) or any(d.is_error for d in diagnostics))
    for d in diagnostics:
        assert render(d, {FILE: source}).startswith(f"{d.span}: {d.code} ")
    if not syntax:
        assert_formats_stably(recipe)


def assert_formats_stably(recipe: ast.Recipe) -> None:
    formatted = format_recipe(recipe)
    again, diagnostics = parse(formatted, FILE)
    assert diagnostics == [], (formatted, diagnostics)
    assert normalised(again.statements) == normalised(recipe.statements), formatted
    assert len(again.comments) == len(recipe.comments), formatted
    assert format_recipe(again) == formatted


# the properties --------------------------------------------------------------


@FUZZ
@given(any_text)
def test_random_text_gives_only_diagnostics(source):
    check_and_format(source)


@FUZZ
@given(token_soups)
def test_token_soup_gives_only_diagnostics(source):
    check_and_format(source)


@FUZZ
@given(mutated_examples())
def test_mutated_example_gives_only_diagnostics(source):
    check_and_format(source)


@FUZZ
@given(well_formed_recipes())
def test_well_formed_recipe_parses_and_formats_stably(source):
    _recipe, syntax = parse(source, FILE)
    assert syntax == [], syntax
    check_and_format(source)


def test_the_examples_mutated_above_are_clean_and_formatted():
    assert EXAMPLES
    for path in EXAMPLES:
        source = path.read_text(encoding="utf-8")
        recipe, graph, diagnostics = check_source(source, FILE, registry())
        assert diagnostics == [] and graph is not None, path
        assert format_recipe(recipe) == source, path
