"""Syntax tree + registry -> a validated :class:`StageGraph`.

The checker proves, before anything heavy runs, that every name resolves,
every port receives the type it expects, every parameter value passes its
stage's pydantic model, and the stages form an acyclic graph that leads to
an output.  It reports every problem of a recipe at once; the executor
trusts what it proved and checks none of it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from sdflow import ast
from sdflow.diagnostics import Diagnostic, Suggestions, did_you_mean, one_of
from sdflow.text import visible
from sdflow.registry import Registry, StageSpec, namespace

LANGUAGE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Connection:
    """An input port's source: a stage's key and one of its output ports."""

    stage: str
    port: str


@dataclass(frozen=True)
class StageNode:
    """One stage of a checked recipe, its parameters validated."""

    key: str
    name: str | None
    spec: StageSpec
    params: BaseModel
    inputs: Mapping[str, Connection]
    span: ast.Span


@dataclass(frozen=True)
class StageGraph:
    """A recipe proven runnable: its stages, and the order to run them in.

    ``order`` holds only the stages that lead to an output stage, each after
    every stage it consumes; ``params`` are the recipe's params as resolved
    (defaults, then command-line overrides); ``overridden`` names the params
    whose value the command line gave (``--set``).
    """

    recipe: ast.Recipe
    nodes: Mapping[str, StageNode]
    order: tuple[str, ...]
    params: Mapping[str, Any]
    warnings: tuple[Diagnostic, ...] = field(default=())
    persistent_types: frozenset[str] = frozenset()
    settings_models: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    overridden: frozenset[str] = frozenset()

    @property
    def outputs(self) -> list[str]:
        return [k for k in self.order if self.nodes[k].spec.output]


class UsageError(Exception):
    """A mistake on the command line rather than in the recipe (exit 2)."""


def check(
    recipe: ast.Recipe,
    registry: Registry,
    overrides: Mapping[str, str] | None = None,
    syntax_ok: bool = True,
) -> tuple[StageGraph | None, list[Diagnostic]]:
    """Validate a parsed recipe: the graph (None on errors) and every diagnostic.

    ``overrides`` are ``--set`` values, as text, parsed by each param's type;
    an unknown name among them raises :class:`UsageError`.  With
    ``syntax_ok=False`` (the recipe had syntax errors) the whole-graph checks
    are skipped, as they would report what the broken statements hid.
    """
    checker = _Checker(recipe, registry)
    checker.params = resolve_params(recipe, overrides or {}, checker.diagnostics)
    checker.overrides = frozenset(overrides or {})
    checker.run(syntax_ok)
    diagnostics = sorted(checker.diagnostics, key=Diagnostic.sort_key)
    if any(d.is_error for d in diagnostics) or not syntax_ok:
        return None, diagnostics
    graph = StageGraph(
        recipe,
        checker.nodes,
        checker.order(),
        checker.params,
        tuple(d for d in diagnostics if not d.is_error),
        frozenset(name for name, port in registry.port_types.items() if port.persistent),
        {plugin: spec.model for plugin, spec in registry.settings.items()},
        frozenset(overrides or {}),
    )
    return graph, diagnostics


# params ---------------------------------------------------------------------


def resolve_params(
    recipe: ast.Recipe, overrides: Mapping[str, str], diagnostics: list[Diagnostic]
) -> dict[str, Any]:
    """Each param's value: its default, or the command line's override."""
    params: dict[str, Any] = {}
    declared = {s.name: s for s in recipe.statements if isinstance(s, ast.Param)}
    for name in overrides:
        if name not in declared:
            hint = did_you_mean(name, declared) or (
                f"the recipe's params are {one_of(declared)}" if declared else "the recipe declares no params"
            )
            raise UsageError(f"--set {name}=...: the recipe has no param '{name}'; {hint}")
    for name, param in declared.items():
        value = _literal_value(param.default, diagnostics, "a param's default")
        if value is _INVALID:
            continue
        if name in overrides:
            value = parse_override(name, overrides[name], value)
        params.setdefault(name, value)
    return params


def parse_override(name: str, text: str, default: Any) -> Any:
    """``--set name=text``, read as the type of the param's default."""
    kind = type(default)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is list:
            return _json_list(name, text)
    except ValueError:
        words = {bool: "true or false", int: "an integer", float: "a number", list: "a JSON list"}
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise UsageError(f"--set {name}={visible(shown)}: '{name}' is {words[kind]}, like its default") from None
    return text


