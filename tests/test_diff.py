"""``sdflow diff``: two recipes, two images or one of each, compared by meaning.

Exit codes as diff's: 0 the same, 1 different, 2 trouble; with ``--git``
always 0, so that git goes on to the next file.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from cli import ROOT, sdflow_cli
from sdflow.pngtext import read_png_text

TXT2IMG = (ROOT / "examples/txt2img.sdflow").read_text()


def recipe(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def edited(*replacements: tuple[str, str]) -> str:
    """txt2img.sdflow with each ``old`` replaced by ``new`` (each found once)."""
    text = TXT2IMG
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def diff(*args: str, cwd: Path = ROOT):
    result = sdflow_cli("diff", *args, cwd=cwd)
    return result.returncode, result.stdout.splitlines(), result.stderr


WITH_LORA = edited(
    ("param seed = 42", "param seed = 7"),
    ("param cfg = 3.0", "param cfg = 3.0\nparam strength = 0.8"),
    ("positive = clip_text_encode(clip=ckpt.clip,",
     'styled = load_lora(model=ckpt.model, clip=ckpt.clip, name="sdflow-tiny-corners.safetensors",'
     " strength_model=strength)\npositive = clip_text_encode(clip=styled.clip,"),
    ("    model=ckpt.model,", "    model=styled.model,"),
    ("steps=steps", "steps=30"),
    ('save_image(image=image, prefix="txt2img")',
     'save_image(image=image, prefix="txt2img")\nsave_image(image=image, prefix="second")'),
)


# two recipes ---------------------------------------------------------------------


def test_each_change_is_one_line_grouped_params_then_stages(tmp_path):
    before, after = recipe(tmp_path, "a.sdflow", TXT2IMG), recipe(tmp_path, "b.sdflow", WITH_LORA)
    assert diff(before, after) == (1, [
        "~ param seed: 42 -> 7",
        "+ param strength = 0.8",
        '+ stage styled = load_lora(model=ckpt.model, clip=ckpt.clip, name="sdflow-tiny-corners.safetensors",'
        " strength_model=strength)",
        "~ positive.clip: ckpt.clip -> styled.clip",
        "~ denoised.model: ckpt.model -> styled.model",
        "~ denoised.steps: steps -> 30",
        '+ stage save_image#2 = save_image(image=image, prefix="second")',
    ], "")


def test_the_other_way_round_everything_added_is_removed(tmp_path):
    before, after = recipe(tmp_path, "a.sdflow", WITH_LORA), recipe(tmp_path, "b.sdflow", TXT2IMG)
    assert diff(before, after) == (1, [
        "~ param seed: 7 -> 42",
        "- param strength = 0.8",
        '- stage styled = load_lora(model=ckpt.model, clip=ckpt.clip, name="sdflow-tiny-corners.safetensors",'
        " strength_model=strength)",
        "~ positive.clip: styled.clip -> ckpt.clip",
        "~ denoised.model: styled.model -> ckpt.model",
        "~ denoised.steps: 30 -> steps",
        '- stage save_image#2 = save_image(image=image, prefix="second")',
    ], "")


def test_a_removed_stage_and_a_changed_literal(tmp_path):
    hires = edited(
        ("image = vae_decode(vae=ckpt.vae, latent=denoised)",
         "upscaled = latent_upscale(latent=denoised, scale=2.0)\nimage = vae_decode(vae=ckpt.vae, latent=upscaled)"),
        ('sampler="euler"', 'sampler="dpmpp_2m"'),
    )
    before, after = recipe(tmp_path, "a.sdflow", hires), recipe(tmp_path, "b.sdflow", TXT2IMG)
    code, lines, _ = diff(before, after)
    assert (code, lines) == (1, [
        '~ denoised.sampler: "dpmpp_2m" -> "euler"',
        "- stage upscaled = latent_upscale(latent=denoised, scale=2.0)",
        "~ image.latent: upscaled -> denoised",
    ])


def test_the_same_recipe_reformatted_and_recommented_is_no_difference(tmp_path):
    one_line = edited(
        ("denoised = sample(\n    model=ckpt.model,\n    positive=positive,\n    negative=negative,\n"
         "    latent=latent,\n    seed=seed,\n    steps=steps,\n    cfg=cfg,\n"
         '    sampler="euler",\n    scheduler="normal",\n    denoise=1.0,\n)',
         "denoised = sample(model=ckpt.model, positive=positive, negative=negative, latent=latent,"
         ' seed=seed, steps=steps, cfg=cfg, sampler="euler", scheduler="normal", denoise=1.0)  # one line'),
        ("# The default text-to-image workflow", "# Another comment entirely"),
        ("param size = 64", "param   size=64   # the side, in pixels"),
    )
    before, after = recipe(tmp_path, "a.sdflow", TXT2IMG), recipe(tmp_path, "b.sdflow", one_line)
    assert diff(before, after) == (0, [], "")


def test_values_are_compared_not_their_text(tmp_path):
    # 3.00 is 3.0; denoise left out is its default 1.0; positive is positive.conditioning
    same = edited(
        ("param cfg = 3.0", "param cfg = 3.00"),
        ("    denoise=1.0,\n", ""),
        ("positive=positive,", "positive=positive.conditioning,"),
        ("batch=1", "batch=+1"),
    )
    before, after = recipe(tmp_path, "a.sdflow", TXT2IMG), recipe(tmp_path, "b.sdflow", same)
    assert diff(before, after) == (0, [], "")


def test_an_argument_written_out_differs_from_its_default(tmp_path):
    # eta's default is unset: written out, it is an argument added
    changed = edited(("    denoise=1.0,\n", "    denoise=0.5,\n    eta=0.5,\n"), ('"euler"', '"euler_ancestral"'))
    before, after = recipe(tmp_path, "a.sdflow", TXT2IMG), recipe(tmp_path, "b.sdflow", changed)
    assert diff(before, after) == (1, [
        '~ denoised.sampler: "euler" -> "euler_ancestral"',
        "~ denoised.denoise: 1.0 -> 0.5",
        "+ denoised.eta = 0.5",
    ], "")


def test_a_recipe_that_does_not_check_is_compared_as_written(tmp_path):
    # An unknown stage type: no graph, yet the left-out default is still no difference.
    unknown = edited(
        ("image = vae_decode(", "image = vae_decode_tiled("),
        ("    denoise=1.0,\n", ""),
        ("param cfg = 3.0", "param cfg = 3.00"),
    )
    before, after = recipe(tmp_path, "a.sdflow", TXT2IMG), recipe(tmp_path, "b.sdflow", unknown)
    code, lines, err = diff(before, after)
    assert (code, lines) == (1, ["~ stage image: vae_decode -> vae_decode_tiled"])
    assert err == (f"sdflow: note: {after} does not check ('sdflow check' says why);"
                   " its stages are compared as written\n")


def test_a_changed_require(tmp_path):
    before = recipe(tmp_path, "a.sdflow", TXT2IMG.replace("sdflow 1\n", 'sdflow 1\nrequire diffusion ">=0.1"\n'))
    after = recipe(tmp_path, "b.sdflow", TXT2IMG.replace("sdflow 1\n", 'sdflow 1\nrequire diffusion ">=0.1,<1"\n'))
    assert diff(before, after)[:2] == (1, ['~ require diffusion: ">=0.1" -> ">=0.1,<1"'])
    assert diff(before, ROOT / "examples/txt2img.sdflow")[:2] == (1, ['- require diffusion ">=0.1"'])


def test_a_recipe_that_does_not_parse_shows_its_diagnostics(tmp_path):
    broken = recipe(tmp_path, "b.sdflow", TXT2IMG + "oops = (\n")
    code, lines, err = diff(str(ROOT / "examples/txt2img.sdflow"), broken)
    assert (code, lines) == (2, [])
    assert f"{broken}:37:8: E103 '(' was never closed" in err


@pytest.mark.parametrize("args", [("examples/txt2img.sdflow",), ("a", "b", "c")])
def test_diff_takes_two_files(args):
    code, lines, err = diff(*args)
    assert (code, lines) == (2, [])
    assert "diff compares two files" in err


def test_json_lists_kind_path_before_and_after(tmp_path):
    before, after = recipe(tmp_path, "a.sdflow", TXT2IMG), recipe(tmp_path, "b.sdflow", WITH_LORA)
    result = sdflow_cli("diff", "--json", before, after)
    assert result.returncode == 1
    found = json.loads(result.stdout)
    assert found[0] == {"kind": "param", "path": "seed", "before": 42, "after": 7}
    assert found[2] == {"kind": "stage", "path": "styled", "before": None, "after": {
        "type": "load_lora",
        "args": {"model": {"ref": "ckpt.model"}, "clip": {"ref": "ckpt.clip"},
                 "name": "sdflow-tiny-corners.safetensors", "strength_model": {"ref": "strength"}}}}
    assert found[5] == {"kind": "argument", "path": "denoised.steps", "before": {"ref": "steps"}, "after": 30}
    assert [d["kind"] for d in found] == ["param", "param", "stage", "argument", "argument", "argument", "stage"]
    same = sdflow_cli("diff", "--json", before, before)
    assert (same.returncode, same.stdout) == (0, "[]\n")


def test_diff_imports_no_torch(tmp_path):
    import subprocess
    import sys

    before, after = recipe(tmp_path, "a.sdflow", TXT2IMG), recipe(tmp_path, "b.sdflow", WITH_LORA)
    code = ("import sys; from sdflow.cli import main; main(['diff', sys.argv[1], sys.argv[2]]);"
            " assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code, before, after], capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


# images ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[int, Path]:
    """Two images of the default recipe, seeds 7 and 9, drawn on sdflow-tiny."""
    from sdflow.cli import main

    found = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SDFLOW_DISABLE_PLUGINS", "extras")
        for seed in (7, 9):
            out = tmp_path_factory.mktemp(f"seed{seed}")
            assert main(["run", str(ROOT / "examples/txt2img.sdflow"), "--output", str(out),
                         "--set", f"seed={seed}"]) == 0
            (found[seed],) = out.glob("*.png")
    return found


def png_with_text(path: Path, fields: dict[str, str]) -> None:
    """A 1x1 PNG carrying ``fields`` as iTXt chunks ``sdflow.NAME``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    for key, text in fields.items():
        body += chunk(b"iTXt", f"sdflow.{key}".encode() + b"\0\0\0\0\0" + text.encode())
    body += chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_two_images_differ_in_their_seed_only(images):
    assert diff(str(images[7]), str(images[9])) == (1, ["~ param seed: 7 -> 9"], "")
    assert diff(str(images[7]), str(images[7])) == (0, [], "")


