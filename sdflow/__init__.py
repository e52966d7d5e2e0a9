"""sdflow: Stable Diffusion pipelines as declarative recipes.

Importing sdflow never imports torch: parsing, checking and formatting stay
light.  A plugin imports what it needs from here or from
:mod:`sdflow.plugin` (the same names)::

    from sdflow import Params, Port, StageError, hookimpl, stage
"""

__version__ = "0.1.0"

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


def __getattr__(name: str):
    """The public names of :mod:`sdflow.plugin`, imported when first used."""
    if name in __all__:
        from sdflow import plugin

        return getattr(plugin, name)
    raise AttributeError(f"module 'sdflow' has no attribute {name!r}")
