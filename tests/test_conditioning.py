"""Conditioning: combined prompts, areas, masks, timestep ranges, averages.

The sampler mixes conditioning entries as ComfyUI's calc_cond_batch does;
one entry over the whole image and schedule is the plain prompt, bit for
bit.  The area example shows placement on sdflow-tiny, scored.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sdflow_diffusion.handles import Conditioning, Latent
from sdflow_diffusion.numerics.conditioning import average, concat
from sdflow_diffusion.numerics.denoiser import _fade_edges
from sdflow_diffusion.numerics.encode import encode_text
from sdflow_diffusion.numerics.sampling import sample
from sdflow_diffusion.stages.sample import Sample
from sdflow_diffusion.testing import tiny_handles

from sdflow.execute import Executor
from sdflow.plugin import StageError
from sdflow.registry import default_registry
from sdflow.testing import run_recipe
from training.tiny.score import score

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@functools.cache
def tiny():
    return tiny_handles("sd1", seed=5)


def prompt(text: str) -> Conditioning:
    return encode_text(tiny()[1], text)


def draw(positive: Conditioning, negative: Conditioning | None = None, *, sampler="euler", size=32, cfg=7.5):
    params = Sample(seed=7, steps=4, cfg=cfg, sampler=sampler)
    latent = Latent(torch.zeros((1, 4, size // 8, size // 8)))
    return sample(tiny()[0], positive, negative or prompt("blurry"), latent, params).samples


def test_one_entry_everywhere_is_the_plain_prompt_and_a_prompt_twice_is_itself():
    cat = prompt("a cat")
    plain = draw(cat)
    assert torch.equal(draw(Conditioning.of([cat, cat])), plain)  # (p + p) / 2, exactly
    assert torch.equal(draw(replace(cat, mask=torch.ones((1, 32, 32)))), plain)  # a full mask of strength 1
    assert torch.equal(draw(replace(cat, start=0.0, end=1.0)), plain)


def test_an_entry_outside_its_timestep_range_is_never_asked():
    cat, dog = prompt("a cat"), prompt("a dog")
    never = replace(dog, start=0.0, end=0.0)
    assert torch.equal(draw(Conditioning.of([cat, never])), draw(cat))
    first_half = Conditioning.of([replace(cat, end=0.5), replace(dog, start=0.5)])
    mixed = draw(first_half)
    assert not torch.equal(mixed, draw(cat)) and not torch.equal(mixed, draw(dog))


def test_an_area_changes_only_its_part_of_the_prediction():
    cat, dog = prompt("a cat"), prompt("a dog")
    right = replace(dog, area=(4, 2, 0, 2))  # the right half of a 4x4 latent, in cells
    out = draw(Conditioning.of([cat, right]), cfg=1.0, sampler="euler")
    assert not torch.equal(out, draw(cat, cfg=1.0))
    # Every step's left half saw the cat alone, but the U-Net mixes across the
    # latent, so only the first model call's left half is exactly the cat's:
    # what the test can say after 4 steps is that the right half moved more.
    difference = (out - draw(cat, cfg=1.0)).abs()
    assert difference[..., 2:].mean() > difference[..., :2].mean()


def test_area_edges_fade_in_as_comfyuis_fuzz():
    """An area from cell 8 to the bottom-right corner of a 32x32 latent: its
    top and left edges lie inside, and fade over min(8, 24 // 4) = 6 cells."""
    mult = torch.ones((1, 1, 24, 24))
    _fade_edges(mult, (24, 24, 8, 8), torch.Size((1, 4, 32, 32)))
    ramp = [(t + 1) / 6 for t in range(6)]
    assert mult[0, 0, :, 23].tolist() == pytest.approx(ramp + [1.0] * 18)  # the right edge is the image's
    assert mult[0, 0, 0, :6].tolist() == pytest.approx([r / 6 for r in ramp])
    assert mult[0, 0, 6:, 6:].eq(1.0).all()


def test_average_concat_and_zero_out():
    cat, dog = prompt("a cat"), prompt("a dog")
    assert torch.equal(average(cat, dog, 1.0).embeds, cat.embeds)
    assert torch.equal(average(cat, dog, 0.0).embeds, dog.embeds)
    assert torch.allclose(average(cat, dog, 0.25).embeds, cat.embeds * 0.25 + dog.embeds * 0.75)
    assert concat(cat, dog).embeds.shape[1] == 2 * cat.embeds.shape[1]
    assert torch.equal(concat(cat, dog).embeds[:, 77:], dog.embeds)


def test_the_diffusers_engine_refuses_what_it_cannot_mix():
    cat = prompt("a cat")
    with pytest.raises(StageError, match="does not mix"):
        draw(replace(cat, area=(2, 2, 0, 0)), sampler="diffusers:euler")


def test_two_area_prompts_place_two_shapes_on_sdflow_tiny(tmp_path):
    executor = Executor()
    text = (EXAMPLES / "area.sdflow").read_text()
    for seed in (40, 41, 42):
        result = run_recipe(text, default_registry(), tmp_path / str(seed), overrides={"seed": str(seed)},
                            executor=executor, recipe_dir=EXAMPLES)
        image = np.asarray(Image.open(result.files[0]).convert("RGB"))
        assert image.shape == (64, 128, 3)
        left, right = score(image[:, :64]), score(image[:, 64:])
        assert (left.shape, left.colour, left.background) == ("circle", "red", "white")
        assert (right.shape, right.colour, right.background) == ("square", "blue", "white")


def test_the_conditioning_stages_check_and_run(tmp_path):
    recipe = """sdflow 1
ckpt = load_checkpoint(name="sdflow-tiny.safetensors")
a = clip_text_encode(clip=ckpt.clip, text="a large red circle in the center on a white background")
b = clip_text_encode(clip=ckpt.clip, text="a large blue circle in the center on a white background")
mixed = conditioning_average(conditioning_to=a, conditioning_from=b, conditioning_to_strength=0.5)
joined = conditioning_concat(conditioning_to=mixed, conditioning_from=b)
late = conditioning_set_timestep_range(conditioning=joined, start=0.3, end=1.0)
early = conditioning_set_timestep_range(conditioning=a, start=0.0, end=0.3)
everywhere = solid_mask(value=1.0, width=64, height=64)
ring = conditioning_set_mask(conditioning=b, mask=everywhere, strength=0.5)
both = conditioning_combine(conditioning_1=early, conditioning_2=late)
positive = conditioning_combine(conditioning_1=both, conditioning_2=ring)
negative = conditioning_zero_out(conditioning=a)
start = empty_latent(width=64, height=64)
denoised = sample(model=ckpt.model, positive=positive, negative=negative, latent=start, steps=6, cfg=3.0)
image = vae_decode(vae=ckpt.vae, latent=denoised)
save_image(image=image, prefix="mixed")
"""
    result = run_recipe(recipe, default_registry(), tmp_path)
    image = np.asarray(Image.open(result.files[0]).convert("RGB"))
    assert score(image).shape == "circle"


# -- SDXL's own text encode ---------------------------------------------------------------------------

def test_clip_text_encode_sdxl_is_the_xl_pipelines_two_prompts_and_sizes():
    """text_l / text_g and the size conditions are diffusers' prompt /
    prompt_2 and original_size, crops_coords_top_left, target_size: the same
    image bit for bit (``diffusers:euler``, CPU, float32)."""
    from sdflow_diffusion.numerics.sampling import make_scheduler
    from sdflow_diffusion.stages.clip import ClipTextEncodeSdxl, clip_text_encode_sdxl
    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.testing import make_pipeline, tiny_components

    components = tiny_components("sdxl", seed=0)
    model, clip, vae = tiny_handles("sdxl", components=components)
    sizes = dict(width=512, height=768, crop_w=16, crop_h=32, target_width=1024, target_height=896)

    def encode(text_l, text_g):
        params = ClipTextEncodeSdxl(text_l=text_l, text_g=text_g, **sizes)
        return clip_text_encode_sdxl(None, params, clip)["conditioning"]

    positive, negative = encode("a red circle", "oil painting, a red circle"), encode("blurry", "watermark")
    params = Sample(seed=3, steps=3, cfg=6.0, sampler="diffusers:euler")
    mine = decode(vae, sample(model, positive, negative, Latent(torch.zeros((1, 4, 4, 4))), params))
    pipe = make_pipeline({**components, "scheduler": make_scheduler(model.family, "diffusers:euler", "normal")},
                         "StableDiffusionXLPipeline")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt="a red circle", prompt_2="oil painting, a red circle", negative_prompt="blurry",
                  negative_prompt_2="watermark", height=32, width=32, num_inference_steps=3, guidance_scale=6.0,
                  original_size=(768, 512), crops_coords_top_left=(32, 16), target_size=(896, 1024),
                  generator=[torch.Generator("cpu").manual_seed(3)], output_type="np").images
    assert torch.equal(mine, torch.from_numpy(theirs))


