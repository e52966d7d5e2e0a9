"""Stage types, port types and settings, gathered from plugins through pluggy.

Every plugin (the built-in diffusion stages included) is found through the
``sdflow`` entry-point group and registered with the same call.  Each hook is
handed a :class:`PluginRegistry` bound to the calling plugin, so that every
stage type knows where it came from, and a plugin that fails to import, or
adds a bad stage type, is reported by name while the others keep working.

Stage types are namespaced by plugin: ``diffusion.sample`` is the full name,
``sample`` the short one a recipe may use while one plugin alone defines it.
"""

from __future__ import annotations

import ast
import importlib.util
import keyword
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

import pluggy
from pydantic import BaseModel

from sdflow import hookspecs
from sdflow.declaration import ComfyNode, StageType, comfy_nodes, stage_types_in

ENTRY_POINT_GROUP = "sdflow"
DISABLE_ENV = "SDFLOW_DISABLE_PLUGINS"
TRACE_ENV = "SDFLOW_TRACE_PLUGINS"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PORT_TYPE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_FORMAT = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True, slots=True)
class PortType:
    """A kind of value that flows between stages: MODEL, LATENT, IMAGE...

    ``persistent`` values (models) stay cached while the process runs;
    others are dropped as soon as no remaining stage of a run needs them.
    """

    name: str
    doc: str
    plugin: str
    persistent: bool = False


@dataclass(frozen=True, slots=True)
class Port:
    """A stage's input or output: its port type, a line of docs, and for an
    input whether it may be left out (the run function then gets None)."""

    type: str
    doc: str = ""
    optional: bool = False


@dataclass(frozen=True)
class StageSpec:
    """Everything the checker and the executor know of a stage type.

    ``params`` is a pydantic model of the literal arguments (validated in
    strict mode); ``inputs`` and ``outputs`` are typed ports that connect
    stages.  An ``output`` stage (save_image) is one a recipe runs for: only
    stages leading to one are run.  ``run`` executes it and ``identify``
    names the files it reads (for the cache key and the outputs' metadata);
    each is a function, or a ``"module:function"`` string verified when the
    registry is built and imported when the stage first runs.  The checker
    never calls them.
    """

    id: str
    params: type[BaseModel]
    inputs: Mapping[str, Port]
    outputs: Mapping[str, Port]
    output: bool
    version: str
    doc: str
    plugin: str
    run: Callable[..., Any] | str | None = None
    identify: Callable[..., Any] | str | None = None
    comfyui: tuple[ComfyNode, ...] = ()  # the ComfyUI nodes it stands for

    @property
    def qualified(self) -> str:
        """The stage type's full name, ``plugin.id``."""
        return f"{namespace(self.plugin)}.{self.id}"

    @property
    def argument_names(self) -> list[str]:
        return list(self.inputs) + list(self.params.model_fields)


@dataclass(frozen=True)
class SettingsSpec:
    """A plugin's run settings: a pydantic model whose fields become
    ``sdflow run`` flags and environment variables (see :mod:`sdflow.settings`)."""

    plugin: str
    model: type[BaseModel]


@dataclass
class PluginInfo:
    """A plugin as ``sdflow plugins`` shows it."""

    name: str
    version: str
    module: str
    stages: list[str] = field(default_factory=list)
    port_types: list[str] = field(default_factory=list)
    settings: type[BaseModel] | None = None
    importers: list[str] = field(default_factory=list)
    exporters: list[str] = field(default_factory=list)
    error: str | None = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class PluginProblem:
    """Something wrong with a plugin: shown by every command, fatal only
    with ``--strict-plugins``."""

    plugin: str
    message: str
    stage: str | None = None  # the stage type it kept from registering

    def __str__(self) -> str:
        return f"plugin '{self.plugin}': {self.message}"


class PluginError(Exception):
    """A stage or port type that a plugin tried to add is not valid."""


def namespace(plugin: str) -> str:
    """A plugin's name as the first part of its stage types' full names."""
    return re.sub(r"\W", "_", plugin)


