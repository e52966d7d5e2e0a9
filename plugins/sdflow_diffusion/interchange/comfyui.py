"""ComfyUI's workflows read into recipes (``sdflow import``): the API
format (``{"3": {"class_type": "KSampler", "inputs": {..., "model": ["4",
0]}}}``), the UI format (``nodes`` and ``links``, each node's widget values
in a list), and a ComfyUI PNG's ``prompt`` (API) or ``workflow`` (UI) text
chunk.

The UI format is first turned into the API format, as ComfyUI's frontend
does when it queues a prompt: widget values named, links followed through
Reroute nodes and bypassed nodes, PrimitiveNode values written in, notes and
muted nodes left out.  Then each node becomes the stage that stands for it
(the ComfyUI nodes the stage types declare), in an order where every input
is defined first.
"""

from __future__ import annotations

import heapq
import json
import re
from pathlib import Path

from sdflow_diffusion.interchange.comfy_nodes import (
    CONTROL, CONTROL_VALUES, EXTRA, NOTES, PRIMITIVE_NODE, PRIMITIVES, REROUTE, NodeMap, node_table)

MAX_BYTES = 64 * 2**20  # a workflow is kilobytes; a larger file is not one
MUTED, BYPASSED = 2, 4  # a UI node's mode: never run, or passed through
RESERVED = frozenset({"param", "true", "false", "require", "sdflow"})


def import_comfyui(path, stages) -> str | None:
    """``sdflow import``'s reader of ComfyUI workflows: a ``.json`` file in
    the API or UI format, or a PNG ComfyUI saved; None for any other file.
    ``stages`` are the registered stage types, whose ComfyUI nodes it reads."""
    path = Path(path)
    found = _png_workflow(path)
    if found is None:
        found = _json_workflow(path)
    if found is None:
        return None
    kind, data, where = found
    table = node_table(stages)
    nodes = data if kind == "API" else from_ui(data, table)
    return recipe(nodes, f"{path.name} ({where}ComfyUI's {kind} format)", table)


def _png_workflow(path: Path):
    from PIL import Image, UnidentifiedImageError

    from sdflow.plugin import StageError

    try:
        with Image.open(path) as image:
            chunks = dict(getattr(image, "text", {}) or {})
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    for chunk, kind in (("prompt", "API"), ("workflow", "UI")):
        if isinstance(chunks.get(chunk), str):
            try:
                data = json.loads(chunks[chunk])
            except ValueError as err:
                raise StageError(f"its {chunk!r} text chunk is not JSON: {err}") from None
            found = _kind(data, claimed=True)
            if found != kind:
                raise StageError(f"its {chunk!r} text chunk is not a workflow in ComfyUI's {kind} format")
            return kind, _unwrapped(data), f"a PNG's {chunk} chunk, "
    return None


def _json_workflow(path: Path):
    from sdflow.plugin import StageError

    claimed = path.suffix.lower() == ".json"
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        text = path.read_bytes().decode("utf-8-sig")
        data = json.loads(text)
    except UnicodeDecodeError:
        if claimed:
            raise StageError("this .json file is not UTF-8 text") from None
        return None
    except ValueError as err:
        if claimed:
            raise StageError(f"this .json file is not JSON: {err}") from None
        return None
    kind = _kind(data, claimed)
    return None if kind is None else (kind, _unwrapped(data), "")


def _kind(data, claimed: bool) -> str | None:
    """"API", "UI", or None for JSON that is no workflow (StageError when
    ``claimed`` and it is not even an object)."""
    from sdflow.plugin import StageError

    if not isinstance(data, dict):
        if claimed:
            raise StageError(f"a ComfyUI workflow is a JSON object, and this is {_json_type(data)}",
                             "export it from ComfyUI with Workflow > Export (or Export (API))")
        return None
    if "nodes" in data:
        return "UI"
    if isinstance(data.get("prompt"), dict):  # the body of a POST /prompt
        data = data["prompt"]
    if any(isinstance(node, dict) and ("class_type" in node or "inputs" in node) for node in data.values()):
        return "API"
    return None


