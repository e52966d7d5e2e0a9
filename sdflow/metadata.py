"""What an output carries to reproduce it, and how ``sdflow show`` reads it back.

The engine owns the format both ways: a stage that writes a file asks its
run context for :func:`output_metadata` (text fields, keys already carrying
the ``sdflow.`` prefix) and stores each field as it can (a PNG text chunk,
an EXIF comment...); ``sdflow show`` reads the same keys.
"""

from __future__ import annotations

import json
import platform
from typing import Any, Mapping

PREFIX = "sdflow."


def recorded(fields: Mapping[str, str], name: str) -> dict[str, Any]:
    """The JSON field ``name`` of an output's metadata (as
    :func:`sdflow.pngtext.read_png_text` gives it, keys without the prefix):
    {} where it is missing or not a JSON object."""
    try:
        value = json.loads(fields.get(name) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def recorded_recipe(fields: Mapping[str, str], file: str = "<recipe>") -> str:
    """An output's recipe with the params it ran with (``--set`` included)
    written in as the defaults: a recipe that makes it again by itself.

    An output of one point of a sweep ran once, so its ``sweep`` lines are
    dropped; a sweep's contact sheet (which records the ``sweep``) keeps
    them, its recipe being the whole sweep."""
    from sdflow.format import with_param_defaults

    return with_param_defaults(fields["recipe"], recorded(fields, "params"), file,
                               without_sweeps="sweep" not in fields)


def output_metadata(*, recipe: str, params: Mapping[str, Any],
                    files: Mapping[str, str], stages: Mapping[str, str], resolved: Mapping[str, Any],
                    versions: Mapping[str, str], paths: Mapping[str, str] | None = None) -> dict[str, str]:
    """The text fields of an output, keyed ``sdflow.NAME``:

    ``recipe`` (its text; not the file's name, so that the same recipe
    under another name writes the same bytes), ``params`` (as resolved, ``--set``
    included), ``models`` (each file a stage read: its label -> SHA-256),
    ``paths`` (where each of those files was found),
    ``stages`` (each stage that led to the output: its type's full name and
    version), ``run`` (what the stages resolved: the device and dtype that
    ran...), ``versions`` (sdflow, Python, the plugins, and what the
    writing stage adds: torch, diffusers...).
    """
    import sdflow

    fields: dict[str, Any] = {
        "recipe": recipe,
        "params": dict(params),
        "models": dict(files),
        "paths": dict(paths or {}),
        "stages": dict(stages),
        "run": dict(resolved),
        "versions": {"sdflow": sdflow.__version__, "python": platform.python_version(), **versions},
    }
    return {PREFIX + key: value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            for key, value in fields.items()}

