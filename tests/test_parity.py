"""sdflow's ``diffusers:`` samplers against diffusers' pipelines: the same tiny
model, prompt, seed, sampler and steps give the same image, bit for bit, on
the CPU.  (ComfyUI's names, sdflow's other engine, are checked against
ComfyUI's numbers in tests/test_samplers.py and tests/test_ksampling.py.)

Each test runs the default workflow's functions (encode_text, empty_latent,
sample, decode, to_pil) and the pipeline the lead's stages stand in for, and
compares the float images with ``torch.equal`` and the 8-bit images with
``numpy.array_equal``.  The one comparison that is not exact (image i of a
batch against a batch of one) says why where it is made.
"""

from __future__ import annotations

import functools

import diffusers
import numpy as np
import pytest
import torch
from sdflow_diffusion.numerics.decode import decode, to_pil
from sdflow_diffusion.numerics.encode import encode_text, token_windows
from sdflow_diffusion.handles import Latent
from sdflow_diffusion.numerics.sampler_table import DIFFUSERS, SAMPLERS, supported
from sdflow_diffusion.numerics.denoiser import initial_noise
from sdflow_diffusion.numerics.sampling import (
    _timesteps,
    empty_latent,
    make_scheduler,
    sample,
)
from sdflow_diffusion.testing import StepCounter as Steps, make_pipeline, tiny_components, tiny_handles

from sdflow.plugin import Interrupted, StageError
from sdflow_diffusion.stages.sample import Sample

# diffusers 0.42 warns on numpy 2 (thousands per KDPM2 run) and on tiny sample sizes.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

PROMPT, NEGATIVE, SEED, STEPS, SIZE = "a red circle on a blue background", "blurry, watermark", 42, 4, 32
LONG_PROMPT = ", ".join(["a red circle on a blue background, oil painting"] * 10)  # 110 tokens


@functools.cache
def tiny(kind: str):
    """(components, (model, clip, vae) handles) of a tiny ``kind`` model on the CPU in float32."""
    components = tiny_components(kind, seed=0)
    return components, tiny_handles(kind, components=components)


def ours(kind, prompt=PROMPT, negative=NEGATIVE, *, seed=SEED, steps=STEPS, cfg=7.5, sampler="euler",
         scheduler="normal", batch=1, denoise=1.0, latent=None, progress=None):
    """The default workflow through sdflow's functions, with the diffusers
    scheduler that serves ``sampler`` (``diffusers:<sampler>``): IMAGE [B, H, W, 3]."""
    _, (model, clip, vae) = tiny(kind)
    latent = latent if latent is not None else empty_latent(SIZE, SIZE, batch)
    params = Sample(seed=seed, steps=steps, cfg=cfg, sampler=DIFFUSERS + sampler, scheduler=scheduler,
                    denoise=denoise)
    denoised = sample(model, encode_text(clip, prompt), encode_text(clip, negative), latent, params,
                      progress=progress)
    return decode(vae, denoised)


def pipeline(kind, sampler="euler", scheduler="normal", img2img=False):
    components, (model, _, _) = tiny(kind)
    parts = {**components, "scheduler": make_scheduler(model.family, sampler, scheduler)}
    if kind == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(**parts)
    else:
        cls = diffusers.StableDiffusionImg2ImgPipeline if img2img else diffusers.StableDiffusionPipeline
        pipe = cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def theirs(kind, prompt=PROMPT, negative=NEGATIVE, *, seed=SEED, steps=STEPS, cfg=7.5, sampler="euler",
           scheduler="normal", batch=1):
    """The same through diffusers' txt2img pipeline, image i drawn from a CPU
    generator seeded seed + i: the images as float [B, H, W, 3] (its "np" output)."""
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
    images = pipeline(kind, sampler, scheduler)(
        prompt, negative_prompt=negative, height=SIZE, width=SIZE, num_inference_steps=steps,
        guidance_scale=cfg, generator=generators, num_images_per_prompt=batch, output_type="np").images
    return torch.from_numpy(images)


def assert_same_image(mine: torch.Tensor, reference: torch.Tensor) -> None:
    assert mine.shape == reference.shape and mine.dtype == reference.dtype == torch.float32
    assert torch.equal(mine, reference), f"max difference {(mine - reference).abs().max().item()}"
    pixels = [np.asarray(image) for image in to_pil(mine)]
    expected = [np.asarray(image) for image in diffusers.image_processor.VaeImageProcessor.numpy_to_pil(
        reference.numpy())]
    assert all(np.array_equal(a, b) for a, b in zip(pixels, expected, strict=True))


