"""The public surface for plugins: everything a plugin may import from sdflow.

A plugin imports from ``sdflow.plugin`` (or, the same names, from
``sdflow``) and from nowhere else in sdflow; the engine's other modules may
change between versions, these names will not without notice::

    from sdflow.plugin import Params, Port, StageError, hookimpl, setting, stage

* :func:`hookimpl` marks the hook functions (see :mod:`sdflow.hookspecs`):
  ``sdflow_port_types``, ``sdflow_settings``, ``sdflow_stage_types``.
* :func:`stage` declares a stage type in one place, :class:`Params` is a
  base for its parameter model, :class:`Port` describes an input or output.
* :func:`setting` declares one field of a plugin's settings model.
* :class:`RunContext` is what a run function receives: settings, progress
  and cancellation, file identity, what it resolved, output metadata.
* :class:`StageError` is a failure the user can fix (shown at the stage's
  line with its help); :class:`Interrupted` is raised when the user stops.

A plugin's tests use :mod:`sdflow.testing` (register a plugin for one
test, check and run a recipe through it).  Writing a plugin, step by step:
``docs/plugins.md``.
"""

from sdflow.execute import Interrupted, Progress, RunContext, StageError
from sdflow.hookspecs import hookimpl
from sdflow.registry import PluginRegistry, Port
from sdflow.settings import setting
from sdflow.stage import Params, StageType, stage

__all__ = [
    "Interrupted",
    "Params",
    "PluginRegistry",
    "Port",
    "Progress",
    "RunContext",
    "StageError",
    "StageType",
    "hookimpl",
    "setting",
    "stage",
]
