"""Syntax tree -> canonical text, the layout ``sdflow fmt`` writes.

One layout for every recipe, chosen for diffs: a call stays on one line
while it fits in 88 columns; otherwise, or when it ends with a trailing
comma (the user's way to ask), each argument gets a line of its own and a
trailing comma, so that changing one argument changes one line.  Names are
not aligned (a longer name would re-indent its neighbours).  Comments stay
where they were, blank lines between statements are kept (at most one), and
one blank line follows the version header.  Formatting is idempotent, and
its output parses to the same tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sdflow import ast

WIDTH = 88
INDENT = "    "


@dataclass
class _Comments:
    """The comments that belong to one statement."""

    leading: list[ast.Comment] = field(default_factory=list)
    trailing: ast.Comment | None = None
    per_arg: dict[int, list[ast.Comment]] = field(default_factory=dict)
    arg_trailing: dict[int, ast.Comment] = field(default_factory=dict)
    closing: list[ast.Comment] = field(default_factory=list)

    @property
    def inside(self) -> bool:
        return bool(self.per_arg or self.arg_trailing or self.closing)


def format_recipe(recipe: ast.Recipe) -> str:
    """The canonical text of a recipe that parsed without errors."""
    statements = list(recipe.statements)
    owned, before, tail = _attach_comments(recipe, statements)
    out: list[str] = []
    previous_end = 0
    for index, statement in enumerate(statements):
        comments = owned[index]
        after_header = index > 0 and isinstance(statements[index - 1], ast.Header)
        for comment in before[index]:
            _blank_if(out, previous_end and (comment.span.line - previous_end > 1 or after_header))
            after_header = False
            out.append(comment.text.rstrip())
            previous_end = comment.span.end_line
        gap = statement.span.line - previous_end > 1
        _blank_if(out, previous_end and (gap or after_header))
        out.extend(_statement_lines(statement, comments))
        previous_end = statement.span.end_line
    after_header = bool(statements) and isinstance(statements[-1], ast.Header)
    for comment in tail:
        _blank_if(out, previous_end and (comment.span.line - previous_end > 1 or after_header))
        after_header = False
        out.append(comment.text.rstrip())
        previous_end = comment.span.end_line
    return "\n".join(out) + "\n" if out else ""


def _blank_if(out: list[str], condition) -> None:
    if condition and out and out[-1] != "":
        out.append("")


def _attach_comments(recipe, statements):
    """Give every comment an owner: the statement before which it stands on
    a line of its own, the statement or argument it trails, or the end."""
    owned = [_Comments() for _ in statements]
    before: list[list[ast.Comment]] = [[] for _ in statements]
    tail: list[ast.Comment] = []
    index = 0
    for comment in recipe.comments:
        line = comment.span.line
        while index < len(statements) and statements[index].span.end_line < line:
            index += 1
        if index < len(statements) and statements[index].span.line <= line:
            _attach_inside(statements[index], owned[index], comment)
        elif index < len(statements):
            before[index].append(comment)
        else:
            tail.append(comment)
    return owned, before, tail


def _attach_inside(statement: ast.Statement, owned: _Comments, comment: ast.Comment) -> None:
    line = comment.span.line
    if line == statement.span.end_line and comment.span.column >= statement.span.end_column:
        owned.trailing = comment
        return
    args = statement.args if isinstance(statement, ast.Stage) else ()
    for i, arg in enumerate(args):
        if line < arg.span.line:
            owned.per_arg.setdefault(i, []).append(comment)
            return
        if line <= arg.span.end_line:
            if line == arg.span.end_line and comment.span.column >= arg.span.end_column:
                if i + 1 < len(args) and args[i + 1].span.line == line:
                    continue  # it trails a later argument on the same line
                owned.arg_trailing[i] = comment
            else:  # inside a value over several lines: keep it before the argument
                owned.per_arg.setdefault(i, []).append(comment)
            return
    owned.closing.append(comment)


def _statement_lines(statement: ast.Statement, comments: _Comments) -> list[str]:
    trailing = f"  {comments.trailing.text.rstrip()}" if comments.trailing else ""
    if isinstance(statement, ast.Header):
        return [f"{statement.keyword} {statement.version}{trailing}"]
    if isinstance(statement, ast.Require):
        text = (statement.specifier or "").replace("\\", "\\\\").replace('"', '\\"')
        version = f' "{text}"' if statement.specifier is not None else ""
        return [f"require {statement.plugin}{version}{trailing}"]
    if isinstance(statement, ast.Param):
        # A comment inside a list over several lines is kept above the param.
        above = [comment.text.rstrip() for comment in comments.closing]
        return above + _with_trailing(f"param {statement.name} = {_value(statement.default, 0)}", trailing)
    if isinstance(statement, ast.Sweep):
        above = [comment.text.rstrip() for comment in comments.closing]
        entries = ", ".join(f"{entry.name} = {sweep_values(entry.values)}" for entry in statement.entries)
        return above + _with_trailing(f"sweep {entries}", trailing)
    head = f"{statement.name} = {statement.stage_type}(" if statement.name else f"{statement.stage_type}("
    args = [f"{a.name}={_value(a.value, 1)}" for a in statement.args]
    one_line = head + ", ".join(args) + ")"
    fits = len(one_line) <= WIDTH and "\n" not in one_line
    if fits and not statement.trailing_comma and not comments.inside:
        return _with_trailing(one_line, trailing)
    if not args and not comments.closing:
        return _with_trailing(one_line, trailing)
    lines = [head]
    for i, (arg, text) in enumerate(zip(statement.args, args)):
        for comment in comments.per_arg.get(i, []):
            lines.append(INDENT + comment.text.rstrip())
        after = comments.arg_trailing.get(i)
        lines.append(INDENT + text + "," + (f"  {after.text.rstrip()}" if after else ""))
    for comment in comments.closing:
        lines.append(INDENT + comment.text.rstrip())
    lines.append(")" + trailing)
    return lines


def _with_trailing(text: str, trailing: str) -> list[str]:
    return (text + trailing).split("\n")


def _value(value: ast.Value, depth: int) -> str:
    if isinstance(value, ast.Literal):
        return value.text.lstrip("+")
    if isinstance(value, ast.Ref):
        return str(value)
    items = [_value(item, depth + 1) for item in value.items]
    flat = "[" + ", ".join(items) + "]"
    if not items or not (value.trailing_comma or any("\n" in item for item in items)):
        return flat
    pad = INDENT * (depth + 1)
    return "[\n" + "".join(f"{pad}{item},\n" for item in items) + INDENT * depth + "]"


def sweep_values(values: ast.Range | ast.ListValue) -> str:
    """A sweep's values as ``sdflow fmt`` writes them: ``1..8``, ``8..0..2``, ``[a, b]``."""
    if isinstance(values, ast.Range):
        step = f"..{values.step}" if values.step is not None else ""
        return f"{values.start}..{values.end}{step}"
    return _value(values, 0)


