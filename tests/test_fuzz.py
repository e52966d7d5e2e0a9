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

import contextlib
import dataclasses
import io
import re
import tempfile
from functools import lru_cache
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sdflow import ast
from sdflow.cli import main as cli_main
from sdflow.diagnostics import print_diagnostics, render
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
KEYWORDS = {"param", "sweep", "require", "true", "false"}
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
ranges = st.builds(lambda a, b, step: f"{a}..{b}" + (f"..{step}" if step is not None else ""),
                   ints, ints, st.none() | ints)
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
    kind = draw(st.sampled_from(["header", "param", "sweep", "stage", "stage", "output"]))
    if kind == "header":
        return f"sdflow {draw(st.integers(0, 3))}"
    if kind == "param":
        return f"param {draw(names)} = {draw(values())}"
    if kind == "sweep":
        entries = []
        for _ in range(draw(st.integers(1, 3))):
            swept = draw(ranges) if draw(st.booleans()) else \
                _bracketed(draw, "[", draw(st.lists(values(1), max_size=3)), "]")
            entries.append(f"{draw(names)} = {swept}")
        return "sweep " + ", ".join(entries)
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


# hardening: deep nesting, long strings, odd characters, invalid UTF-8 --------
#
# Whatever the input, `sdflow check` and `sdflow fmt` end with sdflow's own
# diagnostics: no RecursionError on brackets nested thousands deep, no
# traceback on bytes that are not UTF-8, every diagnostic with a code and a
# span inside the text however wide, combining or invisible its characters.

FEW = settings(FUZZ, max_examples=30)
TXT2IMG = next(p for p in EXAMPLES if p.name == "txt2img.sdflow").read_text(encoding="utf-8")
DEEP = 100  # nesting deeper than this must be a diagnostic (the limit is well below it)


def check_everything(source: str):
    """check_and_format, and every diagnostic printed as the CLI prints them."""
    check_and_format(source)
    _recipe, _graph, diagnostics = check_source(source, FILE, registry())
    out = io.StringIO()
    print_diagnostics(diagnostics, {FILE: source}, out)
    assert out.getvalue() or not diagnostics
    return diagnostics


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``sdflow.cli.main(argv)`` in this process, stdout and stderr captured."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli_main(argv)
    return code, out.getvalue()


@lru_cache(maxsize=1)
def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="sdflow-fuzz-"))


# deep nesting


def nested_list(depth: int, shape: str) -> str:
    """A list nested ``depth`` deep, well formed."""
    if shape == "items":  # [1, [1, [1, 2]]]
        return "[1, " * (depth - 1) + "[2]" + "]" * (depth - 1)
    if shape == "lines":  # one bracket a line, trailing commas
        return "[\n" * depth + "1" + ",\n]" * depth
    inner = "" if shape == "empty" else "1"
    return "[" * depth + inner + "]" * depth


depths = st.one_of(st.integers(1, DEEP), st.integers(DEEP + 1, 2000), st.sampled_from([DEEP + 1, 1000, 2000]))
where = st.sampled_from(["param", "stage argument", "output stage argument"])


def with_value(where: str, value: str) -> str:
    """The default recipe with ``value`` as a param's default or a stage's argument."""
    if where == "param":
        return TXT2IMG + f"param deep = {value}\n"
    if where == "stage argument":
        return TXT2IMG.replace("batch=1)", f"batch={value})")
    return TXT2IMG.replace('prefix="txt2img")', f"prefix={value})")


@FEW
@given(depths, st.sampled_from(["plain", "empty", "items", "lines"]), where)
@example(2000, "plain", "param")
def test_deeply_nested_lists_give_a_diagnostic(depth, shape, where):
    source = with_value(where, nested_list(depth, shape))
    diagnostics = check_everything(source)
    if depth > DEEP:
        # the same recipe with the value one deep: what is left is the depth's
        shallow = check_everything(with_value(where, nested_list(1, shape)))
        assert any(d.is_error for d in diagnostics), diagnostics
        assert sorted(d.code for d in diagnostics) != sorted(d.code for d in shallow), diagnostics


