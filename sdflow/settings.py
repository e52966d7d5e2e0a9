"""Plugins' run settings: pydantic models turned into flags and variables.

A plugin declares its settings (the diffusion plugin: device, dtype, model
folders, allow-pickle) as one pydantic model in its ``sdflow_settings``
hook.  Each field becomes a ``sdflow run`` flag and an environment variable
with the field's description as help, and ``sdflow plugins`` lists them::

    class DiffusionSettings(BaseModel):
        device: Literal["auto", "cpu", "cuda"] = setting("auto", "where to run")
        models_dirs: tuple[Path, ...] = setting((), "model folders",
                                                flag="--models-dir", env="SDFLOW_MODELS")

The rules, the same for every plugin: a flag is ``--`` and the field's name
with ``-`` for ``_`` unless the field says otherwise, its variable
``SDFLOW_`` and the name in capitals.  A flag wins over its variable, which
wins over the default; a list takes every ``--flag`` given, then the
variable's items (split on ``os.pathsep`` for paths, on ``,`` otherwise).
A boolean setting is ``--flag`` or ``--no-flag``; its variable reads
1/true/yes or 0/false/no.
"""

from __future__ import annotations

import argparse
import os
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

from pydantic import BaseModel, Field, ValidationError
from pydantic_core import PydanticUndefined

# Flags that belong to ``sdflow run`` itself: no plugin may take them.
ENGINE_FLAGS = frozenset({"--set", "--output", "--json", "--explain", "--help", "--strict-plugins", "--strict",
                          "--locked", "--max-diagnostics"})
ENGINE_VARIABLES = frozenset({"SDFLOW_DISABLE_PLUGINS", "SDFLOW_TRACE_PLUGINS", "SDFLOW_STRICT_PLUGINS"})
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def setting(default: Any, description: str, *, flag: str | None = None, env: str | None = None,
            metavar: str | None = None) -> Any:
    """A settings field: its default, its help text, and optionally its own
    flag (``"--models-dir"``), variable (``"SDFLOW_MODELS"``) and metavar."""
    extra = {k: v for k, v in (("flag", flag), ("env", env), ("metavar", metavar)) if v is not None}
    return Field(default, description=description, json_schema_extra=extra or None)


def _extra(info) -> dict[str, Any]:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def flag_of(name: str, info) -> str:
    return _extra(info).get("flag") or "--" + name.replace("_", "-")


def env_of(name: str, info) -> str:
    return _extra(info).get("env") or "SDFLOW_" + name.upper()


def _is_list(annotation) -> bool:
    return typing.get_origin(annotation) in (list, tuple, set, frozenset)


def _item_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    return args[0] if args else str


def settings_problem(model: Any, existing: Iterable[Any]) -> str | None:
    """Why ``model`` cannot be a plugin's settings, or None."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or model is BaseModel:
        return "settings must be a pydantic BaseModel class"
    taken = {flag_of(n, i): spec.plugin for spec in existing for n, i in spec.model.model_fields.items()}
    taken_env = {env_of(n, i): spec.plugin for spec in existing for n, i in spec.model.model_fields.items()}
    for name, info in model.model_fields.items():
        if info.default is PydanticUndefined and info.default_factory is None:
            return f"setting '{name}' has no default"
        flag = flag_of(name, info)
        if flag in ENGINE_FLAGS:
            return f"setting '{name}': {flag} is sdflow run's own flag"
        if flag in taken:
            return f"setting '{name}': {flag} is already a setting of plugin '{taken[flag]}'"
        env = env_of(name, info)
        if env in taken_env or env in ENGINE_VARIABLES:
            return f"setting '{name}': ${env} is already a variable of {taken_env.get(env, 'sdflow')!r}"
    return None


def _dest(plugin: str, name: str) -> str:
    return f"setting:{plugin}:{name}"


def add_arguments(parser: argparse.ArgumentParser, registry) -> None:
    """Add every plugin's settings to ``parser`` as flags, one group per plugin."""
    for plugin, spec in registry.settings.items():
        group = parser.add_argument_group(f"settings of plugin '{plugin}'")
        for name, info in spec.model.model_fields.items():
            help_text = f"{info.description or name} (${env_of(name, info)})"
            options: dict[str, Any] = dict(dest=_dest(plugin, name), default=None, help=help_text)
            annotation = info.annotation
            if annotation is bool:
                options["action"] = argparse.BooleanOptionalAction  # --flag / --no-flag
            else:
                options["metavar"] = _extra(info).get("metavar") or name.upper()
                if typing.get_origin(annotation) is typing.Literal:
                    options["choices"] = typing.get_args(annotation)
                    options.pop("metavar")
                if _is_list(annotation):
                    options["action"] = "append"
            group.add_argument(flag_of(name, info), **options)


class SettingsError(Exception):
    """A setting's value, from a flag or a variable, is not valid."""


def resolve(registry, given: Mapping[str, Any] | argparse.Namespace | None = None,
            environ: Mapping[str, str] | None = None) -> dict[str, BaseModel]:
    """Each plugin's settings object: flags (``given``, as parsed), then
    environment variables, then defaults.  Raises :class:`SettingsError`
    naming the flag or variable of a bad value."""
    given = vars(given) if isinstance(given, argparse.Namespace) else dict(given or {})
    environ = os.environ if environ is None else environ
    resolved: dict[str, BaseModel] = {}
    for plugin, spec in registry.settings.items():
        values, sources = {}, {}
        for name, info in spec.model.model_fields.items():
            flag, env = flag_of(name, info), env_of(name, info)
            value = given.get(_dest(plugin, name))
            from_env = _from_env(environ.get(env), info.annotation)
            if _is_list(info.annotation):
                if value is not None or from_env is not None:
                    values[name] = [*(value or []), *(from_env or [])]
                    sources[name] = f"{flag} / ${env}"
            elif value is not None:
                values[name], sources[name] = value, flag
            elif from_env is not None:
                values[name], sources[name] = from_env, f"${env}"
        try:
            resolved[plugin] = spec.model.model_validate(values)
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            field = str(first["loc"][0]) if first.get("loc") else ""
            where = sources.get(field, field)
            raise SettingsError(f"{where}: {first['msg']}") from None
    return resolved


def _from_env(text: str | None, annotation) -> Any:
    if text is None:
        return None
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        return text  # left for validation to refuse, naming the variable
    if _is_list(annotation):
        separator = os.pathsep if _item_type(annotation) is Path else ","
        return [item for item in text.split(separator) if item.strip()]
    return text


def describe(model: type[BaseModel]) -> list[str]:
    """One line per setting: flag, variable, default and help."""
    lines = []
    for name, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = "" if default in ((), [], None) else f" (default {default!r})"
        lines.append(f"{flag_of(name, info)} / ${env_of(name, info)}{shown}: {info.description or ''}".rstrip(": "))
    return lines
