"""sdflow replay: an image rendered again from what it recorded, its models
found by their hashes, and a verdict: the same pixels, or how far off and
which recorded conditions differ.  Through the CLI, on real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from cli import sdflow_cli
from sdflow.cli import main
from sdflow.pngtext import read_png_text
from sdflow_diffusion.testing import tiny_checkpoint

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "txt2img.sdflow"


def first_image(tmp_path: Path, *options: str, recipe: Path = EXAMPLE) -> Path:
    assert main(["run", str(recipe), "--output", str(tmp_path / "first"), *options]) == 0
    (png,) = (tmp_path / "first").iterdir()
    return png


def replay(tmp_path: Path, png: Path, *options: str):
    return sdflow_cli("replay", str(png), "--output", str(tmp_path / "again"), *options, cwd=tmp_path)


def test_a_replay_is_the_same_image_pixel_for_pixel(tmp_path):
    png = first_image(tmp_path, "--set", "seed=5", "--set", "prompt=a large white circle in the center "
                                                               "on a black background")
    result = replay(tmp_path, png)
    assert result.returncode == 0, result.stderr
    (again,) = (tmp_path / "again").iterdir()
    assert result.stdout == f"{again}\n" and f"is {png} again, pixel for pixel" in result.stderr
    assert read_png_text(again)["params"] == read_png_text(png)["params"]  # the --set values came back


def test_replay_with_a_change_renders_it_and_says_how_far_it_is(tmp_path):
    png = first_image(tmp_path)
    result = replay(tmp_path, png, "--set", "steps=4")
    assert result.returncode == 0, result.stderr
    assert "differs by up to" in result.stderr and "recorded conditions that differ: none" in result.stderr


def test_a_model_moved_and_renamed_is_found_by_its_hash(tmp_path):
    store = tmp_path / "store"
    checkpoint = tiny_checkpoint(store / "checkpoints", "sd1")
    recipe = tmp_path / "tiny.sdflow"
    recipe.write_text(EXAMPLE.read_text().replace("param size = 64", "param size = 32")
                      .replace("param steps = 20", "param steps = 3"))
    png = first_image(tmp_path, "--models-dir", str(store), "--set", "checkpoint=tiny-sd1.safetensors",
                      recipe=recipe)
    elsewhere = tmp_path / "archive" / "old" / "renamed.safetensors"
    elsewhere.parent.mkdir(parents=True)
    shutil.move(checkpoint, elsewhere)
    result = replay(tmp_path, png, "--models-dir", str(tmp_path / "archive"))
    assert result.returncode == 0, result.stderr
    assert f"tiny-sd1.safetensors was found by its SHA-256 at {elsewhere}" in result.stderr
    assert "pixel for pixel" in result.stderr

    # The name finds a file again, but not that one: its hash is checked, and nothing else matches.
    tiny_checkpoint(store / "checkpoints", "sd1", seed=1)
    elsewhere.unlink()
    refused = sdflow_cli("replay", str(png), "--output", str(tmp_path / "refused"), "--models-dir", str(store),
                         cwd=tmp_path)
    assert refused.returncode == 1 and "E620 model tiny-sd1.safetensors (SHA-256 " in refused.stderr
    assert "was not found: not by its name, not at" in refused.stderr
    assert not (tmp_path / "refused").exists()  # nothing ran


def test_a_different_image_names_the_recorded_conditions_that_differ(tmp_path):
    png = first_image(tmp_path)
    fields = {f"sdflow.{k}": v for k, v in read_png_text(png).items()}
    fields["sdflow.versions"] = fields["sdflow.versions"].replace('"torch": "', '"torch": "1.0-was-')
    info = PngInfo()
    for key, value in fields.items():
        info.add_itxt(key, value)
    with Image.open(png) as image:
        tampered = image.point(lambda v: 255 - v)
    tampered.save(tmp_path / "tampered.png", pnginfo=info)
    result = replay(tmp_path, tmp_path / "tampered.png")
    assert result.returncode == 1
    assert "differs by up to" in result.stderr and "torch: 1.0-was-" in result.stderr


@pytest.mark.parametrize("content", [None, b"not a png"])
def test_what_is_not_an_sdflow_image_is_a_usage_error(tmp_path, content):
    path = tmp_path / "x.png"
    if content is None:
        Image.new("RGB", (4, 4)).save(path)
    else:
        path.write_bytes(content)
    result = sdflow_cli("replay", str(path), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"sdflow: error: {path}")