def test_a_recipe_against_an_image_applies_the_params_it_recorded(images):
    assert diff("examples/txt2img.sdflow", str(images[7])) == (1, ["~ param seed: 42 -> 7"], "")
    assert diff(str(images[9]), "examples/txt2img.sdflow") == (1, ["~ param seed: 9 -> 42"], "")


def test_models_versions_and_run_conditions_recorded_in_images(images, tmp_path):
    fields = read_png_text(images[7])
    models, versions, run = (json.loads(fields[name]) for name in ("models", "versions", "run"))
    stages = json.loads(fields["stages"])
    (label, sha), = models.items()
    changed = dict(fields)
    changed["models"] = json.dumps({label: "0" * 64, "other.safetensors": "ab" * 32})
    changed["versions"] = json.dumps({**versions, "torch": "9.9.9"})
    changed["run"] = json.dumps({**run, "device": "cuda", "dtype": "fp16"})
    changed["stages"] = json.dumps({**stages, "denoised": "diffusion.sample 9.0"})
    other = tmp_path / "other.png"
    png_with_text(other, changed)
    code, lines, err = diff(str(images[7]), str(other))
    assert (code, err) == (1, "")
    assert lines == [
        "+ model other.safetensors = abababababab",
        f"~ model {label}: {sha[:12]} -> 000000000000",
        f"~ version diffusion.sample: {stages['denoised'].split()[1]} -> 9.0",
        f"~ version torch: {versions['torch']} -> 9.9.9",
        "~ run device: cpu -> cuda",
        f"~ run dtype: {run['dtype']} -> fp16",
    ]


