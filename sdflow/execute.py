"""Runs a checked :class:`StageGraph`: order, cache, progress, interrupt.

The executor knows nothing of diffusion.  It runs the stages that lead to
an output stage, each after its inputs, calling the run function that the
stage's plugin declared::

    def run(ctx: RunContext, params: BaseModel, **inputs) -> dict[str, Any]

which returns the stage's outputs by port name.  Results are cached by
content (:mod:`sdflow.cache`): the stage type and version, its parameters,
the keys of its inputs, its plugin's settings, and what the stage's
``identify`` function says of the files it reads (a model's SHA-256, not
its name).  So a stage used by several consumers runs once, and a model
stays loaded between runs of one process.  Output stages always run.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TextIO

from pydantic import BaseModel

from sdflow.ast import Span
from sdflow.cache import CacheKey, CacheStore
from sdflow.diagnostics import Diagnostic, DiagnosticError
from sdflow.errors import Interrupted, StageError
from sdflow.graph import StageGraph, StageNode, upstream
from sdflow.identity import file_sha256
from sdflow.metadata import output_metadata
from sdflow.profile import StageMeter, StageProfile
from sdflow.text import visible


def output_folder_problem(folder: Path) -> str | None:
    """Why files cannot be written into ``folder`` (made when missing), or None."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    shown = visible(str(folder))
    if probe.is_symlink() and not probe.exists():
        return f"the output folder '{shown}' cannot be made: '{visible(str(probe))}' is a broken link"
    if not probe.is_dir():
        what = "is a file" if probe == folder else f"cannot be made: '{visible(str(probe))}' is a file"
        return f"the output folder '{shown}' {what}"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == folder else f"cannot be made in '{visible(str(probe))}', which is not writable"
        return f"the output folder '{shown}' {what}"
    return None


class RunError(DiagnosticError):
    """A stage failed at run time; carries the diagnostic at its line."""


@dataclass
class RunOptions:
    """How to run: what is the engine's (the output folder, the recipe's
    folder), and each plugin's settings object by plugin name (see
    :mod:`sdflow.settings`; a plugin without one given gets its defaults)."""

    output_dir: Path = Path("output")
    recipe_dir: Path | None = None
    settings: Mapping[str, BaseModel] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """What a run did: the files written, the stages run and reused, and,
    when the executor profiles, what each stage cost, in run order."""

    files: list[Path] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seconds: float = 0.0
    profile: list[StageProfile] = field(default_factory=list)


