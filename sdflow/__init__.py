"""sdflow: Stable Diffusion pipelines as declarative recipes.

Importing sdflow never imports torch: parsing, checking and formatting stay
light.  A plugin imports what it needs from here or from
:mod:`sdflow.plugin` (the same names)::

    from sdflow import Params, Port, StageError, hookimpl, stage
"""

__version__ = "0.1.0"

from sdflow.plugin import __all__ as _PUBLIC  # noqa: E402  (a light module: its names load on use)

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    """The public names of :mod:`sdflow.plugin`, imported when first used."""
    if name in _PUBLIC:
        from sdflow import plugin

        return getattr(plugin, name)
    raise AttributeError(f"module 'sdflow' has no attribute {name!r}")