class Registry:
    """The stage types, port types and settings of every loaded plugin."""

    def __init__(self) -> None:
        self.stages: dict[str, StageSpec] = {}  # by full name, "plugin.id"
        self.port_types: dict[str, PortType] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self.settings: dict[str, SettingsSpec] = {}
        self.importers: dict[str, Importer] = {}  # by name, in registration order
        self.exporters: dict[str, Exporter] = {}  # by format name
        self.problems: list[PluginProblem] = []
        self._short: dict[str, list[str]] = {}

    def for_plugin(self, name: str) -> PluginRegistry:
        return PluginRegistry(self, self.plugins[name])

    def failed_plugins(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]

    def candidates(self, name: str) -> list[StageSpec]:
        """The stage types a recipe's ``name`` may mean: the one of that full
        name, or every one of that short name (several: ambiguous)."""
        if name in self.stages:
            return [self.stages[name]]
        return [self.stages[q] for q in self._short.get(name, [])]

    def stage(self, name: str) -> StageSpec | None:
        """The stage type ``name`` (full or short) means, or None when no
        plugin defines it or several do."""
        found = self.candidates(name)
        return found[0] if len(found) == 1 else None

    def names(self) -> list[str]:
        """Every name a recipe can call a stage type by."""
        return [*self._short, *self.stages]

    def broken_stage(self, name: str) -> PluginProblem | None:
        """The problem that kept stage type ``name`` from registering, if any."""
        short = name.rpartition(".")[2]
        return next((p for p in self.problems if p.stage in (name, short)), None)

    def _add(self, spec: StageSpec) -> None:
        self.stages[spec.qualified] = spec
        self._short.setdefault(spec.id, []).append(spec.qualified)


@dataclass(frozen=True)
class Importer:
    """A reader of another tool's files (``sdflow import``)."""

    name: str
    plugin: str
    read: Callable[[Any], str | None]
    doc: str = ""


@dataclass(frozen=True)
class Exporter:
    """A writer of a recipe in another tool's format (``sdflow export``)."""

    name: str
    plugin: str
    write: Callable[[Any], str]
    doc: str = ""


