"""Lock files: what a recipe's run depends on, pinned (``sdflow lock``), and
the check that a run or a check still has it (``--locked``).

``recipe.sdflow.lock`` is JSON with sorted keys, one value a line, so that a
change shows in a diff as the lines it changes:

- ``recipe``: the recipe file's name and the SHA-256 of its text (a lock
  pins one recipe: edit it and lock again);
- ``set``: the ``--set`` values it was locked with;
- ``models``: per stage, each file the stage reads (a model's name as the
  recipe gives it): its SHA-256, its size in bytes and where it was found;
- ``stages``: each stage's type, the plugin that provides it, and its version;
- ``versions``: sdflow, Python, torch, diffusers and transformers (read from
  the installed packages: nothing is imported) and each plugin;
- ``run``: what each plugin's settings resolve to here (a plugin whose
  settings model has ``resolved()``: the device and dtype that will run).

``--locked``: a model file that differs from the lock, is missing from it or
is no longer used is an error naming the file and both hashes; a version,
stage version or resolved setting that differs is a warning naming each.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from sdflow.diagnostics import Diagnostic

LOCK_VERSION = 1
PACKAGES = ("torch", "diffusers", "transformers")


def lock_path(recipe: Path) -> Path:
    return Path(str(recipe) + ".lock")


def make_lock(graph, executor, options, recipe_file: str, recipe_text: str, overrides: dict[str, str],
              plugin_versions: dict[str, str]) -> dict[str, Any]:
    """The lock of ``graph`` (a checked recipe) as a run with ``options``
    would find its files now; raises RunError when a file is not found or a
    setting cannot be honoured."""
    found = executor.identify(graph, options)
    models = {stage: {label: {"sha256": sha, "bytes": _size(path), "path": str(path)}
                      for label, (sha, path) in sorted(files.items())}
              for stage, files in sorted(found.items()) if files}
    stages = {key: {"type": node.spec.qualified, "plugin": node.spec.plugin, "version": node.spec.version}
              for key, node in graph.nodes.items() if key in graph.order}
    return {
        "sdflow_lock": LOCK_VERSION,
        "recipe": {"file": Path(recipe_file).name, "sha256": hashlib.sha256(recipe_text.encode()).hexdigest()},
        "set": dict(sorted(overrides.items())),
        "models": models,
        "stages": stages,
        "versions": versions(plugin_versions),
        "run": resolved_settings(graph, executor, options),
    }


def merged(locks: list[dict[str, Any]]) -> dict[str, Any]:
    """One lock for the points of a sweep: every model each point reads,
    every stage each runs; the rest (recipe, versions, settings) is one."""
    lock = locks[0]
    for other in locks[1:]:
        for stage, files in other["models"].items():
            lock["models"].setdefault(stage, {}).update(files)
        lock["stages"].update(other["stages"])
    lock["models"] = {stage: dict(sorted(files.items())) for stage, files in sorted(lock["models"].items())}
    lock["stages"] = dict(sorted(lock["stages"].items()))
    return lock


def dump(lock: dict[str, Any]) -> str:
    return json.dumps(lock, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def versions(plugin_versions: dict[str, str]) -> dict[str, str]:
    import sdflow

    found = {"sdflow": sdflow.__version__, "python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found.update({f"plugin {name}": version for name, version in sorted(plugin_versions.items())})
    return found


def resolved_settings(graph, executor, options) -> dict[str, Any]:
    """Each plugin's settings as they resolve here (those that can say)."""
    from sdflow.errors import StageError
    from sdflow.execute import RunError

    run = {}
    for plugin in sorted(graph.settings_models):
        settings = executor.settings_for(plugin, options)
        resolve = getattr(settings, "resolved", None)
        if callable(resolve):
            try:
                run[plugin] = resolve()
            except StageError as err:
                raise RunError([Diagnostic(err.code, err.message, None, err.help)]) from None
    return run


