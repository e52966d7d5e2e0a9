"""AUTOMATIC1111's ``parameters`` text in every PNG save_image writes: what
viewers, galleries and model sites read.  The example recipes run on
sdflow-tiny; the text is read back as those tools read it (Pillow's text
chunks) and compared whole."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from sdflow.registry import default_registry
from sdflow.testing import Executor, run_recipe
from sdflow_diffusion.images.a1111 import SAMPLERS, SCHEDULES
from sdflow_diffusion.models.lookup import shipped_models
from sdflow_diffusion.numerics.sampler_table import COMFY_SAMPLERS, COMFY_SCHEDULES

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SHARED = Executor()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


TINY = sha(shipped_models()["sdflow-tiny.safetensors"])


def parameters(name: str, tmp_path: Path, **overrides: str) -> list[str]:
    result = run_recipe((EXAMPLES / f"{name}.sdflow").read_text(), default_registry(), tmp_path, overrides=overrides,
                        executor=SHARED, recipe_dir=EXAMPLES)
    texts = []
    for path in result.files:
        with Image.open(path) as image:
            texts.append(image.text["parameters"])
    return texts


def version() -> str:
    import sdflow

    return f"sdflow {sdflow.__version__}"


def test_the_default_recipe_in_a1111s_words(tmp_path):
    (text,) = parameters("txt2img", tmp_path, negative_prompt="blurry, (watermark:1.2)")
    assert text == ("a small red triangle at the left on a blue background\n"
                    "Negative prompt: blurry, (watermark:1.2)\n"
                    f"Steps: 20, Sampler: Euler, Schedule type: Normal, CFG scale: 3, Seed: 42, Size: 64x64, "
                    f"Model hash: {TINY[:10]}, Model: sdflow-tiny, Version: {version()}")


def test_no_negative_line_for_an_empty_negative_and_each_image_its_seed(tmp_path):
    texts = parameters("batch", tmp_path, steps="2")
    assert len(texts) == 6 and all("Negative prompt" not in t for t in texts)
    assert [t.split("Seed: ")[1].split(",")[0] for t in texts[:4]] == ["42", "43", "44", "45"]
    assert [t.split("Seed: ")[1].split(",")[0] for t in texts[4:]] == ["44", "45"]  # image_from_batch kept them


def test_loras_img2img_and_a_second_pass(tmp_path):
    (lora,) = parameters("lora", tmp_path / "lora", strength="0.5")
    corners = shipped_models("loras")["sdflow-tiny-corners.safetensors"]
    assert lora.endswith(f'Model: sdflow-tiny, Lora hashes: "sdflow-tiny-corners: {sha(corners)[:12]}", '
                         f"Version: {version()}")
    (img2img,) = parameters("img2img", tmp_path / "img2img")
    assert ", Denoising strength: 0.6, " in img2img
    (hires,) = parameters("hires_fix", tmp_path / "hires", steps="2")
    assert "Size: 128x128" in hires and ", Denoising strength: 0.5, " in hires


def test_clip_skip_and_quoting(tmp_path):
    texts = parameters("prompt_weighting", tmp_path, steps="2")  # plain, ComfyUI's weights, A1111's + clip skip
    assert [", Clip skip: 2, " in text for text in texts] == [False, False, True]
    assert texts[1].startswith("a small (red:1.5) circle at the left")
    from sdflow_diffusion.images.a1111 import _quoted

    assert _quoted("a: b, c") == json.dumps("a: b, c") and _quoted("plain") == "plain"


def test_every_sampler_and_schedule_has_a1111s_name():
    assert set(COMFY_SAMPLERS) <= set(SAMPLERS)
    assert set(COMFY_SCHEDULES) <= set(SCHEDULES)
