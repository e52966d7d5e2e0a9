"""sdflow-extras as its users meet it: templates in, prompts out; tensors
in, tensors out; and recipes run through the ``sdflow`` command on the
shipped tiny model, the plugin installed as any third-party plugin is
(``pip install -e ./plugins/sdflow_extras``)."""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

import sdflow_extras
from sdflow_extras.stages.post import (
    FilmGrain,
    ImageColorAdjust,
    ImageGrid,
    ImageSharpen,
    film_grain,
    image_color_adjust,
    image_grid,
    image_sharpen,
)
from sdflow_extras.wildcards import MAX_DEPTH, TemplateError, expand, parse

PACKAGE = Path(sdflow_extras.__file__).parent
TEMPLATE = "a large __colors__ circle {in the center|in the middle} on a white background"
COLORS_TXT = "# the colours sdflow-tiny draws best on white\nred\n\n  green\n"


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raises(template: str, seed: int = 0, folders=()) -> TemplateError:
    with pytest.raises(TemplateError) as caught:
        expand(template, seed, folders)
    return caught.value


# the template engine ---------------------------------------------------------


def test_a_choice_picks_one_option_from_the_seed():
    assert [expand("{a|b|c} {x|{y|z}}", seed).text for seed in range(8)] == [
        "b y", "a x", "a x", "a x", "a y", "c z", "c x", "b x"]


def test_choices_nest_and_every_option_can_be_picked():
    template = "a {big {red|blue}|small} cat"
    assert [expand(template, seed).text for seed in range(5)] == [
        "a small cat", "a big red cat", "a big red cat", "a big red cat", "a big blue cat"]
    assert {expand(template, seed).text for seed in range(100)} == {"a big red cat", "a big blue cat", "a small cat"}
    assert {expand("{very |}{good|fine}", seed).text for seed in range(100)} == {
        "very good", "very fine", "good", "fine"}


def test_escapes_and_lone_bars_are_text():
    assert expand(r"\{not|a|choice\} \_\_colors\_\_ \\ a|b", 5).text == r"{not|a|choice} __colors__ \ a|b"
    assert expand(r"\__colors__ and __ alone", 0).text == "__colors__ and __ alone"
    assert expand(r"{\||\}}", 0).text in ("|", "}")


def test_a_wildcard_is_a_line_of_its_file_blank_lines_and_comments_skipped(tmp_path):
    folder = write(tmp_path, {"colors.txt": COLORS_TXT})
    assert [expand(TEMPLATE, seed, [folder]).text for seed in (0, 1, 7)] == [
        "a large green circle in the middle on a white background",
        "a large red circle in the center on a white background",
        "a large green circle in the center on a white background",
    ]
    assert {expand("__colors__", seed, [folder]).text for seed in range(100)} == {"red", "green"}
    assert expand(TEMPLATE, 1, [folder]).files == {"colors": folder / "colors.txt"}


def test_wildcard_lines_are_templates_expanded_in_turn(tmp_path):
    folder = write(tmp_path, {"colors.txt": COLORS_TXT,
                              "animals/pets.txt": "a {tabby|black} cat\n__colors__ dog\n"})
    assert [expand("__animals/pets__!", seed, [folder]).text for seed in range(4)] == [
        "green dog!", "a tabby cat!", "a tabby cat!", "a tabby cat!"]
    assert {expand("__animals/pets__", seed, [folder]).text for seed in range(200)} == {
        "a tabby cat", "a black cat", "red dog", "green dog"}
    # Every file the result depends on, picked this time or not.
    assert expand("__animals/pets__", 1, [folder]).files == {
        "animals/pets": folder / "animals/pets.txt", "colors": folder / "colors.txt"}


def test_the_first_folder_that_has_the_file_wins(tmp_path):
    first = write(tmp_path / "first", {"colors.txt": "teal\n"})
    second = write(tmp_path / "second", {"colors.txt": "red\n", "shapes.txt": "square\n"})
    assert expand("__colors__ __shapes__", 0, [first, second]).text == "teal square"


def test_the_same_template_and_seed_give_the_same_text_in_any_process(tmp_path):
    folder = write(tmp_path, {"colors.txt": COLORS_TXT})
    here = [expand(TEMPLATE + " {a|b|c|d|e|f}", seed, [folder]).text for seed in range(20)]
    script = ("import sys; from sdflow_extras.wildcards import expand; "
              f"print([expand({TEMPLATE + ' {a|b|c|d|e|f}'!r}, s, [{str(folder)!r}]).text for s in range(20)])")
    for hash_seed in ("1", "2"):  # str hashing differs between these processes
        there = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONHASHSEED": hash_seed}).stdout
        assert there == f"{here}\n"