def _json_list(name: str, text: str) -> list:
    """``--set name=[...]``: a JSON list, nested no deeper than a recipe's lists."""
    import json

    from sdflow.parse import MAX_DEPTH

    depth = deepest = 0
    in_string = escaped = False
    for char in text:  # the depth first: the JSON parser recurses
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    if deepest > MAX_DEPTH:
        raise UsageError(f"--set {name}=...: lists nested more than {MAX_DEPTH} deep")
    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError
    return value


class _Invalid:
    pass


_INVALID = _Invalid()


def _literal_value(value: ast.Value, diagnostics: list[Diagnostic], what: str) -> Any:
    if isinstance(value, ast.Literal):
        return value.value
    if isinstance(value, ast.ListValue):
        items = [_literal_value(v, diagnostics, what) for v in value.items]
        return _INVALID if any(i is _INVALID for i in items) else items
    diagnostics.append(
        Diagnostic("E412", f"{what} must be a value, not a reference to '{value}'", value.span,
                   "write the value itself: a number, a string, true or false, or a list")
    )
    return _INVALID


# the checker ------------------------------------------------------------------


class _Checker:
    def __init__(self, recipe: ast.Recipe, registry: Registry) -> None:
        self.recipe = recipe
        self.registry = registry
        self.diagnostics: list[Diagnostic] = []
        self.params: dict[str, Any] = {}
        self.overrides: frozenset[str] = frozenset()  # the params --set gave
        self.nodes: dict[str, StageNode] = {}
        self.param_decls: dict[str, ast.Param] = {}
        self.stage_decls: dict[str, ast.Stage] = {}
        self.used: set[str] = set()
        self.current: str | None = None  # the stage being checked, never its own source
        self.keys = stage_keys(recipe)
        self._suggest_names: Suggestions | None = None
        self._suggest_stages: Suggestions | None = None
        self._producers: dict[str, list[tuple[str, str]]] | None = None

    def error(self, code: str, message: str, span: ast.Span | None, help: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, message, span, help))

    def warn(self, code: str, message: str, span: ast.Span | None, help: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, message, span, help, "warning"))

    def run(self, syntax_ok: bool) -> None:
        self.check_header(syntax_ok)
        self.check_requires()
        self.collect_names()
        for statement in self.recipe.statements:
            if isinstance(statement, ast.Stage):
                self.check_stage(statement)
        self.check_sweeps()
        if syntax_ok:
            self.check_outputs()
            self.check_cycles()
            self.check_unused()

    # header and names -----------------------------------------------------
    def check_header(self, syntax_ok: bool) -> None:
        headers = [s for s in self.recipe.statements if isinstance(s, ast.Header)]
        statements = self.recipe.statements
        if not headers:
            if syntax_ok:
                first = statements[0].span if statements else ast.Span(self.recipe.file, 1, 1, 1, 2)
                start = ast.Span(first.file, first.line, first.column, first.line, first.column + 1)
                self.error("E201", "the recipe does not start with its language version", start,
                           f"add 'sdflow {LANGUAGE_VERSION}' as its first line")
            return
        for header in headers:
            if header.keyword != "sdflow":
                self.error("E201", f"unknown header '{header.keyword}'", header.keyword_span,
                           f"did you mean 'sdflow {header.version}'?")
            elif header.version != LANGUAGE_VERSION:
                self.error("E202", f"sdflow {header.version} is not supported; this sdflow reads version {LANGUAGE_VERSION}",
                           header.version_span, f"write 'sdflow {LANGUAGE_VERSION}'")
        if statements[0] is not headers[0]:
            self.error("E203", "the version header must come before every other statement",
                       headers[0].span, "move it to the top of the file")
        for extra in headers[1:]:
            self.error("E203", "a recipe has one version header", extra.span,
                       f"first given at line {headers[0].span.line}; remove this one")

    def check_requires(self) -> None:
        """Each ``require``: the plugin is loaded, and its version is in range."""
        requires = [s for s in self.recipe.statements if isinstance(s, ast.Require)]
        if not requires:
            return
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion, Version

        plugins = {namespace(name): info for name, info in self.registry.plugins.items()}
        for req in requires:
            info = self.registry.plugins.get(req.plugin) or plugins.get(req.plugin)
            if info is None or info.disabled or info.error:
                why = ("is disabled (SDFLOW_DISABLE_PLUGINS)" if info is not None and info.disabled
                       else f"failed to load: {info.error}" if info is not None else "is not installed")
                hint = did_you_mean(req.plugin, list(plugins)) if info is None else None
                self.error("E250", f"the recipe requires plugin '{req.plugin}', which {why}", req.plugin_span,
                           hint or "install it, or remove this line; 'sdflow plugins' lists the plugins")
                continue
            if req.specifier is None:
                continue
            try:
                wanted = SpecifierSet(req.specifier)
            except InvalidSpecifier:
                self.error("E251", f"'{req.specifier}' is not a version range", req.specifier_span,
                           'write one as pip does, such as ">=1.2" or ">=1.2,<2"')
                continue
            try:
                ok = Version(info.version) in wanted
            except InvalidVersion:
                ok = False
            if not ok:
                self.error("E252", f"the recipe requires plugin '{req.plugin}' {req.specifier}, "
                           f"but version {info.version} is installed", req.specifier_span,
                           "install a version of its package in that range,"
                           " or change the range")

    def collect_names(self) -> None:
        first_seen: dict[str, ast.Span] = {}
        for statement in self.recipe.statements:
            if isinstance(statement, ast.Param):
                name, span = statement.name, statement.name_span
            elif isinstance(statement, ast.Stage) and statement.name is not None:
                name, span = statement.name, statement.name_span
            else:
                continue
            if name in first_seen:
                self.error("E210", f"'{name}' is already defined", span,
                           f"first defined at line {first_seen[name].line}; choose another name")
                continue
            first_seen[name] = span
            if isinstance(statement, ast.Param):
                self.param_decls[name] = statement
            else:
                self.stage_decls[name] = statement

    def near_name(self, word: str) -> str | None:
        """'did you mean ...?' among the recipe's names (built once, bounded)."""
        if self._suggest_names is None:
            self._suggest_names = Suggestions([*self.param_decls, *self.stage_decls])
        return self._suggest_names(word)

    # sweeps -------------------------------------------------------------------
    def check_sweeps(self) -> None:
        """Each ``sweep`` line: every name a param, swept once; every value a
        value of the param's type; the values of one line as many.  The
        points themselves are checked by :mod:`sdflow.sweep`."""
        swept: dict[str, ast.SweepValues] = {}
        for statement in self.recipe.statements:
            if not isinstance(statement, ast.Sweep):
                continue
            counts: dict[str, int] = {}
            for entry in statement.entries:
                known = self.check_swept_name(entry, swept)
                count = self.check_sweep_values(entry, self.params.get(entry.name, _INVALID) if known else _INVALID)
                if count is not None:
                    counts[entry.name] = count
            if len(counts) == len(statement.entries) and len(set(counts.values())) > 1:
                self.error("E262", "the names of one sweep line move together, so they need as many values: "
                           + ", ".join(f"{name} has {count:,}" for name, count in counts.items()),
                           statement.span, "give each as many values, or sweep them on separate lines"
                           " to combine every value of one with every value of the other")

    def check_swept_name(self, entry: ast.SweepValues, swept: dict[str, ast.SweepValues]) -> bool:
        """Whether ``entry`` names a param not swept before (reporting why not)."""
        name = entry.name
        if name not in self.param_decls:
            if name in self.stage_decls:
                self.error("E260", f"'{name}' is a stage's result; only a param can be swept", entry.name_span,
                           f"declare a param (param {name}_value = ...), use it in the stage, and sweep that")
            elif name not in self.recipe.broken_names:
                params = list(self.param_decls)
                hint = did_you_mean(name, params) or (f"the recipe's params are {one_of(params)}" if params
                                                      else f"declare it first: param {name} = VALUE")
                self.error("E260", f"the recipe has no param '{name}' to sweep", entry.name_span, hint)
            return False
        if name in swept:
            first = swept[name].name_span
            self.error("E261", f"param '{name}' is swept twice", entry.name_span,
                       f"first swept at line {first.line}; a param moves along one axis (names on one line"
                       " move together)")
            return False
        swept[name] = entry
        return True

    def check_sweep_values(self, entry: ast.SweepValues, default: Any) -> int | None:
        """How many values ``entry`` gives (None where they are wrong, after
        reporting why); each must be of the type of the param's ``default``
        (not checked where that is unknown)."""
        values, name = entry.values, entry.name
        if isinstance(values, ast.Range):
            if values.step is not None and values.step <= 0:
                self.error("E263", f"a range's step must be positive, got {values.step}", values.span,
                           f"write {values.start}..{values.end}..{abs(values.step) or 1} (a range counts down"
                           " by itself when it ends below its start)")
                return None
            if default is not _INVALID and (isinstance(default, bool) or not isinstance(default, (int, float))):
                self.error("E264", f"param '{name}' is {_kind(default)}, like its default; a range gives integers",
                           values.span, f"list its values instead: sweep {name} = [...]")
                return None
            return values.count
        if not values.items:
            self.error("E263", f"a sweep of '{name}' over no values", values.span,
                       "list one value or more; to run the recipe once, remove the sweep line")
            return None
        ok = True
        for item in values.items:
            value = _literal_value(item, self.diagnostics, "a sweep's value")
            if value is _INVALID:
                ok = False
            elif default is not _INVALID and not _same_type(default, value):
                self.error("E264", f"param '{name}' is {_kind(default)}, like its default, not {_kind(value)}",
                           item.span, "a sweep's values are of its param's type, as --set reads them")
                ok = False
        return len(values.items) if ok else None

    # one stage ------------------------------------------------------------
    def check_stage(self, stage: ast.Stage) -> None:
        self.current = stage.name
        spec = self.registry.stage(stage.stage_type)
        if spec is None:
            self.unknown_stage(stage)
            for arg in stage.args:
                self.resolve_refs(arg.value)
            return
        inputs: dict[str, Connection] = {}
        values: dict[str, Any] = {}
        value_spans: dict[str, ast.Value] = {}
        seen: dict[str, ast.Arg] = {}
        ok = True
        for arg in stage.args:
            if arg.name in seen:
                self.error("E231", f"argument '{arg.name}' is given twice", arg.name_span,
                           f"first given at line {seen[arg.name].span.line}, column {seen[arg.name].span.column}; keep one")
                ok = False
                continue
            seen[arg.name] = arg
            if arg.name in spec.inputs:
                connection = self.connect(spec, arg)
                if connection is None:
                    ok = False
                else:
                    inputs[arg.name] = connection
            elif arg.name in spec.params.model_fields:
                value = self.param_value(spec, arg, arg.value)
                if value is _INVALID:
                    ok = False
                else:
                    values[arg.name] = value
                    value_spans[arg.name] = arg.value
            else:
                self.error("E230", f"'{spec.id}' has no argument '{arg.name}'", arg.name_span,
                           did_you_mean(arg.name, spec.argument_names)
                           or f"its arguments are {one_of(spec.argument_names)}")
                self.resolve_refs(arg.value)
                ok = False
        for name, port in spec.inputs.items():
            if name not in seen and not port.optional:
                self.error("E232", f"'{spec.id}' needs input '{name}' ({port.type})", stage.type_span,
                           self.suggest_source(name, port.type))
                ok = False
        params = self.validate_params(spec, stage, values, value_spans, set(seen))
        if params is None or not ok:
            return
        key = self.keys[id(stage)]
        self.nodes[key] = StageNode(key, stage.name, spec, params, inputs, stage.span)

    def unknown_stage(self, stage: ast.Stage) -> None:
        found = self.registry.candidates(stage.stage_type)
        if len(found) > 1:
            plugins = " and ".join(f"'{s.plugin}'" for s in found)
            self.error("E221", f"stage type '{stage.stage_type}' is defined by plugins {plugins}",
                       stage.type_span, f"write its full name: {one_of([s.qualified for s in found])}")
            return
        broken = self.registry.broken_stage(stage.stage_type)
        if broken is not None:
            self.error("E220", f"stage type '{stage.stage_type}' could not register", stage.type_span,
                       f"{broken}; run 'sdflow plugins'")
            return
        if self._suggest_stages is None:
            self._suggest_stages = Suggestions(self.registry.names())
        hint = self._suggest_stages(stage.stage_type)
        failed = [p.name for p in self.registry.failed_plugins()]
        if failed:  # the stage is likelier to be that plugin's than a look-alike
            note = f"plugin {one_of(failed)} failed to load; run 'sdflow plugins'"
            hint = note if hint is None else f"{note} (or: {hint})"
        elif hint is None:
            hint = "run 'sdflow stages' to list the stage types of the installed plugins"
        self.error("E220", f"unknown stage type '{stage.stage_type}'", stage.type_span, hint)

    def suggest_source(self, port_name: str, port_type: str) -> str:
        refs, total = self.outputs_of_type(port_type)
        candidates = [f"{port_name}={ref}" for ref in refs]
        if candidates:
            return f"add {candidates[0]}" if total == 1 else f"add one of {one_of(candidates, 4, total)}"
        return f"add {port_name}=... with a stage result of type {port_type}"

    def outputs_of_type(self, port_type: str, few: int = 5) -> tuple[list[str], int]:
        """The first ``few`` references to stage results of a type, other
        than the current stage's own, and how many there are (the index is
        built once for all the asks)."""
        if self._producers is None:
            self._producers = {}
            for name, decl in self.stage_decls.items():
                spec = self.registry.stage(decl.stage_type)
                for port, out in (spec.outputs.items() if spec is not None else ()):
                    ref = name if len(spec.outputs) == 1 else f"{name}.{port}"
                    self._producers.setdefault(out.type, []).append((name, ref))
        producers = self._producers.get(port_type, [])
        own = 0
        decl = self.stage_decls.get(self.current or "")
        spec = self.registry.stage(decl.stage_type) if decl is not None else None
        if spec is not None:
            own = sum(out.type == port_type for out in spec.outputs.values())
        refs = [ref for name, ref in producers[: few + own] if name != self.current][:few]
        return refs, len(producers) - own

    # inputs ---------------------------------------------------------------
    def connect(self, spec: StageSpec, arg: ast.Arg) -> Connection | None:
        expected = spec.inputs[arg.name].type
        value = arg.value
        if not isinstance(value, ast.Ref) or value.name in self.param_decls:
            if isinstance(value, ast.Ref):
                self.used.add(value.name)  # misused, but used: no "never used" on top
            what = f"param '{value.name}'" if isinstance(value, ast.Ref) else "a value"
            self.error("E310", f"'{arg.name}' takes a stage result of type {expected}, not {what}", value.span,
                       self.suggest_source(arg.name, expected).replace("add ", "write ", 1))
            return None
        source = self.resolve_stage_ref(value)
        if source is None:
            return None
        source_spec, port = source
        if port is None:
            return self.pick_port(source_spec, value, arg.name, expected)
        actual = source_spec.outputs[port].type
        if actual != expected:
            self.mismatch(arg.name, expected, value, actual, source_spec)
            return None
        return Connection(self.keys[id(self.stage_decls[value.name])], port)

    def pick_port(self, spec: StageSpec, ref: ast.Ref, arg_name: str, expected: str) -> Connection | None:
        if not spec.outputs:
            self.error("E243", f"'{ref.name}' is an output stage and has no result", ref.span,
                       "output stages such as save_image end a branch of the recipe")
            return None
        if len(spec.outputs) > 1:
            same = [p for p, out in spec.outputs.items() if out.type == expected]
            ports = ", ".join(spec.outputs)
            hint = f"did you mean '{ref.name}.{same[0]}'?" if same else f"name one: {ports}"
            self.error("E242", f"'{ref.name}' has several outputs ({ports}); name the one to use",
                       ref.span, hint)
            return None
        (port, out), = spec.outputs.items()
        if out.type != expected:
            self.mismatch(arg_name, expected, ref, out.type, spec)
            return None
        return Connection(self.keys[id(self.stage_decls[ref.name])], port)

    def mismatch(self, arg_name: str, expected: str, ref: ast.Ref, actual: str, spec: StageSpec) -> None:
        same = [p for p, out in spec.outputs.items() if out.type == expected]
        if same:
            hint = f"did you mean '{ref.name}.{same[0]}'?"
        else:
            producers, total = self.outputs_of_type(expected)
            hint = (f"{expected} comes from {one_of(producers, 4, total)}" if producers
                    else f"no stage of this recipe gives {expected}")
        convert = self.converter(actual, expected)
        if convert is not None:
            hint += f"{' Or' if hint.endswith('?') else '; or'} convert it: {convert}={ref})"
        self.error("E300", f"'{arg_name}' expects {expected}, but {ref} is {actual}", ref.span, hint)

    def converter(self, source: str, target: str) -> str | None:
        """``stage(port`` of the one stage type that turns a ``source`` value
        into a ``target`` one by itself (one required input, one output:
        ``mask_to_image(mask`` for MASK -> IMAGE), or None."""
        found = [spec for spec in self.registry.stages.values()
                 if [p.type for p in spec.outputs.values()] == [target]
                 and [p.type for p in spec.inputs.values() if not p.optional] == [source]]
        if len(found) != 1:
            return None
        spec = found[0]
        name = spec.id if self.registry.stage(spec.id) is spec else spec.qualified
        port = next(port for port, p in spec.inputs.items() if p.type == source)
        return f"{name}({port}"

    def resolve_stage_ref(self, ref: ast.Ref) -> tuple[StageSpec, str | None] | None:
        """The spec and port a reference to a stage result names, or None
        (after reporting why, unless the name belongs to a broken statement)."""
        self.used.add(ref.name)
        decl = self.stage_decls.get(ref.name)
        if decl is None:
            if ref.name not in self.recipe.broken_names:
                self.unknown_name(ref)
            return None
        spec = self.registry.stage(decl.stage_type)
        if spec is None:
            return None  # reported at its own statement
        if ref.port is not None and ref.port not in spec.outputs:
            ports = list(spec.outputs)
            self.error("E241", f"'{ref.name}' ({spec.id}) has no output '{ref.port}'", ref.port_span,
                       did_you_mean(ref.port, ports) or (f"its outputs are {one_of(ports)}" if ports else "it has no outputs"))
            return None
        return spec, ref.port

    def unknown_name(self, ref: ast.Ref) -> None:
        hint = self.near_name(ref.name)
        if hint is None and ref.port is None and self.registry.candidates(ref.name):
            hint = f"'{ref.name}' is a stage type; call it on a line of its own and use its name"
        self.error("E240", f"unknown name '{ref.name}'", ref.name_span,
                   hint or "define it with 'name = stage(...)' or 'param name = value'")

    def resolve_refs(self, value: ast.Value) -> None:
        """Report unknown names in a value that is otherwise not checked."""
        if isinstance(value, ast.Ref):
            self.used.add(value.name)
            if value.name not in self.param_decls and value.name not in self.stage_decls \
                    and value.name not in self.recipe.broken_names:
                self.unknown_name(value)
        elif isinstance(value, ast.ListValue):
            for item in value.items:
                self.resolve_refs(item)

    # parameters -------------------------------------------------------------
    def param_value(self, spec: StageSpec, arg: ast.Arg, value: ast.Value) -> Any:
        if isinstance(value, ast.Literal):
            return value.value
        if isinstance(value, ast.ListValue):
            items = [self.param_value(spec, arg, item) for item in value.items]
            return _INVALID if any(i is _INVALID for i in items) else items
        self.used.add(value.name)
        if value.name in self.param_decls:
            if value.port is not None:
                self.error("E244", f"param '{value.name}' has no ports", value.port_span,
                           f"write '{value.name}'")
                return _INVALID
            return self.params.get(value.name, _INVALID)
        if value.name in self.stage_decls:
            self.error("E311", f"'{arg.name}' takes a value, but '{value}' is a stage's result",
                       value.span, f"'{arg.name}' is a parameter of '{spec.id}': write a value or a param's name")
            return _INVALID
        if value.name not in self.recipe.broken_names:
            self.unknown_name(value)
        return _INVALID

    def validate_params(self, spec, stage, values, value_spans, given) -> BaseModel | None:
        try:
            params = spec.params.model_validate(values, strict=True)
        except ValidationError as err:
            for e in err.errors(include_url=False):
                self.pydantic_error(spec, stage, e, value_spans, given)
            return None
        for warning in getattr(params, "warnings", lambda: [])():
            self.param_warning(stage, warning, value_spans.get(warning.field))
        return params

    def param_warning(self, stage, warning, node) -> None:
        """A stage type's warning about a valid value (W104), at the argument,
        inside its string when it says where."""
        span, message = stage.span if node is None else node.span, warning.message
        if isinstance(node, ast.Ref) and node.name in self.param_decls and node.name not in self.overrides:
            node = self.param_decls[node.name].default  # the value is the param's default: point there
        if isinstance(node, ast.Literal) and isinstance(node.value, str):
            span = _inside_string(node, warning.offset) or node.span
        elif isinstance(node, ast.Ref) and warning.offset is not None:
            message += f" (in the value of param '{node.name}', at character {warning.offset + 1})"
        self.warn("W104", message, span, warning.help)

    def pydantic_error(self, spec, stage, e: dict, value_spans, given) -> None:
        loc = e.get("loc") or ()
        field_name = str(loc[0]) if loc else None
        if field_name is not None and field_name not in value_spans and field_name in given:
            return  # its value was invalid and already reported
        if e["type"] == "missing" and field_name is not None:
            self.error("E232", f"'{spec.id}' needs argument '{field_name}'", stage.type_span,
                       f"add {field_name}=...{_describe_field(spec, field_name)}")
            return
        span = stage.span
        node = value_spans.get(field_name)
        if node is not None:
            span = node.span
            for index in loc[1:]:
                if isinstance(node, ast.ListValue) and isinstance(index, int) and index < len(node.items):
                    node = node.items[index]
                    span = node.span
        code, message, hint = _explain(spec, field_name, e)
        if isinstance(node, ast.Ref) and node.name in self.param_decls:
            hint = f"the value comes from param '{node.name}'" + (f"; {hint}" if hint else "")
        self.error(code, message, span, hint)

    # the whole graph ----------------------------------------------------------
    def check_outputs(self) -> None:
        stages = [s for s in self.recipe.statements if isinstance(s, ast.Stage)]
        known = [self.registry.stage(s.stage_type) for s in stages]
        if None in known:
            return  # an unknown stage type might have been the output
        if not any(spec.output for spec in known):
            outputs = sorted({spec.id for spec in self.registry.stages.values() if spec.output})
            statements = self.recipe.statements
            end = statements[-1].span if statements else ast.Span(self.recipe.file, 1, 1, 1, 2)
            self.error("E501", "the recipe has no output stage, so running it would do nothing", end,
                       f"add an output stage such as {one_of(outputs, 3)}" if outputs else None)

    def check_cycles(self) -> None:
        deps = {key: {c.stage for c in node.inputs.values()} for key, node in self.nodes.items()}
        for cycle in _find_cycles(deps):
            path = " -> ".join([*cycle, cycle[0]])
            span = self.stage_decls[cycle[0]].name_span
            self.error("E500", f"'{cycle[0]}' depends on itself: {path}", span,
                       "a recipe is a graph without loops; break the chain")
            self.nodes.pop(cycle[0], None)

    def check_unused(self) -> None:
        for name, decl in self.param_decls.items():
            if name not in self.used:
                self.warn("W101", f"param '{name}' is never used", decl.name_span, "use it or remove it")
        for name, decl in self.stage_decls.items():
            spec = self.registry.stage(decl.stage_type)
            if name not in self.used and spec is not None and not spec.output:
                self.warn("W102", f"the result '{name}' is never used", decl.name_span,
                          "pass it to another stage, or remove it")
        for statement in self.recipe.statements:
            if isinstance(statement, ast.Stage) and statement.name is None:
                spec = self.registry.stage(statement.stage_type)
                if spec is not None and not spec.output:
                    self.warn("W103", f"the result of '{spec.id}' is thrown away", statement.type_span,
                              f"name it ('x = {spec.id}(...)') and use it, or remove it")

    def order(self) -> tuple[str, ...]:
        """The stages that lead to an output, each after its inputs."""
        needed = set(upstream(self.nodes, [k for k, n in self.nodes.items() if n.spec.output]))
        order: list[str] = []
        placed: set[str] = set()
        for key in self.nodes:  # source order, then depth first: stable and readable
            if key in needed:
                _place(key, self.nodes, placed, order)
        return tuple(order)


