"""Images in: img2img, inpainting (a noise mask, an inpainting checkpoint), batches.

The numerics against their references on tiny random models (diffusers'
VAE encoder and inpaint pipeline, bit for bit on the CPU), then what a user
sees: the example recipes run through the CLI on sdflow-tiny, their effect
measured with the project's scorer (``training.tiny.score``).
"""

from __future__ import annotations

import functools
import json

import diffusers
import numpy as np
import pytest
import torch
from sdflow.pngtext import read_png_text
from sdflow_diffusion.handles import Latent
from sdflow_diffusion.numerics.decode import decode
from sdflow_diffusion.numerics.encode import encode_text
from sdflow_diffusion.numerics.sampler_table import DIFFUSERS
from sdflow_diffusion.numerics.sampling import make_scheduler, sample
from sdflow_diffusion.numerics.vae_encode import encode, encode_for_inpaint, grow
from sdflow_diffusion.stages.sample import Sample
from sdflow_diffusion.testing import make_pipeline, tiny_components, tiny_handles

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

PROMPT, NEGATIVE, SEED, SIZE = "a red circle on a blue background", "blurry", 42, 32


@functools.cache
def tiny(family: str = "sd1-tiny"):
    """(components, handles) of a tiny SD 1.x model of ``family`` (the plain
    one or its inpainting variant), CPU, float32."""
    from sdflow_diffusion.models.families import family_handle

    components = tiny_components("sd1", seed=3, family=family)
    model, clip, vae = tiny_handles("sd1", components=components)
    family_of = family_handle(family)
    model = type(model)(model.unet, family_of, model.device, model.dtype)
    return components, (model, clip, type(vae)(vae.vae, family_of, vae.device, vae.dtype))


def picture(batch: int = 1, seed: int = 0) -> torch.Tensor:
    """An IMAGE batch of smooth random pictures, SIZE x SIZE."""
    coarse = torch.rand((batch, 3, 4, 4), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear").movedim(1, -1)


def right_half(batch: int = 1) -> torch.Tensor:
    mask = torch.zeros((batch, SIZE, SIZE))
    mask[:, :, SIZE // 2:] = 1.0
    return mask


def run(family, latent, *, sampler="euler", denoise=1.0, steps=4, seed=SEED, cfg=7.5):
    _, (model, clip, _) = tiny(family)
    params = Sample(seed=seed, steps=steps, cfg=cfg, sampler=sampler, denoise=denoise)
    return sample(model, encode_text(clip, PROMPT), encode_text(clip, NEGATIVE), latent, params)


# -- the VAE encoder ------------------------------------------------------------------------------

def test_vae_encode_is_diffusers_encoder_mean_in_the_unets_space():
    components, (_, _, vae) = tiny()
    image = picture(2)
    pipe = make_pipeline(components, "StableDiffusionImg2ImgPipeline")
    pixels = pipe.image_processor.preprocess(image.movedim(-1, 1))  # their [-1, 1] mapping
    with torch.no_grad():
        expected = components["vae"].encode(pixels).latent_dist.mode() * components["vae"].config.scaling_factor
    assert torch.equal(encode(vae, image).samples, expected)


def test_vae_encode_crops_to_a_multiple_of_eight_centred():
    _, (_, _, vae) = tiny()
    image = picture()
    wider = torch.nn.functional.pad(image.movedim(-1, 1), (3, 4, 2, 3), value=0.25).movedim(1, -1)
    assert wider.shape[1:3] == (SIZE + 5, SIZE + 7)
    assert torch.equal(encode(vae, wider).samples, encode(vae, image).samples)


def test_vae_encode_for_inpaint_greys_the_mask_and_keeps_it_grown():
    _, (_, _, vae) = tiny()
    image, mask = picture(), torch.zeros((1, SIZE, SIZE))
    mask[0, 10, 20] = 1.0
    latent = encode_for_inpaint(vae, image, mask, grow_mask_by=3)
    greyed = image.clone()
    greyed[0, 10, 20] = 0.5
    assert torch.equal(latent.samples, encode(vae, greyed).samples)
    expected = torch.zeros((1, 1, SIZE, SIZE))
    expected[0, 0, 9:12, 19:22] = 1.0
    assert torch.equal(latent.noise_mask, expected)
    # An even size grows one more pixel up and left, as ComfyUI's padding does.
    assert grow(expected[:, :, ::1] * 0 + (torch.arange(SIZE) == 20).float().expand(1, 1, SIZE, SIZE),
                2)[0, 0, 0].nonzero().flatten().tolist() == [20, 21]


# -- the noise mask ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "heun", "ddim",
                                     "diffusers:euler", "diffusers:dpmpp_2m"])
