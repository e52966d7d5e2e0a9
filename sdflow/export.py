"""A checked recipe as a picture: Graphviz DOT or Mermaid text."""

from __future__ import annotations

from sdflow.graph import StageGraph


def _edges(graph: StageGraph):
    for key, node in graph.nodes.items():
        for port, connection in node.inputs.items():
            source = graph.nodes[connection.stage]
            port_type = source.spec.outputs[connection.port].type
            yield connection.stage, connection.port, key, port, port_type


def _label(graph: StageGraph, key: str) -> str:
    node = graph.nodes[key]
    return f"{node.name}\\n{node.spec.id}" if node.name else node.spec.id


def to_dot(graph: StageGraph) -> str:
    """Graphviz DOT: one box per stage, one edge per connection, labelled
    with the ports and their type; stages no output needs are dashed."""
    needed = set(graph.order)
    lines = ["digraph recipe {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    for key, node in graph.nodes.items():
        style = ", peripheries=2" if node.spec.output else ""
        style += "" if key in needed else ", style=dashed"
        lines.append(f'  "{key}" [label="{_label(graph, key)}"{style}];')
    for source, out_port, target, in_port, port_type in _edges(graph):
        lines.append(f'  "{source}" -> "{target}" [label="{out_port} -> {in_port}\\n{port_type}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(graph: StageGraph) -> str:
    """Mermaid flowchart text, for Markdown that renders it."""
    ids = {key: f"n{i}" for i, key in enumerate(graph.nodes)}
    lines = ["flowchart LR"]
    for key, node in graph.nodes.items():
        label = _label(graph, key).replace("\\n", "<br/>")
        shape = f'[["{label}"]]' if node.spec.output else f'["{label}"]'
        lines.append(f"  {ids[key]}{shape}")
    for source, out_port, target, in_port, port_type in _edges(graph):
        lines.append(f'  {ids[source]} -->|"{out_port} → {in_port} : {port_type}"| {ids[target]}')
    return "\n".join(lines) + "\n"
