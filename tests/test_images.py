"""Images in: load_image and load_mask on real files of every kind, where
names are looked up and how far they may reach, and the image and mask
stages' numbers (ComfyUI's, checked by hand on small cases).

Each recipe ends in a small output stage of this file's own plugin, which
keeps what it is given, so the values are checked as floats."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import sdflow_diffusion
from cli import sdflow_cli
from sdflow import Params, Port, hookimpl, stage
from sdflow.execute import Events
from sdflow.testing import Executor, RunError, check_recipe, registry_with, run_recipe
from sdflow_diffusion.settings import DiffusionSettings

KEPT: dict[str, object] = {}


class KeepName(Params):
    name: str


@stage(params=KeepName, inputs={"image": Port("IMAGE", optional=True), "mask": Port("MASK", optional=True)},
       output=True)
def keep(ctx, params: KeepName, image=None, mask=None) -> dict:
    """Keep what reaches it, for the test to read."""
    KEPT[params.name] = image if image is not None else mask
    KEPT[f"{params.name} records"] = ctx.upstream_records()
    return {}


class Keeper:
    @hookimpl
    def sdflow_stage_types(self, registry):
        registry.add_stages(keep)


@pytest.fixture(autouse=True)
def forget():
    KEPT.clear()


def run(body: str, folder, inputs=(), overrides=None, events=None):
    """Run ``sdflow 1`` + ``body`` as a recipe in ``folder``; what each
    ``keep(..., name=N)`` got is in KEPT[N]."""
    settings = {"diffusion": DiffusionSettings(inputs_dirs=tuple(inputs))}
    executor = Executor(events=events)
    with registry_with(("diffusion", sdflow_diffusion), ("keeper", Keeper()), installed=False) as registry:
        run_recipe("sdflow 1\n" + body, registry, folder / "out", overrides=overrides, settings=settings,
                   executor=executor, recipe_dir=folder)
    return KEPT


def failure(body: str, folder, **options):
    """The one diagnostic a run of ``body`` fails with."""
    with pytest.raises(RunError) as caught:
        run(body, folder, **options)
    (diagnostic,) = caught.value.diagnostics
    return diagnostic


def load(name: str, folder, **options):
    """load_image's image and mask of file ``name``."""
    kept = run(f'p = load_image(name="{name}")\nkeep(image=p.image, name="i")\nkeep(mask=p.mask, name="m")\n',
               folder, **options)
    return kept["i"], kept["m"]


def save(folder, name, array, mode=None, **options):
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(folder / name, **options)
    return folder / name


# load_image: formats and modes ---------------------------------------------------

RGBA = [[(255, 0, 0, 255), (0, 255, 0, 128)],
        [(0, 0, 255, 0), (10, 20, 30, 255)]]


@pytest.mark.parametrize("name, options", [("a.png", {}), ("a.webp", {"lossless": True, "exact": True})])
def test_a_png_or_webp_with_alpha_gives_its_pixels_and_one_minus_alpha(tmp_path, name, options):
    save(tmp_path, name, RGBA, **options)
    image, mask = load(name, tmp_path)
    pixels = torch.tensor(RGBA, dtype=torch.float32) / 255
    assert image.shape == (1, 2, 2, 3) and image.dtype == torch.float32
    assert torch.equal(image[0], pixels[..., :3])
    assert torch.equal(mask[0], 1 - pixels[..., 3])  # transparent = 1 = repaint


def test_without_alpha_the_mask_is_zeros_of_the_image_size(tmp_path):
    save(tmp_path, "rgb.png", np.full((3, 5, 3), 51))
    image, mask = load("rgb.png", tmp_path)
    assert torch.equal(image, torch.full((1, 3, 5, 3), 0.2))
    assert torch.equal(mask, torch.zeros(1, 3, 5))