def _unwrapped(data: dict) -> dict:
    return data["prompt"] if "nodes" not in data and isinstance(data.get("prompt"), dict) else data


def _json_type(value) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


# -- the UI format, as the API format -------------------------------------------


def from_ui(workflow: dict, table: dict[str, NodeMap]) -> dict:
    """The API format of a UI-format workflow: each node's widget values by
    name, its links as ``[source id, output index]``, through Reroute and
    bypassed nodes; PrimitiveNode values written in; notes and muted nodes
    left out."""
    from sdflow.plugin import StageError

    nodes, links = workflow.get("nodes"), workflow.get("links", [])
    if not isinstance(nodes, list) or not isinstance(links, list):
        raise StageError("a UI-format workflow's 'nodes' and 'links' are lists")
    nodes, links = flattened(nodes, links, _subgraphs(workflow))
    by_id: dict[str, dict] = {}
    for node in nodes:
        if not isinstance(node, dict) or "id" not in node:
            raise StageError("a UI-format workflow's nodes are objects with an 'id'")
        if not isinstance(node.get("type"), str):
            raise StageError(f"node {node['id']} has no type (class_type)")
        by_id[str(node["id"])] = node
    linked = {}
    for link in links:
        if isinstance(link, dict):
            link = [link.get(key) for key in ("id", "origin_id", "origin_slot", "target_id", "target_slot")]
        if not isinstance(link, list) or len(link) < 5:
            raise StageError(f"a link is not [id, origin, slot, target, slot, type]: {json.dumps(link)[:80]}")
        linked[link[0]] = (str(link[1]), link[2])
    api = {}
    for key, node in by_id.items():
        if node["type"] in NOTES or node["type"] in (REROUTE, PRIMITIVE_NODE) or node.get("mode") in (MUTED, BYPASSED):
            continue
        inputs = _widget_values(node, table)
        for slot in node.get("inputs") or []:
            if not isinstance(slot, dict) or slot.get("link") is None:
                continue
            name = (slot.get("widget") or {}).get("name") or slot.get("name")
            source = _follow(slot["link"], key, name, linked, by_id)
            if source is not None:
                inputs[name] = source
            else:
                inputs.pop(name, None)
        api[key] = {"class_type": node["type"], "inputs": inputs}
        if isinstance(node.get("title"), str):
            api[key]["_meta"] = {"title": node["title"]}
    return api


# -- subgraphs: a node whose type is a subgraph's id stands for the nodes inside --

SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20  # the subgraph's own input and output, as link ends inside it
MAX_DEPTH = 32


def _subgraphs(workflow: dict) -> dict[str, dict]:
    from sdflow.plugin import StageError

    found = (workflow.get("definitions") or {}).get("subgraphs") or []
    if not isinstance(found, list) or not all(isinstance(d, dict) and isinstance(d.get("id"), str) for d in found):
        raise StageError("a UI-format workflow's definitions.subgraphs are objects with an 'id'")
    return {d["id"]: d for d in found}


def flattened(nodes: list, links: list, subgraphs: dict[str, dict]) -> tuple[list, list]:
    """The nodes and links of a workflow with every subgraph node replaced
    by the nodes inside it (ids ``outer:inner``, as ComfyUI numbers them when
    it queues the workflow): a link into the subgraph node's input N comes
    to the inner nodes its input N feeds, and a link out of its output N
    comes from what feeds the subgraph's output N inside."""
    if not subgraphs:
        return nodes, links
    flat_nodes: list[dict] = []
    flat_links: dict = {}  # link id -> [origin, slot, target, slot, type]
    through: dict[tuple, tuple] = {}  # a subgraph's end (node id, slot) -> where it really comes from
    _inline(nodes, links, "", subgraphs, (), flat_nodes, flat_links, through)
    kept, out = set(), []
    for link_id, (origin, slot, target, target_slot, kind) in flat_links.items():
        origin, slot = _source(origin, slot, through)
        if origin is not None and not _virtual(target):
            kept.add(link_id)
            out.append([link_id, origin, slot, target, target_slot, kind])
    for node in flat_nodes:
        for entry in node.get("inputs") or []:
            if isinstance(entry, dict) and entry.get("link") is not None and entry["link"] not in kept:
                entry["link"] = None  # fed by a subgraph input nothing is connected to
    return flat_nodes, out


