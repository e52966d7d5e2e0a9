"""Saving images: ComfyUI-style names, never overwriting, never half-written,
the recipe inside, and `sdflow show` reading it back."""

from __future__ import annotations

import pytest
from PIL import Image

from cli import sdflow_cli
from sdflow.plugin import StageError
from sdflow.pngtext import read_png_text
from sdflow_diffusion.images.png import save_pngs

RECIPE = 'sdflow 1\nparam prompt = "a café at night"\n'


def red(size=8):
    return Image.new("RGB", (size, size), (255, 0, 0))


def test_names_count_on_from_the_highest_file_there(tmp_path):
    (tmp_path / "cat_00007_.png").write_bytes(b"not mine to touch")
    paths = save_pngs([red(), red()], tmp_path, "cat", {"sdflow.recipe": RECIPE})
    assert [p.name for p in paths] == ["cat_00008_.png", "cat_00009_.png"]
    assert (tmp_path / "cat_00007_.png").read_bytes() == b"not mine to touch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat_00007_.png", "cat_00008_.png", "cat_00009_.png"]


def test_a_name_taken_meanwhile_is_skipped_not_replaced(tmp_path, monkeypatch):
    import sdflow_diffusion.images.png as save

    monkeypatch.setattr(save, "next_counter", lambda folder, stem: 1)
    (tmp_path / "dog_00001_.png").write_bytes(b"someone else's")
    (path,) = save_pngs([red()], tmp_path, "dog", {})
    assert path.name == "dog_00002_.png"
    assert (tmp_path / "dog_00001_.png").read_bytes() == b"someone else's"


def test_prefix_may_name_a_subfolder_but_not_leave_the_output_folder(tmp_path):
    (path,) = save_pngs([red()], tmp_path, "portraits/cat", {})
    assert path == tmp_path.resolve() / "portraits" / "cat_00001_.png"
    for bad in ("../escape", "/etc/passwd", "a/../../b"):
        with pytest.raises(StageError):
            save_pngs([red()], tmp_path, bad, {})
    assert not (tmp_path.parent / "escape_00001_.png").exists()


def test_the_png_carries_the_recipe_and_settings(tmp_path):
    long_recipe = RECIPE + "# " + "x" * 3000 + "\n"  # compressed chunk
    (path,) = save_pngs([red()], tmp_path, "t", {"sdflow.recipe": long_recipe, "sdflow.params": '{"seed": 7}'})
    assert read_png_text(path) == {"recipe": long_recipe, "params": '{"seed": 7}'}
    with Image.open(path) as image:
        assert image.getpixel((0, 0)) == (255, 0, 0)
    assert [p.name for p in tmp_path.iterdir()] == ["t_00001_.png"]  # no temporary file left


def test_sdflow_show_prints_the_recipe_back(tmp_path):
    (path,) = save_pngs([red()], tmp_path, "t", {"sdflow.recipe": RECIPE, "sdflow.models": '{"sd15.safetensors": "ab12"}'})
    shown = sdflow_cli("show", str(path))
    assert shown.returncode == 0
    assert shown.stdout == (
        'models: {"sd15.safetensors": "ab12"}\n'
        "recipe:\n"
        "    sdflow 1\n"
        '    param prompt = "a café at night"\n'
    )
    assert sdflow_cli("show", "--recipe", str(path)).stdout == RECIPE


def test_sdflow_show_on_other_files_is_a_usage_error(tmp_path):
    plain = tmp_path / "plain.png"
    red().save(plain)
    (tmp_path / "notes.txt").write_text("hello")
    assert sdflow_cli("show", str(plain)).stderr == f"sdflow: error: {plain}: no sdflow recipe in this image\n"
    assert sdflow_cli("show", str(tmp_path / "notes.txt")).returncode == 2
    assert sdflow_cli("show", str(tmp_path / "missing.png")).returncode == 2
