"""ComfyUI's nodes as sdflow stages, read off the stage types'
declarations (``@stage(comfyui=ComfyNode(...))``, built-in and plugins'
alike): which stage each node is, its inputs by ComfyUI's names and
sdflow's, the order of its widget values in the UI format, its outputs by
index, and the values whose spelling differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from sdflow.plugin import ComfyNode

CONTROL = "+"  # the UI's control_after_generate value, after a seed
EXTRA = "-"  # a UI value that stands for no input


@dataclass(frozen=True)
class NodeMap:
    """One ComfyUI node type as an sdflow stage."""

    stage: str  # the name a recipe calls the stage type by
    spec: Any  # its StageSpec
    node: ComfyNode
    outputs: tuple[str, ...]  # sdflow's output names, by ComfyUI's output index
    links: dict[str, str]  # ComfyUI input -> sdflow input port
    widgets: tuple[str, ...]  # ComfyUI's widget inputs in the UI's order (with CONTROL / EXTRA marks)
    params: dict[str, str]  # ComfyUI widget input -> sdflow parameter

    @property
    def title(self) -> str:
        """ComfyUI's display name: a title that is this (or the type) was not set by the user."""
        return self.node.title or self.node.class_type

    def to_sdflow(self, param: str, value: Any) -> Any:
        """A parameter's value as sdflow spells it."""
        spellings = self.node.values.get(param, {})
        try:
            return spellings.get(value, value)
        except TypeError:  # a list: no spelling of one
            return value

    def to_comfy(self, param: str, value: Any) -> Any:
        """A parameter's value as ComfyUI spells it."""
        for comfy, ours in self.node.values.get(param, {}).items():
            if ours == value and type(ours) is type(value):
                return comfy
        return value


def node_table(stages: Mapping[str, Any]) -> dict[str, NodeMap]:
    """Every ComfyUI node a registered stage type stands for, by class type
    (where two stage types claim one node, the first registered)."""
    ids = [spec.id for spec in stages.values()]
    table: dict[str, NodeMap] = {}
    for qualified, spec in stages.items():
        for mapping in nodes_of(spec, spec.id if ids.count(spec.id) == 1 else qualified):
            table.setdefault(mapping.node.class_type, mapping)
    return table


def nodes_of(spec: Any, name: str | None = None) -> list[NodeMap]:
    """A stage type's ComfyUI nodes, in the order it declares them."""
    return [NodeMap(name or spec.id, spec, node,
                    tuple(node.outputs.split()) if node.outputs is not None else tuple(spec.outputs),
                    node.links, node.widget_order, node.params) for node in spec.comfyui]


# Nodes that hold one value for others' widgets: followed through, their value written in.
PRIMITIVES = frozenset({"PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline",
                        "PrimitiveBoolean"})
# UI-only nodes: notes, and the two the frontend resolves itself.
NOTES = frozenset({"Note", "MarkdownNote"})
REROUTE, PRIMITIVE_NODE = "Reroute", "PrimitiveNode"
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
