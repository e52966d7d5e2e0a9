"""sdflow import of ComfyUI's workflows: the API format, the UI format
(Reroute and PrimitiveNode followed through) and ComfyUI's PNGs, through
the CLI; the default workflow imported draws what examples/txt2img.sdflow
draws."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cli import sdflow_cli
from sdflow.cli import main

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "comfyui"
API = json.loads((DATA / "default_api.json").read_text())
UI = json.loads((DATA / "default_ui.json").read_text())

DEFAULT_RECIPE = """\
# Made by sdflow import from default_api.json (ComfyUI's API format).
sdflow 1

ckpt = load_checkpoint(name="v1-5-pruned-emaonly.safetensors")
latent = empty_latent(width=512, height=512, batch=1)
positive = clip_text_encode(
    clip=ckpt.clip,
    text="beautiful scenery nature glass bottle landscape, , purple galaxy bottle,",
)
negative = clip_text_encode(clip=ckpt.clip, text="text, watermark")
denoised = sample(
    model=ckpt.model,
    positive=positive,
    negative=negative,
    latent=latent,
    seed=156680208700286,
    steps=20,
    cfg=8.0,
    sampler="euler",
    scheduler="normal",
    denoise=1.0,
)
image = vae_decode(latent=denoised, vae=ckpt.vae)
save_image(image=image, prefix="ComfyUI")
"""


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def imported(path: Path) -> str:
    result = sdflow_cli("import", str(path))
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


def ui_node(workflow: dict, node_id: int) -> dict:
    return next(node for node in workflow["nodes"] if node["id"] == node_id)


def test_comfyuis_default_workflow_in_the_api_format():
    assert imported(DATA / "default_api.json") == DEFAULT_RECIPE


def test_comfyuis_default_workflow_in_the_ui_format_gives_the_same_recipe():
    text = imported(DATA / "default_ui.json")
    assert text == DEFAULT_RECIPE.replace("default_api.json (ComfyUI's API format)",
                                          "default_ui.json (ComfyUI's UI format)")


def test_the_default_workflow_imported_draws_what_txt2img_draws(tmp_path):
    """Set as examples/txt2img.sdflow is (the shipped tiny model, 64 x 64,
    its prompt, seed and CFG), both formats draw its image pixel for pixel."""
    prompt, seed, cfg = "a small red triangle at the left on a blue background", 42, 3.0
    api = copy.deepcopy(API)
    api["4"]["inputs"]["ckpt_name"] = "sdflow-tiny.safetensors"
    api["5"]["inputs"].update(width=64, height=64)
    api["6"]["inputs"]["text"], api["7"]["inputs"]["text"] = prompt, ""
    api["3"]["inputs"].update(seed=seed, cfg=cfg)
    ui = copy.deepcopy(UI)
    ui_node(ui, 4)["widgets_values"] = ["sdflow-tiny.safetensors"]
    ui_node(ui, 5)["widgets_values"] = [64, 64, 1]
    ui_node(ui, 6)["widgets_values"], ui_node(ui, 7)["widgets_values"] = [prompt], [""]
    ui_node(ui, 3)["widgets_values"] = [seed, "fixed", 20, cfg, "euler", "normal", 1]
    assert main(["run", str(ROOT / "examples" / "txt2img.sdflow"), "--output", str(tmp_path / "txt2img")]) == 0
    (expected,) = (tmp_path / "txt2img").iterdir()
    pixels = np.asarray(Image.open(expected))
    for name, workflow in (("api", api), ("ui", ui)):
        recipe = tmp_path / f"{name}.sdflow"
        result = sdflow_cli("import", str(write(tmp_path / f"{name}.json", workflow)), "-o", str(recipe))
        assert (result.returncode, result.stdout, result.stderr) == (0, f"{recipe}\n", "")
        assert main(["run", str(recipe), "--output", str(tmp_path / name)]) == 0
        (image,) = (tmp_path / name).iterdir()
        assert image.name.startswith("ComfyUI")
        assert np.array_equal(np.asarray(Image.open(image)), pixels), name


def test_reroutes_primitive_nodes_notes_and_muted_nodes_are_resolved(tmp_path):
    """A Reroute between the checkpoint and the sampler, the seed from a
    PrimitiveNode (converted to an input), a Note, a muted preview; titles
    the user set name the stages."""
    ui = copy.deepcopy(UI)
    ui["nodes"] += [
        {"id": 10, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 1}],
         "outputs": [{"name": "", "type": "MODEL", "links": [10]}]},
        {"id": 11, "type": "PrimitiveNode", "mode": 0, "title": "Seed",
         "outputs": [{"name": "INT", "type": "INT", "links": [11], "widget": {"name": "seed"}}],
         "widgets_values": [1234, "increment"]},
        {"id": 12, "type": "Note", "mode": 0, "widgets_values": ["the default workflow"]},
        {"id": 13, "type": "PreviewImage", "mode": 2, "inputs": [{"name": "images", "type": "IMAGE", "link": 12}]},
    ]
    ui["links"] = [link for link in ui["links"] if link[0] != 1] + [
        [1, 4, 0, 10, 0, "MODEL"], [10, 10, 0, 3, 0, "MODEL"], [11, 11, 0, 3, 4, "INT"], [12, 8, 0, 13, 0, "IMAGE"]]
    sampler = ui_node(ui, 3)
    sampler["inputs"][0]["link"] = 10
    sampler["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 11})
    sampler["title"] = "Main Sampler"
    ui_node(ui, 6)["title"], ui_node(ui, 7)["title"] = "Positive Prompt", "Negative Prompt"
    text = imported(write(tmp_path / "rerouted.json", ui))
    assert text.splitlines()[3:] == [
        'ckpt = load_checkpoint(name="v1-5-pruned-emaonly.safetensors")',
        "latent = empty_latent(width=512, height=512, batch=1)",
        "positive_prompt = clip_text_encode(",
        "    clip=ckpt.clip,",
        '    text="beautiful scenery nature glass bottle landscape, , purple galaxy bottle,",',
        ")",
        'negative_prompt = clip_text_encode(clip=ckpt.clip, text="text, watermark")',
        "main_sampler = sample(",
        "    model=ckpt.model,",
        "    positive=positive_prompt,",
        "    negative=negative_prompt,",
        "    latent=latent,",
        "    seed=1234,",
        "    steps=20,",
        "    cfg=8.0,",
        '    sampler="euler",',
        '    scheduler="normal",',
        "    denoise=1.0,",
        ")",
        "image = vae_decode(latent=main_sampler, vae=ckpt.vae)",
        'save_image(image=image, prefix="ComfyUI")',
    ]


LORA_ADVANCED = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "2": {"class_type": "LoraLoader", "_meta": {"title": "Load LoRA"},
          "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "film_grain.safetensors",
                     "strength_model": 0.7, "strength_clip": 0.5}},
    "3": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["2", 1], "stop_at_clip_layer": -2}},
    "4": {"class_type": "CLIPTextEncode", "_meta": {"title": "positive"}, "inputs": {"clip": ["3", 0], "text": "a cat"}},
    "5": {"class_type": "CLIPTextEncode", "_meta": {"title": "negative"}, "inputs": {"clip": ["3", 0], "text": ""}},
    "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 768, "height": 512, "batch_size": 2}},
    "7": {"class_type": "KSamplerAdvanced", "_meta": {"title": "base pass"},
          "inputs": {"model": ["2", 0], "add_noise": "enable", "noise_seed": 7, "steps": 30, "cfg": 6.5,
                     "sampler_name": "dpmpp_2m", "scheduler": "karras", "positive": ["4", 0], "negative": ["5", 0],
                     "latent_image": ["6", 0], "start_at_step": 0, "end_at_step": 20,
                     "return_with_leftover_noise": "enable"}},
    "8": {"class_type": "KSamplerAdvanced", "_meta": {"title": "base pass"},
          "inputs": {"model": ["2", 0], "add_noise": "disable", "noise_seed": 7, "steps": 30, "cfg": 6.5,
                     "sampler_name": "dpmpp_2m", "scheduler": "karras", "positive": ["4", 0], "negative": ["5", 0],
                     "latent_image": ["7", 0], "start_at_step": 20, "end_at_step": 10000,
                     "return_with_leftover_noise": "disable"}},
    "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
    "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "lora/run"}},
}


def test_a_lora_and_two_advanced_samplers(tmp_path):
    text = imported(write(tmp_path / "lora.json", LORA_ADVANCED))
    for line in (
        'ckpt = load_checkpoint(name="sd15.safetensors")',
        "load_lora = load_lora(\n    model=ckpt.model,\n    clip=ckpt.clip,\n"
        '    name="film_grain.safetensors",\n    strength_model=0.7,\n    strength_clip=0.5,\n)',
        "clip_set_last_layer = clip_set_last_layer(clip=load_lora.clip, stop_at_clip_layer=-2)",
        'positive = clip_text_encode(clip=clip_set_last_layer, text="a cat")',
        'negative = clip_text_encode(clip=clip_set_last_layer, text="")',
        "latent = empty_latent(width=768, height=512, batch=2)",
        "base_pass = sample_advanced(\n    model=load_lora.model,\n    positive=positive,\n    negative=negative,\n"
        "    latent=latent,\n    add_noise=true,\n    seed=7,\n    steps=30,\n    cfg=6.5,\n"
        '    sampler="dpmpp_2m",\n    scheduler="karras",\n    start_at_step=0,\n    end_at_step=20,\n'
        "    return_with_leftover_noise=true,\n)",
        "base_pass_2 = sample_advanced(\n    model=load_lora.model,\n    positive=positive,\n    negative=negative,\n"
        "    latent=base_pass,\n    add_noise=false,",
        "    return_with_leftover_noise=false,\n)",
        "image = vae_decode(latent=base_pass_2, vae=ckpt.vae)",
        'save_image(image=image, prefix="lora/run")',
    ):
        assert line in text, line


def test_nodes_without_a_stage_are_one_error_naming_them_all(tmp_path):
    workflow = copy.deepcopy(API)
    workflow["12"] = {"class_type": "UltimateSDUpscale", "inputs": {"image": ["8", 0]}}
    workflow["10"] = {"class_type": "Seed (rgthree)", "inputs": {"seed": 5}}
    workflow["3"]["inputs"]["seed"] = ["10", 0]
    result = sdflow_cli("import", str(write(tmp_path / "custom.json", workflow)))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"sdflow: error: {tmp_path / 'custom.json'}: nodes sdflow has no stage for: 10 (Seed (rgthree)), "
        "12 (UltimateSDUpscale) (a plugin may provide them (sdflow stages lists what is installed); "
        "or replace them in ComfyUI with built-in nodes)\n")


def _broken(tmp_path: Path, name: str, content) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = sdflow_cli("import", str(path))
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "Traceback" not in result.stderr
    prefix = f"sdflow: error: {path}: "
    assert result.stderr.startswith(prefix)
    return result.stderr[len(prefix):].rstrip("\n")


def test_broken_workflows_say_what_is_wrong(tmp_path):
    looped = copy.deepcopy(API)
    looped["6"]["inputs"]["clip"] = ["3", 0]
    assert _broken(tmp_path, "loop.json", looped) == (
        "the workflow loops: 3 (KSampler) -> 6 (CLIPTextEncode) -> 3 (KSampler) "
        "(a workflow is a graph without cycles: cut one of these links)")
    dangling = copy.deepcopy(API)
    dangling["8"]["inputs"]["vae"] = ["40", 2]
    assert _broken(tmp_path, "dangling.json", dangling) == (
        "node 8's input 'vae' is linked to node 40, which is not in the workflow")
    classless = copy.deepcopy(API)
    del classless["5"]["class_type"]
    assert _broken(tmp_path, "classless.json", classless) == "node 5 has no class_type"
    assert _broken(tmp_path, "list.json", [API]) == (
        "a ComfyUI workflow is a JSON object, and this is a list "
        "(export it from ComfyUI with Workflow > Export (or Export (API)))")
    assert _broken(tmp_path, "cut.json", '{"3": {"class_type": ').startswith("this .json file is not JSON: ")
    out_of_range = copy.deepcopy(API)
    out_of_range["8"]["inputs"]["vae"] = ["4", 3]
    assert _broken(tmp_path, "range.json", out_of_range) == (
        "node 8's input 'vae' takes output 3 of node 4 (CheckpointLoaderSimple), which has 3")
    ui = copy.deepcopy(UI)
    ui["links"] = [link for link in ui["links"] if link[0] != 8]
    assert _broken(tmp_path, "ui.json", ui) == "node 8's input 'vae' has link 8, which is not in the workflow's links"
    ui["nodes"].append({"id": 20, "mode": 0})
    assert _broken(tmp_path, "untyped.json", ui) == "node 20 has no type (class_type)"


def test_json_that_is_no_workflow_is_left_to_other_importers(tmp_path):
    other = write(tmp_path / "package.json", {"name": "x", "version": "1.0"})
    result = sdflow_cli("import", str(other))
    assert result.returncode == 2
    assert result.stderr == (f"sdflow: error: {other}: nothing sdflow can import here "
                             "(it reads: sdflow images, comfyui, a1111)\n")


def test_a_comfyui_png_gives_its_prompt_else_its_workflow(tmp_path):
    both, ui_only = PngInfo(), PngInfo()
    both.add_text("prompt", json.dumps(API))
    both.add_text("workflow", json.dumps(UI))
    both.add_text("parameters", "a cat\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64")  # the graph wins
    ui_only.add_text("workflow", json.dumps(UI))
    Image.new("RGB", (8, 8)).save(tmp_path / "ComfyUI_00001_.png", pnginfo=both)
    Image.new("RGB", (8, 8)).save(tmp_path / "ComfyUI_00002_.png", pnginfo=ui_only)
    expected = DEFAULT_RECIPE.split("\n", 1)[1]
    first = imported(tmp_path / "ComfyUI_00001_.png")
    assert first == ("# Made by sdflow import from ComfyUI_00001_.png (a PNG's prompt chunk, ComfyUI's API "
                     "format).\n" + expected)
    second = imported(tmp_path / "ComfyUI_00002_.png")
    assert second.endswith(expected) and "(a PNG's workflow chunk, ComfyUI's UI format)" in second
    broken = PngInfo()
    broken.add_text("prompt", "[1, 2]")
    Image.new("RGB", (8, 8)).save(tmp_path / "broken.png", pnginfo=broken)
    result = sdflow_cli("import", str(tmp_path / "broken.png"))
    assert result.returncode == 2 and "a ComfyUI workflow is a JSON object, and this is a list" in result.stderr


def test_what_sdflow_does_otherwise_is_said_in_the_header(tmp_path):
    workflow = copy.deepcopy(API)
    workflow["3"]["inputs"]["sampler_name"] = "dpmpp_2m_sde_gpu"
    workflow["10"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    workflow["11"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png", "upload": "image"}}
    workflow["12"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny.safetensors"}}
    workflow["13"] = {"class_type": "ControlNetApplyAdvanced",
                      "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["12", 0],
                                 "image": ["11", 0], "vae": ["4", 2], "strength": 0.8, "start_percent": 0,
                                 "end_percent": 1}}
    workflow["3"]["inputs"].update(positive=["13", 0], negative=["13", 1])
    text = imported(write(tmp_path / "notes.json", workflow))
    assert text.splitlines()[:5] == [
        "# Made by sdflow import from notes.json (ComfyUI's API format).",
        "# node 13 (ControlNetApplyAdvanced): vae left out (apply_controlnet has no such input)",
        "# sampler dpmpp_2m_sde_gpu is dpmpp_2m_sde here (its noise drawn on the CPU: images differ from ComfyUI's).",
        "# sdflow has no previews: PreviewImage is a save_image with prefix \"preview\".",
        "sdflow 1",
    ]
    assert '    sampler="dpmpp_2m_sde",\n' in text and 'save_image(image=image, prefix="preview")\n' in text
    assert "    positive=apply_controlnet.positive,\n    negative=apply_controlnet.negative,\n" in text


def wrapped_in_subgraph(node: dict, sub_id: str, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]],
                        inner: list[dict] | None = None) -> tuple[dict, dict]:
    """``node`` moved into a subgraph (as the frontend's "convert to
    subgraph" does): the subgraph's definition, and the node that stands for
    it where ``node`` was (same id, same links)."""
    inside = copy.deepcopy(node)
    inside["id"] = 1
    for slot, entry in enumerate(inside["inputs"]):
        entry["link"] = 100 + slot
    definition = {
        "id": sub_id, "name": "wrapped", "nodes": [inside, *(inner or [])],
        "inputs": [{"name": name, "type": kind} for name, kind in inputs],
        "outputs": [{"name": name, "type": kind} for name, kind in outputs],
        "links": [{"id": 100 + slot, "origin_id": -10, "origin_slot": slot, "target_id": 1, "target_slot": slot,
                   "type": kind} for slot, (_name, kind) in enumerate(inputs)]
        + [{"id": 200 + slot, "origin_id": 1, "origin_slot": slot, "target_id": -20, "target_slot": slot,
            "type": kind} for slot, (_name, kind) in enumerate(outputs)],
    }
    return definition, {**node, "type": sub_id, "widgets_values": []}


def test_subgraphs_are_expanded_into_the_nodes_inside(tmp_path):
    """The KSampler inside a subgraph that is itself inside another (the
    frontend's "convert to subgraph", twice) imports as the default
    workflow does; a subgraph that contains itself is a clear error."""
    ui = copy.deepcopy(UI)
    sampler = ui_node(ui, 3)
    ports = [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
             ("latent_image", "LATENT")]
    inner, middle = "0b6f6c1e-1111-4a1a-9a1a-000000000001", "0b6f6c1e-2222-4a1a-9a1a-000000000002"
    inner_def, inner_node = wrapped_in_subgraph(sampler, inner, ports, [("LATENT", "LATENT")])
    middle_def, middle_node = wrapped_in_subgraph(inner_node, middle, ports, [("LATENT", "LATENT")])
    ui["nodes"] = [middle_node if node is sampler else node for node in ui["nodes"]]
    ui["definitions"] = {"subgraphs": [inner_def, middle_def]}
    text = imported(write(tmp_path / "subgraphs.json", ui))
    assert text.split("\n", 1)[1] == DEFAULT_RECIPE.split("\n", 1)[1]

    middle_def["nodes"][0]["type"] = middle  # now it holds itself
    result = sdflow_cli("import", str(write(tmp_path / "loop.json", ui)))
    assert (result.returncode, result.stdout) == (2, "")
    assert f"subgraph {middle} contains itself (node 3:1)" in result.stderr
