"""``sdflow replay IMAGE.png``: render an image again from what it recorded,
and say whether it came out the same.

The recipe comes from the image, its params as they were resolved (``--set``
included) written in as defaults; ``--set`` on the replay changes them.
Each model the image recorded (a name and a SHA-256) must be the same file:
found by its name as a run finds it, else at the path the image recorded,
else by scanning the folders the settings name (``--models-dir`` and the
like) for files of the same kind whose SHA-256 matches.  A model found
elsewhere than its name leads is used from there (the recipe is pointed at
it); one not found is an error naming it, its hash and where sdflow looked.

After the run, the new image is compared with the old one, pixel for
pixel, and the conditions both recorded (versions, the device and dtype that
ran) are compared too, so that a difference comes with its likely reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from sdflow.diagnostics import Diagnostic
from sdflow.format import literal
from sdflow.metadata import recorded, recorded_recipe

FILE = "<replayed>"


@dataclass
class Prepared:
    """What a replay runs: the recipe's text and overrides, its graph (None
    with errors), the models found by hash and where, and the diagnostics."""

    text: str
    overrides: dict[str, str]
    graph: Any = None
    moved: dict[str, Path] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def prepare(fields: Mapping[str, str], overrides: Mapping[str, str], registry, executor, options) -> Prepared:
    """The recipe of an image's ``fields`` ready to run again, its models
    found by their recorded hashes (see the module's docs)."""
    from sdflow.execute import RunError
    from sdflow.graph import check_source

    job = Prepared(recorded_recipe(fields), dict(overrides))
    _recipe, job.graph, job.diagnostics = check_source(job.text, FILE, registry, job.overrides)
    if job.graph is None:
        return job
    wanted = {label: sha for label, sha in recorded(fields, "models").items() if isinstance(sha, str)}
    try:
        found = executor.identify(job.graph, options)
    except RunError:
        found = {}
    have = {label: sha for files in found.values() for label, (sha, _path) in files.items()}
    paths = recorded(fields, "paths")
    problems = []
    for label, sha in wanted.items():
        if have.get(label) == sha:
            continue
        place, looked = search(label, sha, paths.get(label), folders(options.settings.values()))
        if place is None:
            problems.append(Diagnostic(
                "E620", f"model {label} (SHA-256 {sha}) was not found: {looked}", None,
                "pass the folder that holds it with --models-dir, or --set the param that names it"))
            continue
        job.moved[label] = place
        param = next((name for name, value in job.graph.params.items() if value == label), None)
        if param is not None:
            job.overrides[param] = str(place)
        else:
            job.text = job.text.replace(literal(label), literal(str(place)))
    if problems:
        job.graph, job.diagnostics = None, problems
    elif job.moved:
        _recipe, job.graph, job.diagnostics = check_source(job.text, FILE, registry, job.overrides)
    return job


def folders(settings: Iterable[Any]) -> list[Path]:
    """Every folder a plugin's settings name (a Path field, or a tuple of them)."""
    found: list[Path] = []
    for model in settings:
        for value in (getattr(model, "__dict__", {}) or {}).values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, Path) and item.expanduser().is_dir() and item.expanduser() not in found:
                    found.append(item.expanduser())
    return found


def search(label: str, sha: str, recorded_path: str | None, roots: list[Path]) -> tuple[Path | None, str]:
    """Where a file of SHA-256 ``sha`` is: at ``recorded_path``, else among
    the files under ``roots`` with ``label``'s suffix (those of its name
    first); and what was looked at, in words, when it is nowhere."""
    from sdflow.errors import StageError
    from sdflow.identity import file_sha256

    looked = [f"not by its name, not at {recorded_path}" if recorded_path else "not by its name"]
    candidates = [Path(recorded_path)] if recorded_path else []
    suffix, name = Path(label).suffix.lower(), Path(label).name
    scanned = sorted((p for root in roots for p in root.rglob(f"*{suffix}") if p.is_file()),
                     key=lambda p: (p.name != name, str(p)))
    for path in [*candidates, *scanned]:
        try:
            if path.is_file() and file_sha256(path) == sha:
                return path, ""
        except (OSError, StageError):
            continue
    places = ", ".join(str(r) for r in roots) or "no folder (give --models-dir)"
    looked.append(f"not among the {len(scanned)} {suffix or 'other'} files under {places}")
    return None, "; ".join(looked)


def counterpart(old: Mapping[str, str], written: Iterable[Path]) -> Path | None:
    """The new file that stands where the old image stood: written by the
    same stages, at the same place in its batch."""
    from sdflow.pngtext import read_png_text

    written = list(written)
    stages, index = set(recorded(old, "stages")), recorded(old, "image").get("index")
    for path in written:
        try:
            new = read_png_text(path)
        except (OSError, ValueError):
            continue
        if set(recorded(new, "stages")) == stages and recorded(new, "image").get("index") == index:
            return path
    return written[0] if len(written) == 1 else None


def pixel_difference(old: Path, new: Path) -> int | None:
    """The largest difference of two images' pixels (0-255), or None when
    their sizes or modes differ."""
    from PIL import Image, ImageChops

    with Image.open(old) as a, Image.open(new) as b:
        if a.size != b.size:
            return None
        a, b = a.convert("RGBA"), b.convert("RGBA")
        return max(high for _low, high in ImageChops.difference(a, b).getextrema())


def changed_conditions(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """The recorded conditions (versions; what ran: device, dtype...) that differ, in words."""
    lines = []
    for name in ("versions", "run"):
        before, after = recorded(old, name), recorded(new, name)
        for key in sorted(set(before) | set(after)):
            if key != "seeds" and before.get(key) != after.get(key):
                lines.append(f"{key}: {_text(before.get(key))} then, {_text(after.get(key))} now")
    return lines


def _text(value) -> str:
    return "not recorded" if value is None else str(value)