def test_the_sdxl_base_hands_over_to_the_refiner(tmp_path):
    """examples/sdxl_refiner.sdflow on tiny SDXL base and refiner files: the
    base stops at step 4 of 6 with its noise left, the refiner finishes; the
    refiner's part changes the image, and the handover is what one
    sample_advanced run of the base over all 6 steps is not."""
    from sdflow_diffusion.testing import tiny_checkpoint

    base = tiny_checkpoint(tmp_path, "sdxl")
    refiner = tiny_checkpoint(tmp_path, "sdxl-refiner")
    text = (EXAMPLES / "sdxl_refiner.sdflow").read_text()
    settings = dict(base_checkpoint=str(base), refiner_checkpoint=str(refiner), size="32", steps="6", handover="4")
    executor = Executor()
    handed = run_recipe(text, default_registry(), tmp_path / "handed", overrides=settings, executor=executor)
    alone = run_recipe(text, default_registry(), tmp_path / "alone", overrides={**settings, "handover": "6"},
                       executor=executor)
    handed_image, alone_image = (np.asarray(Image.open(r.files[0])) for r in (handed, alone))
    assert handed_image.shape == alone_image.shape == (32, 32, 3)
    assert np.abs(handed_image.astype(int) - alone_image.astype(int)).max() > 0