def test_a_noise_mask_resamples_only_the_masked_region(sampler):
    """The kept latent columns come out as they went in; the repainted ones
    change.  Not bit for bit with ComfyUI's samplers, as in ComfyUI: the
    last step computes the clean latent as ``x + (x - denoised) / sigma *
    (0 - sigma)``, which rounds (the kept region is ``denoised`` there); the
    diffusers engine puts the latent itself back after the last step."""
    _, (_, _, vae) = tiny()
    start = encode(vae, picture())
    out = run("sd1-tiny", Latent(start.samples, noise_mask=right_half()[:, None]), sampler=sampler)
    kept, repainted = slice(0, SIZE // 16), slice(SIZE // 16, None)
    if sampler.startswith(DIFFUSERS):
        assert torch.equal(out.samples[..., kept], start.samples[..., kept])
    assert torch.allclose(out.samples[..., kept], start.samples[..., kept], rtol=0, atol=1e-5)
    assert (out.samples[..., repainted] - start.samples[..., repainted]).abs().mean() > 0.1
    assert out.noise_mask is not None  # carried on, as ComfyUI does


def test_the_noise_mask_blend_is_diffusers_inpaint_pipeline():
    """An ordinary U-Net with a noise mask, ``diffusers:euler`` at denoise
    0.75, is StableDiffusionInpaintPipeline at strength 0.75, bit for bit
    (given the image's latent, so neither draws from the VAE's distribution)."""
    components, (model, _, vae) = tiny()
    start, mask = encode(vae, picture()), right_half()
    mine = decode(vae, run("sd1-tiny", Latent(start.samples, noise_mask=mask[:, None]),
                           sampler=DIFFUSERS + "euler", denoise=0.75, steps=3))
    pipe = make_pipeline({**components, "scheduler": make_scheduler(model.family, "diffusers:euler", "normal")},
                         "StableDiffusionInpaintPipeline")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=start.samples.clone(), mask_image=mask[:, None], height=SIZE, width=SIZE,
                  masked_image_latents=start.samples.clone(),  # unused by a 4-channel U-Net
                  strength=0.75, num_inference_steps=4, guidance_scale=7.5, negative_prompt=NEGATIVE,
                  generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="np").images
    assert torch.equal(mine, torch.from_numpy(theirs))


# -- inpainting checkpoints --------------------------------------------------------------------------