def upstream(nodes: Mapping[str, StageNode], keys: list[str]) -> list[str]:
    """``keys`` and every stage they depend on, each once (nearest first)."""
    seen: dict[str, None] = {}
    stack = list(keys)
    while stack:
        key = stack.pop()
        if key not in seen:
            seen[key] = None
            stack.extend(c.stage for c in nodes[key].inputs.values())
    return list(seen)


def stage_keys(recipe: ast.Recipe) -> dict[int, str]:
    """Each stage's key in the graph (by the statement's ``id``): its name,
    or for an unnamed stage its type and its count among the unnamed stages
    of that type (``save_image#2``), which ``sdflow fmt`` cannot change."""
    keys: dict[int, str] = {}
    counts: dict[str, int] = {}
    for statement in recipe.statements:
        if isinstance(statement, ast.Stage):
            if statement.name is not None:
                keys[id(statement)] = statement.name
            else:
                counts[statement.stage_type] = counts.get(statement.stage_type, 0) + 1
                keys[id(statement)] = f"{statement.stage_type}#{counts[statement.stage_type]}"
    return keys


def _place(key: str, nodes: Mapping[str, StageNode], placed: set[str], order: list[str]) -> None:
    stack = [(key, iter(sorted({c.stage for c in nodes[key].inputs.values()})))]
    while stack:
        current, deps = stack[-1]
        for dep in deps:
            if dep not in placed:
                stack.append((dep, iter(sorted({c.stage for c in nodes[dep].inputs.values()}))))
                break
        else:
            stack.pop()
            if current not in placed:
                placed.add(current)
                order.append(current)