class Events:
    """Progress for people (a bar on a terminal, nothing when piped) and for
    tools (``--json``: one JSON object per line on ``json_stream``)."""

    def __init__(self, json_stream: TextIO | None = None, bar_stream: TextIO | None = None):
        self.json_stream = json_stream
        stream = bar_stream if bar_stream is not None else sys.stderr
        self.bar_stream = stream if (json_stream is None and _is_tty(stream)) else None
        # Not a terminal and no --json: a heading is a plain line there.
        self.line_stream = stream if (json_stream is None and self.bar_stream is None) else None
        # Two lines drawn in place need the cursor to move up: not on a dumb terminal.
        self.cursor_moves = os.environ.get("TERM", "") != "dumb"
        self.heading_text: str | None = None
        self._heading_drawn = False
        self._line_open = False  # a status line is drawn and not ended

    def emit(self, event: str, **fields: Any) -> None:
        if self.json_stream is not None:
            self.json_stream.write(json.dumps({"event": event, **fields}, default=str) + "\n")
            self.json_stream.flush()

    def warning(self, span: Span, message: str, **fields: Any) -> None:
        """A warning from a running stage: an event under ``--json``, else
        ``file:line:col: warning: ...`` on stderr (on a fresh line if a bar
        is drawn, and above the heading when one is drawn)."""
        if self.json_stream is not None:
            self.emit("warning", message=message, line=span.line, column=span.column, **fields)
            return
        text = f"{span.file}:{span.line}:{span.column}: warning: {visible(message)}\n"
        if self._heading_drawn:
            # Over the heading's line, then the heading again below it.
            self.bar_stream.write(f"\x1b[1A\r\x1b[K{text}\x1b[K")
            self._heading_drawn = False
            self.heading(self.heading_text)
            return
        prefix = "\n" if self.bar_stream is not None else ""
        sys.stderr.write(prefix + text)
        sys.stderr.flush()

    def heading(self, text: str | None) -> None:
        """A line that stays above the status line while work of several
        runs goes on (a sweep's point and its overall progress): on a
        terminal it is redrawn in place, the stage and step line under it;
        elsewhere each heading is a plain line (nothing under ``--json``,
        whose events say the same).  ``None`` ends it: the last heading
        stays, the line under it is cleared."""
        if text is None:
            if self._heading_drawn:
                self.bar_stream.write("\r\x1b[K")
                self.bar_stream.flush()
            self.heading_text, self._heading_drawn = None, False
            return
        self.heading_text = text
        if self.line_stream is not None:
            self.line_stream.write(visible(text) + "\n")
            self.line_stream.flush()
        if self.bar_stream is None:
            return
        if not self.cursor_moves:
            self.bar_stream.write(f"\r{visible(text):<72}\n")
        else:
            up = "\x1b[1A" if self._heading_drawn else ""
            self.bar_stream.write(f"{up}\r\x1b[K{_fit(visible(text))}\n")
            self._heading_drawn = True
        self.bar_stream.flush()

    def _line(self, text: str, final: bool) -> None:
        """The status line: under a heading, redrawn in place even when final."""
        if self._heading_drawn:
            self.bar_stream.write(f"\r\x1b[K{_fit(text)}")
        else:
            self.bar_stream.write(f"\r{text:<72}" + ("\n" if final else ""))
            self._line_open = not final
        self.bar_stream.flush()

    def end(self) -> None:
        """Leave what is drawn in place as it is (a run stopped short), so
        that what is printed next starts on a line of its own."""
        if self._heading_drawn or self._line_open:
            self.bar_stream.write("\n")
            self.bar_stream.flush()
        self.heading_text, self._heading_drawn, self._line_open = None, False, False

    def status(self, text: str, final: bool = False) -> None:
        """One line about a stage, rewritten in place until it is final."""
        if self.bar_stream is not None:
            self._line(text, final)

    def bar(self, label: str, done: int, total: int, seconds: float, final: bool = False) -> None:
        if self.bar_stream is None:
            return
        width = 24
        filled = int(width * done / total) if total else width
        self._line(f"{label:<28} {'#' * filled}{'.' * (width - filled)} {done}/{total} {seconds:6.1f}s", final)


def _fit(text: str) -> str:
    """``text`` cut to the terminal's width: a line that wrapped would
    throw off the cursor's move up to the heading."""
    import shutil

    from sdflow.text import display_width

    most = shutil.get_terminal_size((80, 24)).columns - 1
    if display_width(text) <= most:
        return text
    text = text[:most]
    while display_width(text) > most - 1:
        text = text[:-1]
    return text + "…"


