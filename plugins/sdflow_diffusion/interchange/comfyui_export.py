"""Recipes written as ComfyUI workflows (``sdflow export --format
comfyui-api`` or ``comfyui-ui``, and the ``prompt`` and ``workflow`` chunks
of every PNG whose recipe ComfyUI can express).

Each stage becomes the ComfyUI node its stage type declares
(``@stage(comfyui=ComfyNode(...))``); of several, the first that can take
the stage's arguments: every input it is given has a place there, every
parameter the node has no input for is at its default, and the node's own
test (``when``) passes.  A stage that no node can stand for is named, with
why, and nothing is written.

Node ids count from 1 in the recipe's run order.  A node's title is its
stage's name in the recipe where ``sdflow import`` would not give that name
back by itself, so that a round trip keeps the recipe's names.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from sdflow_diffusion.interchange.comfy_nodes import CONTROL, EXTRA, NodeMap, nodes_of

# What ComfyUI's UI keeps for a widget that stands for no input (LoadImage's upload button).
EXTRA_VALUES = {"upload": "image"}


def export_api(stages: Sequence[Any]) -> str:
    """``sdflow export --format comfyui-api``: the workflow in ComfyUI's API format."""
    return json.dumps(api_prompt(stages), indent=2, ensure_ascii=False) + "\n"


def export_ui(stages: Sequence[Any]) -> str:
    """``sdflow export --format comfyui-ui``: the workflow in ComfyUI's UI
    format, laid out in columns from the loaders to the outputs."""
    return json.dumps(ui_workflow(stages), indent=2, ensure_ascii=False) + "\n"


def png_chunks(stages: Sequence[Any]) -> dict[str, str]:
    """The ``prompt`` and ``workflow`` text chunks ComfyUI writes into its
    PNGs (and reads back when one is dropped on it), or none when ComfyUI
    cannot express the recipe."""
    from sdflow.plugin import StageError

    try:
        chosen = _chosen(stages)
    except StageError:
        return {}
    return {"prompt": json.dumps(_api(chosen), ensure_ascii=False),
            "workflow": json.dumps(_ui(chosen), ensure_ascii=False)}


def api_prompt(stages: Sequence[Any]) -> dict:
    return _api(_chosen(stages))


def ui_workflow(stages: Sequence[Any]) -> dict:
    return _ui(_chosen(stages))


# -- each stage as a node ------------------------------------------------------


class _Node:
    """A stage as the node chosen for it: its id, its links and its values."""

    def __init__(self, number: int, stage: Any, mapping: NodeMap):
        self.id, self.stage, self.mapping = str(number), stage, mapping
        self.title = mapping.title

    def widget(self, comfy: str) -> Any:
        param = self.mapping.params[comfy]
        return self.mapping.to_comfy(param, getattr(self.stage.params, param))


def _chosen(stages: Sequence[Any]) -> list[_Node]:
    """Each stage's node, ids in the order given (StageError naming every
    stage no node can stand for)."""
    from sdflow.plugin import StageError

    nodes, problems = [], {}
    for stage in stages:
        mapping, why = _node_for(stage)
        if mapping is None:
            problems[stage.key] = why
        else:
            nodes.append(_Node(len(nodes) + 1, stage, mapping))
    if problems:
        raise StageError(f"ComfyUI has no node for {len(problems)} of the recipe's stages: "
                         + "; ".join(f"{key}: {why}" for key, why in problems.items()),
                         "sdflow export writes recipes whose every stage declares a ComfyUI node that can "
                         "take its arguments (sdflow stages NAME shows each one's)", stages=problems)
    _title_renamed(nodes)
    return nodes


def _node_for(stage: Any) -> tuple[NodeMap | None, str]:
    maps = nodes_of(stage.spec)
    if not maps:
        return None, f"{stage.type} has no ComfyUI node"
    reasons = []
    for mapping in maps:
        why = _cannot_take(stage, mapping)
        if why is None:
            return mapping, ""
        reasons.append(why)
    return None, "; ".join(reasons)


def _cannot_take(stage: Any, mapping: NodeMap) -> str | None:
    """Why ``mapping``'s node cannot stand for ``stage``, or None."""
    node, params = mapping.node, stage.params
    where = f"ComfyUI's {node.class_type}"
    ports = set(mapping.links.values())
    extra = [port for port in stage.inputs if port not in ports]
    if extra:
        return f"{where} has no input for {', '.join(extra)}"
    mapped = set(mapping.params.values())
    unset = [param for param in mapped if getattr(params, param) is None]
    if unset:
        return f"{where} needs {', '.join(unset)}"
    fields = type(params).model_fields
    changed = [f"{name}={getattr(params, name)!r}" for name, info in fields.items()
               if name not in mapped and getattr(params, name) != node.fixed.get(
                   name, info.get_default(call_default_factory=True))]
    if changed:
        return f"{where} has no input for {', '.join(changed)}"
    if node.when is not None and not node.when(params):
        return f"{where} cannot take these arguments"
    return None