def test_an_unbalanced_brace_is_an_error_at_its_column():
    with pytest.raises(TemplateError) as caught:
        parse("a {red|green circle")
    assert caught.value.message == "the template: unbalanced '{' at column 3: no '}' closes it"
    assert caught.value.help == "close it with '}', or write '\\{' for a literal brace"
    assert raises("{a|{b} c").message == "the template: unbalanced '{' at column 1: no '}' closes it"
    assert raises("a} b").message == "the template: unmatched '}' at column 2"


def test_an_unbalanced_brace_in_a_wildcard_file_names_its_line_and_column(tmp_path):
    folder = write(tmp_path, {"colors.txt": "red\n\n   {light|dark green\n"})
    assert raises("__colors__", folders=[folder]).message == (
        "colors.txt line 3: unbalanced '{' at column 4: no '}' closes it")


def test_an_unknown_wildcard_names_the_folders_searched_and_the_near_names(tmp_path):
    folder = write(tmp_path / "wildcards", {"colors.txt": "red\n", "animals/cats.txt": "tabby\n"})
    missing = tmp_path / "nowhere"
    error = raises("a __colours__ circle", folders=[missing, folder])
    assert error.message == (f"unknown wildcard '__colours__' (the template, column 3): "
                             f"no colours.txt in {missing} (missing), {folder}")
    assert error.help == "did you mean '__colors__'?"
    assert (error.missing, error.near) == ("colours", ("colors",))
    assert raises("__cat__", folders=[folder]).help == "did you mean '__animals/cats__'?"
    assert raises("__zebra__", folders=[folder]).help == "the wildcards there: __animals/cats__, __colors__"
    assert raises("__zebra__").message == (
        "unknown wildcard '__zebra__' (the template, column 1): there are no wildcard folders")


def test_an_unknown_wildcard_inside_a_file_is_found_whatever_the_seed_picks(tmp_path):
    folder = write(tmp_path, {"pets.txt": "a cat\na __colour__ dog\n", "colors.txt": "red\n"})
    for seed in range(5):
        error = raises("__pets__", seed, [folder])
        assert error.message.startswith("unknown wildcard '__colour__' (pets.txt line 2, column 3): ")
        assert error.help == "did you mean '__colors__'?"


def test_wildcard_files_that_name_each_other_are_a_cycle_for_every_seed(tmp_path):
    folder = write(tmp_path, {"a.txt": "x __b__\n", "b.txt": "y\n{z|__a__}\n", "self.txt": "__self__ again\n"})
    for seed in range(5):
        error = raises("start __a__", seed, [folder])
        assert error.message == "wildcard files name each other in a cycle: __a__ -> __b__ -> __a__"
        assert error.help == "remove __a__ from b.txt"
    assert raises("__self__", folders=[folder]).message == (
        "wildcard files name each other in a cycle: __self__ -> __self__")


def test_wildcards_nest_at_most_max_depth_deep(tmp_path):
    chain = {f"w{i}.txt": f"__w{i + 1}__\n" for i in range(1, MAX_DEPTH + 1)}
    folder = write(tmp_path, {**chain, f"w{MAX_DEPTH + 1}.txt": "bottom\n"})
    assert expand("__w2__", 0, [folder]).text == "bottom"  # MAX_DEPTH files deep
    error = raises("__w1__", folders=[folder])
    assert error.message.startswith(f"wildcard files nest deeper than {MAX_DEPTH}: __w1__ -> __w2__ -> ")


def test_a_wildcard_name_cannot_leave_the_wildcard_folders():
    assert raises("__a/../../secret__").message == (
        "the template: wildcard '__a/../../secret__' at column 1 must name a file inside the wildcard folders")


# the post-processing stages, on real tensors ------------------------------------


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand((2, 16, 16, 3), generator=torch.Generator().manual_seed(0))


def run(stage, params, image) -> torch.Tensor:
    """A stage's run function, called as the executor calls it (these
    stages use nothing of their run context)."""
    (out,) = stage(None, params, image=image).values()
    assert out.dtype == torch.float32 and out.shape[-1] == 3
    assert 0 <= out.min() and out.max() <= 1
    return out