def test_an_inpainting_unet_gets_the_mask_and_masked_image_as_diffusers_gives_them():
    components, (model, _, vae) = tiny("sd1-inpaint-tiny")
    assert model.unet.config.in_channels == 9
    image, mask = picture(), right_half()
    latent = encode_for_inpaint(vae, image, mask, grow_mask_by=0)
    mine = decode(vae, run("sd1-inpaint-tiny", latent, sampler=DIFFUSERS + "euler", denoise=0.75, steps=3))
    pipe = make_pipeline({**components, "scheduler": make_scheduler(model.family, "diffusers:euler", "normal")},
                         "StableDiffusionInpaintPipeline")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=latent.samples.clone(), mask_image=mask[:, None], height=SIZE, width=SIZE,
                  masked_image_latents=latent.samples.clone(), strength=0.75, num_inference_steps=4,
                  guidance_scale=7.5, negative_prompt=NEGATIVE,
                  generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="np").images
    assert torch.equal(mine, torch.from_numpy(theirs))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_an_inpainting_checkpoint_keeps_the_unmasked_region_with_comfyuis_samplers(sampler):
    _, (_, _, vae) = tiny("sd1-inpaint-tiny")
    latent = encode_for_inpaint(vae, picture(), right_half(), grow_mask_by=0)
    out = run("sd1-inpaint-tiny", latent, sampler=sampler)
    assert torch.allclose(out.samples[..., :SIZE // 16], latent.samples[..., :SIZE // 16], rtol=0, atol=1e-5)
    assert not torch.equal(out.samples, latent.samples)


# -- batches ---------------------------------------------------------------------------------------

def test_a_picked_image_of_a_batch_keeps_its_seed():
    """A latent that says it is image 2 of a batch is drawn with seed + 2."""
    start = torch.zeros((1, 4, SIZE // 8, SIZE // 8))
    picked = run("sd1-tiny", Latent(start, extra={"batch_index": [2]}), seed=SEED)
    single = run("sd1-tiny", Latent(start), seed=SEED + 2)
    assert torch.equal(picked.samples, single.samples)


# -- the examples, on sdflow-tiny, measured with the scorer ------------------------------------------

from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402
from sdflow.execute import Executor  # noqa: E402
from sdflow.registry import default_registry  # noqa: E402
from sdflow.testing import run_recipe  # noqa: E402
from training.tiny.dataset import Attributes  # noqa: E402
from training.tiny.example_inputs import EXAMPLE_INPUTS, write_example_inputs  # noqa: E402
from training.tiny.score import score  # noqa: E402

from cli import sdflow_cli  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SHARED = Executor()  # one process's cache: sdflow-tiny loads once for every example below


def example(name: str, tmp_path: Path, extra: str = "", **overrides: str) -> dict[str, np.ndarray]:
    """Run ``examples/NAME.sdflow`` (with ``extra`` lines appended) and read
    back every PNG it wrote: file name -> [H, W, 3] uint8."""
    text = (EXAMPLES / f"{name}.sdflow").read_text() + extra
    result = run_recipe(text, default_registry(), tmp_path, overrides=overrides, executor=SHARED,
                        recipe_dir=EXAMPLES)
    return {str(p.relative_to(tmp_path)): np.asarray(Image.open(p).convert("RGB")) for p in result.files}


def pixels(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / "inputs" / name).convert("RGB"))


def blank(image: np.ndarray, columns: slice, colour=(255, 255, 255)) -> np.ndarray:
    """``image`` with ``columns`` painted ``colour``: the scorer then sees the rest alone."""
    out = image.copy()
    out[:, columns] = colour
    return out


def test_the_example_inputs_are_the_data_sets_pictures(tmp_path):
    for path in write_example_inputs(tmp_path):
        assert np.array_equal(np.asarray(Image.open(path)), pixels(path.name))
    assert score(pixels("red_circle.png")) == EXAMPLE_INPUTS["red_circle.png"]


def test_img2img_redraws_the_circle_blue_in_the_same_place(tmp_path):
    (image,) = example("img2img", tmp_path).values()
    assert score(image) == Attributes("circle", "blue", "white", "large", "center")


def test_img2img_at_denoise_zero_is_the_pictures_round_trip_through_the_vae(tmp_path):
    (image,) = example("img2img", tmp_path / "zero", denoise="0").values()
    round_trip = """
again = vae_decode(vae=ckpt.vae, latent=start)
save_image(image=again, prefix="round_trip")
"""
    files = example("img2img", tmp_path / "trip", extra=round_trip)
    assert np.array_equal(image, files["round_trip_00001_.png"])


def test_img2img_at_denoise_one_hardly_sees_the_picture(tmp_path):
    """ComfyUI's start at full denoise is noise * sqrt(1 + sigma_max^2) plus
    the latent (not the latent replaced): with sdflow-tiny's zero-terminal-SNR
    schedule sigma_max is 4,500, so the picture's share is 1/4,500 of the
    start, and two different pictures give the same drawing but for a few
    levels."""
    (circle,) = example("img2img", tmp_path / "circle", denoise="1").values()
    (square,) = example("img2img", tmp_path / "square", denoise="1", picture="red_square_left.png").values()
    assert np.abs(circle.astype(int) - square.astype(int)).max() <= 8
    assert score(circle) == score(square) == Attributes("circle", "blue", "white", "large", "center")


def test_inpainting_repaints_the_right_half_and_keeps_the_left(tmp_path):
    keep_drawn = """
save_image(image=drawn, prefix="drawn")
"""
    files = example("inpaint", tmp_path, extra=keep_drawn)
    original, image, drawn = pixels("red_square_left.png"), files["inpaint_00001_.png"], files["drawn_00001_.png"]
    # Pasted back through the mask: the left half is the original's, exactly.
    assert np.array_equal(image[:, :32], original[:, :32])
    assert score(blank(image, slice(32, None))) == Attributes("square", "red", "white", "small", "left")
    assert score(blank(image, slice(0, 32))) == Attributes("circle", "blue", "white", "small", "right")
    # Before the paste, straight from the sampler: the kept half's latent
    # comes back as it went in, but sdflow-tiny's decoder attends across the
    # whole 8x8 latent, so the new right half shifts the left half's pixels
    # too: the shape stays, the pixels move by 7.8% of full scale on average
    # (the VAE's own round trip of the picture: 1.5%).
    assert score(blank(drawn, slice(32, None))) == Attributes("square", "red", "white", "small", "left")
    error = np.abs(drawn[:, :32].astype(float) - original[:, :32]).mean() / 255
    assert error < 0.1, error


def test_outpainting_continues_the_background(tmp_path):
    (image,) = example("outpaint", tmp_path).values()
    original = pixels("red_square_left.png")
    assert np.array_equal(image[:, :24], original[:, :24])  # outside the pad's 8-pixel feathering
    assert score(image) == Attributes("square", "red", "white", "small", "left")
    assert np.abs(image[:, 40:].astype(float) - 255).mean() < 16  # the new half: white, as the rest


def test_hires_fix_draws_at_twice_the_size_and_still_scores_right(tmp_path):
    """At 128x128 (a 16x16 latent, twice what sdflow-tiny was trained on)
    the second pass keeps colour, background, size and place every time; it
    redraws the small circle as a rounded square for 2 seeds of 10 (41, 42)."""
    found = []
    for seed in range(40, 50):
        (image,) = example("hires_fix", tmp_path / str(seed), seed=str(seed)).values()
        assert image.shape == (128, 128, 3)
        found.append(score(np.asarray(Image.fromarray(image).resize((64, 64), Image.BOX))))
    assert {(a.colour, a.background, a.size, a.position) for a in found} == {("white", "black", "small", "left")}
    assert sum(a.shape == "circle" for a in found) >= 8


def test_batch_image_i_is_a_run_of_one_with_seed_plus_i(tmp_path):
    files = example("batch", tmp_path / "batch")
    for i in range(4):
        single = example("txt2img", tmp_path / f"one{i}", seed=str(42 + i),
                         prompt="a small yellow square at the top on a blue background")["txt2img_00001_.png"]
        drawn = files[f"batch/all_0000{i + 1}_.png"]
        # Same noise, same steps; oneDNN's kernels round a batch of 8 U-Net
        # inputs differently from a batch of 2 in the last float bits, which
        # moves a pixel by at most one level now and then.
        assert np.abs(drawn.astype(int) - single.astype(int)).max() <= 1
    assert np.array_equal(files["batch/last_two_00001_.png"], files["batch/all_00003_.png"])
    assert np.array_equal(files["batch/last_two_00002_.png"], files["batch/all_00004_.png"])
    # Each PNG records its own place in the batch and its seed.
    recorded = {name: json.loads(read_png_text(tmp_path / "batch" / name)["image"]) for name in files}
    for i in range(4):
        assert recorded[f"batch/all_0000{i + 1}_.png"] == {"index": i, "count": 4, "seed": 42 + i}
    assert recorded["batch/last_two_00002_.png"] == {"index": 1, "count": 2, "seed": 45}


def test_img2img_through_the_cli_with_a_picture_given_by_path(tmp_path):
    """The user's route: a picture anywhere, named with --set."""
    picture = tmp_path / "mine.png"
    Image.fromarray(pixels("red_circle.png")).save(picture)
    run = sdflow_cli("run", "examples/img2img.sdflow", "--output", str(tmp_path / "out"),
                     "--set", f"picture={picture}", "--set", "steps=4")
    assert run.returncode == 0, run.stderr
    (written,) = (tmp_path / "out").glob("*.png")
    assert score(np.asarray(Image.open(written).convert("RGB"))).colour == "blue"


def test_a_mask_given_for_an_image_is_a_check_error_with_the_conversion_in_its_help():
    from sdflow.testing import check_recipe

    recipe = """sdflow 1
ckpt = load_checkpoint(name="sdflow-tiny.safetensors")
src = load_image(name="red_circle.png")
start = vae_encode(vae=ckpt.vae, image=src.mask)
masked = set_latent_noise_mask(latent=start, mask=src.image)
save_image(image=vae_decode(vae=ckpt.vae, latent=masked))
"""
    graph, diagnostics = check_recipe(recipe, default_registry())
    errors = [(d.code, d.span.line, d.help) for d in diagnostics if d.is_error]
    assert graph is None and errors[:2] == [
        ("E300", 4, "did you mean 'src.image'? Or convert it: mask_to_image(mask=src.mask)"),
        ("E300", 5, "did you mean 'src.mask'? Or convert it: image_to_mask(image=src.image)"),
    ]