def test_freeu_is_diffusers_freeu_and_leaves_the_model_as_it_was():
    from sdflow_diffusion.numerics.decode import decode
    from sdflow_diffusion.numerics.sampling import make_scheduler
    from sdflow_diffusion.stages.model_patches import FreeU, freeu
    from sdflow_diffusion.testing import make_pipeline, tiny_components

    components = tiny_components("sd1", seed=0)
    model, clip, vae = tiny_handles("sd1", components=components)
    patched = freeu(None, FreeU(b1=1.5, b2=1.6, s1=0.9, s2=0.2), model)["model"]
    params = Sample(seed=3, steps=3, cfg=6.0, sampler="diffusers:euler")
    start = Latent(torch.zeros((1, 4, 4, 4)))
    pos, neg = encode_text(clip, "a red circle"), encode_text(clip, "blurry")
    mine = decode(vae, sample(patched, pos, neg, start, params))
    assert all(getattr(block, "b1", None) is None for block in model.unet.up_blocks)  # off again
    plain = decode(vae, sample(model, pos, neg, start, params))
    assert not torch.equal(mine, plain)
    pipe = make_pipeline({**components, "scheduler": make_scheduler(model.family, "diffusers:euler", "normal")},
                         "StableDiffusionPipeline")
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_freeu(b1=1.5, b2=1.6, s1=0.9, s2=0.2)
    theirs = pipe("a red circle", negative_prompt="blurry", height=32, width=32, num_inference_steps=3,
                  guidance_scale=6.0, generator=[torch.Generator("cpu").manual_seed(3)], output_type="np").images
    pipe.disable_freeu()
    assert torch.equal(mine, torch.from_numpy(theirs))


def test_area_entries_are_paired_across_the_prompts_as_comfyui_pairs_them():
    """ComfyUI gives every area entry of one prompt a counterpart of the same
    area in the other before sampling (create_cond_with_same_area_if_none):
    310 cases recorded from ComfyUI's function (benchmarks/comfy_reference_areas.py).
    Each entry is read back as [area, whose fields, whose text]."""
    import json

    from sdflow_diffusion.numerics.denoiser import _Entry, _pair_areas

    data = json.loads((Path(__file__).parent / "data" / "comfyui_areas.json").read_text())
    assert len(data["cases"]) == 310
    for case in data["cases"]:
        prompts = [[_Entry(context=f"{side}{i}", added=None, area=tuple(area) if area else None, strength=1.0,
                           mask=None, sigma_start=1e9, sigma_end=0.0, control=(f"{side}{i}",))
                    for i, area in enumerate(case[name])] for side, name in (("p", "positive"), ("n", "negative"))]
        _pair_areas(prompts)
        paired = {name: [[list(e.area) if e.area else None, e.control[0], e.context] for e in entries]
                  for name, entries in zip(("positive", "negative"), prompts)}
        assert paired == case["paired"], case


def test_an_area_prompt_gets_the_negatives_text_over_its_area():
    """What the pairing changes: with cfg, the area is guided against the
    negative's prediction for that area alone (as ComfyUI guides it), not
    against the negative's prediction for the whole latent cut to the area."""
    from sdflow_diffusion.numerics.denoiser import Denoiser
    from sdflow_diffusion.numerics.schedules import NoiseTable

    model, clip, _ = tiny_handles("sd1")
    area = replace(encode_text(clip, "a red circle").entries[0], area=(2, 2, 1, 1), strength=1.5)
    positive = Conditioning.of([encode_text(clip, "a blue square"), area])
    negative = encode_text(clip, "blurry")
    table = NoiseTable.from_scheduler_config(model.family.scheduler_config)
    denoiser = Denoiser(model, table, positive, negative, torch.Size((1, 4, 4, 4)), cfg=5.0, guided=True)
    (plain, counterpart) = denoiser.entries[1]
    assert counterpart.area == (2, 2, 1, 1) and counterpart.strength == 1.5
    assert torch.equal(counterpart.context, plain.context)
    assert len(Denoiser(model, table, positive, negative, torch.Size((1, 4, 4, 4)), cfg=1.0, guided=False).entries) == 1
