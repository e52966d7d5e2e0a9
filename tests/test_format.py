"""``sdflow fmt``: one canonical layout, asserted exactly on messy recipes.

A call stays on one line while it fits in 88 columns and has no trailing
comma; otherwise each argument gets a line of its own and a trailing comma.
Comments stay where they were, blank lines are kept (at most one), and one
blank line follows the ``sdflow 1`` header.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sdflow.format import format_recipe
from sdflow.parse import parse
from cli import sdflow_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.sdflow"))


def fmt(source: str) -> str:
    recipe, diagnostics = parse(source, "messy.sdflow")
    assert diagnostics == []
    return format_recipe(recipe)


def shape(node):
    """A syntax tree without its positions or spelling: what the recipe means."""
    if dataclasses.is_dataclass(node):
        return (type(node).__name__, *(
            shape(getattr(node, f.name)) for f in dataclasses.fields(node)
            if not f.name.endswith("span") and f.name not in ("text", "trailing_comma", "source", "file")
        ))
    if isinstance(node, (tuple, list)):
        return tuple(shape(item) for item in node)
    return node


CASES = {
    "spacing is normalised": (
        'sdflow   1\n'
        'param   seed=42\n'
        'latent =empty_latent( width = 512 ,height=512 )\n',
        'sdflow 1\n'
        '\n'
        'param seed = 42\n'
        'latent = empty_latent(width=512, height=512)\n',
    ),
    "a short call over several lines is joined": (
        'sdflow 1\n'
        '\n'
        'ckpt = load_checkpoint(\n'
        '    name="sd15.safetensors"\n'
        ')\n'
        'positive = clip_text_encode(clip=ckpt.clip,\n'
        '                            text="a red circle")\n',
        'sdflow 1\n'
        '\n'
        'ckpt = load_checkpoint(name="sd15.safetensors")\n'
        'positive = clip_text_encode(clip=ckpt.clip, text="a red circle")\n',
    ),
    "a long call is exploded, one argument a line": (
        'sdflow 1\n'
        '\n'
        'denoised = sample(model=ckpt.model, positive=positive, negative=negative, latent=latent, '
        'seed=seed, steps=20, cfg=7.5)\n',
        'sdflow 1\n'
        '\n'
        'denoised = sample(\n'
        '    model=ckpt.model,\n'
        '    positive=positive,\n'
        '    negative=negative,\n'
        '    latent=latent,\n'
        '    seed=seed,\n'
        '    steps=20,\n'
        '    cfg=7.5,\n'
        ')\n',
    ),
    "a trailing comma keeps a short call exploded": (
        'sdflow 1\n'
        '\n'
        'latent = empty_latent(width=512, height=768,)\n'
        'image = vae_decode(\n'
        '    vae=ckpt.vae,\n'
        '    latent=denoised\n'
        ')\n',
        'sdflow 1\n'
        '\n'
        'latent = empty_latent(\n'
        '    width=512,\n'
        '    height=768,\n'
        ')\n'
        'image = vae_decode(vae=ckpt.vae, latent=denoised)\n',
    ),
    "a list with a trailing comma is exploded too, and the call around it": (
        'sdflow 1\n'
        'param sizes = [512, 768,]\n'
        'grid = make_grid(sizes=[[1, 2,], 3], columns=2)\n',
        'sdflow 1\n'
        '\n'
        'param sizes = [\n'
        '    512,\n'
        '    768,\n'
        ']\n'
        'grid = make_grid(\n'
        '    sizes=[\n'
        '        [\n'
        '            1,\n'
        '            2,\n'
        '        ],\n'
        '        3,\n'
        '    ],\n'
        '    columns=2,\n'
        ')\n',
    ),
    "comments before statements and trailing them": (
        '# The default workflow\n'
        'sdflow 1   # language version\n'
        '# what to draw\n'
        'param prompt = "a red circle"    # the positive prompt\n'
        '  # an indented comment\n'
        'ckpt = load_checkpoint(name="sd15.safetensors")#no space\n',
        '# The default workflow\n'
        'sdflow 1  # language version\n'
        '\n'
        '# what to draw\n'
        'param prompt = "a red circle"  # the positive prompt\n'
        '# an indented comment\n'
        'ckpt = load_checkpoint(name="sd15.safetensors")  #no space\n',
    ),
    "comments inside a call explode it and stay with their argument": (
        'sdflow 1\n'
        '\n'
        'latent = empty_latent(  # the canvas\n'
        '  # portrait\n'
        '  width=512, height=768,   # two thirds\n'
        '  batch=1)\n'
        'image = vae_decode(vae=ckpt.vae,\n'
        '   latent=denoised  # from the sampler\n'
        '   # nothing more\n'
        ')  # decoded\n',
        'sdflow 1\n'
        '\n'
        'latent = empty_latent(\n'
        '    # the canvas\n'
        '    # portrait\n'
        '    width=512,\n'
        '    height=768,  # two thirds\n'
        '    batch=1,\n'
        ')\n'
        'image = vae_decode(\n'
        '    vae=ckpt.vae,\n'
        '    latent=denoised,  # from the sampler\n'
        '    # nothing more\n'
        ')  # decoded\n',
    ),
    "a comment inside a param's list is kept above the param": (
        'sdflow 1\n'
        'param sizes = [\n'
        '    512,  # SD 1.5\n'
        '    1024,\n'
        ']\n',
        'sdflow 1\n'
        '\n'
        '# SD 1.5\n'
        'param sizes = [\n'
        '    512,\n'
        '    1024,\n'
        ']\n',
    ),
    "blank lines: at most one kept, none at the ends, one after the header": (
        '\n'
        '\n'
        'sdflow 1\n'
        'param seed = 1\n'
        'param steps = 20\n'
        '\n'
        '\n'
        '\n'
        '# the model\n'
        '\n'
        '\n'
        'ckpt = load_checkpoint(name="sd15.safetensors")\n'
        '\n'
        '\n',
        'sdflow 1\n'
        '\n'
        'param seed = 1\n'
        'param steps = 20\n'
        '\n'
        '# the model\n'
        '\n'
        'ckpt = load_checkpoint(name="sd15.safetensors")\n',
    ),
    "a comment right after the header still gets the blank line": (
        'sdflow 1\n'
        '# about the seed\n'
        'param seed = 1\n',
        'sdflow 1\n'
        '\n'
        '# about the seed\n'
        'param seed = 1\n',
    ),
    "triple-quoted strings are kept verbatim": (
        'sdflow 1\n'
        'param prompt = """\n'
        '    a lighthouse at dusk,\n'
        '      oil on canvas   \n'
        '"""\n'
        'positive = clip_text_encode(clip=ckpt.clip, text="""one\n'
        '   two""")\n',
        'sdflow 1\n'
        '\n'
        'param prompt = """\n'
        '    a lighthouse at dusk,\n'
        '      oil on canvas   \n'
        '"""\n'
        'positive = clip_text_encode(\n'
        '    clip=ckpt.clip,\n'
        '    text="""one\n'
        '   two""",\n'
        ')\n',
    ),
    "numbers, strings and line endings": (
        'sdflow 1\r\n'
        'param a = +7\r\n'
        'param b = -0.5\r\n'
        'param c = 1e-3\r\n'
        'param d = "say \\"hi\\"\\n"\r\n'
        'param e = true\r\n'
        'param f = []',
        'sdflow 1\n'
        '\n'
        'param a = 7\n'
        'param b = -0.5\n'
        'param c = 1e-3\n'
        'param d = "say \\"hi\\"\\n"\n'
        'param e = true\n'
        'param f = []\n',
    ),
    "an empty recipe stays empty": ("\n\n\n", ""),
}


