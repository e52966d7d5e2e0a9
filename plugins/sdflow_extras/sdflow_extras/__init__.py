"""sdflow-extras: wildcard prompts and image post-processing for sdflow.

A third-party sdflow plugin, found through the ``sdflow`` entry-point group
(``extras = "sdflow_extras"``) and written against the public surface only
(:mod:`sdflow.plugin`).  It declares no port types of its own: its stages
use CLIP, CONDITIONING and IMAGE, which the diffusion plugin declares.
Declaring the stages imports pydantic only; torch is imported when a stage
runs.
"""

from __future__ import annotations

from sdflow.plugin import hookimpl

__version__ = "0.1.0"


@hookimpl
def sdflow_settings(registry):
    from sdflow_extras.settings import ExtrasSettings

    registry.add_settings(ExtrasSettings)


@hookimpl
def sdflow_stage_types(registry):
    from sdflow_extras import stages

    registry.add_stages(stages)
