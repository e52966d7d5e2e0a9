"""`sdflow run`, end to end: tiny real models in the files users have, the
real CLI, PNGs on disk.  Nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cli import ROOT, sdflow_cli
from sdflow.cli import main
from sdflow.pngtext import read_png_text
from sdflow_diffusion.testing import tiny_checkpoint

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

RECIPE = """\
sdflow 1

param checkpoint = "tiny-sd1.safetensors"
param seed = 7
param steps = 3

ckpt = load_checkpoint(name=checkpoint)
positive = clip_text_encode(clip=ckpt.clip, text="a red circle on a blue background")
negative = clip_text_encode(clip=ckpt.clip, text="blurry")
latent = empty_latent(width=32, height=32, batch=1)
denoised = sample(model=ckpt.model, positive=positive, negative=negative, latent=latent,
                  seed=seed, steps=steps, cfg=5.0)
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="tiny")
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A ComfyUI-style models folder with tiny checkpoints of every family."""
    root = tmp_path_factory.mktemp("models")
    folder = root / "checkpoints"
    for kind in ("sd1", "sd2", "sdxl", "sdxl-refiner"):
        tiny_checkpoint(folder, kind, layout="single")
        tiny_checkpoint(folder, kind, layout="diffusers")
    return root


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.sdflow"
    path.write_text(RECIPE, encoding="utf-8")
    return path


def run(recipe, models, tmp_path, *options):
    """`sdflow run` in this process (the CLI's own entry point)."""
    return main(["run", str(recipe), "--models-dir", str(models), "--output", str(tmp_path / "out"), *options])


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_run_writes_a_png_that_carries_its_recipe(recipe, models, tmp_path, capsys):
    assert run(recipe, models, tmp_path) == 0
    (png,) = (tmp_path / "out").iterdir()
    assert png.name == "tiny_00001_.png"
    assert capsys.readouterr().out == f"{png}\n"
    assert Image.open(png).size == (32, 32)
    text = read_png_text(png)
    assert text["recipe"] == RECIPE
    assert json.loads(text["params"]) == {"checkpoint": "tiny-sd1.safetensors", "seed": 7, "steps": 3}
    checkpoint = models / "checkpoints" / "tiny-sd1.safetensors"
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert json.loads(text["models"]) == {"tiny-sd1.safetensors": digest}
    assert json.loads(text["paths"]) == {"tiny-sd1.safetensors": str(checkpoint)}  # what the name found
    versions = json.loads(text["versions"])
    assert set(versions) == {"sdflow", "torch", "diffusers", "python", "plugin diffusion"}
    # What ran, not "auto"; the image's seed (the sampler's, as ComfyUI's seed + i for image i).
    assert json.loads(text["run"]) == {"device": "cpu", "dtype": "fp32", "vae_dtype": "fp32", "seeds": [7]}
    assert json.loads(text["image"]) == {"index": 0, "count": 1, "seed": 7}
    assert "recipe_file" not in text  # the same recipe under another name writes the same bytes
    assert sdflow_cli("show", "--recipe", str(png)).stdout == RECIPE


def test_a_second_run_never_overwrites(recipe, models, tmp_path):
    assert run(recipe, models, tmp_path) == 0
    assert run(recipe, models, tmp_path) == 0
    first, second = sorted((tmp_path / "out").iterdir())
    assert (first.name, second.name) == ("tiny_00001_.png", "tiny_00002_.png")
    assert np.array_equal(pixels(first), pixels(second))  # same recipe, same seed: same image


@pytest.mark.parametrize("checkpoint", ["tiny-sd2.safetensors", "tiny-sdxl.safetensors",
                                        "tiny-sdxl-refiner.safetensors", "tiny-sd1", "tiny-sd2", "tiny-sdxl",
                                        "tiny-sdxl-refiner"])
def test_every_family_and_layout_runs(checkpoint, recipe, models, tmp_path):
    assert run(recipe, models, tmp_path, "--set", f"checkpoint={checkpoint}") == 0
    (png,) = (tmp_path / "out").iterdir()
    assert Image.open(png).size == (32, 32)


def test_a_single_file_and_a_diffusers_folder_of_one_model_draw_the_same(recipe, models, tmp_path):
    assert run(recipe, models, tmp_path / "a") == 0
    assert run(recipe, models, tmp_path / "b", "--set", "checkpoint=tiny-sd1") == 0
    (a,), (b,) = (tmp_path / "a" / "out").iterdir(), (tmp_path / "b" / "out").iterdir()
    assert np.array_equal(pixels(a), pixels(b))


def test_the_seed_changes_the_image(recipe, models, tmp_path):
    assert run(recipe, models, tmp_path / "a") == 0
    assert run(recipe, models, tmp_path / "b", "--set", "seed=8") == 0
    (a,), (b,) = (tmp_path / "a" / "out").iterdir(), (tmp_path / "b" / "out").iterdir()
    assert not np.array_equal(pixels(a), pixels(b))


def test_a_missing_checkpoint_is_reported_at_its_line(recipe, models, tmp_path, capsys):
    assert run(recipe, models, tmp_path, "--set", "checkpoint=tiny-sd3.safetensors") == 1
    err = capsys.readouterr().err
    assert f"{recipe}:7:1: E601 checkpoint 'tiny-sd3.safetensors' not found" in err
    assert "ckpt = load_checkpoint(name=checkpoint)\n  | ^^^^" in err
    assert "help: did you mean 'tiny-sd" in err
    assert not (tmp_path / "out").exists()


def test_pickles_are_refused_unless_allowed(recipe, models, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    pickle = tmp_path / "old.ckpt"
    torch.save({"state_dict": load_file(models / "checkpoints" / "tiny-sd1.safetensors")}, pickle)
    assert run(recipe, models, tmp_path, "--set", f"checkpoint={pickle}") == 1
    err = capsys.readouterr().err
    assert "E601" in err and "--allow-pickle" in err
    assert run(recipe, models, tmp_path, "--set", f"checkpoint={pickle}", "--allow-pickle") == 0


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"not a checkpoint at all"])
def test_a_corrupt_file_is_a_diagnostic_not_a_traceback(content, recipe, models, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    assert run(recipe, models, tmp_path, "--set", f"checkpoint={bad}") == 1
    err = capsys.readouterr().err
    assert f"{recipe}:7:1: E601 cannot read 'bad.safetensors'" in err
    assert "Traceback" not in err


def test_a_truncated_checkpoint_is_a_diagnostic(recipe, models, tmp_path, capsys):
    whole = (models / "checkpoints" / "tiny-sd1.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole[: len(whole) // 2])
    assert run(recipe, models, tmp_path, "--set", f"checkpoint={cut}") == 1
    assert f"{recipe}:7:1: E601 cannot read 'cut.safetensors'" in capsys.readouterr().err


def test_cuda_asked_for_without_a_gpu_is_a_clear_error(recipe, models, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert run(recipe, models, tmp_path, "--device", "cuda") == 1
    assert "E601 --device cuda was asked for, but torch sees no CUDA GPU" in capsys.readouterr().err


def test_json_events_and_each_checkpoint_and_prompt_done_once(models, tmp_path, capsys):
    text = RECIPE.replace('save_image(image=image, prefix="tiny")', (
        'again = clip_text_encode(clip=ckpt.clip, text="blurry")\n'
        "second = sample(model=ckpt.model, positive=positive, negative=again, latent=latent, seed=8, steps=2)\n"
        "image2 = vae_decode(vae=ckpt.vae, latent=second)\n"
        'save_image(image=image, prefix="tiny")\n'
        'save_image(image=image2, prefix="tiny")\n'))
    path = tmp_path / "two.sdflow"
    path.write_text(text)
    assert run(path, models, tmp_path, "--json") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ran = [e["stage"] for e in events if e["event"] == "stage_started"]
    reused = [e["stage"] for e in events if e["event"] == "stage_done" and e["cached"]]
    assert ran.count("ckpt") == 1
    assert reused == ["again"]  # the same text on the same CLIP: encoded once
    assert [e["step"] for e in events if e["event"] == "step" and e["stage"] == "denoised"] == [1, 2, 3]
    assert len([e for e in events if e["event"] == "file_written"]) == 2
    assert events[-1]["event"] == "run_done"


def start(recipe, models, tmp_path, *options, **popen):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "sdflow.cli", "run", str(recipe), "--models-dir", str(models),
               "--output", str(tmp_path / "out"), *options]
    return subprocess.Popen(command, cwd=ROOT, env=env, **popen)


def test_ctrl_c_stops_between_steps_and_leaves_no_file(recipe, models, tmp_path):
    child = start(recipe, models, tmp_path, "--json", "--set", "steps=400",
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in child.stdout:
        if json.loads(line)["event"] == "step":
            child.send_signal(signal.SIGINT)
            break
    rest = child.stdout.read()
    assert child.wait(timeout=120) == 130
    steps = [json.loads(line) for line in rest.splitlines() if '"step"' in line]
    assert len(steps) < 10  # it stopped at the next step, not at the end
    assert "interrupted; no partial file was written" in child.stderr.read()
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []


def test_progress_bars_on_a_terminal_and_quiet_when_piped(recipe, models, tmp_path):
    piped = start(recipe, models, tmp_path / "a", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = piped.communicate(timeout=120)
    assert piped.returncode == 0 and err == ""

    leader, follower = pty.openpty()
    child = start(recipe, models, tmp_path / "b", stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    screen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        try:
            chunk = os.read(leader, 4096) if ready else b""
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    assert child.wait(timeout=120) == 0
    text = screen.decode()
    assert "ckpt (load_checkpoint) done in" in text
    assert "denoised (steps)" in text and "3/3" in text


def test_explain_says_why_each_stage_ran(recipe, models, tmp_path, capsys):
    assert run(recipe, models, tmp_path, "--explain") == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("ckpt (load_checkpoint) [")
    assert lines[0].endswith("]: ran: first run of this stage in this process")
    assert lines[-1].endswith("]: ran: output stages always run")


REFINED = """\
sdflow 1

base = load_checkpoint(name="tiny-sdxl.safetensors")
refiner = load_checkpoint(name="tiny-sdxl-refiner.safetensors")
positive = clip_text_encode(clip=base.clip, text="a lighthouse at dusk")
negative = clip_text_encode(clip=base.clip, text="blurry")
refiner_positive = clip_text_encode(clip=refiner.clip, text="a lighthouse at dusk")
refiner_negative = clip_text_encode(clip=refiner.clip, text="blurry")
latent = empty_latent(width=32, height=32)
drawn = sample(model=base.model, positive=positive, negative=negative, latent=latent, seed=1, steps=4)
refined = sample(model=refiner.model, positive=refiner_positive, negative=refiner_negative, latent=drawn,
                 seed=1, steps=2, denoise=0.3)
save_image(image=vae_decode(vae=refiner.vae, latent=refined), prefix="refined")
""".replace("save_image(image=vae_decode(vae=refiner.vae, latent=refined)",
            "image = vae_decode(vae=refiner.vae, latent=refined)\nsave_image(image=image")


def test_sdxl_base_then_refiner_as_comfyui_draws_them(models, tmp_path, capsys):
    path = tmp_path / "refined.sdflow"
    path.write_text(REFINED)
    assert run(path, models, tmp_path) == 0
    (png,) = (tmp_path / "out").iterdir()
    text = read_png_text(png)
    assert set(json.loads(text["models"])) == {"tiny-sdxl.safetensors", "tiny-sdxl-refiner.safetensors"}
    path.write_text(REFINED.replace("clip=refiner.clip", "clip=base.clip"))
    assert run(path, models, tmp_path) == 1
    assert "E601 the prompts were encoded for another model" in capsys.readouterr().err