def _find_cycles(deps: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected loop, found without recursion."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {k: WHITE for k in deps}
    cycles = []
    for root in deps:
        if colour[root] != WHITE:
            continue
        path = [root]
        stack = [iter(sorted(deps[root] & deps.keys()))]
        colour[root] = GREY
        while stack:
            for dep in stack[-1]:
                if colour[dep] == GREY:
                    cycles.append(path[path.index(dep):])
                elif colour[dep] == WHITE:
                    colour[dep] = GREY
                    path.append(dep)
                    stack.append(iter(sorted(deps[dep] & deps.keys())))
                    break
            else:
                stack.pop()
                colour[path.pop()] = BLACK
    return cycles


# pydantic errors, in the recipe's words -----------------------------------


def _describe_field(spec: StageSpec, field_name: str) -> str:
    info = spec.params.model_fields.get(field_name)
    return f" ({info.description})" if info is not None and info.description else ""


_TYPE_WORDS = {
    "int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
    "string_type": "a string", "bool_type": "true or false", "list_type": "a list",
}


def _same_type(default: Any, value: Any) -> bool:
    """Whether ``value`` may stand for a param of ``default``'s type (an
    integer for a number too, as ``--set`` reads one)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return type(default) is type(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    return {int: "an integer", float: "a number", str: "a string", list: "a list"}.get(type(value), type(value).__name__)


def _explain(spec: StageSpec, field_name: str | None, e: dict) -> tuple[str, str, str | None]:
    """A pydantic error as (code, message, help)."""
    kind, ctx, value = e["type"], e.get("ctx") or {}, e.get("input")
    label = f"'{field_name}'" if field_name else f"'{spec.id}'"
    if kind in _TYPE_WORDS:
        return "E401", f"{label} must be {_TYPE_WORDS[kind]}, not {_kind(value)}", None
    bounds = {"greater_than_equal": ("at least", "ge"), "less_than_equal": ("at most", "le"),
              "greater_than": ("more than", "gt"), "less_than": ("less than", "lt")}
    if kind in bounds:
        words, key = bounds[kind]
        return "E402", f"{label} must be {words} {ctx.get(key)}, got {value!r}", _range_help(spec, field_name)
    if kind == "multiple_of":
        step = ctx.get("multiple_of")
        return "E402", f"{label} must be a multiple of {step}, got {value}", _multiple_help(spec, field_name, value, step)
    if kind in ("string_too_short", "too_short"):
        return "E402", f"{label} must not be empty", None
    if kind in ("string_too_long", "too_long"):
        return "E402", f"{label} is too long ({e['msg'].lower()})", None
    if kind == "literal_error":
        choices = _choices(spec, field_name)
        hint = did_you_mean(str(value), choices) if isinstance(value, str) else None
        return "E403", f"{label} cannot be {value!r}", hint or f"choose {one_of(choices)}"
    if kind == "value_error" and ctx.get("error") is not None:
        return "E409", f"{label}: {ctx['error']}", None
    message = e["msg"][0].lower() + e["msg"][1:] if e.get("msg") else kind
    return "E409", f"{label}: {message}", None


def _bounds(spec: StageSpec, field_name: str | None) -> tuple[Any, Any]:
    """A parameter's inclusive bounds (None where it has none)."""
    info = spec.params.model_fields.get(field_name or "")
    if info is None:
        return None, None
    bounds = {type(m).__name__: m for m in info.metadata}
    return getattr(bounds.get("Ge"), "ge", None), getattr(bounds.get("Le"), "le", None)


def _range_help(spec: StageSpec, field_name: str | None) -> str | None:
    low, high = _bounds(spec, field_name)
    if low is not None and high is not None:
        return f"'{field_name}' ranges from {low} to {high}"
    return None


def _multiple_help(spec: StageSpec, field_name: str | None, value: Any, step: Any) -> str | None:
    """The nearest allowed multiples: never one outside the parameter's bounds."""
    if not isinstance(value, (int, float)) or not step:
        return None
    low, high = _bounds(spec, field_name)
    below = (value // step) * step
    near = [n for n in (below, below + step)
            if (low is None or n >= low) and (high is None or n <= high) and n != value]
    if not near and low is not None and value < low:
        near = [-(-low // step) * step]  # the first multiple in range
    elif not near and high is not None and value > high:
        near = [(high // step) * step]
    if len(near) == 2:
        return f"the nearest are {near[0]} and {near[1]}"
    return f"try {near[0]}" if near else None


def _choices(spec: StageSpec, field_name: str | None) -> list[str]:
    import typing

    info = spec.params.model_fields.get(field_name or "")
    if info is None:
        return []
    return [str(a) for a in typing.get_args(info.annotation)]


def check_source(
    source: str,
    file: str,
    registry: Registry,
    overrides: Mapping[str, str] | None = None,
) -> tuple[ast.Recipe, StageGraph | None, list[Diagnostic]]:
    """Parse and check a recipe's text: its tree, its graph (None on errors)
    and every diagnostic, syntax and semantic, in order of position."""
    from sdflow.parse import parse, paused_gc

    with paused_gc():
        recipe, syntax = parse(source, file)
        graph, semantic = check(recipe, registry, overrides, syntax_ok=not syntax)
    return recipe, graph, sorted([*syntax, *semantic], key=Diagnostic.sort_key)


def _inside_string(literal: ast.Literal, offset: int | None) -> ast.Span | None:
    """Where character ``offset`` of a one-line string's value is written
    (escapes take two characters of source, one of value); None for a
    triple-quoted string or no offset."""
    text, span = literal.text, literal.span
    if offset is None or text.startswith('"""') or span.line != span.end_line:
        return None
    source, index = 1, 0  # past the opening quote
    while index < offset and source < len(text) - 1:
        source += 2 if text[source] == "\\" else 1
        index += 1
    column = span.column + source
    return ast.Span(span.file, span.line, column, span.line, column + 1)
