"""Stage types and plugins in words, for ``sdflow stages`` and ``sdflow plugins``."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from pydantic_core import PydanticUndefined

from sdflow.registry import Registry, StageSpec


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of a stage type, as a user reads it."""

    name: str
    type: str
    default: str | None
    limits: str
    doc: str


def type_name(annotation) -> str:
    """``int``, ``float``, ``one of 'a', 'b'``, ``list[int]``..."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(_literal(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(annotation, "__name__", str(annotation))


def param_info(spec: StageSpec) -> list[ParamInfo]:
    infos = []
    for name, field in spec.params.model_fields.items():
        limits = []
        for meta in field.metadata:
            for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"),
                               ("multiple_of", "multiple of"), ("min_length", "min length")):
                value = getattr(meta, attr, None)
                if value is not None:
                    limits.append(f"{word} {value}")
        default = None if field.default is PydanticUndefined else _literal(field.default)
        infos.append(ParamInfo(name, type_name(field.annotation), default, ", ".join(limits),
                               field.description or ""))
    return infos


def _literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def stage_summary(registry: Registry) -> str:
    rows = sorted(registry.stages.values(), key=lambda s: s.id)
    width = max((len(s.id) for s in rows), default=0)
    lines = []
    for spec in rows:
        first = spec.doc.split(". ")[0].rstrip(".") if spec.doc else ""
        lines.append(f"{spec.id:<{width}}  {first}  [{spec.plugin}]")
    return "\n".join(lines)


def stage_detail(spec: StageSpec) -> str:
    kind = "output stage" if spec.output else "stage"
    lines = [f"{spec.id}  ({kind}, plugin {spec.plugin}, version {spec.version})"]
    if spec.doc:
        lines += ["", f"  {spec.doc}"]
    lines += ["", "inputs:"]
    lines += [f"  {name}: {port.type}{' (optional)' if port.optional else ''}"
              + (f"  {port.doc}" if port.doc else "") for name, port in spec.inputs.items()] or ["  (none)"]
    lines += ["", "outputs:"]
    lines += [f"  {name}: {port.type}" + (f"  {port.doc}" if port.doc else "")
              for name, port in spec.outputs.items()] or ["  (none)"]
    lines += ["", "parameters:"]
    params = param_info(spec)
    for p in params:
        head = f"  {p.name}: {p.type}"
        head += f" = {p.default}" if p.default is not None else " (required)"
        if p.limits:
            head += f"  [{p.limits}]"
        lines.append(head)
        if p.doc:
            lines.append(f"      {p.doc}")
    if not params:
        lines.append("  (none)")
    return "\n".join(lines)


def plugin_table(registry: Registry) -> str:
    lines = []
    for info in sorted(registry.plugins.values(), key=lambda p: p.name):
        lines.append(f"{info.name} {info.version}" + (f"  ({info.module})" if info.module else ""))
        if info.error:
            lines.append(f"  error: {info.error}")
        if info.port_types:
            lines.append(f"  port types: {', '.join(info.port_types)}")
        if info.stages:
            lines.append(f"  stages: {', '.join(info.stages)}")
    problems = [p for p in registry.problems
                if not (registry.plugins.get(p.plugin) and registry.plugins[p.plugin].error == p.message)]
    if problems:
        lines += ["", "problems:"] + [f"  {p}" for p in problems]
    return "\n".join(lines) if lines else "no plugins installed"