def test_neutral_settings_return_the_images_bit_for_bit(images):
    assert torch.equal(run(image_color_adjust, ImageColorAdjust(), images), images)
    assert torch.equal(run(film_grain, FilmGrain(strength=0.0), images), images)
    assert torch.equal(run(image_sharpen, ImageSharpen(amount=0.0), images), images)


def test_sharpen_steepens_an_edge_and_leaves_flat_areas_alone():
    step = torch.full((1, 8, 16, 3), 0.25)
    step[:, :, 8:] = 0.75
    sharp = run(image_sharpen, ImageSharpen(radius=1.0, amount=1.0), step)
    across = sharp[0, 4, :, 0]
    assert across[8] - across[7] > 0.5 + 0.2  # was 0.5
    assert across[7] < 0.25 - 0.05 and across[8] > 0.75 + 0.05  # the dark and light halos
    assert torch.allclose(sharp[:, :, :3], step[:, :, :3]) and torch.allclose(sharp[:, :, -3:], step[:, :, -3:])
    stronger = run(image_sharpen, ImageSharpen(radius=1.0, amount=2.0), step)
    assert stronger[0, 4, 8, 0] - stronger[0, 4, 7, 0] > across[8] - across[7]


def test_color_adjust_moves_brightness_contrast_and_saturation(images):
    assert torch.allclose(run(image_color_adjust, ImageColorAdjust(brightness=0.5), images), images * 0.5)
    grey = run(image_color_adjust, ImageColorAdjust(saturation=0.0), images)
    assert torch.allclose(grey[..., 0], grey[..., 1]) and torch.allclose(grey[..., 1], grey[..., 2])
    flat = run(image_color_adjust, ImageColorAdjust(contrast=0.0), images)
    assert torch.allclose(flat, flat[:, :1, :1].expand_as(flat))  # one grey per image
    assert not torch.allclose(flat[0], flat[1])
    vivid = run(image_color_adjust, ImageColorAdjust(saturation=2.0), torch.tensor([[[[0.6, 0.4, 0.4]]]]))
    assert vivid[0, 0, 0, 0] > 0.6 and vivid[0, 0, 0, 1] < 0.4


def test_grain_changes_pixels_and_the_same_seed_gives_the_same_grain():
    grey = torch.full((2, 32, 32, 3), 0.5)
    grain = run(film_grain, FilmGrain(strength=0.1, seed=5), grey)
    assert torch.equal(grain, run(film_grain, FilmGrain(strength=0.1, seed=5), grey))
    assert not torch.equal(grain, run(film_grain, FilmGrain(strength=0.1, seed=6), grey))
    assert not torch.equal(grain, run(film_grain, FilmGrain(strength=0.1, seed=2**64 - 1), grey))
    assert 0.08 < float((grain - grey).std()) < 0.12
    assert torch.equal(grain[..., 0], grain[..., 2])  # monochrome: one value per pixel
    colour = run(film_grain, FilmGrain(strength=0.1, seed=5, monochrome=False), grey)
    assert not torch.equal(colour[..., 0], colour[..., 2])
    assert torch.equal(run(film_grain, FilmGrain(strength=1.0), grey).clamp(0, 1),
                       run(film_grain, FilmGrain(strength=1.0), grey))


def test_a_grid_tiles_the_batch_row_by_row():
    batch = torch.stack([torch.full((8, 10, 3), value) for value in (0.1, 0.2, 0.3)])
    grid = run(image_grid, ImageGrid(columns=2, gap=2, background=1.0), batch)
    assert grid.shape == (1, 2 * 8 + 2, 2 * 10 + 2, 3)
    assert float(grid[0, 0, 0, 0]) == pytest.approx(0.1)  # top left
    assert float(grid[0, 0, 12, 0]) == pytest.approx(0.2)  # top right
    assert float(grid[0, 10, 0, 0]) == pytest.approx(0.3)  # bottom left
    assert float(grid[0, 10, 12, 0]) == 1.0 and float(grid[0, 8, 0, 0]) == 1.0  # empty cell, gap
    five = torch.zeros((5, 4, 4, 3))
    assert run(image_grid, ImageGrid(), five).shape == (1, 8, 12, 3)  # near square: 3 x 2
    assert run(image_grid, ImageGrid(columns=9), five).shape == (1, 4, 20, 3)  # one row
    assert run(image_grid, ImageGrid(), five[:1]).shape == (1, 4, 4, 3)


