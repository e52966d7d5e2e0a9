"""``sdflow diff``: what differs between two recipes or two images, by meaning.

Two sides are compared as values, never as text: a reformatted call, a
comment, ``7.50`` against ``7.5`` or ``positive`` against
``positive.conditioning`` is no difference.  When both recipes check, each
stage is compared by its validated parameters, so an argument left at its
default equals one written out with that value; when one does not check (an
unknown stage type, say), both are compared as written, with the defaults of
the stage types the registry knows.  An image written by sdflow is its
recipe with the params it recorded, plus the models, versions and run
conditions it recorded.  No torch: this runs where ``sdflow check`` runs.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from typing import Any, Iterable, TextIO

from sdflow import ast
from sdflow.diagnostics import Diagnostic, print_diagnostics
from sdflow.format import literal, sweep_values
from sdflow.graph import StageGraph, UsageError, check, resolve_params, stage_keys
from sdflow.metadata import recorded, recorded_recipe
from sdflow.registry import Registry
from sdflow.text import visible

EXIT_SAME, EXIT_DIFFERENT, EXIT_TROUBLE = 0, 1, 2
EMPTY = "/dev/null"
"""The side git names for a file that does not exist on it: an empty recipe."""
RECORDED = {"models": "model", "versions": "version", "stages": "stage_version", "run": "run"}
"""The fields of an image compared besides its recipe and params, and the
kind of difference each gives."""
DERIVED_RUN = frozenset({"seeds"})
"""What a run records that follows from the recipe and its params (each
image's seed, from the sampler's seed and the batch): the recipe's
difference already says it, so it is not said again."""


@dataclass(frozen=True)
class Difference:
    """One difference: ``before`` is None where the thing was added, ``after``
    None where it was removed (an argument left unset counts as absent).
    ``kind`` is one of param, sweep, sweep_order, require, stage (added or
    removed), stage_type, argument, model, version, run: the order they are
    printed in."""

    kind: str
    path: str
    before: Any
    after: Any


@dataclass(frozen=True)
class Reference:
    """A reference in a value (``ckpt.model``, a param's name), told apart
    from a string that reads the same."""

    text: str


@dataclass(frozen=True)
class Side:
    """One side of a diff: a recipe, its graph (None where it does not
    check) and, for an image, what it recorded besides the recipe: each
    field it has (model, version, stage_version, run) as a mapping.  Only
    fields both sides have are compared; an empty side has them all, empty.
    """

    label: str
    recipe: ast.Recipe
    graph: StageGraph | None
    record: dict[str, dict] | None = None


class BrokenRecipe(Exception):
    """A recipe that does not parse: its diagnostics, and the text they point into."""

    def __init__(self, diagnostics: list[Diagnostic], sources: dict[str, str]) -> None:
        super().__init__(f"{len(diagnostics)} diagnostics")
        self.diagnostics = diagnostics
        self.sources = sources


# reading a side ------------------------------------------------------------------


def load_side(path: str, registry: Registry, label: str | None = None) -> Side:
    """The recipe or sdflow image at ``path`` (``/dev/null``: an empty recipe).

    Raises :class:`UsageError` for a file that is neither, and
    :class:`BrokenRecipe` for a recipe that does not parse.
    """
    label = label or path
    if path == EMPTY:
        return Side(label, ast.Recipe(label, "", ()), None, dict.fromkeys(RECORDED.values(), {}))
    if _is_png(path):
        return _image_side(path, label, registry)
    from sdflow.source import SourceError, read_source

    try:
        read = read_source(path)
    except SourceError as err:
        raise UsageError(str(err)) from None
    if read.diagnostics:
        raise BrokenRecipe(list(read.diagnostics), {path: read.text})
    return _recipe_side(read.text, label, registry)


def _is_png(path: str) -> bool:
    from sdflow.pngtext import SIGNATURE

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return f.read(len(SIGNATURE)) == SIGNATURE
    except OSError:
        return False  # reading it as a recipe says why


def _recipe_side(text: str, label: str, registry: Registry, record: dict | None = None) -> Side:
    from sdflow.parse import parse, paused_gc

    with paused_gc():
        recipe, syntax = parse(text, label)
        if any(d.is_error for d in syntax):
            raise BrokenRecipe(syntax, {label: text})
        graph, _diagnostics = check(recipe, registry)
    return Side(label, recipe, graph, record)


def _image_side(path: str, label: str, registry: Registry) -> Side:
    """An image's recipe, its recorded params written in as the defaults."""
    from sdflow.pngtext import read_png_text

    try:
        text = read_png_text(path)
    except ValueError as err:
        raise UsageError(f"{path}: {err}") from None
    except OSError as err:
        raise UsageError(f"{path}: {err.strerror or err}") from None
    if "recipe" not in text:
        raise UsageError(f"{path}: this PNG carries no sdflow metadata (it was not written by sdflow run),"
                         " so there is no recipe to compare")
    recipe = recorded_recipe(text, label)
    record = {kind: recorded(text, name) for name, kind in RECORDED.items() if name in text}
    if "stage_version" in record:
        record["stage_version"] = _stage_versions(record["stage_version"])
    return _recipe_side(recipe, label, registry, record)


def _stage_versions(stages: dict) -> dict[str, str]:
    """Each stage type's version, from the ``stages`` field ("diffusion.sample 0.2.0")."""
    versions = {}
    for entry in stages.values():
        if isinstance(entry, str) and " " in entry:
            stage_type, version = entry.rsplit(" ", 1)
            versions[stage_type] = version
    return versions


# what is compared ------------------------------------------------------------------


@dataclass(frozen=True)
class StageView:
    """A stage as compared: its type (as written, and the name that
    identifies it), its arguments as written, and the values compared."""

    key: str
    written_type: str
    type_id: str
    written: dict[str, Any]
    values: dict[str, Any]


def params_of(recipe: ast.Recipe) -> dict[str, Any]:
    """The params' values; one that is not a value (an error) as written."""
    values = resolve_params(recipe, {}, [])
    for statement in recipe.statements:
        if isinstance(statement, ast.Param) and statement.name not in values:
            values[statement.name] = _written(statement.default, {}, set())
    return values


@dataclass(frozen=True)
class SweepLine:
    """A ``sweep`` line as compared: each name's values (a range as its
    numbers, where there are not too many to list), and as written."""

    values: dict[str, Any]
    text: str

    @property
    def shown(self) -> str:
        """Its values as written; with the names where the line has several."""
        if len(self.values) == 1:
            return self.text.partition(" = ")[2]
        return self.text


LISTED = 10_000
"""A range of more numbers than this is compared as its ends and step."""


def sweeps_of(recipe: ast.Recipe) -> dict[str, SweepLine]:
    """Each ``sweep`` line, by the names it moves (``seed`` or ``seed, cfg``)."""
    lines = {}
    for statement in recipe.statements:
        if isinstance(statement, ast.Sweep):
            values = {}
            for entry in statement.entries:
                if isinstance(entry.values, ast.Range):
                    numbers = entry.values
                    values[entry.name] = list(numbers.values) if numbers.count <= LISTED else sweep_values(numbers)
                else:
                    values[entry.name] = [_written(item, {}, set()) for item in entry.values.items]
            text = ", ".join(f"{e.name} = {sweep_values(e.values)}" for e in statement.entries)
            lines[", ".join(values)] = SweepLine(values, text)
    return lines


def requires_of(recipe: ast.Recipe) -> dict[str, str]:
    """Each required plugin and its version range ("" for any)."""
    return {s.plugin: s.specifier or "" for s in recipe.statements if isinstance(s, ast.Require)}


def stages_of(side: Side, registry: Registry, validated: bool) -> dict[str, StageView]:
    """Each stage by its key (its name, or ``save_image#2`` for the second
    unnamed save_image), in the recipe's order."""
    recipe = side.recipe
    params = {s.name for s in recipe.statements if isinstance(s, ast.Param)}
    declared = {s.name: registry.stage(s.stage_type) for s in recipe.statements
                if isinstance(s, ast.Stage) and s.name is not None}
    keys = stage_keys(recipe)
    views: dict[str, StageView] = {}
    for statement in recipe.statements:
        if not isinstance(statement, ast.Stage) or keys[id(statement)] in views:
            continue
        key = keys[id(statement)]
        spec = registry.stage(statement.stage_type)
        written = {arg.name: _written(arg.value, declared, params) for arg in statement.args}
        node = side.graph.nodes.get(key) if validated and side.graph is not None else None
        if node is not None:
            values = _validated_values(side.graph, node, statement, written, params)
        else:
            values = {**_defaults(spec), **written}
        views[key] = StageView(key, statement.stage_type, spec.qualified if spec else statement.stage_type,
                               written, {name: v for name, v in values.items() if v is not None})
    return views


def _written(value: ast.Value, stages: dict, params: set[str]) -> Any:
    """A value as written: literals by their value, references by what they
    name (a single-output stage's port left out, as ``positive`` means
    ``positive.conditioning``)."""
    if isinstance(value, ast.Literal):
        return value.value
    if isinstance(value, ast.ListValue):
        return [_written(item, stages, params) for item in value.items]
    spec = stages.get(value.name) if value.name not in params else None
    if spec is not None and value.port is not None and list(spec.outputs) == [value.port]:
        return Reference(value.name)
    return Reference(str(value))


def _validated_values(graph: StageGraph, node, statement: ast.Stage, written: dict, params: set[str]) -> dict:
    """A checked stage's values: its validated parameters, defaults included,
    except that an argument naming a param is compared by the param's name
    (a changed param is one difference, not one per use) and an input by the
    port it connects to."""
    values = node.params.model_dump()
    for arg in statement.args:
        if _names_a_param(arg.value, params):
            values[arg.name] = written[arg.name]
    for name, connection in node.inputs.items():
        source = graph.nodes[connection.stage].spec
        single = len(source.outputs) == 1
        values[name] = Reference(connection.stage if single else f"{connection.stage}.{connection.port}")
    order = [*written, *(name for name in values if name not in written)]
    return {name: values[name] for name in order if name in values}


def _names_a_param(value: ast.Value, params: set[str]) -> bool:
    if isinstance(value, ast.Ref):
        return value.name in params
    if isinstance(value, ast.ListValue):
        return any(_names_a_param(item, params) for item in value.items)
    return False


def _defaults(spec) -> dict[str, Any]:
    """The default of each parameter of a known stage type that has one."""
    if spec is None:
        return {}
    return {name: info.get_default(call_default_factory=True)
            for name, info in spec.params.model_fields.items() if not info.is_required()}


def _same(a: Any, b: Any) -> bool:
    return _key(a) == _key(b)


def _key(value: Any) -> Any:
    """What two values are compared by: ``7`` equals ``7.0``, but ``true``
    is not ``1`` and a string is not the reference that reads the same."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, Reference):
        return ("ref", value.text)
    if isinstance(value, SweepLine):
        return ("sweep", _key(value.values))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_key(item) for item in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _key(v)) for k, v in value.items())))
    return ("other", repr(value))


# comparing ----------------------------------------------------------------------


def compare(before: Side, after: Side, registry: Registry) -> list[Difference]:
    """Every difference from ``before`` to ``after``, grouped and in a stable
    order: params, requires, stages and their arguments, then what images
    recorded (models, versions, run conditions)."""
    validated = before.graph is not None and after.graph is not None
    found = [
        *_changes("param", params_of(before.recipe), params_of(after.recipe)),
        *_changes("sweep", sweeps_of(before.recipe), sweeps_of(after.recipe)),
        *_sweep_order(sweeps_of(before.recipe), sweeps_of(after.recipe)),
        *_changes("require", requires_of(before.recipe), requires_of(after.recipe)),
        *_stage_changes(stages_of(before, registry, validated), stages_of(after, registry, validated)),
    ]
    old, new = before.record or {}, after.record or {}
    both = old.keys() & new.keys()
    if "model" in both:
        found += _changes("model", old["model"], new["model"], sort=True)
    versions = _changes("version", old["version"], new["version"]) if "version" in both else []
    if "stage_version" in both:  # a stage type only one side has is a stage added, not a version
        common = old["stage_version"].keys() & new["stage_version"].keys()
        versions += _changes("version", {t: old["stage_version"][t] for t in common},
                             {t: new["stage_version"][t] for t in common})
    found += sorted(versions, key=lambda d: d.path)
    if "run" in both:
        found += [d for d in _changes("run", old["run"], new["run"], sort=True) if d.path not in DERIVED_RUN]
    return found


def _changes(kind: str, before: dict, after: dict, sort: bool = False) -> list[Difference]:
    """Added, removed and changed entries of two mappings."""
    names = _merged(list(before), list(after))
    if sort:
        names = sorted(names)
    return [Difference(kind, name, before.get(name), after.get(name)) for name in names
            if name not in before or name not in after or not _same(before[name], after[name])]


def _sweep_order(before: dict[str, SweepLine], after: dict[str, SweepLine]) -> list[Difference]:
    """The order of the sweep lines both sides have, where it changed: it
    lays out the contact sheet (the first line across, the second down, a
    third as sheets), so the same points in another order are another sheet."""
    old = [names for names in before if names in after]
    new = [names for names in after if names in before]
    return [Difference("sweep_order", "", old, new)] if old != new else []


def _stage_changes(before: dict[str, StageView], after: dict[str, StageView]) -> list[Difference]:
    found = []
    for key in _merged(list(before), list(after)):
        old, new = before.get(key), after.get(key)
        if old is None or new is None:
            found.append(Difference("stage", key, _stage_value(old), _stage_value(new)))
            continue
        if old.type_id != new.type_id:
            found.append(Difference("stage_type", key, old.written_type, new.written_type))
        found += [Difference("argument", f"{key}.{d.path}", d.before, d.after)
                  for d in _changes("argument", old.values, new.values)]
    return found


def _stage_value(view: StageView | None) -> dict | None:
    return None if view is None else {"type": view.written_type, "args": view.written}


def _merged(first: list[str], second: list[str]) -> list[str]:
    """The names of both lists, each once: ``first``'s in its order, each
    name only ``second`` has placed after the name it follows there."""
    known = set(first)
    start: list[str] = []
    following: dict[str, list[str]] = {}
    anchor = None
    for name in second:
        if name in known:
            anchor = name
        else:
            (start if anchor is None else following.setdefault(anchor, [])).append(name)
    merged = start
    for name in first:
        merged.append(name)
        merged.extend(following.get(name, ()))
    return merged


# showing ------------------------------------------------------------------------


def render(difference: Difference) -> str:
    """One line: ``~ denoised.steps: 20 -> 30``, ``+ stage lora = load_lora(...)``,
    ``- param cfg = 3.0``."""
    kind, path, before, after = difference.kind, difference.path, difference.before, difference.after
    recorded = kind in ("model", "version", "run", "stage_type")

    def show(value: Any) -> str:
        return _show_recorded(value, kind) if recorded else _show(value)

    label = {"stage_type": "stage ", "argument": ""}.get(kind, f"{kind} ") + path
    if kind == "stage":
        value = after if before is None else before
        return f"{'+' if before is None else '-'} {label} = {_call(value)}"
    if kind == "sweep":
        if before is None or after is None:
            return f"{'+' if before is None else '-'} sweep {(after if before is None else before).text}"
        return f"~ sweep {path}: {before.shown} -> {after.shown}"
    if kind == "sweep_order":  # the lines' names, which may hold commas themselves ("seed, cfg")
        return f"~ sweep order (the contact sheet's layout): {' / '.join(before)} -> {' / '.join(after)}"
    if kind == "require":
        value = after if before is None else before
        if before is None or after is None:
            return f"{'+' if before is None else '-'} {label}" + (f" {literal(value)}" if value else "")
        return f"~ {label}: {literal(before) if before else '(any)'} -> {literal(after) if after else '(any)'}"
    if before is None:
        return f"+ {label} = {show(after)}"
    if after is None:
        return f"- {label} = {show(before)}"
    return f"~ {label}: {show(before)} -> {show(after)}"


def _show(value: Any) -> str:
    if isinstance(value, Reference):
        return value.text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    try:
        return literal(value)
    except TypeError:
        return str(value)


def _show_recorded(value: Any, kind: str) -> str:
    """What an image recorded (or a stage type's name): a model's SHA-256
    shortened as git shortens hashes, other text as it is."""
    if kind == "model" and isinstance(value, str) and len(value) > 12:
        return value[:12]
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _call(stage: dict) -> str:
    return f"{stage['type']}(" + ", ".join(f"{name}={_show(v)}" for name, v in stage["args"].items()) + ")"


def as_json(differences: Iterable[Difference]) -> str:
    """The differences as a JSON list of {kind, path, before, after};
    a reference is ``{"ref": "ckpt.model"}``, an absent side null."""
    def plain(value: Any) -> Any:
        if isinstance(value, Reference):
            return {"ref": value.text}
        if isinstance(value, SweepLine):
            return plain(value.values)
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    return json.dumps([{"kind": d.kind, "path": d.path, "before": plain(d.before), "after": plain(d.after)}
                       for d in differences], indent=2, default=str)


# the command --------------------------------------------------------------------


def run_diff(files: list[str], registry: Registry, *, json_output: bool = False, git: bool = False,
             out: TextIO | None = None, err: TextIO | None = None, max_shown: int | None = None) -> int:
    """``sdflow diff A B``: 0 when the two are the same, 1 when they differ,
    2 when one is not a recipe or image of sdflow's (its diagnostics on
    ``err``).  With ``git``, ``files`` are git's seven arguments of an
    external diff driver, and the exit code is 0 so that git goes on."""
    out, err = out or sys.stdout, err or sys.stderr
    if git:
        return _git_diff(files, registry, json_output, out, err, max_shown)
    if len(files) != 2:
        raise UsageError("diff compares two files: recipes (.sdflow) or images written by sdflow (.png)")
    sides, broken = _load_both(files, files, registry)
    if broken:
        for problem in broken:
            print_diagnostics(problem.diagnostics, problem.sources, err, max_shown)
        return EXIT_TROUBLE
    differences = _compare_noted(sides, registry, err)
    _write(differences, json_output, out)
    return EXIT_DIFFERENT if differences else EXIT_SAME


def _load_both(paths: list[str], labels: list[str], registry: Registry) -> tuple[list[Side], list[BrokenRecipe]]:
    """Both sides, or every recipe of the two that does not parse."""
    sides, broken = [], []
    for path, label in zip(paths, labels):
        try:
            sides.append(load_side(path, registry, label))
        except BrokenRecipe as problem:
            broken.append(problem)
    return sides, broken


def _compare_noted(sides: list[Side], registry: Registry, err: TextIO) -> list[Difference]:
    """Compare two sides, saying on ``err`` when one does not check (so the
    stages are compared as written)."""
    for side in sides:
        if side.graph is None and side.recipe.statements:
            print(f"sdflow: note: {visible(side.label)} does not check ('sdflow check' says why);"
                  " its stages are compared as written", file=err)
    return compare(sides[0], sides[1], registry)


def _write(differences: list[Difference], json_output: bool, out: TextIO) -> None:
    if json_output:
        print(as_json(differences), file=out)
        return
    for difference in differences:
        print(visible(render(difference)), file=out)


def _git_diff(files: list[str], registry: Registry, json_output: bool, out: TextIO, err: TextIO,
              max_shown: int | None = None) -> int:
    """git's external diff driver: ``path old-file old-hex old-mode new-file
    new-hex new-mode`` (and, for a rename, the new path and git's message).
    A file that cannot be compared by meaning is shown as text, or said to
    differ, as git would; the exit code is always 0."""
    if len(files) not in (7, 9):
        raise UsageError("--git takes git's arguments: PATH OLD-FILE OLD-HEX OLD-MODE NEW-FILE NEW-HEX NEW-MODE"
                         " (set it up with: git config diff.sdflow.command 'sdflow diff --git')")
    path, old, new = files[0], files[1], files[4]
    new_path = files[7] if len(files) == 9 else path
    labels = [f"a/{path}", f"b/{new_path}"]
    if not json_output:
        print(visible(f"sdflow diff {labels[0]} {labels[1]}"), file=out)
    try:
        sides, broken = _load_both([old, new], labels, registry)
    except UsageError as trouble:
        print(f"sdflow: {trouble}", file=err)
        return _text_diff(old, new, labels, out)
    if broken:
        for problem in broken:
            print_diagnostics(problem.diagnostics, problem.sources, err, max_shown)
        return _text_diff(old, new, labels, out)
    differences = _compare_noted(sides, registry, err)
    if differences or json_output:
        _write(differences, json_output, out)
    else:
        print("(no semantic difference)", file=out)
    return EXIT_SAME


def _text_diff(old: str, new: str, labels: list[str], out: TextIO) -> int:
    """A unified diff of two texts, or a line saying two binary files differ."""
    import difflib

    texts = []
    for path in (old, new):
        try:
            with open(path, "rb") as f:
                texts.append(f.read().decode("utf-8"))
        except (OSError, UnicodeDecodeError):
            print(f"Binary files {labels[0]} and {labels[1]} differ", file=out)
            return EXIT_SAME
    lines = difflib.unified_diff(texts[0].splitlines(keepends=True), texts[1].splitlines(keepends=True),
                                 labels[0], labels[1])
    for line in lines:
        out.write(visible(line.rstrip("\n")) + "\n")
    return EXIT_SAME