LIST_DEPTH_LIMIT = 32  # docs/language.md: "lists nest at most 32 deep (E107)"


def line_column(source: str, offset: int) -> tuple[int, int]:
    line = source.count("\n", 0, offset) + 1
    return line, offset - (source.rfind("\n", 0, offset) + 1) + 1


@FEW
@given(st.one_of(st.integers(1, 2000), st.integers(LIST_DEPTH_LIMIT - 2, LIST_DEPTH_LIMIT + 2)),
       st.sampled_from(["plain", "empty", "items", "lines"]), where, st.integers(1, 3))
@example(LIST_DEPTH_LIMIT + 1, "plain", "param", 1)
def test_too_deep_lists_give_one_e107_at_the_bracket(depth, shape, where, count):
    """Each statement with a list nested too deep gets exactly one E107, at
    the bracket that goes past the limit; a list at the limit gets none."""
    value = nested_list(depth, shape)
    source = with_value(where, value)
    starts = [source.index(value)]
    for i in range(1, count):  # more params with the same value
        source += f"param deep_{i} = {value}\n"
        starts.append(len(source) - len(value) - 1)
    diagnostics = check_everything(source)
    too_deep = [d for d in diagnostics if d.code == "E107"]
    if depth <= LIST_DEPTH_LIMIT:
        assert too_deep == [], too_deep
        return
    expected = []
    for start in starts:
        offset = start - 1
        for _ in range(LIST_DEPTH_LIMIT + 1):
            offset = source.index("[", offset + 1)
        expected.append(line_column(source, offset))
    assert sorted((d.span.line, d.span.column) for d in too_deep) == expected, too_deep


@FEW
@given(depths, st.sampled_from(["open", "wrong", "calls", "mixed"]), st.integers(0, 4000))
@example(2000, "open", 0)
def test_deep_broken_nesting_gives_only_diagnostics(depth, shape, cut):
    """Brackets left open, closed by the wrong kind, or stage calls given as
    values inside stage calls, thousands deep."""
    if shape == "open":
        value = "[" * depth + "1" + "]" * min(cut, depth - 1)
    elif shape == "wrong":
        value = "[" * depth + "1" + ")" * depth
    elif shape == "calls":
        value = "vae_decode(vae=ckpt.vae, latent=" * depth + "denoised" + ")" * depth
    else:
        value = "[(" * depth + "1" + ")]" * depth
    for place in ("param", "stage argument"):
        check_everything(with_value(place, value))
    check_everything(f"sdflow 1\n{value}\n")


# long strings


long_pieces = st.sampled_from(["a", "a red circle, ", "漢字", "🎨", "e\u0301", '\\"', "x" * 63 + " "])
long_kinds = st.sampled_from(["string", "long string", "unclosed string", "unclosed long string",
                              "name", "comment", "stage argument"])


def long_recipe(kind: str, body: str) -> str:
    line = {
        "string": f'param long = "{body}"',
        "long string": f'param long = """{body}\n{body}"""',
        "unclosed string": f'param long = "{body}',
        "unclosed long string": f'param long = """{body}',
        "name": f"param {'a' * len(body)} = 1",
        "comment": f"# {body}",
        "stage argument": f'save_image(image=image, prefix="{body}")',
    }[kind]
    return TXT2IMG + line + "\n"