def test_a_field_only_one_image_recorded_is_not_compared(images, tmp_path):
    fields = read_png_text(images[7])
    older = tmp_path / "older.png"
    png_with_text(older, {name: text for name, text in fields.items() if name not in ("run", "versions")})
    assert diff(str(older), str(images[9])) == (1, ["~ param seed: 7 -> 9"], "")


def test_an_image_without_sdflow_metadata_is_a_usage_error(tmp_path):
    plain = tmp_path / "plain.png"
    png_with_text(plain, {})
    code, lines, err = diff(str(plain), "examples/txt2img.sdflow")
    assert (code, lines) == (2, [])
    assert err == (f"sdflow: error: {plain}: this PNG carries no sdflow metadata (it was not written by"
                   " sdflow run), so there is no recipe to compare\n")


# git's diff driver ---------------------------------------------------------------


def git_args(path: str, old: str, new: str) -> list[str]:
    """What git passes an external diff driver: path old-file old-hex old-mode new-file new-hex new-mode."""
    return [path, old, "0" * 40 if old == "/dev/null" else "1" * 40, "100644",
            new, "0" * 40 if new == "/dev/null" else "2" * 40, "100644"]


def test_git_driver_prints_a_header_and_exits_0(tmp_path):
    before, after = recipe(tmp_path, "a.sdflow", TXT2IMG), recipe(tmp_path, "b.sdflow", edited(("= 42", "= 7")))
    assert diff("--git", *git_args("examples/txt2img.sdflow", before, after)) == (0, [
        "sdflow diff a/examples/txt2img.sdflow b/examples/txt2img.sdflow",
        "~ param seed: 42 -> 7",
    ], "")
    assert diff("--git", *git_args("r.sdflow", before, before))[:2] == (0, [
        "sdflow diff a/r.sdflow b/r.sdflow", "(no semantic difference)"])


