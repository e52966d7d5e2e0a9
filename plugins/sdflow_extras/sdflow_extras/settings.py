"""The plugin's run settings: where ``__name__`` wildcards are looked up.

The engine turns the field into the ``sdflow run`` flag ``--wildcards-dir``
(repeatable) and the variable ``$SDFLOW_WILDCARDS`` (folders separated by
``os.pathsep``); stages read it as ``ctx.settings.wildcards_dirs``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sdflow.plugin import setting


class ExtrasSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    wildcards_dirs: tuple[Path, ...] = setting(
        (), "folders of wildcard files (NAME.txt for __NAME__), searched in order before the "
            "wildcards/ folder beside the recipe; repeatable",
        flag="--wildcards-dir", env="SDFLOW_WILDCARDS", metavar="DIR")