def test_parameters_out_of_range_are_refused():
    for make in (lambda: FilmGrain(strength=2.0), lambda: ImageGrid(columns=-1),
                 lambda: ImageSharpen(radius=0.0), lambda: ImageColorAdjust(saturation=-1.0)):
        with pytest.raises(ValidationError):
            make()


# the plugin as a distribution ---------------------------------------------------


def test_the_plugin_uses_only_sdflows_public_surface_and_declares_without_torch():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] != "sdflow" or name in ("sdflow", "sdflow.plugin"), (path, name)
    script = ("import sys, sdflow_extras.stages.post, sdflow_extras.stages.prompts, sdflow_extras.settings; "
              "print(sorted(m for m in ('torch', 'PIL', 'numpy', 'diffusers') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True).stdout == "[]\n"


@pytest.fixture(scope="module")
def installed():
    found = [ep for ep in metadata.entry_points(group="sdflow") if ep.name == "extras"]
    if not found or found[0].value != "sdflow_extras":
        pytest.fail("the plugin is not installed: pip install -e ./plugins/sdflow_extras")


def sdflow(*args) -> subprocess.CompletedProcess:
    """The ``sdflow`` command, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "sdflow.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


RECIPE = """\
# Two prompts from one template: the seed picks the colour.
sdflow 1

param template = "a large __colors__ __shapes__ {in the center|in the middle} on a white background"
param steps = 8

ckpt = load_checkpoint(name="sdflow-tiny.safetensors")
red_prompt = wildcard_encode(clip=ckpt.clip, text=template, seed=2)
green_prompt = wildcard_encode(clip=ckpt.clip, text=template, seed=5)
negative = clip_text_encode(clip=ckpt.clip, text="")
two = empty_latent(width=64, height=64, batch=2)
one = empty_latent(width=64, height=64, batch=1)
red_latent = sample(model=ckpt.model, positive=red_prompt, negative=negative, latent=two, seed=42,
                    steps=steps, cfg=3.0, sampler="euler", scheduler="normal", denoise=1.0)
green_latent = sample(model=ckpt.model, positive=green_prompt, negative=negative, latent=one, seed=42,
                      steps=steps, cfg=3.0, sampler="euler", scheduler="normal", denoise=1.0)
red = vae_decode(vae=ckpt.vae, latent=red_latent)
green = vae_decode(vae=ckpt.vae, latent=green_latent)
sharp = image_sharpen(image=red, radius=1.0, amount=0.5)
graded = image_color_adjust(image=sharp, saturation=1.1)
grainy = film_grain(image=graded, strength=0.05, seed=3)
grid = image_grid(image=grainy, columns=2, gap=4)
save_image(image=grid, prefix="grid")
save_image(image=red, prefix="red")
save_image(image=green, prefix="green")
"""


@pytest.fixture(scope="module")
def rendered(installed, tmp_path_factory) -> Path:
    """The recipe above, run once by ``sdflow run``, with ``colors.txt`` in
    ``wildcards/`` beside it and ``shapes.txt`` in a folder given by
    ``--wildcards-dir``; the recipe's folder."""
    folder = tmp_path_factory.mktemp("recipe")
    write(folder, {"recipe.sdflow": RECIPE, "wildcards/colors.txt": COLORS_TXT,
                   "shared/shapes.txt": "# only circles: what the test scores\ncircle\n"})
    result = sdflow("run", folder / "recipe.sdflow", "--output", folder / "out",
                    "--wildcards-dir", folder / "shared")
    assert result.returncode == 0, result.stderr
    return folder


def test_a_recipe_with_wildcards_grain_and_a_grid_runs_through_the_cli(rendered):
    out = rendered / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "green_00001_.png", "grid_00001_.png", "red_00001_.png", "red_00002_.png"]
    with Image.open(out / "grid_00001_.png") as grid:
        assert grid.size == (64 + 4 + 64, 64)
        assert grid.getpixel((65, 10)) == (255, 255, 255)  # the gap
    shown = sdflow("show", out / "grid_00001_.png")
    assert shown.returncode == 0, shown.stderr
    assert '"prompt red_prompt": "a large red circle in the center on a white background"' in shown.stdout
    assert "prompt green_prompt" not in shown.stdout  # only what led to this image
    for name, path in [("colors", "wildcards/colors.txt"), ("shapes", "shared/shapes.txt")]:
        assert f'"wildcard __{name}__": "{sha256(rendered / path)}"' in shown.stdout
    for key, stage in [("sharp", "image_sharpen"), ("graded", "image_color_adjust"), ("grainy", "film_grain"),
                       ("grid", "image_grid"), ("red_prompt", "wildcard_encode")]:
        assert f'"{key}": "extras.{stage} 0.1.0"' in shown.stdout
    assert '"plugin extras": "0.1.0"' in shown.stdout


