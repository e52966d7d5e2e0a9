"""Text -> :class:`sdflow.ast.Recipe`, with every syntax error as a diagnostic.

The grammar (``grammar/sdflow.lark``) is loaded once, as an LALR parser with
a basic lexer, so that the whole text can be lexed up front.  The token stream
is then cut into statements at line breaks outside brackets, and fed to the
parser statement by statement: a statement that fails to parse is reported
and skipped, and parsing goes on with the next one, so that one run shows
every syntax error of a recipe.
"""

from __future__ import annotations

import gc
import re
import textwrap
import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedInput, UnexpectedToken, VisitError

from sdflow import ast
from sdflow.diagnostics import Diagnostic
from sdflow.text import ascii_intent, describe_char, look_alike_help

_OPEN = {"LPAR": "RPAR", "LSQB": "RSQB"}
_CLOSE = {"RPAR", "RSQB"}
_BAD = "_BAD"

_TOKEN_WORDS = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "LONG_STRING": "a string",
    "TRUE": "'true'",
    "FALSE": "'false'",
    "PARAM": "'param'",
    "SWEEP": "'sweep'",
    "RANGE": "a range",
    "REQUIRE": "'require'",
    "EQUAL": "'='",
    "COMMA": "','",
    "DOT": "'.'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "_NL": "end of line",
    "$END": "end of file",
}
_VALUE_TOKENS = {"INT", "FLOAT", "STRING", "LONG_STRING", "TRUE", "FALSE", "LSQB"}


def grammar_path() -> Path:
    """The grammar file: inside the installed package, or in the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "grammar" / "sdflow.lark", here.parent / "grammar" / "sdflow.lark"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("sdflow.lark not found beside the sdflow package")


class _Builder(Transformer):
    """Builds AST nodes as the LALR parser reduces rules.

    Statements are appended to ``statements`` as they are reduced, so that the
    statements before a syntax error survive it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.file = "<recipe>"
        self.statements: list[ast.Statement] = []
        self.comments: list[ast.Comment] = []

    def span(self, first: Token, last: Token | None = None) -> ast.Span:
        last = last or first
        return ast.Span(self.file, first.line, first.column, last.end_line, last.end_column)

    # statements ---------------------------------------------------------
    def recipe(self, _children):
        return None

    def header(self, children):
        keyword, version = children
        span = self.span(keyword, version)
        node = ast.Header(
            str(keyword), int(version), span, self.span(keyword), self.span(version)
        )
        self.statements.append(node)
        return node

    def require(self, children):
        keyword, plugin, *rest = [c for c in children if c is not None]
        spec = rest[0] if rest else None
        node = ast.Require(str(plugin), unescape(spec[1:-1]) if spec is not None else None,
                           self.span(keyword, spec or plugin), self.span(plugin),
                           self.span(spec) if spec is not None else None)
        self.statements.append(node)
        return node

    def param(self, children):
        keyword, name, _eq, value = children
        node = ast.Param(str(name), value, self.span(keyword).to(value.span), self.span(name))
        self.statements.append(node)
        return node

    def sweep(self, children):
        keyword = children[0]
        entries = tuple(c for c in children if isinstance(c, ast.SweepValues))
        node = ast.Sweep(entries, self.span(keyword).to(entries[-1].span), self.span(keyword))
        self.statements.append(node)
        return node

    def sweep_values(self, children):
        name, _eq, values = children
        return ast.SweepValues(str(name), values, self.span(name).to(values.span), self.span(name))

    def range(self, children):
        (tok,) = children
        start, end, *step = (int(part) for part in str(tok).split(".."))
        return ast.Range(start, end, step[0] if step else None, self.span(tok))

    def stage(self, children):
        children = [c for c in children if c is not None]
        named = isinstance(children[1], Token) and children[1].type == "EQUAL"
        type_token = children[2] if named else children[0]
        type_end = type_token
        if (dot := children.index(type_token) + 1) < len(children) and getattr(children[dot], "type", "") == "DOT":
            type_end = children[dot + 1]  # a full name, `plugin.stage`
        close = children[-1]
        args = tuple(c for c in children if isinstance(c, ast.Arg))
        before_close = children[-2]
        node = ast.Stage(
            name=str(children[0]) if named else None,
            stage_type=str(type_token) if type_end is type_token else f"{type_token}.{type_end}",
            args=args,
            span=self.span(children[0], close),
            name_span=self.span(children[0]) if named else None,
            type_span=self.span(type_token, type_end),
            trailing_comma=isinstance(before_close, Token) and before_close.type == "COMMA",
        )
        self.statements.append(node)
        return node

    def arg(self, children):
        name, _eq, value = children
        return ast.Arg(str(name), value, self.span(name).to(value.span), self.span(name))

    # values ---------------------------------------------------------------
    def int(self, children):
        (tok,) = children
        return ast.Literal(int(tok), str(tok), self.span(tok))

    def float(self, children):
        (tok,) = children
        return ast.Literal(float(tok), str(tok), self.span(tok))

    def string(self, children):
        (tok,) = children
        return ast.Literal(unescape(tok[1:-1]), str(tok), self.span(tok))

    def long_string(self, children):
        (tok,) = children
        return ast.Literal(long_string_value(tok), str(tok), self.span(tok))

    def true(self, children):
        return ast.Literal(True, "true", self.span(children[0]))

    def false(self, children):
        return ast.Literal(False, "false", self.span(children[0]))

    def list(self, children):
        children = [c for c in children if c is not None]
        items = tuple(c for c in children if not isinstance(c, Token))
        before_close = children[-2]
        trailing = isinstance(before_close, Token) and before_close.type == "COMMA"
        return ast.ListValue(items, self.span(children[0], children[-1]), trailing)

    def ref(self, children):
        name = children[0]
        port = children[2] if len(children) == 3 else None
        return ast.Ref(
            str(name),
            str(port) if port is not None else None,
            self.span(name, port),
            self.span(name),
            self.span(port) if port is not None else None,
        )