def test_a_jpeg_is_turned_as_its_exif_orientation_says(tmp_path):
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:, :16] = (255, 0, 0)  # left half red, right half blue, as stored
    stored[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    save(tmp_path, "turned.jpg", stored, exif=exif, quality=95)
    image, _ = load("turned.jpg", tmp_path)
    assert image.shape == (1, 32, 16, 3)  # upright: taller than wide
    top, bottom = image[0, 2:14].mean(dim=(0, 1)), image[0, 18:30].mean(dim=(0, 1))
    assert torch.allclose(top, torch.tensor([1.0, 0, 0]), atol=0.03)  # the stored left is now on top
    assert torch.allclose(bottom, torch.tensor([0, 0, 1.0]), atol=0.03)


def test_16_bit_grey_keeps_its_precision(tmp_path):
    values = np.array([[0, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode == "I;16"
    image, mask = load("deep.png", tmp_path)
    assert torch.equal(image[0, 0, :, 0], torch.tensor([0, 1000, 65535]) / torch.tensor(65535.0))
    assert torch.equal(image[..., 0], image[..., 2])
    assert torch.equal(mask, torch.zeros(1, 1, 3))


def test_cmyk_jpeg_palette_grey_and_bilevel_become_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putdata([0, 1])
    palette.save(tmp_path / "palette.png", transparency=1)
    save(tmp_path, "grey.png", [[0, 128]], mode="L")
    Image.new("1", (2, 1), 1).save(tmp_path / "bilevel.png")
    save(tmp_path, "la.png", [[(100, 255), (200, 0)]], mode="LA")
    cmyk, _ = load("cmyk.jpg", tmp_path)
    assert torch.allclose(cmyk[0].mean(dim=(0, 1)), torch.tensor([1.0, 0, 0]), atol=0.02)
    image, mask = load("palette.png", tmp_path)
    assert torch.equal(image[0, 0], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    assert torch.equal(mask[0, 0], torch.tensor([0.0, 1.0]))  # index 1 is the transparent colour
    image, _ = load("grey.png", tmp_path)
    assert torch.equal(image[0, 0, :, 0], torch.tensor([0, 128 / 255], dtype=torch.float32))
    assert torch.equal(image[..., 0], image[..., 1])
    image, _ = load("bilevel.png", tmp_path)
    assert torch.equal(image, torch.ones(1, 1, 2, 3))
    image, mask = load("la.png", tmp_path)
    assert torch.equal(image[0, 0, :, 1], torch.tensor([100 / 255, 200 / 255], dtype=torch.float32))
    assert torch.equal(mask[0, 0], torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("name", ["moving.gif", "moving.webp"])
def test_an_animated_file_gives_its_first_frame_and_a_warning(tmp_path, name):
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100, loop=0,
                   **({"lossless": True} if name.endswith(".webp") else {}))
    stream = io.StringIO()
    kept = run(f'p = load_image(name="{name}")\nkeep(image=p.image, name="i")\n', tmp_path,
               events=Events(json_stream=stream))
    assert kept["i"].shape == (1, 4, 4, 3)
    assert torch.equal(kept["i"][0, 0, 0], torch.tensor([1.0, 0, 0]))
    kind = "GIF" if name.endswith(".gif") else "WEBP"
    warning = f"'{name}' is an animated {kind} of 3 frames: only the first is read"
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {"event": "warning", "stage": "p", "message": warning, "line": 2, "column": 1} in events
    assert kept["i records"] == {"warnings": [warning]}  # and every output made from it says so


def test_a_warning_is_shown_at_the_recipe_line_without_json(tmp_path, capsys):
    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    run('p = load_image(name="two.gif")\nkeep(image=p.image, name="i")\n', tmp_path, events=Events())
    assert capsys.readouterr().err == (
        "recipe.sdflow:2:1: warning: 'two.gif' is an animated GIF of 2 frames: only the first is read\n")


# load_image: files that are not images --------------------------------------------


def test_a_truncated_png_is_a_diagnostic_naming_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3))
    data = (save(tmp_path, "whole.png", noise)).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    diagnostic = failure('p = load_image(name="cut.png")\nkeep(image=p.image, name="i")\n', tmp_path)
    assert (diagnostic.code, diagnostic.span.line) == ("E601", 2)
    assert diagnostic.message.startswith(f"image 'cut.png' ({tmp_path / 'cut.png'}) cannot be read: ")
    assert "truncated" in diagnostic.message
    assert diagnostic.help == "the file is damaged or incomplete: save or copy it again"


def test_a_text_file_or_a_folder_named_png_is_refused_before_any_stage_runs(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "folder.png").mkdir()
    body = 'p = load_image(name="notes.png")\nq = load_image(name="folder.png")\nkeep(image=p.image, name="i")\n' \
           'keep(image=q.image, name="j")\n'
    with pytest.raises(RunError) as caught:
        run(body, tmp_path)
    assert [(d.span.line, d.message) for d in caught.value.diagnostics] == [
        (2, f"image 'notes.png' ({tmp_path / 'notes.png'}) is not an image file Pillow can read"),
        (3, f"image 'folder.png' is a folder ({tmp_path / 'folder.png'}), not an image file"),
    ]
    assert KEPT == {}


def test_an_image_over_the_pixel_limit_is_refused_with_its_size(tmp_path, monkeypatch):
    from sdflow_diffusion.numerics import pixels

    monkeypatch.setattr(pixels, "MAX_PIXELS", 2**20)  # one megapixel
    Image.new("L", (1100, 1000)).save(tmp_path / "big.png")
    diagnostic = failure('p = load_image(name="big.png")\nkeep(image=p.image, name="i")\n', tmp_path)
    assert diagnostic.message == "image 'big.png' is 1100x1000, 1.0 megapixels: more than the 1 megapixels sdflow reads"
    assert "image_scale" in diagnostic.help


# where names are looked up, and how far they reach --------------------------------


def test_names_are_looked_up_in_the_inputs_folders_then_the_recipe_folder_then_its_inputs(tmp_path):
    given, recipe = tmp_path / "given", tmp_path / "recipe"
    (recipe / "inputs").mkdir(parents=True)
    given.mkdir()
    save(given, "a.png", [[1]], mode="L")
    save(recipe, "a.png", [[2]], mode="L")
    save(recipe, "b.png", [[3]], mode="L")
    save(recipe / "inputs", "b.png", [[4]], mode="L")
    save(recipe / "inputs", "c.png", [[5]], mode="L")
    firsts = [load(name, recipe, inputs=[given])[0][0, 0, 0, 0] * 255 for name in ("a.png", "b.png", "c.png")]
    assert [round(float(v)) for v in firsts] == [1, 3, 5]


def test_a_missing_image_lists_where_it_looked_and_a_close_name(tmp_path):
    (tmp_path / "inputs").mkdir()
    save(tmp_path / "inputs", "cat.png", [[0]], mode="L")
    diagnostic = failure('p = load_image(name="cats.png")\nkeep(image=p.image, name="i")\n', tmp_path)
    assert diagnostic.message == "image 'cats.png' not found"
    assert diagnostic.help == f"did you mean 'cat.png'? (looked in: {tmp_path}, {tmp_path / 'inputs'})"


@pytest.mark.parametrize("name", ["../outside.png", "{outside}", "sub/../../outside.png"])
def test_a_recipe_cannot_name_an_image_outside_the_inputs_folders(tmp_path, name):
    recipe = tmp_path / "recipe"
    (recipe / "sub").mkdir(parents=True)
    outside = save(tmp_path, "outside.png", [[9]], mode="L")
    diagnostic = failure(f'p = load_image(name="{name.format(outside=outside)}")\nkeep(image=p.image, name="i")\n',
                         recipe)
    assert "is outside the inputs folders: a recipe may name only files inside them" in diagnostic.message
    assert "--set image=PATH" in diagnostic.help


def test_a_link_that_leads_out_of_the_inputs_folders_is_refused(tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    outside = save(tmp_path, "secret.png", [[9]], mode="L")
    os.symlink(outside, recipe / "innocent.png")
    diagnostic = failure('p = load_image(name="innocent.png")\nkeep(image=p.image, name="i")\n', recipe)
    assert diagnostic.message == f"image 'innocent.png' is a link to '{outside}', outside the inputs folders"


def test_a_path_given_with_set_may_be_anywhere(tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    outside = save(tmp_path, "outside.png", [[9]], mode="L")
    body = 'param photo = "x.png"\np = load_image(name=photo)\nkeep(image=p.image, name="i")\n'
    kept = run(body, recipe, overrides={"photo": str(outside)})
    assert round(float(kept["i"][0, 0, 0, 0]) * 255) == 9
    # the same path, written in the recipe as the param's default: refused
    diagnostic = failure(body.replace('"x.png"', f'"{outside}"'), recipe)
    assert "outside the inputs folders" in diagnostic.message


def test_the_command_line_reads_a_set_path_and_refuses_the_same_path_in_the_recipe(tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    outside = save(tmp_path, "photo.png", [[(10, 20, 30), (40, 50, 60)]])
    (recipe / "edit.sdflow").write_text(
        'sdflow 1\nparam photo = "x.png"\np = load_image(name=photo)\nsave_image(image=p.image, prefix="copy")\n')
    (recipe / "bad.sdflow").write_text(
        f'sdflow 1\np = load_image(name="{outside}")\nsave_image(image=p.image, prefix="copy")\n')
    refused = sdflow_cli("run", str(recipe / "bad.sdflow"), "--output", str(tmp_path / "out"))
    assert refused.returncode == 1
    assert f"E601 image '{outside}' is outside the inputs folders" in refused.stderr
    done = sdflow_cli("run", str(recipe / "edit.sdflow"), "--set", f"photo={outside}",
                      "--output", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "out" / "copy_00001_.png") as copy:
        assert np.asarray(copy).tolist() == [[[10, 20, 30], [40, 50, 60]]]


# load_mask and the mask stages ----------------------------------------------------


def mask_of(body: str, folder, **options):
    return run(body + 'keep(mask=out, name="m")\n', folder, **options)["m"]


def test_load_mask_takes_a_channel_and_inverts_alpha(tmp_path):
    save(tmp_path, "a.png", RGBA)
    pixels = torch.tensor(RGBA, dtype=torch.float32) / 255
    for channel, expected in (("alpha", 1 - pixels[..., 3]), ("red", pixels[..., 0]), ("blue", pixels[..., 2])):
        assert torch.equal(mask_of(f'out = load_mask(name="a.png", channel="{channel}")\n', tmp_path)[0], expected)
    save(tmp_path, "rgb.png", np.zeros((2, 3, 3)))
    assert torch.equal(mask_of('out = load_mask(name="rgb.png")\n', tmp_path), torch.zeros(1, 2, 3))


DOT = "d = mask_from_rect(width=5, height=5, x=2, y=2, rect_width=1, rect_height=1)\n"


def test_grow_mask_by_one_gives_a_square_or_a_plus_sign(tmp_path):
    square = mask_of(DOT + "out = grow_mask(mask=d, pixels=1, tapered_corners=false)\n", tmp_path)
    plus = mask_of(DOT + "out = grow_mask(mask=d, pixels=1)\n", tmp_path)
    assert square[0].tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    assert plus[0].tolist() == [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    diamond = mask_of(DOT + "out = grow_mask(mask=d, pixels=2)\n", tmp_path)
    assert diamond[0].tolist() == [[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    shrunk = mask_of("s = mask_from_rect(width=5, height=5, x=1, y=1, rect_width=3, rect_height=3)\n"
                     "out = grow_mask(mask=s, pixels=-1)\n", tmp_path)
    assert torch.equal(shrunk, run(DOT + 'keep(mask=d, name="d")\n', tmp_path)["d"])  # the 3x3 square's middle


def test_threshold_invert_and_the_channels_of_an_image(tmp_path):
    save(tmp_path, "g.png", [[(0, 100, 200), (255, 128, 127)]])
    kept = run('p = load_image(name="g.png")\ng = image_to_mask(image=p.image, channel="green")\n'
               't = threshold_mask(mask=g, value=0.5)\ni = invert_mask(mask=t)\nback = mask_to_image(mask=g)\n'
               'keep(mask=g, name="g")\nkeep(mask=t, name="t")\nkeep(mask=i, name="i")\nkeep(image=back, name="b")\n',
               tmp_path)
    assert torch.equal(kept["g"][0, 0], torch.tensor([100, 128], dtype=torch.float32) / 255)
    assert kept["t"][0, 0].tolist() == [0.0, 1.0]  # 128/255 > 0.5 > 100/255
    assert kept["i"][0, 0].tolist() == [1.0, 0.0]
    assert kept["b"].shape == (1, 1, 2, 3) and torch.equal(kept["b"][..., 2], kept["g"])


def test_mask_composite_combines_at_a_place_and_clamps(tmp_path):
    base = "a = solid_mask(value=0.75, width=4, height=2)\nb = solid_mask(value=0.5, width=2, height=2)\n"
    results = {op: mask_of(base + f'out = mask_composite(destination=a, source=b, x=3, y=1, operation="{op}")\n',
                           tmp_path)[0].tolist()
               for op in ("add", "subtract", "multiply", "and", "xor")}
    assert results == {  # b covers only the last column of the second row
        "add": [[0.75] * 4, [0.75, 0.75, 0.75, 1.0]],
        "subtract": [[0.75] * 4, [0.75, 0.75, 0.75, 0.25]],
        "multiply": [[0.75] * 4, [0.75, 0.75, 0.75, 0.375]],
        "and": [[0.75] * 4, [0.75, 0.75, 0.75, 0.0]],  # round(0.5) is 0
        "xor": [[0.75] * 4, [0.75, 0.75, 0.75, 1.0]],
    }


def test_feathering_fades_edges_linearly_or_blurs(tmp_path):
    full = "f = solid_mask(width=6, height=3)\n"
    edges = mask_of(full + "out = feather_mask_edges(mask=f, left=3, right=2)\n", tmp_path)
    assert torch.allclose(edges[0, 1], torch.tensor([1 / 3, 2 / 3, 1, 1, 1, 0.5]))  # ComfyUI's left ramp
    square = "g = grow_mask(mask=d, pixels=1, tapered_corners=false)\n"
    soft = mask_of(DOT + square + "out = feather_mask(mask=g, radius=1)\n", tmp_path)[0]
    assert torch.allclose(soft, soft.flip(0)) and torch.allclose(soft, soft.T)  # symmetric
    assert soft[2, 2] < 1 and soft[0, 0] > 0 and soft[2, 2] > soft[1, 2] > soft[0, 2] > soft[0, 0]
    assert torch.equal(mask_of(full + "out = feather_mask(mask=f, radius=3)\n", tmp_path), torch.ones(1, 3, 6))


def test_mask_from_rect_is_cut_at_the_edge(tmp_path):
    mask = mask_of("out = mask_from_rect(width=4, height=3, x=2, y=1, rect_width=10, rect_height=1, value=0.5)\n",
                   tmp_path)
    assert mask.tolist() == [[[0, 0, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0, 0]]]


def test_mask_composite_refuses_batches_that_do_not_match(tmp_path):
    save(tmp_path, "a.png", RGBA)
    body = ('p = load_image(name="a.png")\nb2 = image_batch(image1=p.image, image2=p.image)\n'
            'b3 = image_batch(image1=b2, image2=p.image)\n'
            'm2 = image_to_mask(image=b2)\nm3 = image_to_mask(image=b3)\n'
            'out = mask_composite(destination=m2, source=m3)\nkeep(mask=out, name="m")\n')
    diagnostic = failure(body, tmp_path)
    assert diagnostic.message == ("the destination is a batch of 2 masks and the source of 3: "
                                  "they must be equal, or one of them 1")


# the image stages ------------------------------------------------------------------


def image_of(body: str, folder):
    return run(body + 'keep(image=out, name="i")\n', folder)["i"]


def test_image_scale_by_size_aspect_factor_and_megapixels(tmp_path):
    save(tmp_path, "wide.png", np.arange(40 * 20 * 3).reshape(20, 40, 3) % 256)
    load_ = 'p = load_image(name="wide.png")\n'
    sizes = {way: tuple(image_of(load_ + f"out = image_scale(image=p.image, {way})\n", tmp_path).shape)
             for way in ("width=10, height=30", "width=20", "height=5", "factor=1.5", "megapixels=0.01")}
    assert sizes == {"width=10, height=30": (1, 30, 10, 3), "width=20": (1, 10, 20, 3), "height=5": (1, 5, 10, 3),
                     "factor=1.5": (1, 30, 60, 3), "megapixels=0.01": (1, 72, 145, 3)}  # 10485 pixels asked


def test_image_scale_methods_keep_values_in_range_and_crop_the_middle(tmp_path):
    save(tmp_path, "s.png", [[(0, 0, 0), (255, 255, 255), (0, 0, 0), (255, 255, 255)]])
    load_ = 'p = load_image(name="s.png")\n'
    nearest = image_of(load_ + 'out = image_scale(image=p.image, width=8, height=1)\n', tmp_path)
    assert nearest[0, 0, :, 0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    for method in ("bicubic", "lanczos"):
        sharp = image_of(load_ + f'out = image_scale(image=p.image, width=9, height=3, method="{method}")\n', tmp_path)
        assert sharp.min() == 0 and sharp.max() == 1 and 0 < sharp[0, 0, 1, 0] < 1
    middle = image_of(load_ + 'out = image_scale(image=p.image, width=2, height=1, crop="center")\n', tmp_path)
    assert middle[0, 0, :, 0].tolist() == [1, 0]  # the middle two of the four, not every second one


def test_image_scale_is_checked_before_anything_runs():
    with registry_with(("diffusion", sdflow_diffusion), installed=False) as registry:
        _graph, diagnostics = check_recipe(
            'sdflow 1\np = load_image(name="a.png")\nq = image_scale(image=p.image, width=64, factor=2.0)\n'
            'r = image_scale(image=p.image)\nsave_image(image=q)\nsave_image(image=r)\nsave_image(image=p.mask)\n',
            registry)
    assert [(d.code, d.span.line, d.message, d.help) for d in diagnostics] == [
        ("E409", 3, "'image_scale': give the new size one way only, not width/height and factor together", None),
        ("E409", 4, "'image_scale': give the new size: width and/or height, or factor, or megapixels", None),
        ("E300", 7, "'image' expects IMAGE, but p.mask is MASK",
         "did you mean 'p.image'? Or convert it: mask_to_image(mask=p.mask)"),
    ]


def test_image_pad_for_outpaint_gives_comfyuis_mask(tmp_path):
    save(tmp_path, "ten.png", np.full((10, 10, 3), 255))
    kept = run('p = load_image(name="ten.png")\n'
               'o = image_pad_for_outpaint(image=p.image, left=4, bottom=2, feathering=3)\n'
               'keep(image=o.image, name="i")\nkeep(mask=o.mask, name="m")\n', tmp_path)
    image, mask = kept["i"], kept["m"]
    assert image.shape == (1, 12, 14, 3) and mask.shape == (1, 12, 14)
    assert image[0, 0, :4].eq(0.5).all() and image[0, 10:].eq(0.5).all() and image[0, :10, 4:].eq(1).all()
    assert mask[0, :, :4].eq(1).all() and mask[0, 10:].eq(1).all()
    # from the left side: d = 0, 1, 2 -> ((3 - d) / 3)^2; from the bottom, counted from 1
    assert torch.allclose(mask[0, 0, 4:9], torch.tensor([1, 4 / 9, 1 / 9, 0, 0]))
    assert torch.allclose(mask[0, 9, 4:9], torch.tensor([1, 4 / 9, 4 / 9, 4 / 9, 4 / 9]))  # the last row: d <= 1
    assert torch.allclose(mask[0, 7:10, 12], torch.tensor([0, 1 / 9, 4 / 9]))
    assert mask[0, 3:6, 8:13].eq(0).all()


def test_crop_from_batch_and_batch_clamp_as_comfyui(tmp_path):
    save(tmp_path, "a.png", np.arange(4 * 6 * 3).reshape(4, 6, 3))
    save(tmp_path, "tall.png", np.full((8, 2, 3), 255))
    load_ = 'a = load_image(name="a.png")\nt = load_image(name="tall.png")\n'
    source = load("a.png", tmp_path)[0]
    crop = image_of(load_ + "out = image_crop(image=a.image, width=4, height=4, x=4, y=9)\n", tmp_path)
    assert torch.equal(crop, source[:, 3:, 4:])  # y is moved to the last row, the rest cut at the edge
    both = image_of(load_ + "out = image_batch(image1=a.image, image2=t.image)\n", tmp_path)
    assert both.shape == (2, 4, 6, 3) and torch.equal(both[:1], source) and both[1].eq(1).all()
    picked = image_of(load_ + "b = image_batch(image1=a.image, image2=t.image)\n"
                      "out = image_from_batch(image=b, batch_index=7, length=3)\n", tmp_path)
    assert torch.equal(picked, both[1:])  # the index past the batch takes the last image


def test_a_batch_flows_through_the_image_and_mask_stages(tmp_path):
    save(tmp_path, "a.png", RGBA)
    kept = run('p = load_image(name="a.png")\nb = image_batch(image1=p.image, image2=p.image)\n'
               'big = image_scale(image=b, factor=2.0, method="bilinear")\n'
               'o = image_pad_for_outpaint(image=big, left=8, feathering=0)\n'
               'r = image_to_mask(image=o.image)\nm = grow_mask(mask=r, pixels=1)\n'
               'keep(image=o.image, name="i")\nkeep(mask=m, name="m")\nkeep(mask=o.mask, name="o")\n', tmp_path)
    assert kept["i"].shape == (2, 4, 12, 3) and torch.equal(kept["i"][0], kept["i"][1])
    assert kept["m"].shape == (2, 4, 12) and kept["o"].shape == (1, 4, 12)