def _title_renamed(nodes: list[_Node]) -> None:
    """Title each node whose stage's name ``sdflow import`` would not give
    back by itself (it names stages by role: ckpt, positive, ...)."""
    from sdflow_diffusion.interchange.comfyui import names_of

    api = _api(nodes)
    table = {node.mapping.node.class_type: node.mapping for node in nodes}
    derived = names_of(api, [node.id for node in nodes], table)
    for node in nodes:
        if node.stage.name is not None and derived.get(node.id) != node.stage.name:
            node.title = node.stage.name


def _links(node: _Node, by_key: dict[str, _Node]) -> dict[str, list]:
    """A node's linked inputs: ComfyUI's name -> [source id, output index]."""
    links = {}
    for comfy, port in node.mapping.links.items():
        if port in node.stage.inputs:
            source_key, source_port = node.stage.inputs[port]
            source = by_key[source_key]
            links[comfy] = [source.id, source.mapping.outputs.index(source_port)]
    return links


# -- the API format -------------------------------------------------------------


def _api(nodes: list[_Node]) -> dict:
    by_key = {node.stage.key: node for node in nodes}
    prompt = {}
    for node in nodes:
        inputs: dict[str, Any] = {comfy: node.widget(comfy) for comfy in node.mapping.params}
        inputs.update(_links(node, by_key))
        prompt[node.id] = {"inputs": inputs, "class_type": node.mapping.node.class_type,
                           "_meta": {"title": node.title}}
    return prompt


# -- the UI format --------------------------------------------------------------

COLUMN, GAP, WIDTH, TEXT_WIDTH = 420, 40, 320, 400
ROW, TEXT_ROWS = 26, 4


def _ui(nodes: list[_Node]) -> dict:
    by_key = {node.stage.key: node for node in nodes}
    links, serialized = [], {}
    outputs_of: dict[str, list[dict]] = {}
    for node in nodes:
        types = [node.stage.spec.outputs[port].type for port in node.mapping.outputs]
        outputs_of[node.id] = [{"name": kind if types.count(kind) == 1 else port.upper(), "type": kind,
                                "links": [], "slot_index": slot}
                               for slot, (port, kind) in enumerate(zip(node.mapping.outputs, types))]
    for node in nodes:
        inputs, linked = [], _links(node, by_key)
        for comfy, port in node.mapping.links.items():
            entry = {"name": comfy, "type": node.stage.spec.inputs[port].type, "link": None}
            if comfy in linked:
                source, slot = linked[comfy]
                link_id = len(links) + 1
                links.append([link_id, int(source), slot, int(node.id), len(inputs), entry["type"]])
                outputs_of[source][slot]["links"].append(link_id)
                entry["link"] = link_id
            inputs.append(entry)
        values = []
        for comfy in node.mapping.widgets:
            if comfy == CONTROL:
                values.append("fixed")
            elif comfy.startswith(EXTRA):
                values.append(EXTRA_VALUES.get(comfy[1:]))
            else:
                values.append(node.widget(comfy))
        serialized[node.id] = {"id": int(node.id), "type": node.mapping.node.class_type, "pos": [0, 0],
                               "size": list(_size(node, inputs)), "flags": {}, "order": int(node.id) - 1,
                               "mode": 0, "inputs": inputs, "outputs": outputs_of[node.id],
                               "properties": {"Node name for S&R": node.mapping.node.class_type},
                               "widgets_values": values}
        if node.title != node.mapping.title:
            serialized[node.id]["title"] = node.title
    for item in serialized.values():
        for output in item["outputs"]:
            output["links"] = output["links"] or None
    _lay_out(nodes, serialized, by_key)
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": list(serialized.values()),
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
            "version": 0.4}


def _size(node: _Node, inputs: list) -> tuple[int, int]:
    """A node's size on the canvas: a row per slot and per widget, a text box taller."""
    texts = [name for name in node.mapping.params if isinstance(node.widget(name), str) and "text" in name]
    rows = max(len(inputs), len(node.mapping.outputs)) + len(node.mapping.params) + (TEXT_ROWS - 1) * len(texts)
    return (TEXT_WIDTH if texts else WIDTH), 46 + ROW * rows


def _lay_out(nodes: list[_Node], serialized: dict, by_key: dict[str, _Node]) -> None:
    """Columns by depth (a node one right of the deepest node it takes
    from), stacked top to bottom in run order."""
    depth: dict[str, int] = {}
    for node in nodes:  # in run order: every source placed first
        sources = [by_key[key].id for key, _port in node.stage.inputs.values()]
        depth[node.id] = 1 + max((depth[s] for s in sources), default=-1)
    heights: dict[int, int] = {}
    for node in nodes:
        column = depth[node.id]
        y = heights.get(column, 50)
        serialized[node.id]["pos"] = [50 + COLUMN * column, y]
        heights[column] = y + serialized[node.id]["size"][1] + GAP

