"""Saving images: ComfyUI-style names, never overwriting, never half-written,
the recipe inside, and `sdflow show` reading it back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from cli import sdflow_cli
from sdflow.plugin import StageError
from sdflow.pngtext import read_png_text
from sdflow_diffusion.images.png import ordinary_mode, save_pngs

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


def test_outputs_get_an_ordinary_files_permissions(tmp_path):
    """Not mkstemp's 0600: readable by a web server or another user where
    the umask lets an ordinary file be."""
    for umask, expected in ((0o022, 0o644), (0o027, 0o640), (0o002, 0o664)):
        old = os.umask(umask)
        ordinary_mode.cache_clear()
        try:
            (path,) = save_pngs([red()], tmp_path / oct(umask), "p", {})
        finally:
            os.umask(old)
            ordinary_mode.cache_clear()
        assert path.stat().st_mode & 0o777 == expected


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


def test_show_recipe_writes_the_set_values_in_and_reproduces_the_image(tmp_path):
    """The README's route: a run with --set, then show --recipe > again.sdflow
    and a plain run of that: the same pixels, because the resolved params are
    written in as the defaults (comments and layout kept)."""
    import numpy as np

    from sdflow.cli import main

    def run(recipe, out, *options):
        assert main(["run", str(recipe), "--output", str(tmp_path / out), *options]) == 0
        (png,) = (tmp_path / out).iterdir()
        return png

    example = Path(__file__).resolve().parent.parent / "examples" / "txt2img.sdflow"
    first = run(example, "first", "--set", 'prompt=a large "blue" circle\tin the center', "--set", "seed=7",
                "--set", "cfg=4")
    again = tmp_path / "again.sdflow"
    again.write_text(sdflow_cli("show", "--recipe", str(first)).stdout)
    text = again.read_text()
    assert 'param prompt = "a large \\"blue\\" circle\\tin the center"' in text and "param seed = 7\n" in text
    assert "param cfg = 4.0\n" in text and "param steps = 20\n" in text  # a float param stays one
    assert text.startswith(example.read_text().split("sdflow 1")[0])  # the comments are kept
    second = run(again, "second")
    with Image.open(first) as a, Image.open(second) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert read_png_text(second)["params"] == read_png_text(first)["params"]


def test_param_defaults_are_rewritten_as_literals_the_parser_reads_back():
    from sdflow import ast
    from sdflow.format import with_param_defaults
    from sdflow.parse import parse

    text = 'sdflow 1\n# seeds\nparam seed = 42  # the seed\nparam sizes = [64, 128]\nparam on = true\nparam name = "x"\n'
    values = {"seed": 2**64 - 1, "sizes": [32, 48], "on": False, "name": 'a\\b "c"\nd'}
    written = with_param_defaults(text, values)
    assert "param seed = 18446744073709551615  # the seed\n" in written and written.startswith("sdflow 1\n# seeds\n")
    recipe, errors = parse(written)
    assert not errors
    read = {p.name: [i.value for i in p.default.items] if isinstance(p.default, ast.ListValue) else p.default.value
            for p in recipe.statements if isinstance(p, ast.Param)}
    assert read == values
    assert with_param_defaults(text, {"seed": 42, "name": "x"}) == text  # unchanged values: the same text


def test_the_same_recipe_and_seed_write_the_same_bytes_under_any_file_name(tmp_path):
    """No chunk records a time or the recipe's file name: the same recipe
    run twice, or copied under another name, writes identical PNG files."""
    from sdflow.cli import main

    example = Path(__file__).resolve().parent.parent / "examples" / "txt2img.sdflow"
    copy = tmp_path / "renamed.sdflow"
    copy.write_text(example.read_text())
    written = []
    for i, recipe in enumerate((example, example, copy)):
        assert main(["run", str(recipe), "--output", str(tmp_path / f"out{i}")]) == 0
        (png,) = (tmp_path / f"out{i}").iterdir()
        written.append(png.read_bytes())
    assert written[0] == written[1] == written[2]