def test_the_picked_colour_is_the_colour_drawn(rendered):
    from training.tiny.score import score

    for name, colour in [("red_00001_", "red"), ("red_00002_", "red"), ("green_00001_", "green")]:
        with Image.open(rendered / "out" / f"{name}.png") as png:
            pixels = np.asarray(png.convert("RGB"))
        found = score(pixels)
        assert (found.colour, found.shape, found.background) == (colour, "circle", "white"), name
        centre = pixels[24:40, 24:40].reshape(-1, 3).mean(axis=0)
        strongest = {"red": 0, "green": 1}[colour]
        assert centre[strongest] > max(np.delete(centre, strongest)) + 100, (name, centre)


def test_sdflow_plugins_lists_the_plugin_its_stages_and_its_setting(installed):
    result = sdflow("plugins")
    assert result.returncode == 0, result.stderr
    assert ("extras 0.1.0  (sdflow_extras)\n"
            "  stages: film_grain, image_color_adjust, image_grid, image_sharpen, wildcard_encode\n"
            "  settings:\n"
            "    --wildcards-dir / $SDFLOW_WILDCARDS: folders of wildcard files") in result.stdout


def test_sdflow_check_refuses_bad_parameters_before_anything_runs(installed, tmp_path):
    recipe = write(tmp_path, {"bad.sdflow": textwrap.dedent("""\
        sdflow 1

        ckpt = load_checkpoint(name="sdflow-tiny.safetensors")
        prompt = wildcard_encode(clip=ckpt.clip, text="a {red|green circle")
        latent = empty_latent(width=64, height=64)
        image = vae_decode(vae=ckpt.vae, latent=latent)
        grainy = film_grain(image=image, strength=2.0)
        save_image(image=grainy)
        """)}) / "bad.sdflow"
    result = sdflow("check", recipe)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"{recipe}:7:43: E402 'strength' must be at most 1.0, got 2.0" in output
    assert f"{recipe}:4:47: E409 'text': unbalanced '{{' at column 3: no '}}' closes it" in output


CACHED_RECIPE = """\
sdflow 1

param template = "a large __colors__ circle in the center on a white background"

ckpt = load_checkpoint(name="sdflow-tiny.safetensors")
positive = wildcard_encode(clip=ckpt.clip, text=template, seed=1)
latent = empty_latent(width=64, height=64)
denoised = sample(model=ckpt.model, positive=positive, negative=positive, latent=latent, seed=1,
                  steps=1, cfg=1.0, sampler="euler", scheduler="normal", denoise=1.0)
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="once")
"""


def test_a_wildcard_files_content_is_in_the_cache_key_and_a_missing_one_is_a_stage_error(installed, tmp_path):
    from sdflow.testing import Executor, registry_with, run_recipe  # the executor, to read the cache keys
    from sdflow_extras.settings import ExtrasSettings

    shared = write(tmp_path / "shared", {"colors.txt": "red\n"})
    settings = {"extras": ExtrasSettings(wildcards_dirs=(shared,))}
    executor = Executor()
    with registry_with() as registry:
        def once(**overrides):
            return run_recipe(CACHED_RECIPE, registry, tmp_path / "out", overrides, settings, executor)

        once()
        before = executor.keys["positive"]
        assert before.files == {"wildcard __colors__": sha256(shared / "colors.txt")}
        assert executor.records["positive"] == {
            "prompt positive": "a large red circle in the center on a white background"}
        (shared / "colors.txt").write_text("green\n")
        once()
        after = executor.keys["positive"]  # the file's identity is part of the stage's cache key
        assert after.files == {"wildcard __colors__": sha256(shared / "colors.txt")}
        assert after.digest != before.digest and after.params == before.params
        assert executor.records["positive"] == {
            "prompt positive": "a large green circle in the center on a white background"}
        with pytest.raises(Exception) as caught:
            once(template="a __colours__ circle")
    (problem,) = caught.value.diagnostics
    assert (problem.code, problem.message, problem.help) == (
        "E601", f"unknown wildcard '__colours__' (the template, column 3): no colours.txt in {shared}",
        "did you mean '__colors__'?")
