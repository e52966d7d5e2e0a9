"""The public surface for plugins: everything a plugin may import from sdflow.

A plugin imports from ``sdflow.plugin`` (or, the same names, from
``sdflow``) and from nowhere else in sdflow; the engine's other modules may
change between versions, these names will not without notice::

    from sdflow.plugin import Params, Port, StageError, hookimpl, setting, stage

* :func:`hookimpl` marks the hook functions (see :mod:`sdflow.hookspecs`):
  ``sdflow_port_types``, ``sdflow_settings``, ``sdflow_stage_types``,
  ``sdflow_importers``, ``sdflow_exporters``.
* :func:`stage` declares a stage type in one place (with :class:`ComfyNode`,
  the ComfyUI node it stands for), :class:`Params` is a
  base for its parameter model (its ``warnings()`` returns
  :class:`ParamWarning`s shown at check time), :class:`Port` describes an
  input or output.
* :func:`setting` declares one field of a plugin's settings model.
* :class:`RunContext` is what a run function receives: settings, progress
  and cancellation, file identity, what it resolved, output metadata.
* :func:`literal` writes a value as a recipe literal (for an importer that
  writes a recipe: ``sdflow_importers``); :func:`stages_of` gives a checked
  recipe's stages as an exporter gets them (``sdflow_exporters``).
* :func:`ordinary_mode` is the permissions a file a stage writes should get
  (0666 less the umask; ``tempfile.mkstemp`` makes 0600).
* :class:`StageError` is a failure the user can fix (shown at the stage's
  line with its help); :class:`Interrupted` is raised when the user stops.

A plugin's tests use :mod:`sdflow.testing` (register a plugin for one
test, check and run a recipe through it).  Writing a plugin, step by step:
``docs/plugins.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdflow.errors import Interrupted, StageError
    from sdflow.execute import Progress, RunContext
    from sdflow.hookspecs import hookimpl
    from sdflow.registry import PluginRegistry, Port
    from sdflow.settings import setting
    from sdflow.declaration import ComfyNode, Params, ParamWarning, StageType, stage
    from sdflow.execute import stages_of
    from sdflow.files import ordinary_mode
    from sdflow.format import literal

# Each name is imported when first asked for (PEP 562), so that declaring
# stages and checking a recipe never import the executor.
_WHERE = {
    "Interrupted": "sdflow.errors",
    "StageError": "sdflow.errors",
    "Progress": "sdflow.execute",
    "RunContext": "sdflow.execute",
    "hookimpl": "sdflow.hookspecs",
    "PluginRegistry": "sdflow.registry",
    "Port": "sdflow.registry",
    "setting": "sdflow.settings",
    "Params": "sdflow.declaration",
    "ParamWarning": "sdflow.declaration",
    "StageType": "sdflow.declaration",
    "ComfyNode": "sdflow.declaration",
    "stages_of": "sdflow.execute",
    "stage": "sdflow.declaration",
    "ordinary_mode": "sdflow.files",
    "literal": "sdflow.format",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sdflow.plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = sorted(_WHERE)