def test_git_driver_with_dev_null_adds_or_removes_everything(tmp_path):
    small = recipe(tmp_path, "small.sdflow", 'sdflow 1\nparam seed = 1\nlatent = empty_latent(width=64, height=64)\n'
                   "image = vae_decode(vae=ckpt.vae, latent=latent)  # no ckpt: does not check\n")
    code, lines, _ = diff("--git", *git_args("small.sdflow", "/dev/null", small))
    assert (code, lines) == (0, [
        "sdflow diff a/small.sdflow b/small.sdflow",
        "+ param seed = 1",
        "+ stage latent = empty_latent(width=64, height=64)",
        "+ stage image = vae_decode(vae=ckpt.vae, latent=latent)",
    ])
    code, lines, _ = diff("--git", *git_args("small.sdflow", small, "/dev/null"))
    assert (code, lines[1:]) == (0, [
        "- param seed = 1",
        "- stage latent = empty_latent(width=64, height=64)",
        "- stage image = vae_decode(vae=ckpt.vae, latent=latent)",
    ])


def test_git_driver_shows_a_recipe_that_does_not_parse_as_text(tmp_path):
    before = recipe(tmp_path, "a.sdflow", "sdflow 1\nparam seed = 1\n")
    after = recipe(tmp_path, "b.sdflow", "sdflow 1\nparam seed = (\n")
    code, lines, err = diff("--git", *git_args("r.sdflow", before, after))
    assert (code, lines) == (0, [
        "sdflow diff a/r.sdflow b/r.sdflow",
        "--- a/r.sdflow", "+++ b/r.sdflow", "@@ -1,2 +1,2 @@", " sdflow 1", "-param seed = 1", "+param seed = (",
    ])
    assert "b/r.sdflow:2:14: E1" in err


def test_git_driver_with_an_image_git_has_as_a_new_file(images):
    code, lines, _ = diff("--git", *git_args("out.png", "/dev/null", str(images[7])))
    assert code == 0
    assert lines[:2] == ["sdflow diff a/out.png b/out.png", '+ param checkpoint = "sdflow-tiny.safetensors"']
    assert "+ run device = cpu" in lines


def test_git_driver_wants_gits_arguments(tmp_path):
    code, lines, err = diff("--git", "r.sdflow", "a", "b")
    assert (code, lines) == (2, [])
    assert "--git takes git's arguments" in err