@pytest.mark.parametrize(("messy", "canonical"), CASES.values(), ids=CASES.keys())
def test_canonical_layout(messy, canonical):
    assert fmt(messy) == canonical


@pytest.mark.parametrize(("messy", "canonical"), CASES.values(), ids=CASES.keys())
def test_the_canonical_layout_is_a_fixed_point_that_means_the_same(messy, canonical):
    assert fmt(canonical) == canonical
    assert shape(parse(canonical)[0].statements) == shape(parse(messy)[0].statements)


def test_a_call_of_88_columns_stays_on_one_line_and_89_explodes():
    fits = 'save_image(image=image, prefix="' + "x" * 54 + '")'
    assert len(fits) == 88
    assert fmt(fits + "\n") == fits + "\n"
    too_long = fits.replace('"x', '"xx')
    assert fmt(too_long + "\n") == (
        "save_image(\n"
        "    image=image,\n"
        '    prefix="' + "x" * 55 + '",\n'
        ")\n"
    )


def test_a_trailing_comment_does_not_count_towards_the_width():
    source = 'ckpt = load_checkpoint(name="sd15.safetensors")  # ' + "c" * 60 + "\n"
    assert fmt(source) == source


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_already_canonical(example):
    source = example.read_text(encoding="utf-8")
    assert fmt(source) == source


# sdflow fmt -----------------------------------------------------------------------

MESSY = 'sdflow 1\nparam   seed=42\nlatent = empty_latent(\n  width=512)\n'
CANONICAL = "sdflow 1\n\nparam seed = 42\nlatent = empty_latent(width=512)\n"


def test_fmt_check_passes_the_examples():
    result = sdflow_cli("fmt", "--check", *(str(p.relative_to(ROOT)) for p in EXAMPLES))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_fmt_check_reports_a_file_that_would_change_and_leaves_it(tmp_path):
    recipe = tmp_path / "messy.sdflow"
    recipe.write_text(MESSY)
    result = sdflow_cli("fmt", "--check", "messy.sdflow", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "messy.sdflow: would reformat\n")
    assert recipe.read_text() == MESSY


def test_fmt_rewrites_a_file_in_place(tmp_path):
    recipe = tmp_path / "messy.sdflow"
    recipe.write_text(MESSY)
    recipe.chmod(0o640)
    result = sdflow_cli("fmt", "messy.sdflow", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, "messy.sdflow: reformatted\n")
    assert recipe.read_text() == CANONICAL
    assert recipe.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["messy.sdflow"]

    again = sdflow_cli("fmt", "messy.sdflow", cwd=tmp_path)
    assert (again.returncode, again.stderr) == (0, "")
    assert sdflow_cli("fmt", "--check", "messy.sdflow", cwd=tmp_path).returncode == 0


def test_fmt_leaves_a_file_with_syntax_errors_untouched(tmp_path):
    broken = tmp_path / "broken.sdflow"
    broken.write_text("sdflow 1\nparam   seed=42\nlatent = empty_latent(width=512\n")
    messy = tmp_path / "messy.sdflow"
    messy.write_text(MESSY)
    result = sdflow_cli("fmt", "broken.sdflow", "messy.sdflow", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("broken.sdflow:3:22: E103 '(' was never closed\n")
    assert result.stderr.endswith("messy.sdflow: reformatted\n")
    assert broken.read_text() == "sdflow 1\nparam   seed=42\nlatent = empty_latent(width=512\n"
    assert messy.read_text() == CANONICAL


def test_fmt_of_a_missing_file_is_a_usage_error(tmp_path):
    result = sdflow_cli("fmt", "nowhere.sdflow", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, "sdflow: error: nowhere.sdflow: no such file\n")