CASES = [
    *[("sd1", name, "normal") for name in SAMPLERS],
    ("sd1", "dpmpp_2m", "karras"),
    ("sd1", "euler", "karras"),
    ("sd1", "dpmpp_2m_sde", "exponential"),
    ("sd1", "euler_ancestral", "simple"),
    ("sd2", "euler", "normal"),  # v-prediction
    ("sd2", "euler_ancestral", "normal"),
    ("sd2", "dpmpp_2m", "karras"),
    ("sd2", "ddim", "normal"),
    ("sdxl", "euler", "normal"),
    ("sdxl", "euler_ancestral", "normal"),
    ("sdxl", "dpmpp_2m", "karras"),
    ("sdxl", "ddim", "normal"),
]


@pytest.mark.parametrize(("kind", "sampler", "scheduler"), CASES)
def test_txt2img_is_the_pipelines_image(kind, sampler, scheduler):
    if reason := supported(DIFFUSERS + sampler, scheduler):
        pytest.skip(reason)
    assert_same_image(ours(kind, sampler=sampler, scheduler=scheduler),
                      theirs(kind, sampler=sampler, scheduler=scheduler))


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_short_prompt_encodes_as_the_pipeline(kind):
    _, (_, clip, _) = tiny(kind)
    pipe = pipeline(kind)
    mine = encode_text(clip, PROMPT)
    if kind == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)
        assert torch.equal(mine.pooled, pooled)
    else:
        embeds, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False)
        assert mine.pooled is None
    assert torch.equal(mine.embeds, embeds)


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_long_prompt_is_encoded_in_windows(kind):
    _, (model, clip, _) = tiny(kind)
    pipe = pipeline(kind)
    mine = encode_text(clip, LONG_PROMPT)
    assert mine.embeds.shape == (1, 2 * 77, model.unet.config.cross_attention_dim)
    # The pipeline truncates to the first window: that window is the same.
    if kind == "sdxl":
        embeds, _, pooled, _ = pipe.encode_prompt(LONG_PROMPT, device="cpu", do_classifier_free_guidance=False)
        assert torch.equal(mine.pooled, pooled)
    else:
        embeds, _ = pipe.encode_prompt(LONG_PROMPT, "cpu", 1, False)
    assert torch.equal(mine.embeds[:, :77], embeds)
    # A long positive with a short negative samples (the negative is repeated to 154 tokens).
    image = ours(kind, LONG_PROMPT, NEGATIVE)
    assert image.shape == (1, SIZE, SIZE, 3) and torch.isfinite(image).all()


def test_token_windows_wrap_and_pad_each_chunk():
    _, (model, clip, _) = tiny("sdxl")
    first, second = clip.tokenizers  # pads with <|endoftext|>, then with "!"
    assert token_windows(first, "a photograph of an astronaut riding a horse")[0, :11].tolist() == [
        49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407, 49407]
    assert token_windows(second, "a photograph")[0, :5].tolist() == [49406, 320, 8853, 49407, 0]
    empty = token_windows(first, "")
    assert empty.shape == (1, 77) and empty[0, :2].tolist() == [49406, 49407]
    windows = token_windows(first, " ".join(["cat"] * 160))  # 160 tokens: 75 + 75 + 10
    assert windows.shape == (3, 77)
    assert (windows[:, 0] == 49406).all() and (windows[:2, 76] == 49407).all()
    assert windows[2, :12].tolist() == [49406, *[2368] * 10, 49407]
    assert encode_text(clip, "").embeds.shape == (1, 77, model.unet.config.cross_attention_dim)


def test_a_batch_is_the_pipelines_batch():
    assert_same_image(ours("sd1", sampler="euler_ancestral", batch=2),
                      theirs("sd1", sampler="euler_ancestral", batch=2))


def test_image_i_of_a_batch_is_drawn_from_seed_plus_i():
    noise, _ = initial_noise((3, 4, 4, 4), SEED)
    for i in range(3):
        single, _ = initial_noise((1, 4, 4, 4), SEED + i)
        assert torch.equal(noise[i], single[0])
    batch = ours("sd1", sampler="euler_ancestral", batch=2)
    for i in range(2):
        single = ours("sd1", sampler="euler_ancestral", seed=SEED + i)[0]
        # Close, not bit-identical, on the CPU: the noise (initial and
        # ancestral) is the same, but oneDNN's convolutions and the small
        # timestep-embedding GEMM block their sums differently for a batch of
        # 4 than of 2 U-Net inputs (and the VAE's for 2 images than for 1), so
        # the last bits differ (about 1e-5 after 4 steps).
        assert torch.allclose(batch[i], single, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_the_sdxl_refiner_is_the_img2img_pipelines_refinement(sampler):
    """The refiner (its OpenCLIP encoder alone, an aesthetic score among its
    time ids) refining a latent at denoise 0.5 is diffusers' SDXL img2img
    pipeline in its refiner configuration at strength 0.5."""
    components, (model, clip, _) = tiny("sdxl-refiner")
    assert len(clip.encoders) == 1 and model.family.kind == "sdxl-refiner"
    start = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(7))
    mine = ours("sdxl-refiner", sampler=sampler, denoise=0.5, latent=Latent(start.clone()))
    pipe = make_pipeline({**components, "scheduler": make_scheduler(model.family, sampler, "normal")},
                         "StableDiffusionXLImg2ImgPipeline")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPT, image=start.clone(), strength=0.5, negative_prompt=NEGATIVE,
                  num_inference_steps=2 * STEPS, guidance_scale=7.5,
                  generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="np").images
    assert_same_image(mine, torch.from_numpy(images))


@pytest.mark.parametrize(("sampler", "scheduler"), [("euler", "normal"), ("euler_ancestral", "normal"),
                                                    ("dpmpp_2m", "karras"), ("heun", "normal"),
                                                    ("ddim", "normal")])
def test_denoise_is_img2img_from_the_latent(sampler, scheduler):
    """denoise 0.5 of 4 steps is the img2img pipeline at strength 0.5 of 8
    steps, given the latent itself (4 channels: it skips the VAE encoder)."""
    start = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(7))
    mine = ours("sd1", sampler=sampler, scheduler=scheduler, denoise=0.5, latent=Latent(start.clone()))
    images = pipeline("sd1", sampler, scheduler, img2img=True)(
        PROMPT, image=start.clone(), strength=0.5, negative_prompt=NEGATIVE, num_inference_steps=2 * STEPS,
        guidance_scale=7.5, generator=[torch.Generator("cpu").manual_seed(SEED)], output_type="np").images
    assert_same_image(mine, torch.from_numpy(images))


@pytest.mark.parametrize(("steps", "denoise", "total"), [(4, 0.5, 8), (20, 0.6, 33), (3, 0.7, 4)])
def test_denoise_runs_the_last_steps_of_a_longer_schedule(steps, denoise, total):
    family = tiny("sd1")[1][0].family
    for sampler in ("euler", "heun"):
        full = make_scheduler(family, sampler, "normal")
        full.set_timesteps(total)
        run, begin = _timesteps(make_scheduler(family, sampler, "normal"), steps, denoise, "cpu")
        assert begin == (total - steps) * full.order
        assert torch.equal(run, full.timesteps[begin:])


def test_denoise_zero_returns_the_latent():
    _, (model, clip, _) = tiny("sd1")
    start = Latent(torch.randn(1, 4, 4, 4))
    out = sample(model, encode_text(clip, PROMPT), encode_text(clip, ""), start,
                 Sample(seed=0, steps=4, cfg=7.5, denoise=0.0))
    assert torch.equal(out.samples, start.samples)


def test_cfg_one_skips_the_negative_as_the_pipeline_does():
    assert_same_image(ours("sd1", cfg=1.0), theirs("sd1", cfg=1.0))
    assert torch.equal(ours("sd1", cfg=1.0), ours("sd1", negative="something else", cfg=1.0))


@pytest.mark.parametrize(("sampler", "denoise"), [("euler", 1.0), ("heun", 1.0), ("dpm_2", 1.0),
                                                  ("heun", 0.5), ("dpmpp_2m", 0.5)])
def test_progress_counts_each_step_once(sampler, denoise):
    start = empty_latent(SIZE, SIZE, 1) if denoise == 1 else Latent(torch.randn(1, 4, 4, 4))
    progress = Steps()
    ours("sd1", sampler=sampler, denoise=denoise, latent=start, progress=progress)
    assert progress.count == STEPS


def test_an_interrupt_stops_sampling():
    progress = Steps(stop_after=2)
    with pytest.raises(Interrupted):
        ours("sd1", progress=progress)
    assert progress.count == 2


def test_empty_latent_is_zeros_at_an_eighth_of_the_size():
    latent = empty_latent(64, 48, 3)
    assert latent.samples.shape == (3, 4, 6, 8) and latent.samples.dtype == torch.float32
    assert not latent.samples.any() and latent.samples.device.type == "cpu"


def test_to_pil_rounds_halves_as_numpy_to_pil():
    halves = (torch.arange(16 * 16 * 3) % 511).float() / 2  # 0, 0.5, 1, ..., 255
    image = (halves / 255).reshape(1, 16, 16, 3)
    expected = diffusers.image_processor.VaeImageProcessor.numpy_to_pil(image.numpy())
    assert np.array_equal(np.asarray(to_pil(image)[0]), np.asarray(expected[0]))


def test_prompts_from_another_family_are_a_stage_error():
    _, (model, _, _) = tiny("sd1")
    _, (_, sdxl_clip, _) = tiny("sdxl")
    prompt = encode_text(sdxl_clip, PROMPT)
    with pytest.raises(StageError, match="encoded for another model"):
        sample(model, prompt, prompt, empty_latent(SIZE, SIZE, 1), Sample(seed=0, steps=2, cfg=7.5))


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m"])
def test_the_sdxl_base_hands_over_to_the_refiner_as_the_pipelines_denoising_end(sampler):
    """sample_advanced's handover (the base's steps 0-4 of 5, noise left;
    the refiner's 4-5, no noise added) under ``diffusers:`` samplers is
    StableDiffusionXLPipeline with denoising_end 0.8 handing its latent to
    the refiner's img2img pipeline with denoising_start 0.8, bit for bit."""
    from sdflow_diffusion.numerics.sampling import sample_advanced
    from sdflow_diffusion.stages.sample import SampleAdvanced

    steps, handover = 5, 4  # the leading schedule 801, 601, 401, 201, 1: four timesteps >= 200 (0.8)
    base_parts, (base, base_clip, _) = tiny("sdxl")
    refiner_parts, (refiner, refiner_clip, refiner_vae) = tiny("sdxl-refiner")
    common = dict(seed=SEED, steps=steps, cfg=7.5, sampler=DIFFUSERS + sampler, scheduler="normal")
    drafted = sample_advanced(base, encode_text(base_clip, PROMPT), encode_text(base_clip, NEGATIVE),
                              empty_latent(SIZE, SIZE, 1),
                              SampleAdvanced(**common, end_at_step=handover, return_with_leftover_noise=True))
    refined = sample_advanced(refiner, encode_text(refiner_clip, PROMPT), encode_text(refiner_clip, NEGATIVE),
                              drafted, SampleAdvanced(**common, add_noise=False, start_at_step=handover))
    mine = decode(refiner_vae, refined)

    def pipe(parts, model, name):
        made = make_pipeline({**parts, "scheduler": make_scheduler(model.family, sampler, "normal")}, name)
        made.set_progress_bar_config(disable=True)
        return made

    latents = pipe(base_parts, base, "StableDiffusionXLPipeline")(
        PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=7.5,
        denoising_end=handover / steps, generator=[torch.Generator("cpu").manual_seed(SEED)],
        output_type="latent").images
    assert torch.equal(drafted.samples, latents)
    images = pipe(refiner_parts, refiner, "StableDiffusionXLImg2ImgPipeline")(
        PROMPT, image=latents, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.5,
        denoising_start=handover / steps, generator=[torch.Generator("cpu").manual_seed(SEED)],
        output_type="np").images
    assert_same_image(mine, torch.from_numpy(images))


def test_the_diffusers_engine_will_not_end_a_part_schedule_clean(tmp_path):
    """Said at check time, at the stage, before a model loads."""
    from cli import sdflow_cli

    recipe = tmp_path / "r.sdflow"
    recipe.write_text("sdflow 1\n"
                      "m = load_checkpoint(name=\"sdflow-tiny\")\n"
                      "p = clip_text_encode(clip=m.clip, text=\"a red circle\")\n"
                      "l = empty_latent(width=64, height=64)\n"
                      "s = sample_advanced(model=m.model, positive=p, negative=p, latent=l, steps=4,\n"
                      "                    sampler=\"diffusers:euler\", end_at_step=2)\n")
    result = sdflow_cli("check", "r.sdflow", cwd=tmp_path)
    assert result.returncode == 1 and "r.sdflow:5:" in result.stderr, result.stderr
    assert "return_with_leftover_noise=true" in result.stderr