def read_lock(path: Path) -> tuple[dict[str, Any] | None, Diagnostic | None]:
    """The lock at ``path``, or the error that it is missing or malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, Diagnostic("E610", f"--locked, but there is no lock file {path}", None,
                                f"write one with: sdflow lock {path.name.removesuffix('.lock')}")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, Diagnostic("E610", f"{path} is not a lock file sdflow can read: {err}", None,
                                "write it again with sdflow lock")
    shape = {"recipe": dict, "models": dict, "stages": dict, "versions": dict, "run": dict}
    if not isinstance(data, dict) or data.get("sdflow_lock") != LOCK_VERSION or any(
            not isinstance(data.get(key), kind) for key, kind in shape.items()):
        return None, Diagnostic("E610", f"{path} is not a version {LOCK_VERSION} sdflow lock file "
                                        "(a field is missing or of the wrong kind)", None,
                                "write it again with sdflow lock")
    return data, None


def compare(lock: dict[str, Any], path: Path, now: dict[str, Any], graph) -> list[Diagnostic]:
    """What differs between ``lock`` (read from ``path``) and ``now`` (the
    lock the recipe would get here): errors for the recipe and the model
    files, warnings for versions and resolved settings."""
    problems: list[Diagnostic] = []
    name = path.name
    if lock["recipe"].get("sha256") != now["recipe"]["sha256"]:
        problems.append(Diagnostic("E611", f"the recipe changed since {name} was written (its text's SHA-256 is "
                                           f"{now['recipe']['sha256'][:12]}, the lock's "
                                           f"{str(lock['recipe'].get('sha256'))[:12]})", None,
                                   f"lock it again: sdflow lock {now['recipe']['file']}"))
    for stage in sorted(set(lock["models"]) | set(now["models"])):
        locked, found = lock["models"].get(stage, {}), now["models"].get(stage, {})
        span = graph.nodes[stage].span if stage in graph.nodes else None
        for label in sorted(set(locked) | set(found)):
            before, after = locked.get(label), found.get(label)
            if before is None:
                problems.append(Diagnostic("E612", f"{stage} reads {label} ({after['path']}), which {name} does "
                                                   "not list", span, "lock the recipe again to pin it"))
            elif after is None:
                problems.append(Diagnostic("E612", f"{name} lists {label} for {stage}, which the recipe no longer "
                                                   "reads", span, "lock the recipe again"))
            elif not isinstance(before, dict) or before.get("sha256") != after["sha256"]:
                before = before if isinstance(before, dict) else {}
                where = "" if before.get("path") == after["path"] else f" (it was at {before.get('path')})"
                problems.append(Diagnostic(
                    "E612", f"{label} differs from the lock: SHA-256 {after['sha256']} at {after['path']}; "
                            f"{name} has {before.get('sha256')}{where}",
                    span, "find the file the lock names, or lock the recipe again to accept this one"))
    for group, what in (("versions", "version"), ("run", "resolved setting")):
        for key in sorted(set(lock[group]) | set(now[group])):
            if lock[group].get(key) != now[group].get(key):
                problems.append(Diagnostic("W610", f"{what} {key}: {_text(now[group].get(key))} here, "
                                                   f"{_text(lock[group].get(key))} in {name}",
                                           None, severity="warning"))
    for key in sorted(set(lock["stages"]) & set(now["stages"])):
        if lock["stages"][key] != now["stages"][key]:
            before, after = lock["stages"][key], now["stages"][key]
            problems.append(Diagnostic("W610", f"stage {key}: {_stage(after)} here, {_stage(before)} in {name}",
                                       graph.nodes[key].span if key in graph.nodes else None, severity="warning"))
    return problems


def _stage(entry) -> str:
    return f"{entry.get('type')} {entry.get('version')}" if isinstance(entry, dict) else str(entry)


def _text(value) -> str:
    return "absent" if value is None else json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)


def _size(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
