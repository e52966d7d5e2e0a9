"""Stage types and port types, gathered from plugins through pluggy.

Every plugin (the built-in diffusion stages included) is found through the
``sdflow`` entry-point group and registered with the same call.  Each hook is
handed a :class:`PluginRegistry` bound to the calling plugin, so that every
stage type knows where it came from, and a plugin that fails to import, or
adds a bad stage type, is reported by name while the others keep working.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable, Mapping

import pluggy
from pydantic import BaseModel

from sdflow import hookspecs

ENTRY_POINT_GROUP = "sdflow"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PORT_TYPE = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclass(frozen=True, slots=True)
class PortType:
    """A kind of value that flows between stages: MODEL, LATENT, IMAGE..."""

    name: str
    doc: str
    plugin: str


@dataclass(frozen=True, slots=True)
class Port:
    """A stage's input or output: its port type, a line of docs, and for an
    input whether it may be left out."""

    type: str
    doc: str = ""
    optional: bool = False


@dataclass(frozen=True)
class StageSpec:
    """Everything the checker knows of a stage type.

    ``params`` is a pydantic model of the literal arguments (validated in
    strict mode); ``inputs`` and ``outputs`` are typed ports that connect
    stages.  An ``output`` stage (save_image) is one a recipe runs for: only
    stages leading to one are run.  ``run`` is the function that executes it
    and ``identify`` the one that names the files it reads (for the cache
    key); each is a function or a ``"module:function"`` string imported when
    the stage first runs.  The checker never calls them.
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

    @property
    def argument_names(self) -> list[str]:
        return list(self.inputs) + list(self.params.model_fields)


@dataclass
class PluginInfo:
    """A plugin as ``sdflow plugins`` shows it."""

    name: str
    version: str
    module: str
    stages: list[str] = field(default_factory=list)
    port_types: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class PluginProblem:
    """Something wrong with a plugin: shown by every command, never fatal."""

    plugin: str
    message: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}': {self.message}"


class PluginError(Exception):
    """A stage or port type that a plugin tried to add is not valid."""


class Registry:
    """The stage types and port types of every loaded plugin."""

    def __init__(self) -> None:
        self.stages: dict[str, StageSpec] = {}
        self.port_types: dict[str, PortType] = {}
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[PluginProblem] = []

    def for_plugin(self, name: str) -> PluginRegistry:
        return PluginRegistry(self, self.plugins[name])

    def failed_plugins(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]


class PluginRegistry:
    """What a plugin's hooks add to: the registry, seen from one plugin."""

    def __init__(self, registry: Registry, plugin: PluginInfo) -> None:
        self._registry = registry
        self._plugin = plugin

    @property
    def plugin_name(self) -> str:
        return self._plugin.name

    def add_port_type(self, name: str, doc: str = "") -> None:
        """Declare a port type (upper case, such as ``LATENT``).

        A bad or duplicate one is recorded as a problem of this plugin.
        """
        try:
            self._add_port_type(name, doc)
        except PluginError as exc:
            self._registry.problems.append(PluginProblem(self._plugin.name, str(exc)))

    def _add_port_type(self, name: str, doc: str) -> None:
        if not isinstance(name, str) or not _PORT_TYPE.match(name):
            raise PluginError(f"port type {name!r} must be upper case letters, digits and '_'")
        existing = self._registry.port_types.get(name)
        if existing is not None:
            if existing.plugin == self._plugin.name:
                return
            raise PluginError(f"port type {name!r} is already defined by plugin '{existing.plugin}'")
        self._registry.port_types[name] = PortType(name, doc, self._plugin.name)
        self._plugin.port_types.append(name)

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
    ) -> StageSpec | None:
        """Declare a stage type.

        ``params`` is a pydantic model of its literal arguments; ``inputs``
        and ``outputs`` map port names to port types (a type name or a
        :class:`Port`); ``output`` marks a stage that a recipe runs for;
        ``version`` (default: the plugin's) is part of a result's cache key.
        A bad or duplicate stage type is recorded as a problem of this plugin
        and left out; the plugin's other stage types still register.
        """
        try:
            spec = self._make_spec(id, params, inputs, outputs, output, version, doc, run, identify)
            self._check(spec)
        except PluginError as exc:
            self._registry.problems.append(PluginProblem(self._plugin.name, str(exc)))
            return None
        self._registry.stages[id] = spec
        self._plugin.stages.append(id)
        return spec

    def _make_spec(self, id, params, inputs, outputs, output, version, doc, run, identify) -> StageSpec:
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
        )

    def _check(self, spec: StageSpec) -> None:
        if not isinstance(spec.id, str) or not _IDENT.match(spec.id) or keyword.iskeyword(spec.id):
            raise PluginError(f"stage id {spec.id!r} is not a valid name")
        existing = self._registry.stages.get(spec.id)
        if existing is not None:
            raise PluginError(f"stage type '{spec.id}' is already defined by plugin '{existing.plugin}'")
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


def _port(value: str | Port) -> Port:
    if isinstance(value, str):
        return Port(value)
    if isinstance(value, Port):
        return value
    raise TypeError(f"{value!r} is not a port type")


# building the registry ----------------------------------------------------


def plugin_manager(entry_points: bool = True) -> tuple[pluggy.PluginManager, list[PluginProblem], dict]:
    """A plugin manager with every installed plugin registered.

    Returns the manager, the plugins that failed to load (by name, with the
    reason), and each loaded plugin's distribution version.  Plugins are
    loaded one by one, so one broken plugin cannot stop the others.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    problems: list[PluginProblem] = []
    versions: dict[str, str] = {}
    if entry_points:
        for ep in _entry_points():
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            version = ep.dist.version if ep.dist is not None else "unknown"
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
                pm.check_pending()
            except Exception as exc:  # a plugin's own bug must not stop sdflow
                if pm.get_plugin(ep.name) is not None:
                    pm.unregister(name=ep.name)
                problems.append(PluginProblem(ep.name, f"failed to load ({ep.value}): {_reason(exc)}"))
                versions[ep.name] = version
                continue
            versions[ep.name] = version
    return pm, problems, versions


def _entry_points() -> list[metadata.EntryPoint]:
    seen: set[str] = set()
    found = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in seen:  # a package installed twice appears twice
            seen.add(ep.name)
            found.append(ep)
    # sdflow's own plugins register first, so that a third-party plugin that
    # reuses a built-in stage id is the one reported, whatever its name.
    return sorted(found, key=lambda ep: (_dist_name(ep) != "sdflow", ep.name))


def _dist_name(ep: metadata.EntryPoint) -> str:
    return (ep.dist.metadata["Name"] or "").lower() if ep.dist is not None else ""


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
    for name, plugin in pm.list_name_plugin():
        if name is None:
            continue
        module = getattr(plugin, "__name__", type(plugin).__name__)
        version = versions.get(name) or str(getattr(plugin, "__version__", "0"))
        registry.plugins[name] = PluginInfo(name, version, module)
    for hook in (pm.hook.sdflow_port_types, pm.hook.sdflow_stage_types):
        # In registration order, so a stage type already taken stays with the
        # plugin that came first and the clash is blamed on the newcomer.
        for impl in hook.get_hookimpls():
            info = registry.plugins.get(impl.plugin_name)
            if info is None:
                continue
            view = registry.for_plugin(impl.plugin_name)
            _call_hook(impl.function, view, registry, info)
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