class PluginRegistry:
    """What a plugin's hooks add to: the registry, seen from one plugin."""

    def __init__(self, registry: Registry, plugin: PluginInfo) -> None:
        self._registry = registry
        self._plugin = plugin

    @property
    def plugin_name(self) -> str:
        return self._plugin.name

    def _problem(self, message: str, stage: str | None = None) -> None:
        self._registry.problems.append(PluginProblem(self._plugin.name, message, stage))

    def add_port_type(self, name: str, doc: str = "", *, persistent: bool = False) -> None:
        """Declare a port type (upper case, such as ``LATENT``).

        ``persistent``: its values (models) stay cached while the process
        runs.  A bad or duplicate one is recorded as a problem of this plugin.
        """
        try:
            self._add_port_type(name, doc, persistent)
        except PluginError as exc:
            self._problem(str(exc))

    def _add_port_type(self, name: str, doc: str, persistent: bool) -> None:
        if not isinstance(name, str) or not _PORT_TYPE.match(name):
            raise PluginError(f"port type {name!r} must be upper case letters, digits and '_'")
        existing = self._registry.port_types.get(name)
        if existing is not None:
            if existing.plugin == self._plugin.name:
                return
            raise PluginError(f"port type {name!r} is already defined by plugin '{existing.plugin}'")
        self._registry.port_types[name] = PortType(name, doc, self._plugin.name, bool(persistent))
        self._plugin.port_types.append(name)

    def add_settings(self, model: type[BaseModel]) -> None:
        """Declare this plugin's run settings: a pydantic model whose fields
        (each with a default and a description) become ``sdflow run`` flags
        and environment variables.  A stage reads them as ``ctx.settings``."""
        from sdflow.settings import settings_problem

        problem = settings_problem(model, self._registry.settings.values())
        if problem is not None:
            self._problem(problem)
            return
        self._registry.settings[self._plugin.name] = SettingsSpec(self._plugin.name, model)
        self._plugin.settings = model

    def add_importer(self, name: str, read: Callable[[Any], str | None], doc: str = "") -> None:
        """Add a reader of another tool's files for ``sdflow import``:
        ``read(path)`` gives a recipe's text, or None when the file is not
        of its kind (see :func:`sdflow.hookspecs.sdflow_importers`)."""
        if not isinstance(name, str) or not name or not callable(read):
            self._problem(f"importer {name!r}: a name and a function read(path) are needed")
            return
        if name in self._registry.importers:
            self._problem(f"importer {name!r} is already added by plugin '{self._registry.importers[name].plugin}'")
            return
        self._registry.importers[name] = Importer(name, self._plugin.name, read, doc)
        self._plugin.importers.append(name)

    def add_exporter(self, name: str, write: Callable[[Any], str], doc: str = "") -> None:
        """Add a writer of recipes in another tool's format for ``sdflow
        export --format name``: ``write(stages)`` gives the text (see
        :func:`sdflow.hookspecs.sdflow_exporters`)."""
        if not isinstance(name, str) or not _FORMAT.match(name) or not callable(write):
            self._problem(f"exporter {name!r}: a name (letters, digits, '-') and a function write(stages) are needed")
            return
        if name in self._registry.exporters:
            self._problem(f"exporter {name!r} is already added by plugin '{self._registry.exporters[name].plugin}'")
            return
        self._registry.exporters[name] = Exporter(name, self._plugin.name, write, doc)
        self._plugin.exporters.append(name)

    @property
    def stages(self) -> Mapping[str, StageSpec]:
        """Every stage type registered so far, by full name (read only): an
        importer reads the ComfyUI nodes they declare."""
        return MappingProxyType(self._registry.stages)

    def add_stages(self, source: Any) -> None:
        """Register every stage type (see :func:`sdflow.plugin.stage`) that a
        module, a package of modules, or an iterable of them holds."""
        if isinstance(source, StageType):
            types: Iterable[StageType] = [source]
        elif isinstance(source, (list, tuple)):
            types = source
        else:
            try:
                types = list(stage_types_in(source))
            except Exception as exc:  # a module that fails to import is this plugin's problem
                self._problem(f"cannot import {getattr(source, '__name__', source)}: {_reason(exc)}")
                return
        for declared in types:
            if declared.plugin is None:
                declared.plugin = self.plugin_name  # so that ctx.call gives it its own plugin's settings
            self.add_stage(declared.name, params=declared.params, inputs=declared.inputs,
                           outputs=declared.outputs, output=declared.output, version=declared.version,
                           doc=declared.doc, run=declared.run, identify=declared.identify,
                           comfyui=declared.comfyui)

    def add_stage(
        self,
        id: str,
        *,
        params: type[BaseModel],
        inputs: Mapping[str, str | Port] | None = None,
        outputs: Mapping[str, str | Port] | None = None,
        output: bool = False,
        version: str | None = None,
        doc: str = "",
        run: Callable[..., Any] | str | None = None,
        identify: Callable[..., Any] | str | None = None,
        comfyui: ComfyNode | Sequence[ComfyNode] | None = None,
    ) -> StageSpec | None:
        """Declare a stage type (the lower-level form of :func:`sdflow.plugin.stage`).

        ``params`` is a pydantic model of its literal arguments; ``inputs``
        and ``outputs`` map port names to port types (a type name or a
        :class:`Port`); ``output`` marks a stage that a recipe runs for;
        ``version`` (default: the plugin's) is part of a result's cache key;
        ``comfyui`` is the ComfyUI node (or nodes) it stands for. ``run`` and ``identify`` may be ``"module:function"`` strings, so that
        declaring imports nothing heavy; they are verified here, without
        importing the module.  A bad or duplicate stage type is recorded as
        a problem of this plugin and left out; the plugin's other stage types
        still register.
        """
        try:
            spec = self._make_spec(id, params, inputs, outputs, output, version, doc, run, identify,
                                   comfy_nodes(comfyui))
            self._check(spec)
        except PluginError as exc:
            self._problem(str(exc), id if isinstance(id, str) else None)
            return None
        self._registry._add(spec)
        self._plugin.stages.append(id)
        return spec

    def _make_spec(self, id, params, inputs, outputs, output, version, doc, run, identify, comfyui) -> StageSpec:
        try:
            inputs = {k: _port(v) for k, v in (inputs or {}).items()}
            outputs = {k: _port(v) for k, v in (outputs or {}).items()}
        except (AttributeError, TypeError) as exc:
            raise PluginError(f"stage type {id!r}: inputs and outputs map names to port types ({exc})")
        return StageSpec(
            id=id,
            params=params,
            inputs=inputs,
            outputs=outputs,
            output=bool(output),
            version=str(version or self._plugin.version),
            doc=doc,
            plugin=self._plugin.name,
            run=run,
            identify=identify,
            comfyui=comfyui,
        )

    def _check(self, spec: StageSpec) -> None:
        if not isinstance(spec.id, str) or not _IDENT.match(spec.id) or keyword.iskeyword(spec.id):
            raise PluginError(f"stage id {spec.id!r} is not a valid name")
        existing = self._registry.stages.get(spec.qualified)
        if existing is not None:
            raise PluginError(f"stage type '{spec.id}' is defined twice by this plugin")
        if not (isinstance(spec.params, type) and issubclass(spec.params, BaseModel)) or spec.params is BaseModel:
            raise PluginError(f"stage type '{spec.id}': params must be a pydantic BaseModel class")
        if not spec.outputs and not spec.output:
            raise PluginError(f"stage type '{spec.id}' has no outputs and is not an output stage")
        clash = set(spec.inputs) & set(spec.params.model_fields)
        if clash:
            raise PluginError(f"stage type '{spec.id}': {sorted(clash)} are both inputs and parameters")
        for name, port in [*spec.inputs.items(), *spec.outputs.items()]:
            if not _IDENT.match(name):
                raise PluginError(f"stage type '{spec.id}': port name {name!r} is not a valid name")
            if port.type not in self._registry.port_types:
                raise PluginError(
                    f"stage type '{spec.id}': port '{name}' has unknown port type '{port.type}'"
                )
        for node in spec.comfyui:
            problem = _comfy_problem(spec, node)
            if problem:
                raise PluginError(f"stage type '{spec.id}': its ComfyUI node {problem}")
        for role, target in (("run", spec.run), ("identify", spec.identify)):
            problem = reference_problem(target)
            if problem is not None:
                raise PluginError(f"stage type '{spec.id}': its {role} function {problem}")