def _is_tty(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Steps of one long piece of work inside a stage (sampling steps)."""

    def __init__(self, ctx: RunContext, total: int, what: str):
        self.ctx, self.total, self.what, self.done = ctx, total, what, 0
        self.start = time.perf_counter()

    def step(self, n: int = 1) -> None:
        """Count ``n`` steps done; raises :class:`Interrupted` if asked to stop."""
        self.done += n
        self.ctx.events.emit("step", stage=self.ctx.key, what=self.what, step=self.done, total=self.total)
        self.ctx.events.bar(f"{self.ctx.key} ({self.what})", self.done, self.total,
                            time.perf_counter() - self.start, final=self.done >= self.total)
        self.ctx.check_interrupt()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        return None


@dataclass(frozen=True)
class Upstream:
    """One stage of an output's lineage (:meth:`RunContext.lineage`)."""

    key: str
    stage: str  # the type's full name, plugin.id
    type: str  # its id
    params: Any  # the validated parameter model
    inputs: Mapping[str, tuple[str, str]]  # port -> (stage key, port)
    files: Mapping[str, str] = field(default_factory=dict)  # label -> SHA-256
    records: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None  # its name in the recipe (none for an output stage)
    spec: Any = None  # its StageSpec: ports, declared ComfyUI nodes


def stages_of(graph: StageGraph, keys: Iterable[str] | None = None) -> list[Upstream]:
    """The stages that lead to ``keys`` (default: every output stage), in
    the graph's run order, as :class:`Upstream` records with nothing yet
    identified or recorded: what an exporter is handed."""
    wanted = set(upstream(graph.nodes, list(keys if keys is not None else graph.order)))
    return [_upstream(graph.nodes[key]) for key in graph.order if key in wanted]


def _upstream(node: StageNode, files: Mapping[str, str] | None = None,
              records: Mapping[str, Any] | None = None) -> Upstream:
    return Upstream(node.key, node.spec.qualified, node.spec.id, node.params,
                    {port: (c.stage, c.port) for port, c in node.inputs.items()},
                    dict(files or {}), dict(records or {}), node.name, node.spec)


class RunContext:
    """What a stage's run function is handed besides its parameters and inputs.

    Its documented members are all a stage may use: the stage's key and type,
    its plugin's settings, the output and recipe folders, progress and
    cancellation, events, file identities, what the stage resolved, and the
    metadata an output file carries.
    """

    def __init__(self, executor: Executor, graph: StageGraph, node: StageNode, options: RunOptions,
                 plugin: str | None = None):
        self._executor, self._graph, self._node, self._options = executor, graph, node, options
        self._plugin = plugin or node.spec.plugin
        self.events = executor.events

    @property
    def key(self) -> str:
        """The stage's key in the recipe: its name, or ``type#n`` when unnamed."""
        return self._node.key

    @property
    def stage(self) -> str:
        """The stage type's full name, ``plugin.id``."""
        return self._node.spec.qualified

    @property
    def settings(self) -> Any:
        """The settings object of the stage's plugin (None if it has none)."""
        return self._executor.settings_for(self._plugin, self._options)

    @property
    def output_dir(self) -> Path:
        return Path(self._options.output_dir)

    @property
    def recipe_dir(self) -> Path | None:
        return None if self._options.recipe_dir is None else Path(self._options.recipe_dir)

    @property
    def recipe_text(self) -> str:
        return self._graph.recipe.source

    @property
    def recipe_file(self) -> str:
        return self._graph.recipe.file

    @property
    def params(self) -> Mapping[str, Any]:
        """The recipe's params as resolved (defaults, then ``--set``)."""
        return dict(self._graph.params)

    def from_command_line(self, value: Any) -> bool:
        """Whether ``value`` is exactly the value of a recipe param that the
        command line gave (``--set NAME=VALUE``).  A stage that confines the
        files it reads to some folders may let such a value through: the
        user typed it for this run, while a path written in a recipe comes
        with the recipe, from whoever wrote it."""
        params = self._graph.params
        return any(name in params and type(params[name]) is type(value) and params[name] == value
                   for name in self._graph.overridden)

    def call(self, stage_type: Any, params: Any, **inputs: Any) -> Mapping[str, Any]:
        """Run another stage type's function (another plugin's, say) as part
        of this stage, with a context that gives it its own plugin's
        settings; everything else (progress, files, records) is this stage's.
        ``stage_type`` is a registered :class:`~sdflow.declaration.StageType`."""
        plugin = getattr(stage_type, "plugin", None)
        context = RunContext(self._executor, self._graph, self._node, self._options, plugin)
        return stage_type.run(context, params, **inputs)

    def progress(self, total: int, what: str = "steps") -> Progress:
        """A counter for ``total`` steps of work; each ``step()`` reports
        progress and raises :class:`Interrupted` when the user asked to stop."""
        return Progress(self, total, what)

    def check_interrupt(self) -> None:
        if self._executor.interrupted:
            raise Interrupted()

    def emit(self, event: str, **fields: Any) -> None:
        """A JSON event (``--json``) from this stage."""
        self.events.emit(event, stage=self.key, **fields)

    def warn(self, message: str) -> None:
        """Tell the user something about this run that is not an error (an
        animated picture of which only the first frame is read): at the
        stage's recipe line on stderr, or a ``warning`` event under
        ``--json``.  Outputs downstream record it (``warnings``)."""
        self.events.warning(self._node.span, message, stage=self.key)
        records = self._executor.records.setdefault(self.key, {})
        records["warnings"] = [*records.get("warnings", []), message]

    def file_written(self, path: Path) -> None:
        """Report a file a stage wrote (listed in the run's result)."""
        self._executor.result.files.append(Path(path))
        self.emit("file_written", path=str(path))

    def identify_file(self, label: str, path: Path, verify: bool = False,
                      files: Iterable[str] | None = None) -> str:
        """The identity (SHA-256) of a file or folder this stage reads, under
        ``label`` (a model's name as the recipe gave it).  Recorded in the
        cache key when called from ``identify``, in the metadata of every
        output downstream, and kept for :meth:`file_path`.  For a folder,
        ``files`` (relative to it) names the files the stage reads, so that
        nothing else in it is read; without it every file in it is.  A path
        that is not a regular file or a folder is a :class:`StageError`."""
        identity = file_sha256(path, verify=verify, files=files)
        self._executor.identities.setdefault(self.key, {})[label] = identity
        self._executor.paths.setdefault(self.key, {})[label] = Path(path)
        return identity

    def file_identity(self, path: Path) -> str:
        """The identity (SHA-256) of a file or folder, recording nothing."""
        return file_sha256(path)

    def file_path(self, label: str) -> Path | None:
        """Where the file identified under ``label`` by this stage is (so a
        run function does not look it up, or hash it, a second time)."""
        return self._executor.paths.get(self.key, {}).get(label)

    def record(self, **facts: Any) -> None:
        """What the stage resolved: the device and dtype that actually ran,
        the file a name found...  Outputs downstream record it (``run``)."""
        self._executor.records.setdefault(self.key, {}).update(facts)

    def upstream_identities(self) -> dict[str, str]:
        """The files this stage and every stage it depends on identified
        (a model's label -> its SHA-256)."""
        return self._merged(self._executor.identities)

    def upstream_records(self) -> dict[str, Any]:
        """What this stage and every stage it depends on recorded (nearest wins)."""
        return self._merged(self._executor.records)

    def lineage(self, run_order: bool = False) -> list[Upstream]:
        """This stage and every stage it depends on, nearest first (or in
        the order they ran: ``run_order``): each one's key, name, type and
        its declaration, validated parameters, inputs (port -> the stage key
        and port it comes from), the files it identified and what it
        recorded.  For an output that describes how it was made in another
        tool's terms (A1111's ``parameters``, a ComfyUI graph)."""
        nodes, keys = self._graph.nodes, upstream(self._graph.nodes, [self.key])
        if run_order:
            wanted = set(keys)
            keys = [key for key in self._graph.order if key in wanted]
        return [_upstream(nodes[key], self._executor.identities.get(key), self._executor.records.get(key))
                for key in keys]

    def metadata(self, versions: Mapping[str, str] | None = None) -> dict[str, str]:
        """The text fields an output file carries to reproduce it (keys
        ``sdflow.*``; see :mod:`sdflow.metadata`): the recipe, its params,
        the files and stage versions that led here, what they resolved, and
        the versions of sdflow, Python, the plugins and ``versions``."""
        keys = upstream(self._graph.nodes, [self.key])
        stages = {k: f"{self._graph.nodes[k].spec.qualified} {self._graph.nodes[k].spec.version}" for k in keys}
        plugins = {self._graph.nodes[k].spec.plugin for k in keys}
        plugin_versions = {f"plugin {p}": self._executor.plugin_versions.get(p, "?") for p in sorted(plugins)}
        paths = {label: str(path) for label, path in self._merged(self._executor.paths).items()}
        return output_metadata(recipe=self.recipe_text, params=self.params,
                               files=self.upstream_identities(), paths=paths, stages=stages,
                               resolved=self.upstream_records(),
                               versions={**plugin_versions, **dict(versions or {})})

    def _merged(self, per_stage: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for key in reversed(upstream(self._graph.nodes, [self.key])):  # the nearest stage wins
            merged.update(per_stage.get(key, {}))
        return merged


def resolve_callable(target: Callable | str | None) -> Callable | None:
    """A plugin's ``run``/``identify``: a function, or ``"module:function"``
    imported only when the stage first runs (so declaring stays light)."""
    if target is None or callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class _Cached:
    outputs: Mapping[str, Any]
    identities: dict[str, str]
    records: dict[str, Any]


class Executor:
    """Runs checked graphs; keeps models cached between runs in one process.

    ``plugin_versions`` (plugin -> version) is what outputs record;
    ``explain`` is a stream that gets one line per stage saying why it ran
    or was reused (``sdflow run --explain``); ``profile`` measures each
    stage's wall time and memory (:mod:`sdflow.profile`) into
    ``RunResult.profile`` and its ``stage_done`` event (``sdflow run --profile``).
    """

    def __init__(self, events: Events | None = None, cache: CacheStore | None = None,
                 plugin_versions: Mapping[str, str] | None = None, explain: TextIO | None = None,
                 profile: bool = False):
        self.events = events or Events()
        self.cache = cache if cache is not None else CacheStore()
        self.plugin_versions = dict(plugin_versions or {})
        self.explain = explain
        self.profile = profile
        self.keys: dict[str, CacheKey] = {}  # each stage's key in the latest run
        self.previous: dict[str, CacheKey] = {}  # and in the run before that
        self.identities: dict[str, dict[str, str]] = {}
        self.paths: dict[str, dict[str, Path]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.interrupted = False
        self.result = RunResult()
        self._settings: dict[str, Any] = {}

    def interrupt(self) -> None:
        """Ask the run to stop at the next step (safe from a signal handler)."""
        self.interrupted = True

    def settings_for(self, plugin: str, options: RunOptions) -> Any:
        return options.settings.get(plugin, self._settings.get(plugin))

    def run(self, graph: StageGraph, options: RunOptions) -> RunResult:
        """Run every stage that leads to an output; raises :class:`RunError`
        when a stage fails and :class:`Interrupted` when asked to stop."""
        self.result = RunResult()
        self.interrupted = False
        self.previous, self.keys = {**self.previous, **self.keys}, {}
        self.identities, self.paths, self.records = {}, {}, {}
        self._settings = {plugin: model() for plugin, model in graph.settings_models.items()}
        start = time.perf_counter()
        self._preflight(graph, options)
        results: dict[str, Mapping[str, Any]] = {}
        group, uses = _future_uses(graph)
        members: dict[str, list[str]] = {}
        for stage_key, shared in group.items():
            members.setdefault(shared, []).append(stage_key)
        self.events.emit("run_started", stages=list(graph.order))
        try:
            for key in graph.order:
                node = graph.nodes[key]
                ctx = RunContext(self, graph, node, options)
                inputs = {port: None for port, spec in node.spec.inputs.items() if spec.optional}
                inputs.update({port: results[c.stage][c.port] for port, c in node.inputs.items()})
                results[key] = self._stage(ctx, graph, node, inputs)
                for used in [key, *(c.stage for c in node.inputs.values())]:
                    uses[group[used]] -= 1
                    if uses[group[used]] == 0:  # no later stage needs it: let it go
                        for member in members[group[used]]:
                            if results.pop(member, None) is not None:
                                self.cache.release(self.keys[member].digest)
        finally:
            self.cache.end_run()
        self.result.seconds = time.perf_counter() - start
        self.events.emit("run_done", seconds=round(self.result.seconds, 3),
                         files=[str(f) for f in self.result.files])
        return self.result

    def identify(self, graph: StageGraph, options: RunOptions) -> dict[str, dict[str, tuple[str, Path]]]:
        """Every file the stages would read, found and identified as a run's
        preflight does, nothing run or loaded (``sdflow lock``, ``--locked``):
        per stage, a label -> (SHA-256, path).  Raises :class:`RunError`
        with every problem at once."""
        self.identities, self.paths, self.records = {}, {}, {}
        self._settings = {plugin: model() for plugin, model in graph.settings_models.items()}
        problems = self._identify_all(graph, options)
        if problems:
            raise RunError(problems)
        return {key: {label: (sha, self.paths[key][label]) for label, sha in found.items()}
                for key, found in self.identities.items()}

    def _preflight(self, graph: StageGraph, options: RunOptions) -> None:
        """What can be known before any stage runs, checked before any does:
        the output folder (when the recipe writes files), and every file the
        stages identify (a missing checkpoint is found before the first model
        loads, not after minutes of sampling).  Every problem at once."""
        problems: list[Diagnostic] = []
        if graph.outputs:
            problem = output_folder_problem(options.output_dir)
            if problem is not None:
                problems.append(Diagnostic("E604", problem, None,
                                           "give --output a folder you can write to (it is made if missing)"))
        problems += self._identify_all(graph, options)
        if problems:
            raise RunError(problems)

    def _identify_all(self, graph: StageGraph, options: RunOptions) -> list[Diagnostic]:
        problems: list[Diagnostic] = []
        for key in graph.order:
            node = graph.nodes[key]
            try:
                self._identify(RunContext(self, graph, node, options), node)
            except RunError as err:
                problems.extend(err.diagnostics)
        return problems

    def _stage(self, ctx: RunContext, graph: StageGraph, node: StageNode,
               inputs: dict[str, Any]) -> Mapping[str, Any]:
        key = CacheKey(
            stage=node.spec.qualified,
            version=node.spec.version,
            params=node.params.model_dump(mode="json"),
            inputs={p: f"{self.keys[c.stage].digest}:{c.port}" for p, c in node.inputs.items()},
            files=dict(self.identities.get(node.key, {})),
            settings=_dump(ctx.settings),
        )
        self.keys[node.key] = key
        cached = None if node.spec.output else self.cache.get(key.digest)
        if cached is not None:
            self.identities[node.key] = {**cached.identities, **self.identities.get(node.key, {})}
            self.records[node.key] = dict(cached.records)
            self.result.cached.append(node.key)
            reason = self._reason(node, key, cached=True)
            self._explain(node, key, reason)
            measured = self._measured(StageMeter() if self.profile else None, node, True, 0.0)
            self.events.emit("stage_done", stage=node.key, type=node.spec.id, cached=True, seconds=0.0,
                             cache_key=key.digest[:16], reason=reason, **measured)
            return cached.outputs
        reason = self._reason(node, key, cached=False)
        outputs = self._run_stage(ctx, node, inputs, key, reason)
        if not node.spec.output:
            persistent = any(p.type in graph.persistent_types for p in node.spec.outputs.values())
            entry = _Cached(outputs, dict(self.identities.get(node.key, {})), dict(self.records.get(node.key, {})))
            self.cache.put(key.digest, entry, persistent)
        self.result.ran.append(node.key)
        return outputs

    def _reason(self, node: StageNode, key: CacheKey, cached: bool) -> str:
        if cached:
            return "reused: nothing it depends on changed"
        if node.spec.output:
            return "ran: output stages always run"
        before = self.previous.get(node.key)
        if before is None:
            return "ran: first run of this stage in this process"
        changes = key.differences(before)
        if not changes:
            return "ran: its earlier result was not kept (only models stay between runs)"
        return "ran: " + "; ".join(changes)

    def _explain(self, node: StageNode, key: CacheKey, reason: str) -> None:
        if self.explain is not None:
            self.explain.write(f"{node.key} ({node.spec.id}) [{key.digest[:12]}]: {reason}\n")
            self.explain.flush()

    def _identify(self, ctx: RunContext, node: StageNode) -> None:
        identify = resolve_callable(getattr(node.spec, "identify", None))
        if identify is None:
            return
        try:
            found = dict(identify(ctx, node.params) or {})
        except StageError as err:
            raise RunError([_diagnostic(node, err.code, err.message, err.help)]) from None
        self.identities.setdefault(node.key, {}).update(found)

    def _run_stage(self, ctx: RunContext, node: StageNode, inputs: dict[str, Any], key: CacheKey,
                   reason: str) -> Mapping[str, Any]:
        run = resolve_callable(node.spec.run)
        if run is None:
            raise RunError([_diagnostic(node, "E603", f"stage type '{node.spec.id}' cannot run",
                                        f"plugin '{node.spec.plugin}' declares it without a run function")])
        self._explain(node, key, reason)
        self.events.emit("stage_started", stage=node.key, type=node.spec.id, line=node.span.line)
        label = f"{node.key} ({node.spec.id})"
        self.events.status(f"{label} ...")
        meter = StageMeter() if self.profile else None
        start = time.perf_counter()
        try:
            outputs = run(ctx, node.params, **inputs) or {}
        except (Interrupted, KeyboardInterrupt):
            raise Interrupted() from None
        except StageError as err:
            raise RunError([_diagnostic(node, err.code, err.message, err.help)]) from None
        except Exception as err:  # a stage's own failure, shown at its line
            inputs_text = ", ".join(f"{p}={c.stage}.{c.port}" for p, c in node.inputs.items())
            raise RunError([_diagnostic(
                node, "E602", f"stage '{node.key}' ({node.spec.id}) failed: {type(err).__name__}: {err}",
                f"its inputs: {inputs_text}" if inputs_text else None)]) from err
        missing = set(node.spec.outputs) - set(outputs)
        if missing:
            raise RunError([_diagnostic(node, "E603", f"stage type '{node.spec.id}' gave no {sorted(missing)}",
                                        f"a bug in plugin '{node.spec.plugin}'")])
        seconds = time.perf_counter() - start
        self.events.status(f"{label} done in {seconds:.2f}s", final=True)
        measured = self._measured(meter, node, False, seconds)
        self.events.emit("stage_done", stage=node.key, type=node.spec.id, cached=False, seconds=round(seconds, 3),
                         cache_key=key.digest[:16], reason=reason, **measured)
        return outputs

    def _measured(self, meter: StageMeter | None, node: StageNode, cached: bool, seconds: float) -> dict[str, Any]:
        """Keep the stage's profile row (when profiling) and return its
        fields for ``stage_done``; nothing when not profiling."""
        if meter is None:
            return {}
        row = meter.stop(node.key, node.spec.id, cached, seconds)
        self.result.profile.append(row)
        return row.event_fields()


def _future_uses(graph: StageGraph) -> tuple[dict[str, str], dict[str, int]]:
    """Which stages will share a result, and how often each result is used.

    Stages of one type with the same parameters and the same inputs (a
    prompt encoded twice) will have the same cache key, so they form one
    group; a group's result is used once by each of its stages and once by
    each stage that consumes one of them.  When the count falls to zero no
    later stage needs the result.  (Files named by ``identify`` are left out
    of this grouping: they can only split a group, never join two.)
    """
    group: dict[str, str] = {}
    for key in graph.order:
        node = graph.nodes[key]
        shape = {"stage": node.spec.qualified, "params": node.params.model_dump(mode="json"),
                 "inputs": {p: f"{group[c.stage]}:{c.port}" for p, c in node.inputs.items()}}
        group[key] = key if node.spec.output else json.dumps(shape, sort_keys=True, default=str)
    uses: dict[str, int] = {}
    for key in graph.order:
        for used in [key, *(c.stage for c in graph.nodes[key].inputs.values())]:
            uses[group[used]] = uses.get(group[used], 0) + 1
    return group, uses


def _dump(settings: Any) -> dict[str, Any]:
    return settings.model_dump(mode="json") if isinstance(settings, BaseModel) else {}


def _diagnostic(node: StageNode, code: str, message: str, help: str | None) -> Diagnostic:
    span = node.span
    head = Span(span.file, span.line, span.column, span.line,
                span.end_column if span.end_line == span.line else span.column + 1)
    return Diagnostic(code, message, head, help)

