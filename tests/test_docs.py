"""The docs say what the code does: the stage reference is generated, every
hook and every public name is in the plugin guide, and every repository path
the architecture page names exists."""

from __future__ import annotations

import re

import sdflow.plugin
from cli import ROOT, sdflow_cli
from sdflow import hookspecs

DOCS = ROOT / "docs"
REGENERATE = "SDFLOW_DISABLE_PLUGINS=extras sdflow stages --markdown > docs/stages.md"


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_the_stage_reference_is_what_sdflow_stages_prints():
    result = sdflow_cli("stages", "--markdown", env={"SDFLOW_DISABLE_PLUGINS": "extras"})
    assert result.returncode == 0, result.stderr
    assert read("stages.md") == result.stdout, f"docs/stages.md is out of date; regenerate it: {REGENERATE}"


def test_every_hook_is_in_the_plugin_guide():
    hooks = [name for name, value in vars(hookspecs).items()
             if callable(value) and hasattr(value, f"{hookspecs.PROJECT}_spec")]
    assert hooks, "no hooks found in sdflow/hookspecs.py"
    guide = read("plugins.md")
    assert [name for name in hooks if f"`{name}`" not in guide] == []


def test_every_public_name_is_in_the_plugin_guide():
    guide = read("plugins.md")
    code = "\n".join(re.findall(r"^```.*?^```", guide, flags=re.M | re.S) + re.findall(r"`[^`\n]+`", guide))
    missing = [name for name in sdflow.plugin.__all__ if not re.search(rf"\b{re.escape(name)}\b", code)]
    assert missing == [], "name these in docs/plugins.md, in code"


SUFFIXES = (".py", ".lark", ".md", "/")
TOP_LEVEL = "|".join(re.escape(p.name) for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("."))


def repo_paths(markdown: str) -> set[str]:
    """The repository paths a page names: in `code` spans and link targets,
    and, inside fenced blocks, paths that start with a top-level folder."""
    fence = re.compile(r"^```.*?^```", flags=re.M | re.S)
    prose = fence.sub("", markdown)
    named = re.findall(r"`([^`\n]+)`", prose) + re.findall(r"\]\(([^)\s#]+)", prose)
    for block in fence.findall(markdown):
        named += [p.rstrip(".") for p in re.findall(rf"(?<![\w/])((?:{TOP_LEVEL})/[\w./-]*)", block)]
    return {path for path in named
            if "/" in path and path.endswith(SUFFIXES) and " " not in path and "<" not in path
            and not path.startswith(("/", "http:", "https:", "~"))}


def test_every_path_the_architecture_page_names_exists():
    paths = repo_paths(read("architecture.md"))
    assert "sdflow/graph.py" in paths and "grammar/sdflow.lark" in paths
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []
