"""The diffusion plugin's rooms: declarations on top, loaders as leaves, no
import circles; the runtime package holds only what runs."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "plugins" / "sdflow_diffusion"


def module_name(path: Path) -> str:
    parts = path.relative_to(PLUGIN.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each module of the plugin -> the plugin's modules it imports (at any depth in its code)."""
    modules = {module_name(p): p for p in PLUGIN.rglob("*.py")}
    found: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        found[name] = targets
    return found


def test_the_plugins_modules_import_each_other_without_a_circle():
    graph = imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(name, trail):
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target):] + [target] if target in trail else [name, target])
            elif target not in state:
                visit(target, trail + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_loaders_are_leaves_and_only_the_hook_imports_the_declarations():
    graph = imports()
    for loader in ("sdflow_diffusion.models.single_file", "sdflow_diffusion.models.diffusers_folder"):
        assert "sdflow_diffusion.models.load" not in graph[loader]
        assert not any(t.startswith("sdflow_diffusion.stages") for t in graph[loader])
    importers = {name for name, targets in graph.items()
                 if any(t == "sdflow_diffusion.stages" or t.startswith("sdflow_diffusion.stages.") for t in targets)}
    assert importers <= {"sdflow_diffusion"} | {
        n for n in graph if n.startswith("sdflow_diffusion.stages")}


def test_training_code_is_not_in_the_runtime_package():
    assert not list(PLUGIN.rglob("train*.py")) and not list(PLUGIN.rglob("dataset.py"))
    assert (ROOT / "training" / "tiny" / "train.py").is_file()