_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def unescape(body: str) -> str:
    """The value of a one-line string's body: ``\\n``, ``\\t``, ``\\"``, ``\\\\``."""
    if "\\" not in body:
        return body
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), body)


def long_string_value(raw: str) -> str:
    """The value of a triple-quoted string.

    The text between the quotes, less the line break right after the opening
    quotes and the blank line before the closing ones, and less the
    indentation its lines share, so a prompt can be indented with its recipe.
    """
    body = raw[3:-3]
    if body.startswith("\n"):
        body = body[1:]
    body = textwrap.dedent(body)
    if body.endswith("\n"):
        body = body[:-1]
    return body


class _Parser:
    """The loaded grammar, its lexer, and the state of one parse (guarded by
    a lock)."""

    def __init__(self) -> None:
        self.builder = _Builder()
        self.lock = threading.Lock()
        self.lark = Lark(
            grammar_path().read_text(encoding="utf-8"),
            parser="lalr",
            lexer="basic",
            start="recipe",
            transformer=self.builder,
            maybe_placeholders=True,
            cache=True,
        )
        self._lexer_from_grammar()

    def _lexer_from_grammar(self) -> None:
        """One regular expression of the grammar's terminals, in the order
        Lark's basic lexer tries them, and a last branch for any other
        character.

        Lark's own lexer stops at a bad character; recovering from it there
        means lexing anew from that point, and its per-token bookkeeping was
        half of the time of checking a large recipe.  Built from the same
        terminals, this one reads the same tokens in about a third of the
        time and never stops.
        """
        terminals = list(self.lark.terminals)
        patterns = {t.name: t.pattern.to_regexp() for t in terminals}
        self.keywords: dict[str, str] = {}  # `param`, `true`: NAMEs that are keywords
        shadowed = set()
        for t in terminals:
            if t.pattern.type == "str" and re.fullmatch(patterns["NAME"], t.pattern.value):
                self.keywords[t.pattern.value] = t.name
                shadowed.add(t.name)
        terminals = [t for t in terminals if t.name not in shadowed]
        terminals.sort(key=lambda t: (-t.priority, -t.pattern.max_width, -len(t.pattern.value), t.name))
        branches = [f"(?P<{t.name}>{patterns[t.name]})" for t in terminals]
        self.scan = re.compile("|".join([*branches, f"(?P<{_BAD}>{_BAD_RUN}|[\\s\\S])"]))
        self.skip = frozenset(self.lark.lexer_conf.ignore)

    def comment(self, tok: Token) -> None:
        self.builder.comments.append(ast.Comment(str(tok), self.builder.span(tok)))


@lru_cache(maxsize=1)
def _parser() -> _Parser:
    return _Parser()


@contextmanager
def paused_gc():
    """Hold the cyclic garbage collector while a recipe is parsed and checked.

    Parsing makes a few hundred thousand small objects and no cycles; the
    collector's full passes over them took a third of the time of a
    10,000-stage check.  Reference counting still frees everything.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse(source: str, file: str = "<recipe>") -> tuple[ast.Recipe, list[Diagnostic]]:
    """Parse a recipe's text: its syntax tree and its syntax errors.

    The tree holds every statement that parsed; ``broken_names`` holds the
    names that the statements which did not would have defined.
    """
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    if source.startswith("\ufeff"):  # a byte-order mark, as some editors write
        source = source[1:]
    parser = _parser()
    with parser.lock, paused_gc():
        builder = parser.builder
        builder.file, builder.statements, builder.comments = file, [], []
        diagnostics: list[Diagnostic] = []
        broken: set[str] = set()
        try:
            _parse_statements(parser, builder, source, diagnostics, broken)
        except VisitError as err:  # an AST constructor failed: a bug, shown plainly
            raise err.orig_exc from None
        recipe = ast.Recipe(
            file, source, tuple(builder.statements), tuple(builder.comments), frozenset(broken)
        )
    return recipe, diagnostics


def _parse_statements(parser, builder, source, diagnostics, broken) -> None:
    lark = parser.lark
    interactive = None
    last = None
    too_deep: list[Token] = []
    for chunk, unclosed in _statements(_lex(parser, source, builder, diagnostics), too_deep):
        last = chunk[-1]
        for tok in too_deep:
            diagnostics.append(Diagnostic(
                "E107", f"lists nested more than {MAX_DEPTH} deep", builder.span(tok),
                "a value this deep is not something a stage takes; flatten it"))
        too_deep.clear()
        if unclosed is not None:
            closer = "')'" if unclosed.type == "LPAR" else "']'"
            diagnostics.append(
                Diagnostic(
                    "E103",
                    f"'{unclosed}' was never closed",
                    builder.span(unclosed),
                    f"add {closer} to close it",
                )
            )
        if unclosed is not None or any(t.type == _BAD for t in chunk):
            _note_broken(chunk, broken)
            interactive = None
            continue
        mark = len(builder.statements)
        interactive = interactive or lark.parse_interactive(start="recipe")
        try:
            for i, tok in enumerate(chunk):
                interactive.feed_token(tok)
        except UnexpectedToken as err:
            del builder.statements[mark:]
            expected = _accepted(interactive, err)
            diagnostics.append(_syntax_error(err, expected, chunk, i, builder))
            _note_broken(chunk, broken)
            interactive = None
    if interactive is not None:
        interactive.feed_eof(last)


def _lex(parser: _Parser, source: str, builder: _Builder, diagnostics: list) -> Iterator[Token]:
    """All tokens of the source, a bad character as a ``_BAD`` token (and a
    diagnostic, one a line), after which lexing goes on.

    Recovery keeps one mistake one diagnostic: after a quote the language
    does not use (``'``, typographic quotes) lexing resumes after its closing
    quote; a look-alike of a bracket also counts as that bracket, so the
    statement around it still ends where it should; an unterminated string
    takes the rest of its line, and an unterminated triple-quoted one the
    rest of the file (as it would if it were closed at the end).
    """
    match, keywords, skip = parser.scan.match, parser.keywords, parser.skip
    pos, line, line_start = 0, 1, 0
    reported_line = 0
    size = len(source)
    while pos < size:
        found = match(source, pos)
        kind, end = found.lastgroup, found.end()
        column = pos - line_start + 1
        if kind == _BAD:
            char = source[pos]
            if line != reported_line or char == '"':
                diagnostics.append(_lexer_error(pos, line, column, source, builder))
                reported_line = line
            yield _token(_BAD, "", pos, line, column, line, column + 1, pos + 1)
            if char == '"':
                if source.startswith('"""', pos - 2):
                    return  # the rest of the file is inside the string
                end = source.find("\n", pos)
            elif char in _QUOTES:
                end = _closing_quote(source, pos)
            else:
                intent = ascii_intent(char)
                if intent and intent in _BRACKETS:
                    yield _token(_BRACKETS[intent], intent, pos, line, column, line, column + 1, pos + 1)
            if end < 0:
                return
            pos = end
            continue
        value = found.group()
        if kind in skip:
            if kind == "COMMENT":
                parser.comment(_token(kind, value, pos, line, column, line, column + len(value), end))
            pos = end
            continue
        if kind == "NAME":
            kind = keywords.get(value, kind)
        breaks = value.count("\n") if kind in _MULTILINE else 0
        if breaks:
            end_line, line_start_after = line + breaks, pos + value.rfind("\n") + 1
            tok = _token(kind, value, pos, line, column, end_line, end - line_start_after + 1, end)
            line, line_start = end_line, line_start_after
        else:
            tok = _token(kind, value, pos, line, column, line, column + len(value), end)
        if kind in ("INT", "FLOAT", "RANGE") and len(value) > _MAX_DIGITS:
            diagnostics.append(Diagnostic(
                "E109", f"a number of {len(value)} characters", builder.span(tok),
                f"numbers have at most {_MAX_DIGITS} digits; a long text belongs in quotes"))
            tok = _token(_BAD, "", pos, line, column, line, column + 1, pos + 1)
        yield tok
        pos = end


_MULTILINE = {"_NL", "LONG_STRING"}
_new_str = str.__new__


def _token(kind: str, value: str, pos: int, line: int, column: int, end_line: int, end_column: int,
           end: int) -> Token:
    """A Lark token, made in half the time of ``Token(...)`` (whose keyword
    handling is most of the cost of lexing a recipe of short tokens): the
    same object, its documented attributes set directly."""
    tok = _new_str(Token, value)
    tok.type, tok.value, tok.start_pos, tok.end_pos = kind, value, pos, end
    tok.line, tok.column, tok.end_line, tok.end_column = line, column, end_line, end_column
    return tok
_BRACKETS = {"(": "LPAR", ")": "RPAR", "[": "LSQB", "]": "RSQB"}
_QUOTES = "'\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u00ab\u00bb\uff02"
_QUOTE_OR_END = re.compile(f"[{_QUOTES}\"\n]")
# A run of characters that can start no token (and are neither quotes nor a
# bracket's look-alike) is one bad token: a line of them costs one token, not
# one per character.
_BAD_RUN = "[^A-Za-z0-9_ \t\n\r\f\"'#=,.()\\[\\]+\\-\u2018-\u201f\u00ab\u00bb\uff02\uff08\uff09\uff3b\uff3d]+"
_MAX_DIGITS = 100
MAX_DEPTH = 32
"""How deep lists may nest in a value (E107 past that)."""


def _closing_quote(source: str, pos: int) -> int:
    """Where lexing resumes after a string in quotes the language does not
    use: after the next such quote on the same line, or at the line's end
    (looking no further than that, so many quotes on a line cost no more
    than the line)."""
    found = _QUOTE_OR_END.search(source, pos + 1)
    if found is None:
        return len(source)
    return found.end() if found.group() != "\n" else found.start()


def _statements(tokens: Iterator[Token], too_deep: list[Token]) -> Iterator[tuple[list[Token], Token | None]]:
    """Cut the token stream into statements, each ending with its ``_NL``.

    Line breaks inside brackets are dropped.  A bracket left open is reported
    where the next statement visibly starts (a line that begins with
    ``name = stage(`` or ``param``), rather than at the end of the file; so is
    a bracket closed by the wrong kind.  A statement with a bad character
    still ends where its brackets close.  A bracket that opens more than
    ``MAX_DEPTH`` deep spoils its statement and is added to ``too_deep``.
    Yields ``(tokens, unclosed_or_None)``.
    """
    chunk: list[Token] = []
    stack: list[Token] = []
    unclosed: Token | None = None
    reopen: Token | None = None  # an unclosed bracket that a later one may close yet
    line_start = True
    bad = False
    pending = list(tokens)
    for i, tok in enumerate(pending):
        if tok.type == "_NL":
            if not stack and chunk:
                chunk.append(tok)
                yield chunk, (unclosed if not bad else None)
                chunk, stack, unclosed, reopen, bad = [], [], None, None, False
            line_start = True
            continue
        if line_start and stack and _starts_statement(pending, i):
            yield chunk, (unclosed or stack[0]) if not bad else None
            chunk, stack, unclosed, reopen, bad = [], [], None, None, False
        line_start = False
        if tok.type == _BAD:
            bad = True
        elif tok.type in _OPEN:
            stack.append(tok)
            # Lists nest in a param, or in a call's '(': that one does not count.
            if len(stack) - (stack[0].type == "LPAR") == MAX_DEPTH + 1 and not bad:
                bad = True
                too_deep.append(tok)
                chunk.append(Token(_BAD, "", tok.start_pos, tok.line, tok.column))
        elif tok.type in _CLOSE and stack:
            opener = stack.pop()
            if _OPEN[opener.type] != tok.type and unclosed is None:
                unclosed = opener
                if stack and _OPEN[stack[-1].type] == tok.type:
                    stack.pop()
                elif not stack:
                    reopen = opener
        elif tok.type in _CLOSE and reopen is not None and _OPEN[reopen.type] == tok.type:
            # `f(a=1])`: the ')' closes the '(' after all, so the ']' is a
            # stray, left for the parser to report where it stands.
            unclosed = reopen = None
        chunk.append(tok)
    if chunk:
        if stack or unclosed:
            yield chunk, (unclosed or stack[0]) if not bad else None
        else:
            chunk.append(Token.new_borrow_pos("_NL", "\n", chunk[-1]))
            yield chunk, None


def _starts_statement(tokens: list[Token], i: int) -> bool:
    kinds = [t.type for t in tokens[i : i + 6]]
    if kinds[:1] in (["PARAM"], ["REQUIRE"], ["SWEEP"]):
        return True
    named = kinds[:2] == ["NAME", "EQUAL"]
    call = kinds[2:] if named else kinds
    if not (call[:2] == ["NAME", "LPAR"] or call[:4] == ["NAME", "DOT", "NAME", "LPAR"]):
        return False
    if not named:  # `save_image(...)`: a statement only where it starts a line
        return tokens[i].column == 1
    # An indented `latent=empty_latent(...)` after ',' or '(' is an argument
    # (a stage call given as a value), not the next statement.
    j = i - 1
    while j >= 0 and tokens[j].type == "_NL":
        j -= 1
    return tokens[i].column == 1 or j < 0 or tokens[j].type not in ("COMMA", "LPAR")


def _note_broken(chunk: list[Token], broken: set[str]) -> None:
    if len(chunk) > 1 and chunk[0].type == "NAME" and chunk[1].type in ("EQUAL", "NAME", "DOT"):
        broken.add(str(chunk[0]))  # `x = ...`, or `x stage(...)` and `x.y = ...` meaning it
    elif len(chunk) > 1 and chunk[0].type == "PARAM" and chunk[1].type == "NAME":
        broken.add(str(chunk[1]))


def _describe(tok_type: str) -> str:
    return _TOKEN_WORDS.get(tok_type, tok_type.lower())


def _describe_token(tok: Token) -> str:
    if tok.type in ("_NL", "$END"):
        return _describe(tok.type)
    return f"'{tok}'"


def _accepted(interactive, err: UnexpectedToken) -> set[str]:
    """The terminals the parser would really take here.

    LALR merges states, so the error's own ``expected`` can name terminals
    that could never follow; asking the parser state is exact.
    """
    try:
        accepted = set(interactive.accepts())
    except Exception:  # pragma: no cover - fall back to Lark's own set
        accepted = set()
    return accepted or set(err.expected)


def _syntax_error(
    err: UnexpectedToken, expected: set[str], chunk: list[Token], i: int, builder: _Builder
) -> Diagnostic:
    tok = err.token
    prev = chunk[i - 1] if i > 0 else None
    span = builder.span(tok)
    if tok.type == "_NL" and prev is not None:
        # Point just past the last token, where the missing piece belongs.
        span = ast.Span(builder.file, prev.end_line, prev.end_column, prev.end_line, prev.end_column + 1)
    found = _describe_token(tok)
    words = sorted({_describe(t) for t in expected})
    message = f"unexpected {found}; expected {_join(words)}"
    return Diagnostic(_syntax_code(tok, expected, prev), message, span, _syntax_help(tok, expected, prev, chunk, i))


def _syntax_code(tok: Token, expected: set[str], prev: Token | None) -> str:
    if "STRING" in expected or (tok.type == "LPAR" and prev is not None and prev.type == "NAME"):
        return "E104"  # a value is missing, or is not a value
    if "COMMA" in expected and tok.type not in ("_NL", "$END", *_CLOSE):
        return "E105"  # two items without a comma between them
    return "E101"


def _syntax_help(tok, expected, prev, chunk, i) -> str | None:
    if chunk[0].type == "SWEEP":
        return _sweep_help(tok, expected, prev, chunk[i + 1] if i + 1 < len(chunk) else None)
    if tok.type == "RANGE":
        return f"a range is a sweep's values, not a value: write 'sweep NAME = {tok}' on a line of its own"
    inside = _inside_call(chunk, i)
    if not inside:
        return _statement_help(tok, expected, prev, chunk)
    if tok.type == "LPAR" and prev is not None and prev.type == "NAME":
        return "a stage call cannot be a value: give it a name on a line of its own, then use the name"
    if "STRING" in expected:
        return "a value is a number, a string in double quotes, true or false, a list, or a name"
    if "EQUAL" in expected:
        return "stage arguments are named: write name=value"
    if "NAME" in expected and "RPAR" in expected:
        return "stage arguments are named: write name=value"
    if tok.type == "DOT":
        return "a reference names a result and at most one port, as in ckpt.clip"
    if tok.type in _CLOSE:
        return f"there is no opening bracket for this '{tok}' to close"
    if "COMMA" in expected and tok.type not in ("_NL", "$END"):
        return "separate items with ','"
    return None


def _statement_help(tok, expected, prev, chunk) -> str | None:
    first = chunk[0]
    if first.type == "PARAM":
        if "STRING" in expected:
            return "a param's default is a number, a string, true or false, or a list"
        return "write: param name = value"
    if prev is not None and prev.type == "EQUAL" and tok.type in _VALUE_TOKENS:
        if "STRING" not in expected and first.type == "NAME":
            value = "[...]" if tok.type == "LSQB" else tok
            return f"a result comes from a stage call; to name a value, write: param {first} = {value}"
    if tok.type == "DOT":
        return "a stage type is a name, as in empty_latent, or a plugin's and a name, as in diffusion.empty_latent"
    if tok.type in _CLOSE:
        return f"there is no opening bracket for this '{tok}' to close"
    if first.type == "REQUIRE":
        return 'write: require plugin_name ">=1.0" (the version range may be left out)'
    return "a statement is 'name = stage(...)', 'stage(...)', 'param name = value' or 'sdflow 1'"


def _sweep_help(tok, expected, prev, after) -> str:
    """Help for a sweep statement that does not parse (``after``: the token after the bad one)."""
    ranged = (tok.type == "DOT" or (after is not None and after.type == "DOT")
              or (tok.type == "FLOAT" and prev is not None and prev.type in ("FLOAT", "INT", "DOT")))
    if ranged:
        return "a range is whole numbers, written A..B or A..B..STEP without spaces; " \
               "other values go in a list: [0.5, 1.0, 1.5]"
    if tok.type in ("INT", "FLOAT", "STRING", "LONG_STRING", "TRUE", "FALSE") and prev is not None \
            and prev.type == "EQUAL":
        one = str(tok) if len(tok) <= 40 and "\n" not in tok else "..."
        return f"a sweep's values are a range (1..8) or a list; one value is a list of one: [{one}]"
    if tok.type == "NAME" and prev is not None and prev.type == "EQUAL":
        return "a sweep's values are written out: a range (1..8) or a list of values"
    if "COMMA" in expected and tok.type == "NAME":
        return "separate the names of one sweep line with ','"
    return "write: sweep name = 1..8, or sweep name = [a, b, c]; names on one line move together: " \
           "sweep a = 1..3, b = [x, y, z]"


def _inside_call(chunk: list[Token], i: int) -> bool:
    depth = 0
    for tok in chunk[:i]:
        if tok.type in _OPEN:
            depth += 1
        elif tok.type in _CLOSE:
            depth -= 1
    return depth > 0


def _lexer_error(pos: int, line: int, column: int, source: str, builder: _Builder) -> Diagnostic:
    char = source[pos]
    line_start = pos - column + 1
    line_end = source.find("\n", pos)
    line_end = len(source) if line_end < 0 else line_end
    if char == '"':
        # The lexer reads an open '"""' as an empty '""' and a lone '"'.
        opener = pos - 2 if source[max(pos - 2, 0) : pos + 1] == '"""' else pos
        column = opener - line_start + 1
        span = ast.Span(builder.file, line, column, line, line_end - line_start + 1)
        if source.startswith('"""', opener):
            return Diagnostic("E102", "unterminated triple-quoted string", span, "close it with '\"\"\"'")
        return Diagnostic(
            "E102",
            "unterminated string",
            span,
            "close it with '\"' on the same line, or use \"\"\" for text over several lines",
        )
    column = pos - line_start + 1
    span = ast.Span(builder.file, line, column, line, column + 1)
    if char in _QUOTES:
        end = _closing_quote(source, pos)
        if end > pos + 1 and source[end - 1] in _QUOTES + '"':
            span = ast.Span(builder.file, line, column, line, column + end - pos)
            quoted = source[pos + 1 : end - 1]
            what = "single quotes" if char == "'" else f"typographic quotes ({describe_char(char)})"
            return Diagnostic("E106", f"a string in {what}", span,
                              f'strings are written in plain double quotes: "{quoted}"'
                              if len(quoted) < 60 and '"' not in quoted and "\\" not in quoted
                              else 'strings are written in plain double quotes: "text"')
        shown = "\"'\"" if char == "'" else describe_char(char)
        return Diagnostic("E106", f"unexpected character {shown}", span,
                          'strings are written in plain double quotes: "text"')
    return Diagnostic("E106", f"unexpected character {describe_char(char)}", span, _char_help(char))


def _char_help(char: str) -> str | None:
    look_alike = look_alike_help(char)
    if look_alike is not None:
        return look_alike
    if char.isalpha() or char.isdigit():
        return "names are ASCII letters, digits and '_'; other text belongs in a string"
    if char == ":":
        return "arguments are written name=value, not name: value"
    if char in "{}":
        return "lists are written in square brackets: [1, 2]"
    if char in "+-*/":
        return "sdflow has no arithmetic; write the value itself"
    return None


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


__all__ = ["parse", "grammar_path", "UnexpectedInput"]
