"""sdflow: Stable Diffusion pipelines as declarative recipes.

Importing sdflow never imports torch: parsing, checking and formatting stay
light.  A plugin needs only::

    from sdflow import hookimpl, Port
"""

from sdflow.hookspecs import hookimpl
from sdflow.registry import Port, PluginRegistry, StageSpec

__version__ = "0.1.0"

__all__ = ["hookimpl", "Port", "PluginRegistry", "StageSpec", "__version__"]
