"""A stage type declared in one place: its parameters, ports, docs, version
and run function together.

A plugin writes each stage type as one decorated function::

    from sdflow.plugin import Params, Port, stage

    class Blur(Params):
        radius: float = Field(2.0, gt=0, description="in pixels")

    @stage(params=Blur, inputs={"image": Port("IMAGE", "the images")},
           outputs={"image": Port("IMAGE", "blurred")})
    def blur(ctx, params: Blur, image):
        \"\"\"Gaussian blur. ComfyUI: ImageBlur.\"\"\"
        from PIL import ImageFilter   # heavy imports inside: declaring stays light
        ...
        return {"image": blurred}

and hands the module (or a package of such modules) to
``registry.add_stages`` in its ``sdflow_stage_types`` hook.  The run
function receives the run context, the validated parameter object and the
inputs by port name, and returns the outputs by port name.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

from pydantic import BaseModel, ConfigDict


class ParamWarning(NamedTuple):
    """Something about a valid parameter value that the user should know
    (a malformed prompt weight, read as text): shown by ``sdflow check`` as
    a warning at the argument, at ``offset`` characters into a string value
    when given."""

    field: str
    message: str
    offset: int | None = None
    help: str | None = None


class Params(BaseModel):
    """A base for stage parameter models: unknown arguments are refused and
    a validated parameter object cannot change (it is part of a cache key).

    A stage type whose valid values may still deserve a word overrides
    :meth:`warnings`; the checker calls it on every validated object."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def warnings(self) -> list[ParamWarning]:
        """The warnings about these values (none by default)."""
        return []


CONTROL = "+"
"""In :attr:`ComfyNode.widgets`, after a name: the value ComfyUI's UI keeps
after a seed (its control_after_generate: "fixed", "randomize"...)."""
EXTRA = "-"
"""In :attr:`ComfyNode.widgets`, before a name: a value the UI keeps that no
input stands for (LoadImage's upload button)."""
DROPPED = "!"
"""Before a name: a ComfyUI input the stage has no argument for (left out
when a workflow is imported, not written when one is exported)."""


@dataclass(frozen=True)
class ComfyNode:
    """The ComfyUI node a stage type stands for, so that ``sdflow import``
    reads workflows with that node and ``sdflow export`` (and every saved
    PNG) writes the stage as that node.  A stage type declares it with
    ``@stage(comfyui=ComfyNode(...))`` (or a list, when several ComfyUI nodes
    are the one stage with different arguments)::

        ComfyNode("KSampler", inputs="model positive negative latent_image>latent",
                  widgets="seed+ steps cfg sampler_name>sampler scheduler denoise")

    ``inputs`` lists the node's linked inputs in ComfyUI's order and
    ``widgets`` its widget inputs in the order the UI format keeps their
    values, each ``comfy>sdflow`` where the names differ (``>`` alone
    when they do not); a ``+`` after a widget marks the control value the
    UI keeps after a seed, ``-name`` a value no input stands for, ``!name``
    a ComfyUI input the stage has no argument for.  ``outputs`` names the
    stage's outputs in the order of the node's (default: the stage's own
    order).  ``values`` maps a parameter's ComfyUI spellings to sdflow's
    (``{"add_noise": {"enable": True, "disable": False}}``); ``fixed`` are
    arguments written for every such node on import; ``when(params)``
    says whether this node can stand for a stage with these validated
    parameters (default: every parameter it does not map is at its
    default); ``title`` is the node's display name; ``note`` is said in an
    imported recipe's header.
    """

    class_type: str
    inputs: str = ""
    widgets: str = ""
    outputs: str | None = None
    title: str = ""
    values: Mapping[str, Mapping[Any, Any]] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    when: Callable[[Any], bool] | None = None
    note: str = ""

    @property
    def links(self) -> dict[str, str]:
        """ComfyUI's linked input -> the stage's input port, in ComfyUI's order."""
        return _renames(self.inputs.split())[1]

    @property
    def widget_order(self) -> tuple[str, ...]:
        """The UI format's widget values in order: ComfyUI names, ``CONTROL``
        and ``-name`` marks kept, ``!name`` left out."""
        return tuple(_renames(self.widgets.replace(CONTROL, " " + CONTROL).split())[0])

    @property
    def params(self) -> dict[str, str]:
        """ComfyUI's widget input -> the stage's parameter, in the UI's order."""
        return _renames(self.widgets.replace(CONTROL, " " + CONTROL).split())[1]

    @property
    def dropped(self) -> frozenset[str]:
        """ComfyUI inputs the stage has no argument for."""
        return frozenset(_renames(self.inputs.split())[2] | _renames(self.widgets.split())[2])


