"""sdflow: Stable Diffusion pipelines as declarative recipes.

Importing sdflow never imports torch: parsing, checking and formatting stay
light.  A plugin imports what it needs from here or from
:mod:`sdflow.plugin` (the same names)::

    from sdflow import Params, Port, StageError, hookimpl, stage
"""

__version__ = "0.1.0"

from sdflow.plugin import (  # noqa: E402  (the version first: the engine's modules read it)
    Interrupted,
    Params,
    PluginRegistry,
    Port,
    Progress,
    RunContext,
    StageError,
    StageType,
    hookimpl,
    setting,
    stage,
)

__all__ = [
    "Interrupted",
    "Params",
    "PluginRegistry",
    "Port",
    "Progress",
    "RunContext",
    "StageError",
    "StageType",
    "__version__",
    "hookimpl",
    "setting",
    "stage",
]
