"""sdflow export --format comfyui-api / comfyui-ui, and the ComfyUI chunks
of the PNGs sdflow saves: checked against what ComfyUI 0.3.64 declares of
its nodes (tests/data/comfyui_nodes.json, recorded from ComfyUI itself by
benchmarks/comfy_export_check.py, which also runs ComfyUI's own
validate_prompt on every export), and round trips through sdflow import."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cli import sdflow_cli
from sdflow.cli import main
from sdflow.registry import default_registry

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
COMFY = json.loads((DATA / "comfyui_nodes.json").read_text())["nodes"]
EXPORTABLE = ["area", "batch", "hires_fix", "img2img", "long_prompt", "lora", "outpaint", "sdxl_refiner",
              "two_images", "txt2img"]
NOT_EXPORTABLE = {"inpaint": "mask_from_rect has no ComfyUI node",
                  "prompt_weighting": "ComfyUI's CLIPTextEncode has no input for convention='a1111'"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def exported(recipe: Path, fmt: str = "comfyui-api", *extra: str) -> dict:
    result = sdflow_cli("export", str(recipe), "--format", fmt, *extra)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return json.loads(result.stdout)


def comfyui_problems(prompt: dict) -> list[str]:
    """What ComfyUI's check of a queued prompt would refuse, from its
    recorded declarations: unknown nodes, missing or unknown inputs, links
    to nothing or of the wrong type, values out of range or not among a
    list's (file names aside: they depend on the user's folders)."""
    problems = []
    for key, node in prompt.items():
        declared = COMFY.get(node["class_type"])
        if declared is None:
            problems.append(f"{key}: no node {node['class_type']}")
            continue
        inputs = {item["name"]: item for item in declared["inputs"]}
        problems += [f"{key}: unknown input {name}" for name in node["inputs"] if name not in inputs]
        for name, item in inputs.items():
            if name not in node["inputs"]:
                if not item["optional"]:
                    problems.append(f"{key}: {node['class_type']} needs {name}")
                continue
            value = node["inputs"][name]
            if item["type"] not in WIDGET_TYPES:
                source = prompt.get(value[0]) if isinstance(value, list) and len(value) == 2 else None
                if source is None:
                    problems.append(f"{key}: {name} is linked to nothing: {value}")
                elif COMFY[source["class_type"]]["outputs"][value[1]] != item["type"]:
                    problems.append(f"{key}: {name} takes {item['type']}, linked to a "
                                    f"{COMFY[source['class_type']]['outputs'][value[1]]}")
            elif "values" in item and value not in item["values"]:
                problems.append(f"{key}: {name}={value!r} is not one of ComfyUI's")
            elif item["type"] in ("INT", "FLOAT") and not item.get("min", value) <= value <= item.get("max", value):
                problems.append(f"{key}: {name}={value} is out of ComfyUI's range")
    return problems


def signature(prompt: dict) -> list:
    """A workflow up to its node ids and titles: each node as its class,
    its values and the signatures of what it is linked to, sorted."""
    memo: dict[str, str] = {}

    def of(key: str) -> str:
        if key not in memo:
            node = prompt[key]
            inputs = {name: (f"<{of(str(v[0]))}>[{v[1]}]" if isinstance(v, list) else
                             float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
                      for name, v in sorted(node["inputs"].items())}  # 8 and 8.0: one value
            memo[key] = json.dumps([node["class_type"], inputs], sort_keys=True)
        return memo[key]

    return sorted(of(key) for key in prompt)


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def test_every_declared_node_is_the_node_comfyui_declares(registry):
    """Each stage's ComfyUI node: its linked inputs are ComfyUI's, of the
    stage's port types; its widgets are ComfyUI's widget inputs in
    ComfyUI's order (a seed's control value after it); its outputs are
    ComfyUI's, in order, of the stage's output types."""
    checked = 0
    for spec in registry.stages.values():
        for node in spec.comfyui:
            declared = COMFY[node.class_type]
            assert declared is not None, node.class_type
            kinds = {item["name"]: item["type"] for item in declared["inputs"]}
            for comfy, port in node.links.items():
                assert kinds.get(comfy) == spec.inputs[port].type, (node.class_type, comfy)
            widgets = [item for item in declared["inputs"]
                       if item["type"] in WIDGET_TYPES and item["name"] not in node.dropped]
            order = []
            for item in widgets:
                order.append(item["name"])
                if item.get("control_after_generate"):
                    order.append("+")
            assert [w for w in node.widget_order if not w.startswith("-")] == order, node.class_type
            outputs = node.outputs.split() if node.outputs is not None else list(spec.outputs)
            assert [spec.outputs[port].type for port in outputs] == declared["outputs"], node.class_type
            assert (node.title or None) == declared["display_name"], node.class_type
            assert node.dropped <= set(kinds), node.class_type
            checked += 1
    assert checked == len(COMFY) == 53


@pytest.mark.parametrize("name", EXPORTABLE)
def test_each_example_exports_to_a_workflow_comfyui_accepts(name):
    prompt = exported(ROOT / "examples" / f"{name}.sdflow")
    assert comfyui_problems(prompt) == []
    assert list(prompt) == [str(i) for i in range(1, len(prompt) + 1)]


def test_a_recipe_comfyui_cannot_express_names_each_stage_at_its_line():
    for name, why in NOT_EXPORTABLE.items():
        recipe = ROOT / "examples" / f"{name}.sdflow"
        result = sdflow_cli("export", str(recipe), "--format", "comfyui-api")
        assert (result.returncode, result.stdout) == (1, "")
        assert "E630 comfyui-api cannot express stage" in result.stderr and why in result.stderr
        assert f"{recipe}:" in result.stderr and "^^^" in result.stderr


@pytest.mark.parametrize("source", ["default_api.json", "default_ui.json"])
def test_comfyuis_default_workflow_round_trips(tmp_path, source):
    """ComfyUI's default workflow -> recipe -> workflow is the same graph
    with the same values, in both formats; and the UI export imports back
    to the same recipe."""
    recipe = tmp_path / "default.sdflow"
    assert sdflow_cli("import", str(DATA / "comfyui" / source), "-o", str(recipe)).returncode == 0
    original = json.loads((DATA / "comfyui" / "default_api.json").read_text())
    api = exported(recipe)
    assert signature(api) == signature(original)
    assert [node["_meta"]["title"] for node in api.values()] == [
        "Load Checkpoint", "Empty Latent Image", "CLIP Text Encode (Prompt)", "CLIP Text Encode (Prompt)",
        "KSampler", "VAE Decode", "Save Image"]
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps(exported(recipe, "comfyui-ui")))
    again = sdflow_cli("import", str(ui))
    assert again.stdout.split("\n", 1)[1] == recipe.read_text().split("\n", 1)[1]


def test_the_ui_format_is_linked_laid_out_and_keeps_the_recipes_names(tmp_path):
    recipe = tmp_path / "named.sdflow"
    recipe.write_text((ROOT / "examples" / "txt2img.sdflow").read_text().replace("denoised", "sampled"))
    workflow = exported(recipe, "comfyui-ui")
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert (workflow["last_node_id"], workflow["last_link_id"]) == (7, len(workflow["links"])) == (7, 9)
    for link_id, origin, slot, target, target_slot, kind in workflow["links"]:
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[target]["inputs"][target_slot]["type"] == kind
        assert link_id in nodes[origin]["outputs"][slot]["links"] and nodes[origin]["outputs"][slot]["type"] == kind
        assert nodes[origin]["pos"][0] < nodes[target]["pos"][0]  # data flows left to right
    sampler = next(node for node in workflow["nodes"] if node["type"] == "KSampler")
    assert sampler["title"] == "sampled" and sampler["widgets_values"] == [42, "fixed", 20, 3.0, "euler", "normal", 1.0]
    assert [node.get("title") for node in workflow["nodes"]].count(None) == 6  # the others: names import gives back
    boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in nodes.values()]
    assert not any(a != b and a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
                   for a in boxes for b in boxes), "nodes overlap"
    (tmp_path / "w.json").write_text(json.dumps(workflow))
    back = sdflow_cli("import", str(tmp_path / "w.json"))
    assert "sampled = sample(" in back.stdout and back.returncode == 0


def test_a_saved_png_carries_comfyuis_prompt_and_workflow(tmp_path):
    """The image of examples/txt2img.sdflow carries what sdflow export
    writes; a PNG with only those chunks (as ComfyUI would save it) imports
    to a recipe that draws the same pixels.  A recipe ComfyUI cannot
    express gets no such chunks."""
    assert main(["run", str(ROOT / "examples" / "txt2img.sdflow"), "--output", str(tmp_path / "out")]) == 0
    (png,) = (tmp_path / "out").iterdir()
    with Image.open(png) as image:
        chunks, pixels = dict(image.text), np.asarray(image)
    assert json.loads(chunks["prompt"]) == exported(ROOT / "examples" / "txt2img.sdflow")
    assert json.loads(chunks["workflow"]) == exported(ROOT / "examples" / "txt2img.sdflow", "comfyui-ui")
    only = PngInfo()
    only.add_text("prompt", chunks["prompt"])
    Image.fromarray(pixels).save(tmp_path / "ComfyUI_00001_.png", pnginfo=only)
    recipe = tmp_path / "back.sdflow"
    assert sdflow_cli("import", str(tmp_path / "ComfyUI_00001_.png"), "-o", str(recipe)).returncode == 0
    assert main(["run", str(recipe), "--output", str(tmp_path / "again")]) == 0
    (again,) = (tmp_path / "again").iterdir()
    assert np.array_equal(np.asarray(Image.open(again)), pixels)

    inpaint = ROOT / "examples" / "inpaint.sdflow"
    assert main(["run", str(inpaint), "--output", str(tmp_path / "inpaint")]) == 0
    for path in (tmp_path / "inpaint").iterdir():
        with Image.open(path) as image:
            assert "prompt" not in image.text and "workflow" not in image.text and "sdflow.recipe" in image.text


def test_bad_formats_and_outputs_are_clear_errors(tmp_path):
    recipe = ROOT / "examples" / "txt2img.sdflow"
    result = sdflow_cli("export", str(recipe), "--format", "comfy")
    assert (result.returncode, result.stdout) == (2, "")
    assert "--format comfy: no such format (the installed plugins write: comfyui-api, comfyui-ui)" in result.stderr
    taken = tmp_path / "taken.json"
    taken.write_text("mine")
    result = sdflow_cli("export", str(recipe), "--format", "comfyui-api", "-o", str(taken))
    assert result.returncode == 2 and "never replaces a file" in result.stderr and taken.read_text() == "mine"
    written = tmp_path / "new.json"
    result = sdflow_cli("export", str(recipe), "--format", "comfyui-ui", "-o", str(written))
    assert (result.returncode, result.stdout) == (0, f"{written}\n")
    assert json.loads(written.read_text())["version"] == 0.4 and written.stat().st_mode & 0o044 == 0o044