def literal(value) -> str:
    """A recipe's literal for a param's value (a number, boolean, string or
    list of them), as the parser reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    raise TypeError(f"no recipe literal for {type(value).__name__}")


def with_param_defaults(text: str, values: dict, file: str = "<recipe>", without_sweeps: bool = False) -> str:
    """``text`` with each param's default replaced by its value in ``values``
    where the two differ; everything else (comments, layout) as it was.  A
    recipe that does not parse, or a value with no literal, is left alone.

    ``without_sweeps``: also remove the ``sweep`` lines (and a blank line
    they leave doubled), so the text is the one run those values made."""
    from sdflow.parse import parse

    recipe, errors = parse(text, file)
    if errors:
        return text
    starts = [0]
    for line in text.split("\n"):  # lines as the parser counts them (not str.splitlines's)
        starts.append(min(starts[-1] + len(line) + 1, len(text)))
    edits = _sweep_removals(recipe, text, starts) if without_sweeps else []
    for statement in recipe.statements:
        if not isinstance(statement, ast.Param) or statement.name not in values:
            continue
        default = statement.default
        new = values[statement.name]
        if isinstance(default, ast.Literal) and type(default.value) is type(new) and default.value == new:
            continue
        try:
            written = literal(new)
        except TypeError:
            continue
        span = default.span
        edits.append((starts[span.line - 1] + span.column - 1, starts[span.end_line - 1] + span.end_column - 1,
                       written))
    for begin, end, written in sorted(edits, reverse=True):
        text = text[:begin] + written + text[end:]
    return text


def _sweep_removals(recipe: ast.Recipe, text: str, starts: list[int]) -> list[tuple[int, int, str]]:
    """The edits that remove the lines of every ``sweep`` statement.  Sweep
    lines with only blank lines between them go as one run; where the run
    stood between two blank lines, one of those goes too."""
    lines = text.split("\n")
    blank = [line.strip() == "" for line in lines]
    runs: list[list[int]] = []  # [first line, last line], 1-based
    for statement in recipe.statements:
        if not isinstance(statement, ast.Sweep):
            continue
        first, last = statement.span.line, statement.span.end_line
        if runs and all(blank[runs[-1][1] : first - 1]):
            runs[-1][1] = last
        else:
            runs.append([first, last])
    edits = []
    for first, last in runs:
        blank_before = first >= 2 and blank[first - 2]
        blank_after = last >= len(lines) or blank[last]
        if blank_before and blank_after:
            first -= 1
        edits.append((starts[first - 1], starts[last], ""))
    return edits