def _comfy_problem(spec: StageSpec, node: Any) -> str | None:
    """What is wrong with a stage type's ComfyUI node declaration, if anything:
    every sdflow name it gives must be one of the stage's."""
    if not isinstance(node, ComfyNode) or not isinstance(node.class_type, str) or not node.class_type:
        return f"{node!r} is not a ComfyNode with a class_type"
    wrong = [f"input {port!r}" for port in node.links.values() if port not in spec.inputs]
    wrong += [f"parameter {name!r}" for name in [*node.params.values(), *node.values, *node.fixed]
              if name not in spec.params.model_fields]
    outputs = node.outputs.split() if node.outputs is not None else list(spec.outputs)
    wrong += [f"output {name!r}" for name in outputs if name not in spec.outputs]
    if wrong:
        return f"{node.class_type} names no such {', '.join(wrong)}"
    return None


def _port(value: str | Port) -> Port:
    if isinstance(value, str):
        return Port(value)
    if isinstance(value, Port):
        return value
    raise TypeError(f"{value!r} is not a port type")


def reference_problem(target: Callable[..., Any] | str | None) -> str | None:
    """Why a ``run``/``identify`` reference cannot work, or None.

    A ``"module:function"`` string is checked without importing the module
    (which may import torch): the module must be found, and its source must
    define or import ``function`` at its top level.
    """
    if target is None or callable(target):
        return None
    if not isinstance(target, str):
        return f"must be a function or a 'module:function' string, not {type(target).__name__}"
    module, sep, name = target.partition(":")
    if not sep or not module or not _IDENT.match(name):
        return f"'{target}' is not written 'module:function'"
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        return f"'{target}': cannot look up module '{module}' ({_reason(exc)})"
    if found is None:
        return f"'{target}': no module named '{module}'"
    if module in sys.modules:
        return None if hasattr(sys.modules[module], name) else f"'{target}': '{module}' has no '{name}'"
    names = _top_level_names(found.origin)
    if names is not None and name not in names:
        return f"'{target}': '{module}' has no '{name}'"
    return None


def _top_level_names(origin: str | None) -> set[str] | None:
    """The names a Python source file binds at its top level (None when it
    has no readable source: a compiled module is trusted)."""
    if not origin or not origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


# building the registry ----------------------------------------------------


def disabled_plugins() -> set[str]:
    """The plugins ``SDFLOW_DISABLE_PLUGINS=a,b`` turns off."""
    return {name.strip() for name in os.environ.get(DISABLE_ENV, "").split(",") if name.strip()}


def _tracing() -> bool:
    return os.environ.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _trace(text: str) -> None:
    print(f"sdflow: trace: {text}", file=sys.stderr)