@settings(FUZZ, max_examples=5)
@given(long_kinds, long_pieces, st.integers(0, 2**20))
@example("string", "a red circle, ", 2**20)
@example("unclosed long string", "漢字", 2**20)
def test_long_strings_give_only_diagnostics(kind, piece, size):
    body = (piece * (size // len(piece) + 1))[:size]
    if body.endswith("\\"):
        body = body[:-1]
    check_everything(long_recipe(kind, body))


# wide, invisible and control characters


SUSPICIOUS = ["\u00a0", "\u200b", "\ufeff", "\u2013", "\u201c", "\u201d"]
WIDE = ["漢", "字", "가", "ｱ", "\uff1d", "🎨", "👩\u200d👩\u200d👧", "🇫🇷", "\U0001d538"]
COMBINING = ["\u0301", "e\u0301", "\u0308\u0308\u0308", "\u20dd"]
CONTROL = [chr(c) for c in (*range(0x00, 0x0A), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0))] + [
    "\u2028", "\u2029", "\u202e"]
odd_characters = st.sampled_from(SUSPICIOUS + WIDE + COMBINING + CONTROL)


@FEW
@given(st.sampled_from(EXAMPLES), st.lists(st.tuples(st.floats(0, 1), odd_characters), min_size=1, max_size=5))
@example(EXAMPLES[0], [(0.0, "\ufeff")])
def test_odd_characters_anywhere_give_only_diagnostics(path, insertions):
    """Inside strings, names, comments and between tokens."""
    source = path.read_text(encoding="utf-8")
    for at, char in insertions:
        i = int(at * len(source))
        source = source[:i] + char + source[i:]
    check_everything(source)


printable_odd = st.lists(st.sampled_from(SUSPICIOUS + WIDE + COMBINING + list("ab ,")), min_size=1, max_size=20).map(
    "".join)


@FEW
@given(printable_odd, st.booleans())
def test_odd_characters_inside_a_prompt_are_no_error(text, triple):
    """A prompt is free text: CJK, emoji, smart quotes and invisible
    characters inside its quotes are not errors (a warning at most)."""
    quoted = f'"""{text}"""' if triple else f'"{text}"'
    source = TXT2IMG.replace('"a small red triangle at the left on a blue background"', quoted)
    assert source != TXT2IMG
    diagnostics = check_everything(source)
    assert not any(d.is_error for d in diagnostics), diagnostics


def test_a_byte_order_mark_is_accepted():
    for path in EXAMPLES:
        file = scratch() / "bom.sdflow"
        file.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        code, output = run_cli(["check", str(file)])
        assert code == 0 and "internal error" not in output, (path.name, output)


# invalid UTF-8


INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
                b"\xf0\x9f\x98", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xc3\x28"]


@st.composite
def invalid_utf8_files(draw) -> bytes:
    """An example with bytes that are not UTF-8 inserted, or random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = draw(st.sampled_from(EXAMPLES)).read_bytes()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.sampled_from(INVALID_UTF8)) + data[i:]
    return data


def run_on_bytes(data: bytes, command: list[str]) -> tuple[Path, int, str]:
    file = scratch() / "bytes.sdflow"
    file.write_bytes(data)
    code, output = run_cli([*command, str(file)])
    assert code in (0, 1, 2), (code, output)
    assert "Traceback" not in output and "internal error" not in output, output
    assert code == 0 or output.strip(), code
    return file, code, output


def first_bad_line(data: bytes) -> int | None:
    """The line of the first byte that is not UTF-8, None when all are."""
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError as err:
        before = data[: err.start].decode("utf-8")
        return before.replace("\r\n", "\n").replace("\r", "\n").count("\n") + 1


@FEW
@given(invalid_utf8_files(), st.sampled_from([["check"], ["fmt", "--check"]]))
def test_invalid_utf8_gives_only_diagnostics(data, command):
    _file, code, _output = run_on_bytes(data, command)
    if first_bad_line(data) is not None:
        assert code in (1, 2)


@FEW
@given(invalid_utf8_files())
@example(b"sdflow 1\nparam x = \xff\n")
@example(b"sdflow 1\rparam x = \xff\n")  # a lone CR ends a line, as parse() counts lines
def test_invalid_utf8_is_reported_at_its_line(data):
    line = first_bad_line(data)
    if line is None:
        return
    file, _code, output = run_on_bytes(data, ["check"])
    assert re.search(rf"^{re.escape(str(file))}:{line}:\d+: E\d{{3}} ", output, re.M), output
