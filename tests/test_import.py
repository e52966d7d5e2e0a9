"""sdflow import: a recipe from an sdflow image (its own, params written in)
or from AUTOMATIC1111's parameters text (a PNG's chunk, as A1111, Forge,
Fooocus and stable-diffusion.cpp write it, or a .txt), through the CLI;
the plugins' importers come through the sdflow_importers hook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cli import sdflow_cli
from sdflow.cli import main
from sdflow.registry import default_registry
from sdflow_diffusion.images.a1111 import parse

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# As A1111 1.10 writes it, with what other tools and extensions add.
WILD = """\
masterpiece, (a lighthouse:1.2) at dusk, <lora:film_grain:0.7>, oil painting,
<lora:detail:0.5:0.8> <hypernet:old:1>
Negative prompt: blurry, watermark,
lowres
Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234567890, Size: 768x512, Model hash: 6ce0161689, \
Model: v1-5-pruned-emaonly, Clip skip: 2, ADetailer model: "face_yolov8n.pt", \
Lora hashes: "film_grain: 1a2b3c4d5e6f, detail: 0f0e0d0c0b0a", TI hashes: "easynegative: c74b4e810b03", \
Hires upscale: 2, Hires upscaler: Latent, Denoising strength: 0.55, Version: v1.10.1"""


def png_with(path: Path, text: str) -> Path:
    """A PNG holding only A1111's parameters chunk."""
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_a1111_text_is_read_as_a1111_writes_it():
    prompt, negative, settings = parse(WILD)
    assert prompt.startswith("masterpiece, (a lighthouse:1.2) at dusk") and prompt.endswith("<hypernet:old:1>")
    assert negative == "blurry, watermark,\nlowres"
    assert settings["Sampler"] == "DPM++ 2M Karras" and settings["ADetailer model"] == "face_yolov8n.pt"
    assert settings["Lora hashes"] == "film_grain: 1a2b3c4d5e6f, detail: 0f0e0d0c0b0a"
    assert list(settings)[-1] == "Version" and settings["Version"] == "v1.10.1"
    with pytest.raises(ValueError, match="settings line"):
        parse("just a prompt\nwith two lines")


def test_an_a1111_png_becomes_a_recipe_that_checks(tmp_path):
    result = sdflow_cli("import", str(png_with(tmp_path / "wild.png", WILD)))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "# Made by sdflow import from wild.png (AUTOMATIC1111's parameters)." in text
    for line in ('param checkpoint = "v1-5-pruned-emaonly.safetensors"', "param width = 768",
                 "param height = 512", "param seed = 1234567890", "param steps = 28", "param cfg = 6.5",
                 'param negative_prompt = "blurry, watermark,\\nlowres"',
                 'param prompt = "masterpiece, (a lighthouse:1.2) at dusk, oil painting"',
                 'name="film_grain.safetensors"', "strength_model=0.7", "strength_clip=0.7",
                 'name="detail.safetensors"', "strength_model=0.8", "strength_clip=0.5",
                 "skip = clip_set_last_layer(clip=lora_2.clip, stop_at_clip_layer=-2)",
                 'sampler="dpmpp_2m"', 'scheduler="karras"', 'convention="a1111"',
                 "#   ADetailer model: face_yolov8n.pt", "#   Hires upscale: 2", "#   Denoising strength: 0.55",
                 "#   Model hash: 6ce0161689", "Hypernetwork tags were removed"):
        assert line in text, line
    assert "<lora:" not in text and "<hypernet:" not in text


def test_sdflows_own_a1111_text_round_trips_to_the_same_pixels(tmp_path):
    """The LoRA example's image, its sdflow chunks dropped, A1111's text
    kept (with the LoRA as A1111 writes it, a tag in the prompt): imported
    and run, it is drawn again pixel for pixel."""
    assert main(["run", str(EXAMPLES / "lora.sdflow"), "--output", str(tmp_path / "first")]) == 0
    (first,) = (tmp_path / "first").iterdir()
    with Image.open(first) as image:
        text = image.text["parameters"]
        pixels = np.asarray(image)
    text = "<lora:sdflow-tiny-corners:1> " + text
    recipe = tmp_path / "again.sdflow"
    imported = sdflow_cli("import", str(png_with(tmp_path / "a1111.png", text)), "--output", str(recipe))
    assert imported.returncode == 0 and imported.stdout == f"{recipe}\n", imported.stderr
    assert main(["run", str(recipe), "--output", str(tmp_path / "again")]) == 0
    (again,) = (tmp_path / "again").iterdir()
    assert np.array_equal(np.asarray(Image.open(again)), pixels)


def test_a_txt_file_and_an_sdflow_image_import_too(tmp_path):
    txt = tmp_path / "settings.txt"
    txt.write_text(WILD)
    assert "param steps = 28" in sdflow_cli("import", str(txt)).stdout
    assert main(["run", str(EXAMPLES / "txt2img.sdflow"), "--output", str(tmp_path / "out"), "--set", "seed=9"]) == 0
    (png,) = (tmp_path / "out").iterdir()
    own = sdflow_cli("import", str(png))
    assert own.returncode == 0 and "param seed = 9\n" in own.stdout and "save_image(" in own.stdout
    assert "Made by sdflow import" not in own.stdout  # its own recipe, not one rebuilt from A1111's text


def test_what_cannot_be_imported_is_a_clear_error_and_nothing_is_replaced(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    result = sdflow_cli("import", str(plain))
    assert result.returncode == 2
    assert result.stderr == f"sdflow: error: {plain}: nothing sdflow can import here (it reads: sdflow images, comfyui, a1111)\n"
    broken = sdflow_cli("import", str(png_with(tmp_path / "broken.png", "a prompt\nno settings here")))
    assert broken.returncode == 2 and "A1111 parameters that sdflow cannot read" in broken.stderr
    assert "Traceback" not in broken.stderr
    (tmp_path / "mine.sdflow").write_text("mine")
    taken = sdflow_cli("import", str(png_with(tmp_path / "w.png", WILD)), "-o", str(tmp_path / "mine.sdflow"))
    assert taken.returncode == 2 and (tmp_path / "mine.sdflow").read_text() == "mine"
    assert sdflow_cli("import", str(tmp_path / "missing.png")).returncode == 2


def test_importers_come_from_plugins_and_are_listed():
    registry = default_registry()
    assert registry.importers["a1111"].plugin == "diffusion"
    assert "importers (sdflow import): comfyui, a1111" in sdflow_cli("plugins").stdout