def _renames(items: list[str]) -> tuple[list[str], dict[str, str], set[str]]:
    order, names, dropped = [], {}, set()
    for item in items:
        if item.startswith(DROPPED):
            dropped.add(item[1:])
            continue
        comfy, _, ours = item.partition(">")
        order.append(comfy)
        if not comfy.startswith(EXTRA) and comfy != CONTROL:
            names[comfy] = ours or comfy
    return order, names, dropped


@dataclass
class StageType:
    """A stage type as its plugin declares it (see :func:`stage`)."""

    name: str
    run: Callable[..., Any]
    params: type[BaseModel]
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)
    output: bool = False
    version: str | None = None
    doc: str = ""
    identify: Callable[..., Any] | None = None
    comfyui: tuple[ComfyNode, ...] = ()
    plugin: str | None = None  # set when a plugin registers it

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the stage's function directly (for tests and other stages)."""
        return self.run(*args, **kwargs)

    def identifies(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """Name ``function`` as the one that identifies the files this stage
        reads (a decorator)::

            @load_vae.identifies
            def _vae_file(ctx, params):
                ctx.identify_file(params.name, find_vae(params.name))

        ``function(ctx, params)`` runs before the stage, every time; the
        identities it records with ``ctx.identify_file`` (or returns, as a
        label -> identity mapping) are part of the cache key and of the
        metadata of every output made downstream.
        """
        self.identify = function
        return function


def stage(
    name: str | None = None,
    *,
    params: type[BaseModel],
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    output: bool = False,
    version: str | None = None,
    doc: str | None = None,
    comfyui: ComfyNode | Sequence[ComfyNode] | None = None,
) -> Callable[[Callable[..., Any]], StageType]:
    """Declare the decorated function as a stage type.

    ``name`` defaults to the function's name and ``doc`` to its docstring;
    ``inputs`` and ``outputs`` map port names to port types (a type name or
    a :class:`~sdflow.registry.Port`); ``output`` marks a stage a recipe runs
    for (it writes files); ``version`` (default: the plugin's) is recorded
    in every output and is part of a result's cache key: raise it when the
    stage computes something different from the same inputs; ``comfyui``
    is the ComfyUI node (or nodes) it stands for (see :class:`ComfyNode`).
    """

    def declare(function: Callable[..., Any]) -> StageType:
        return StageType(
            name=name or function.__name__,
            run=function,
            params=params,
            inputs=dict(inputs or {}),
            outputs=dict(outputs or {}),
            output=output,
            version=version,
            doc=_paragraphs(doc if doc is not None else (function.__doc__ or "")),
            comfyui=comfy_nodes(comfyui),
        )

    return declare


def comfy_nodes(declared: ComfyNode | Sequence[ComfyNode] | None) -> tuple[ComfyNode, ...]:
    """A stage's ComfyUI nodes as a tuple (one, several or none declared)."""
    if declared is None:
        return ()
    return (declared,) if isinstance(declared, ComfyNode) else tuple(declared)


def _paragraphs(doc: str) -> str:
    """A docstring as text: its lines joined into paragraphs, which stay
    apart by a blank line."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", inspect.cleandoc(doc))


def stage_types_in(source: ModuleType | str) -> Iterator[StageType]:
    """Every :class:`StageType` a module defines at its top level, in the
    order they are defined; for a package, those of each of its modules too
    (in name order), so that adding a stage type is adding a file."""
    module = importlib.import_module(source) if isinstance(source, str) else source
    # A module's own stage types, not those it imports from another.
    yield from (value for value in vars(module).values()
                if isinstance(value, StageType) and value.run.__module__ == module.__name__)
    for info in sorted(pkgutil.iter_modules(getattr(module, "__path__", [])), key=lambda i: i.name):
        if not info.name.startswith("_"):
            yield from stage_types_in(f"{module.__name__}.{info.name}")