def plugin_manager(entry_points: bool = True) -> tuple[pluggy.PluginManager, list[PluginProblem], dict]:
    """A plugin manager with every installed plugin registered.

    Returns the manager, the plugins that failed to load (by name, with the
    reason), and each loaded plugin's distribution version.  Plugins are
    loaded one by one, so one broken plugin cannot stop the others.  Those
    named in ``SDFLOW_DISABLE_PLUGINS`` are blocked, not imported.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in disabled_plugins():
        pm.set_blocked(name)
    problems: list[PluginProblem] = []
    versions: dict[str, str] = {}
    pm.sdflow_disabled = []  # the entry points SDFLOW_DISABLE_PLUGINS kept out, for `sdflow plugins`
    if entry_points:
        for ep in _entry_points():
            if pm.is_blocked(ep.name):
                pm.sdflow_disabled.append(ep)
                continue
            if pm.get_plugin(ep.name) is not None:
                continue
            version = ep.dist.version if ep.dist is not None else "unknown"
            versions[ep.name] = version
            if _tracing():
                _trace(f"loading plugin '{ep.name}' {version} from {ep.value}")
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
                pm.check_pending()
            except Exception as exc:  # a plugin's own bug must not stop sdflow
                if pm.get_plugin(ep.name) is not None:
                    pm.unregister(name=ep.name)
                problems.append(PluginProblem(ep.name, f"failed to load ({ep.value}): {_reason(exc)}"))
    return pm, problems, versions


def _entry_points() -> list[metadata.EntryPoint]:
    seen: set[str] = set()
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in seen:  # a package installed twice appears twice
            seen.add(ep.name)
            found.append(ep)
    # sdflow's own plugins register first, so that a third-party plugin that
    # reuses a built-in port type is the one reported, whatever its name.
    return sorted(found, key=lambda ep: (_dist_name(ep) != "sdflow", ep.name))


def _dist_name(ep: metadata.EntryPoint) -> str:
    return (ep.dist.metadata["Name"] or "").lower() if ep.dist is not None else ""


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


HOOK_ORDER = ("sdflow_port_types", "sdflow_settings", "sdflow_stage_types", "sdflow_importers",
              "sdflow_exporters")


def build_registry(
    pm: pluggy.PluginManager,
    problems: Iterable[PluginProblem] = (),
    versions: Mapping[str, str] | None = None,
) -> Registry:
    """Call every plugin's hooks and gather what they add.

    Each plugin's hook is called on its own (rather than through pluggy's
    one call for all) so that an exception, or a bad stage type, is
    attributed to the plugin that caused it, and the rest still register.
    """
    registry = Registry()
    versions = dict(versions or {})
    registry.problems.extend(problems)
    for problem in problems:
        registry.plugins[problem.plugin] = PluginInfo(
            problem.plugin, versions.get(problem.plugin, "unknown"), "", error=problem.message
        )
    for ep in getattr(pm, "sdflow_disabled", ()):
        if ep.name not in registry.plugins:
            version = ep.dist.version if ep.dist is not None else "unknown"
            registry.plugins[ep.name] = PluginInfo(ep.name, version, ep.value, disabled=True)
    for name, plugin in pm.list_name_plugin():
        if name is None or plugin is None:
            continue
        module = getattr(plugin, "__name__", type(plugin).__name__)
        version = versions.get(name) or str(getattr(plugin, "__version__", "0"))
        registry.plugins[name] = PluginInfo(name, version, module)
    for hook_name in HOOK_ORDER:
        # In registration order, so a port type already taken stays with the
        # plugin that came first and the clash is blamed on the newcomer.
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = registry.plugins.get(impl.plugin_name)
            if info is None:
                continue
            if _tracing():
                _trace(f"{hook_name}(registry) -> plugin '{info.name}'")
            _call_hook(impl.function, registry.for_plugin(impl.plugin_name), registry, info)
    return registry


def _call_hook(function, view: PluginRegistry, registry: Registry, info: PluginInfo) -> None:
    try:
        function(registry=view)
    except Exception as exc:  # a plugin's own bug must not stop sdflow
        message = f"{function.__name__} raised {_reason(exc)}"
        registry.problems.append(PluginProblem(info.name, message))
        info.error = info.error or message


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The registry of every installed plugin, built once per process."""
    global _DEFAULT
    if _DEFAULT is None:
        pm, problems, versions = plugin_manager()
        _DEFAULT = build_registry(pm, problems, versions)
    return _DEFAULT
