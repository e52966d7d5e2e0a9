"""The shipped sdflow-tiny model draws what it is told: a few prompts through
`sdflow run`, judged by the deterministic pixel scorer.  A change that breaks
the pipeline's numerics (encoding, the schedule, guidance, decoding) fails here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdflow.cli import main
from sdflow_diffusion.models.lookup import shipped_models
from training.tiny.dataset import HELD_OUT, Attributes
from training.tiny.score import judge

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

CASES = [
    (Attributes("triangle", "red", "blue", "small", "left"), "a small red triangle at the left on a blue background"),
    (Attributes("circle", "yellow", "black", "large", "center"), "a big yellow circle in the middle, black backdrop"),
    (Attributes("square", "white", "green", "small", "top"), "a little white square at the top on a green background"),
]

BLOCK = """\
p{i} = clip_text_encode(clip=ckpt.clip, text="{prompt}")
d{i} = sample(model=ckpt.model, positive=p{i}, negative=empty, latent=latent, seed={i}, steps=20, cfg=3.0)
i{i} = vae_decode(vae=ckpt.vae, latent=d{i})
save_image(image=i{i}, prefix="case{i}")
"""


def test_the_model_ships_with_sdflow():
    path = shipped_models()["sdflow-tiny.safetensors"]
    assert path.stat().st_size < 25 * 2**20


def test_it_draws_the_colours_it_is_asked_for(tmp_path):
    assert all((a.shape, a.colour, a.background) not in HELD_OUT for a, _ in CASES)  # known combinations
    recipe = tmp_path / "cases.sdflow"
    recipe.write_text(
        "sdflow 1\n\n"
        'ckpt = load_checkpoint(name="sdflow-tiny.safetensors")\n'
        'empty = clip_text_encode(clip=ckpt.clip, text="")\n'
        "latent = empty_latent(width=64, height=64, batch=1)\n"
        + "".join(BLOCK.format(i=i, prompt=prompt) for i, (_, prompt) in enumerate(CASES)))
    assert main(["run", str(recipe), "--output", str(tmp_path / "out")]) == 0
    for i, (expected, prompt) in enumerate(CASES):
        image = np.asarray(Image.open(tmp_path / "out" / f"case{i}_00001_.png").convert("RGB"))
        verdict = judge(image, expected)
        assert (verdict["colour"], verdict["background"]) == (True, True), (prompt, verdict)
