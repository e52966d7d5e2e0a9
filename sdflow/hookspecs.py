"""The hooks a plugin implements.  Every hook is named ``sdflow_*``.

A plugin is a module (or object) with functions marked ``@hookimpl``::

    from sdflow import hookimpl

    @hookimpl
    def sdflow_stage_types(registry):
        registry.add_stages(my_plugin.stages)

and is found through the ``sdflow`` entry-point group of its distribution.
The built-in diffusion stages are registered exactly this way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from sdflow.registry import PluginRegistry

PROJECT = "sdflow"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def sdflow_port_types(registry: PluginRegistry) -> None:
    """Add the port types this plugin defines, with ``registry.add_port_type``.

    Called once per plugin when the registry is built, for every plugin
    before any ``sdflow_stage_types``, so a stage may use a port type that
    another plugin defines.  Returns nothing: it adds to ``registry``.
    """


@hookspec
def sdflow_settings(registry: PluginRegistry) -> None:
    """Declare this plugin's run settings with ``registry.add_settings(Model)``.

    ``Model`` is a pydantic model whose fields, each with a default and a
    description, become ``sdflow run`` flags and environment variables (see
    :mod:`sdflow.settings`); a stage reads the values as ``ctx.settings``.
    Called once per plugin when the registry is built, after every
    plugin's ``sdflow_port_types``.  Returns nothing: it adds to ``registry``.
    """


@hookspec
def sdflow_stage_types(registry: PluginRegistry) -> None:
    """Add the stage types this plugin defines, with ``registry.add_stages``
    (stage types declared with ``@stage``: one, a module or a package of
    them) or the lower-level ``registry.add_stage``.

    Called once per plugin when the registry is built, after every plugin's
    ``sdflow_port_types`` and ``sdflow_settings``.  Must not import heavy libraries (torch,
    diffusers): checking a recipe never does.  Returns nothing: it adds to
    ``registry``.
    """


@hookspec
def sdflow_importers(registry: PluginRegistry) -> None:
    """Add readers of other tools' files with ``registry.add_importer(name,
    read, doc)``, for ``sdflow import``.

    ``read(path)`` returns a recipe's text made from the file at ``path``
    (``sdflow import`` formats it), or None when the file holds nothing the
    importer reads; for a file of its format that is broken it raises
    ``StageError`` with what is wrong.  It may import what it needs
    (Pillow...): it runs only for ``sdflow import``.  Called once per plugin
    when the registry is built, after ``sdflow_stage_types``.  Returns
    nothing: it adds to ``registry``.
    """



@hookspec
def sdflow_exporters(registry: PluginRegistry) -> None:
    """Add writers of recipes in other tools' formats with
    ``registry.add_exporter(name, write, doc)``, for ``sdflow export
    --format name``.

    ``write(stages)`` gets a checked recipe's stages in run order, each an
    :class:`~sdflow.execute.Upstream` (key, name, stage type and its
    declaration as ``spec``, validated parameters, inputs) and returns the
    text to write; for a recipe it cannot express it raises ``StageError``,
    with ``stages`` mapping each stage key it cannot write to the reason.
    It runs only for ``sdflow export`` (and when a stage calls it).
    Called once per plugin when the registry is built, after
    ``sdflow_importers``.  Returns nothing: it adds to ``registry``.
    """