def _inline(nodes, links, prefix: str, subgraphs: dict, inside: tuple, flat_nodes: list, flat_links: dict,
            through: dict) -> None:
    """One level of a workflow (the top, or a subgraph's inside under
    ``prefix``) into ``flat_nodes`` and ``flat_links``; each subgraph node
    in it, recursively."""
    from sdflow.plugin import StageError

    if not isinstance(nodes, list) or not isinstance(links, list):
        raise StageError(f"subgraph {inside[-1]}'s 'nodes' and 'links' are lists")
    records = {}
    for link in links:
        if isinstance(link, dict):
            link = [link.get(key) for key in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")]
        if not isinstance(link, list) or len(link) < 5:
            raise StageError(f"a link is not [id, origin, slot, target, slot, type]: {json.dumps(link)[:80]}")
        records[link[0]] = link
        flat_links[f"{prefix}{link[0]}" if prefix else link[0]] = [
            f"{prefix}{link[1]}", link[2], f"{prefix}{link[3]}", link[4], (link + [None])[5]]
    for node in nodes:
        if not isinstance(node, dict) or "id" not in node:
            raise StageError("a UI-format workflow's nodes are objects with an 'id'")
        here = f"{prefix}{node['id']}"
        definition = subgraphs.get(node.get("type"))
        if definition is None:
            copy = {**node, "id": here,
                    "inputs": [{**entry, "link": (f"{prefix}{entry['link']}" if prefix else entry["link"])}
                               if isinstance(entry, dict) and entry.get("link") is not None else entry
                               for entry in node.get("inputs") or []]}
            flat_nodes.append(copy)
            continue
        if definition["id"] in inside or len(inside) >= MAX_DEPTH:
            raise StageError(f"subgraph {definition['id']} contains itself (node {here})")
        if node.get("mode") in (MUTED, BYPASSED):
            raise StageError(f"node {here} is a muted or bypassed subgraph",
                             "un-mute it, or remove it, in ComfyUI")
        names = [entry.get("name") for entry in definition.get("inputs") or [] if isinstance(entry, dict)]
        for entry in node.get("inputs") or []:  # the subgraph's input N is fed as the node's input of that name
            if isinstance(entry, dict) and entry.get("link") in records and entry.get("name") in names:
                origin = records[entry["link"]]
                through[(f"{here}:{SUBGRAPH_INPUT}", names.index(entry["name"]))] = (f"{prefix}{origin[1]}",
                                                                                   origin[2])
        inner = len(flat_links)
        _inline(definition.get("nodes"), definition.get("links", []), f"{here}:", subgraphs,
                (*inside, definition["id"]), flat_nodes, flat_links, through)
        for origin, slot, target, target_slot, _kind in list(flat_links.values())[inner:]:
            if target == f"{here}:{SUBGRAPH_OUTPUT}":  # what feeds the subgraph's output N inside
                through[(here, target_slot)] = (origin, slot)


def _virtual(node_id: str) -> bool:
    return str(node_id).endswith((f":{SUBGRAPH_INPUT}", f":{SUBGRAPH_OUTPUT}"))


def _source(origin: str, slot, through: dict):
    """Where a link really comes from, through subgraph boundaries; None for
    a subgraph input nothing feeds."""
    for _ in range(MAX_DEPTH * 4):
        if (origin, slot) in through:
            origin, slot = through[(origin, slot)]
        elif _virtual(origin):
            return None, None
        else:
            return origin, slot
    return None, None


def _widget_values(node: dict, table: dict[str, NodeMap]) -> dict:
    """A node's widget values by input name (the UI keeps them in a list,
    in the order of the node's widget inputs, a seed's control value after it)."""
    mapping, values = table.get(node["type"]), node.get("widgets_values")
    if mapping is None or not values:
        return {}
    if isinstance(values, dict):
        return {name: values[name] for name in mapping.widgets if name in values}
    named, index = {}, 0
    for name in mapping.widgets:
        if index >= len(values):
            break
        if name == CONTROL:
            value = values[index]
            index += isinstance(value, bool) or (isinstance(value, str) and value in CONTROL_VALUES)
            continue
        if not name.startswith(EXTRA):
            named[name] = values[index]
        index += 1
    return named


def _follow(link, target: str, name: str, table: dict, by_id: dict):
    """Where a link really comes from: ``[node id, output index]``, a
    PrimitiveNode's value, or None (an unconnected Reroute, a muted node)."""
    from sdflow.plugin import StageError

    seen = set()
    while True:
        if link not in table:
            raise StageError(f"node {target}'s input {name!r} has link {link}, which is not in the workflow's links")
        if link in seen:
            raise StageError(f"node {target}'s input {name!r} comes through a loop of Reroute or bypassed nodes")
        seen.add(link)
        origin, slot = table[link]
        node = by_id.get(origin)
        if node is None:
            raise StageError(f"node {target}'s input {name!r} is linked to node {origin}, which is not in the workflow")
        if node["type"] == PRIMITIVE_NODE:
            values = node.get("widgets_values") or [None]
            return values[0] if isinstance(values, list) else None
        if node.get("mode") == MUTED:
            return None
        if node["type"] == REROUTE or node.get("mode") == BYPASSED:
            link = _passed_through(node, slot)
            if link is None:
                return None
            continue
        return [origin, slot]


def _passed_through(node: dict, slot) -> int | None:
    """The link into a Reroute, or into a bypassed node's input of the type
    of its output ``slot`` (the same slot first, as the frontend does)."""
    inputs = [i for i in node.get("inputs") or [] if isinstance(i, dict)]
    if node["type"] == REROUTE:
        return inputs[0].get("link") if inputs else None
    outputs = node.get("outputs") or []
    kind = outputs[slot].get("type") if isinstance(slot, int) and 0 <= slot < len(outputs) else None
    same = [inputs[slot]] if isinstance(slot, int) and slot < len(inputs) else []
    for candidate in same + inputs:
        if candidate.get("type") == kind and candidate.get("link") is not None:
            return candidate["link"]
    return None


# -- the API format, as a recipe ------------------------------------------------


def recipe(nodes: dict, source: str, table: dict[str, NodeMap]) -> str:
    """The recipe of an API-format workflow; StageError for a broken one or
    one with nodes sdflow has no stage for."""
    from sdflow.plugin import StageError, literal

    nodes = _checked(nodes)
    _write_in_primitives(nodes)
    stages = {key: node for key, node in nodes.items() if node["class_type"] not in PRIMITIVES | NOTES}
    unknown = [f"{key} ({node['class_type']})" for key, node in sorted(stages.items(), key=_by_id)
               if node["class_type"] not in table]
    if unknown:
        raise StageError(f"nodes sdflow has no stage for: {', '.join(unknown)}",
                         "a plugin may provide them (sdflow stages lists what is installed); "
                         "or replace them in ComfyUI with built-in nodes")
    order = _topological(stages)
    names = names_of(stages, order, table)
    notes: list[str] = []
    lines = []
    for key in order:
        node, mapping = stages[key], table[stages[key]["class_type"]]
        args = []
        inputs = node["inputs"]
        for comfy, port in mapping.links.items():
            if inputs.get(comfy) is not None:
                args.append(f"{port}={_value(inputs[comfy], key, comfy, stages, names, table)}")
        for comfy, param in mapping.params.items():
            if comfy in inputs and inputs[comfy] is not None:
                value = inputs[comfy]
                if not _is_link(value):
                    value = _typed(mapping.spec, param, mapping.to_sdflow(param, value))
                    value = _sampler(value, notes) if param == "sampler" else value
                args.append(f"{param}={_value(value, key, comfy, stages, names, table)}")
        args += [f"{param}={literal(value)}" for param, value in mapping.node.fixed.items()]
        note = mapping.node.note
        if note and f"{note}." not in notes:
            notes.append(f"{note}.")
        left_out = [name for name in inputs if name not in mapping.links and name not in mapping.params
                    and EXTRA + name not in mapping.widgets]
        if left_out:
            notes.append(f"node {key} ({node['class_type']}): {', '.join(left_out)} left out "
                         f"({mapping.stage} has no such input)")
        lines.append(_statement(names.get(key), mapping.stage, args))
    header = [f"# Made by sdflow import from {source}."] + [f"# {note}" for note in notes]
    return "\n".join([*header, "sdflow 1", "", *lines]) + "\n"


def _statement(name: str | None, stage: str, args: list[str]) -> str:
    """A stage statement in sdflow fmt's layout (so that the diagnostics of
    sdflow check point into the text as printed): one line while it fits in
    88 columns, else one argument a line."""
    call = f"{name} = {stage}(" if name else f"{stage}("
    one_line = f"{call}{', '.join(args)})"
    if len(one_line) <= 88 or not args:
        return one_line
    return "\n".join([call, *(f"    {arg}," for arg in args), ")"])


def _typed(spec, param: str, value):
    """A whole number where the parameter is a float written as one (ComfyUI
    writes cfg 8 as 8): the recipe reads as sdflow writes it, and exports back."""
    annotation = str(spec.params.model_fields[param].annotation)
    if isinstance(value, int) and not isinstance(value, bool) and "float" in annotation and "int" not in annotation:
        return float(value)
    return value


def _sampler(value, notes: list[str]):
    """ComfyUI's *_gpu samplers are the samplers without the suffix with
    their noise drawn on the GPU: sdflow has the samplers."""
    from sdflow_diffusion.numerics.sampler_table import COMFY_SAMPLERS

    if isinstance(value, str) and value.endswith("_gpu") and value[:-4] in COMFY_SAMPLERS:
        note = (f"sampler {value} is {value[:-4]} here (its noise drawn on the CPU: "
                "images differ from ComfyUI's).")
        if note not in notes:
            notes.append(note)
        return value[:-4]
    return value


def _checked(nodes: dict) -> dict:
    from sdflow.plugin import StageError

    checked = {}
    for key, node in nodes.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise StageError(f"node {key} has no class_type")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise StageError(f"node {key}'s inputs are not an object")
        checked[str(key)] = {**node, "inputs": dict(inputs)}
    for key, node in checked.items():
        for name, value in node["inputs"].items():
            if _is_link(value) and str(value[0]) not in checked:
                raise StageError(f"node {key}'s input {name!r} is linked to node {value[0]}, "
                                 "which is not in the workflow")
    return checked


def _is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def _write_in_primitives(nodes: dict) -> None:
    """Inputs linked to PrimitiveInt, PrimitiveString ... get their value."""
    for node in nodes.values():
        for name, value in node["inputs"].items():
            seen = set()
            while _is_link(value) and nodes[str(value[0])]["class_type"] in PRIMITIVES and str(value[0]) not in seen:
                seen.add(str(value[0]))
                value = nodes[str(value[0])]["inputs"].get("value")
            node["inputs"][name] = value


def _by_id(item) -> tuple:
    return _id_key(item[0])


def _id_key(key: str) -> tuple:
    """Node ids in number order ("9" before "10"; "5:2", a subgraph's, after "5")."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in str(key).split(":"))


def _topological(stages: dict) -> list[str]:
    """The stages in an order where each comes after those it takes from;
    of those ready at once, the lowest node id first."""
    from sdflow.plugin import StageError

    needs = {key: {str(v[0]) for v in node["inputs"].values() if _is_link(v) and str(v[0]) in stages}
             for key, node in stages.items()}
    users: dict[str, list[str]] = {key: [] for key in stages}
    for key, sources in needs.items():
        for source in sources:
            users[source].append(key)
    waiting = {key: len(sources) for key, sources in needs.items()}
    ready = [(_id_key(key), key) for key, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, key = heapq.heappop(ready)
        order.append(key)
        for user in users[key]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, (_id_key(user), user))
    if len(order) < len(stages):
        loop = _a_loop({key for key in stages if key not in order}, needs)
        raise StageError("the workflow loops: " + " -> ".join(f"{key} ({stages[key]['class_type']})" for key in loop),
                         "a workflow is a graph without cycles: cut one of these links")
    return order


def _a_loop(left: set[str], needs: dict) -> list[str]:
    """One cycle among the nodes a topological sort could not place."""
    path, key = [], min(left, key=_id_key)
    while key not in path:
        path.append(key)
        key = min((source for source in needs[key] if source in left), key=_id_key)
    loop = list(reversed(path[path.index(key):]))  # in the direction the data flows
    first = loop.index(min(loop, key=_id_key))
    loop = loop[first:] + loop[:first]
    return loop + [loop[0]]


# The names sdflow's own recipes give these stages, where no title names them.
ROLES = {"load_checkpoint": "ckpt", "empty_latent": "latent", "sample": "denoised", "sample_advanced": "denoised",
         "vae_decode": "image", "vae_encode": "encoded", "load_image": "picture"}


def names_of(stages: dict, order: list[str], table: dict[str, NodeMap]) -> dict[str, str]:
    """Each stage's name (none for an output stage): its title in snake
    case where the user gave one, else its role (a prompt wired into a
    sampler's positive or negative is ``positive`` or ``negative``; see
    :data:`ROLES`), else its stage type; made unique with _2, _3 ..."""
    fed: dict[str, list[str]] = {}  # a node -> the inputs its outputs feed
    for node in stages.values():
        for name, value in node["inputs"].items():
            if _is_link(value):
                fed.setdefault(str(value[0]), []).append(name)
    names, taken = {}, set()
    for key in order:
        node, mapping = stages[key], table[stages[key]["class_type"]]
        if not mapping.outputs:
            continue
        title = (node.get("_meta") or {}).get("title")
        base = _snake(title) if isinstance(title, str) and title not in (mapping.title, node["class_type"]) else ""
        role = next((name for name in fed.get(key, []) if name in ("positive", "negative")), None)
        base = base or (role if mapping.spec.id.startswith("clip_text_encode") else None) \
            or ROLES.get(mapping.spec.id, mapping.spec.id)
        name, count = base, 1
        while name in taken:
            count += 1
            name = f"{base}_{count}"
        taken.add(name)
        names[key] = name
    return names


def _snake(title: str) -> str:
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", title)
    text = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()
    if text and text[0].isdigit():
        text = f"n_{text}"
    return f"{text}_stage" if text in RESERVED else text


def _value(value, key: str, name: str, stages: dict, names: dict, table: dict[str, NodeMap]) -> str:
    """An argument: a reference for a link, else the value as a literal."""
    from sdflow.plugin import StageError, literal

    if _is_link(value):
        source, index = str(value[0]), value[1]
        outputs = table[stages[source]["class_type"]].outputs
        if not 0 <= index < len(outputs):
            raise StageError(f"node {key}'s input {name!r} takes output {index} of node {source} "
                             f"({stages[source]['class_type']}), which has {len(outputs)}")
        return names[source] if len(outputs) == 1 else f"{names[source]}.{outputs[index]}"
    try:
        return literal(value)
    except TypeError:
        raise StageError(f"node {key}'s input {name!r} is {json.dumps(value)[:80]}, not a value sdflow "
                         "can write") from None
